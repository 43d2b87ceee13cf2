"""Time to accuracy: how long the fast preset takes to reach 0.90 and 0.92 test accuracy.

    python scripts/time_to_accuracy.py --env-dir ~/.cache/resnet-multi/tox --runs runs/tta \\
        --backends torch,tf,jax --seeds 0,1,2 --json benchmarks/time_to_accuracy.json

Trains ``resnet-multi train --preset fast`` once per (backend, seed) in that backend's own
environment (ENV_DIR/<backend>/bin/python), one run at a time, and reads each run's
``history.json``: the test accuracy after every epoch and the seconds spent inside the
training steps (the chapter's timer: batching, evaluation and checkpoints are not
counted). Seconds to a target are the training seconds up to the end of the first epoch
whose test accuracy reaches it (test accuracy is measured once an epoch, so this is the
time at epoch resolution); null if no epoch did. ``--seeds`` gives the seed spread of the
first backend (torch by default); the other backends train at the first seed.

Training time depends on the machine's load: the 1-minute load average is sampled every
few seconds during each run and reported (mean and max) with the run, next to the CPU
model, its vector-instruction flags, the thread settings and each framework's version.
A run whose directory already holds final weights is read, not repeated; an interrupted
run is resumed. ``--epochs 1 --subset`` (or ``--limit``) makes a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from resnet_multi import machine  # noqa: E402  (framework-free: the benchmark's machine record)
from resnet_multi.files import atomic_write_bytes  # noqa: E402

FORMAT = "resnet_multi.time_to_accuracy.v1"
TARGETS = (0.90, 0.92)
RUN_RECORD = "time_to_accuracy_run.json"  # in each run's directory: how it ran, for a later reuse


def python_of(env_dir: Path, backend: str) -> Path:
    python = env_dir / backend / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no environment for {backend} at {python.parent.parent} (tox -e {backend} builds it)")
    return python


def run_env(args) -> dict:
    """The environment every run (and the framework record) gets: ``--threads`` applied."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if args.threads is not None:
        env.update({var: str(args.threads) for var in machine.THREAD_ENV if var != "XLA_FLAGS"})
    return env


def framework_record(python: Path, backend: str, env: dict) -> dict:
    """The framework's version and its own CPU thread settings, read as a run will see them."""
    code = (
        "import json; from resnet_multi.backend import load_backend; "
        f"b = load_backend({backend!r}); "
        "print(json.dumps({'version': b.framework_version(), 'threads': b.cpu_threads()}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_to(history: dict, target: float) -> float | None:
    """Training seconds until the end of the first epoch at ``target`` test accuracy or above."""
    elapsed = 0.0
    for seconds, acc in zip(history["train_seconds"], history["test_acc"]):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None


def summarize(history: dict) -> dict:
    seconds = sum(history["train_seconds"])
    return {
        "epochs": len(history["epoch"]),
        "test_acc": history["test_acc"],
        "train_seconds": history["train_seconds"],
        "cumulative_train_seconds": [sum(history["train_seconds"][: i + 1]) for i in range(len(history["epoch"]))],
        "final_test_acc": history["test_acc"][-1],
        "total_train_seconds": seconds,
        "examples_per_sec": history.get("examples_per_sec")
        or (sum(history["examples"]) / seconds if seconds else None),
        "seconds_to": {f"{t:.2f}": time_to(history, t) for t in TARGETS},
    }


def train_command(python: Path, backend: str, seed: int, out: Path, args) -> list[str]:
    command = [str(python), "-m", "resnet_multi.cli", "train", "--backend", backend, "--device", "cpu"]
    command += ["--preset", "fast", "--seed", str(seed), "--out", str(out), "--no-progress"]
    for flag, value in (("--epochs", args.epochs), ("--data-dir", args.data_dir), ("--limit", args.limit)):
        if value is not None:
            command += [flag, str(value)]
    if args.subset:
        command.append("--subset")
    if (out / "checkpoint.json").is_file() and not (out / "weights.safetensors").is_file():
        command.append("--resume")
    return command


def run(args, backend: str, seed: int) -> dict:
    out = args.runs / f"{backend}-seed{seed}"
    python = python_of(args.env_dir, backend)
    reused = (out / "weights.safetensors").is_file() and (out / "history.json").is_file()
    env = run_env(args)
    row = {"backend": backend, "seed": seed, "run_dir": str(out), "reused": reused}
    if reused:
        if (out / RUN_RECORD).is_file():
            row.update(json.loads((out / RUN_RECORD).read_text()))
    else:
        command = train_command(python, backend, seed, out, args)
        print(" ".join(command), file=sys.stderr)
        started, tic = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
        with machine.LoadSampler(args.sample_every) as load:
            subprocess.run(command, env=env, check=True, cwd=REPO)
        measured = {
            "started_utc": started,
            "wall_seconds": time.perf_counter() - tic,
            "load_average_1min": load.summary(),
        }
        atomic_write_bytes(out / RUN_RECORD, (json.dumps(measured, indent=1) + "\n").encode())
        row.update(measured)
    history = json.loads((out / "history.json").read_text())
    row.update(summarize(history))
    row["recipe"] = {
        k: history[k] for k in ("lr", "batch_size", "resize", "optimizer", "schedule", "augment") if k in history
    }
    row["arch"] = history["arch"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", type=Path, default=Path(".tox"), help="holds <backend>/bin/python")
    parser.add_argument("--runs", type=Path, default=Path("runs/time-to-accuracy"))
    parser.add_argument("--backends", default="torch,tf,mxnet,paddle,mindspore,jax")
    parser.add_argument("--seeds", default="0", help="seeds of the first backend (its seed spread)")
    parser.add_argument("--threads", type=int, help="CPU threads per framework (default: the framework's own)")
    parser.add_argument("--epochs", type=int, help="(default: the preset's)")
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST files")
    parser.add_argument("--subset", action="store_true", help="the bundled 2,000/500 subset (smoke runs)")
    parser.add_argument("--limit", type=int, help="only the first N train and N test images (smoke runs)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between load-average samples")
    parser.add_argument("--json", type=Path, help=f"also write the results here ({FORMAT})")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not backends or not seeds:
        parser.error("give at least one backend and one seed")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = run_env(args)
    frameworks = {b: framework_record(python_of(args.env_dir, b), b, env) for b in backends}
    rows = [run(args, backends[0], s) for s in seeds] + [run(args, b, seeds[0]) for b in backends[1:]]

    print("| backend | seed | test acc | s to 0.90 | s to 0.92 | train s | examples/s | load (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        to = {k: "-" if v is None else f"{v:.0f}" for k, v in r["seconds_to"].items()}
        load = r.get("load_average_1min", {}).get("mean")
        print(
            f"| {r['backend']} | {r['seed']} | {r['final_test_acc']:.4f} | {to['0.90']} | {to['0.92']} | "
            f"{r['total_train_seconds']:.0f} | {r['examples_per_sec'] or 0:.0f} | "
            f"{'-' if load is None else f'{load:.2f}'} |"
        )
    spread = [r["final_test_acc"] for r in rows if r["backend"] == backends[0]]
    if len(spread) > 1:
        print(f"\n{backends[0]} final test accuracy over seeds {seeds}: {min(spread):.4f} to {max(spread):.4f}")
    if args.json:
        result = {
            "format": FORMAT,
            "started_utc": started,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": ["python", "scripts/time_to_accuracy.py", *(sys.argv[1:] if argv is None else argv)],
            "recipe": "resnet-multi train --preset fast",
            "targets": list(TARGETS),
            "threads": args.threads,
            "framework_versions": {b: f["version"] for b, f in frameworks.items()},
            "framework_threads": {b: f["threads"] for b, f in frameworks.items()},
            # the thread variables as the runs saw them
            "machine": {
                **machine.record(),
                "thread_env": {k: env[k] for k in machine.THREAD_ENV if k in env},
            },
            "rows": rows,
            "seed_spread": {"backend": backends[0], "seeds": seeds, "final_test_acc": spread},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
