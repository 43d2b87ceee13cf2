"""Same seed, same batches: how far apart are the frameworks, next to how far apart seeds are?

    python scripts/seed_spread.py --env-dir ~/.cache/resnet-multi/tox --runs runs/spread \\
        --seed-backend torch --seeds 0,1,2,3,4 --backends torch,tf,mxnet,paddle

Trains ``resnet-multi train --preset quick`` once per (backend, seed) in that backend's
own environment (ENV_DIR/<backend>/bin/python), at a fixed CPU thread count (default 1;
the results depend on it), and prints the final test accuracy of each run, then the
spread (max - min) across the seeds of one backend and across backends at seed 0.
A run whose directory already holds final weights is read, not repeated; interrupted
runs are resumed. ``--json PATH`` also writes the rows, the spreads, the machine and the
command as a ``resnet_multi.seed_spread.v1`` JSON file (the documentation's results page
shows it once that file is committed as ``benchmarks/seed_spread.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

FORMAT = "resnet_multi.seed_spread.v1"
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def run(env_dir: Path, runs: Path, backend: str, seed: int, threads: int) -> dict:
    out = runs / f"{backend}-seed{seed}"
    reused = (out / "weights.safetensors").is_file()
    if not reused:
        python = env_dir / backend / "bin" / "python"
        if not python.is_file():
            raise SystemExit(f"no environment for {backend} at {python.parent.parent} (tox -e {backend} builds it)")
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}, "MPLBACKEND": "Agg"}
        command = [
            str(python),
            "-m",
            "resnet_multi.cli",
            "train",
            "--backend",
            backend,
            "--device",
            "cpu",
            "--preset",
            "quick",
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--no-progress",
        ]
        if (out / "checkpoint.json").is_file():
            command.append("--resume")
        print(" ".join(command), file=sys.stderr)
        subprocess.run(command, env=env, check=True, cwd=Path(__file__).resolve().parent.parent)
    history = json.loads((out / "history.json").read_text())
    return {
        "backend": backend,
        "seed": seed,
        "test_acc": history["test_acc"][-1],
        "train_loss": history["train_loss"][-1],
        "train_acc": history["train_acc"][-1],
        "run_dir": str(out),
        "reused": reused,  # read from an earlier run of this script, not trained now
    }


def spread_figures(values) -> dict | None:
    values = list(values)
    if len(values) < 2:
        return None
    return {
        "max_minus_min": max(values) - min(values),
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values),
        "n": len(values),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def spread(values) -> str:
    values = list(values)
    if len(values) < 2:
        return "-"
    return (
        f"{max(values) - min(values):.3f} (mean {statistics.mean(values):.3f}, "
        f"sd {statistics.stdev(values):.3f}, n={len(values)})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", type=Path, default=Path(".tox"))
    parser.add_argument("--runs", type=Path, default=Path("runs/spread"))
    parser.add_argument("--seed-backend", default="torch")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument(
        "--backends",
        default="torch,tf,mxnet,paddle",
        help="backends trained at seed 0 (mindspore works too, but slowly)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help=f"also write the results here ({FORMAT})")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    seeds = [int(s) for s in args.seeds.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    rows = [run(args.env_dir, args.runs, args.seed_backend, s, args.threads) for s in seeds]
    rows += [
        run(args.env_dir, args.runs, b, 0, args.threads)
        for b in backends
        if not (b == args.seed_backend and 0 in seeds)
    ]
    print(
        f"quick preset (d2l-resnet18, bundled 2,000/500 subset at 32x32, 12 epochs, lr 0.05, batch 256), "
        f"{args.threads} CPU thread(s)\n"
    )
    print("| backend | seed | train loss | train acc | test acc |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['seed']} | {r['train_loss']:.3f} | {r['train_acc']:.3f} | {r['test_acc']:.3f} |")
    by_seed = [r["test_acc"] for r in rows if r["backend"] == args.seed_backend]
    by_backend = [r["test_acc"] for r in rows if r["seed"] == 0]
    print(f"\ntest-acc spread (max - min) across {len(by_seed)} seeds of {args.seed_backend}: {spread(by_seed)}")
    print(f"test-acc spread (max - min) across {len(by_backend)} backends at seed 0: {spread(by_backend)}")
    if args.json:
        result = {
            "format": FORMAT,
            "started_utc": started,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": ["python", "scripts/seed_spread.py", *(sys.argv[1:] if argv is None else argv)],
            "recipe": "resnet-multi train --preset quick (d2l-resnet18, bundled 2,000/500 subset at 32x32, "
            "12 epochs, lr 0.05, batch 256)",
            "threads": args.threads,
            "seed_backend": args.seed_backend,
            "machine": {
                "platform": platform.platform(),
                "processor": cpu_name(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "rows": rows,
            "spread": {"seeds": spread_figures(by_seed), "backends": spread_figures(by_backend)},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
