"""Two or more backends' speed at the same shapes, measured in alternating rounds.

    python scripts/bench_backends.py --env-dir ~/.cache/resnet-multi/tox --backends torch,jax --rounds 5
    python scripts/bench_backends.py --backends torch,jax --rounds 3 -- --preset chapter --steps 3

Each backend's framework lives in its own environment (ENV_DIR/<backend>/bin/python),
so no one process can time them all. Each round runs ``resnet-multi bench --no-textbook``
once per backend, in the order given, and reads its JSON; rounds alternate the backends,
so a change in the machine's load falls on all of them rather than on one. The table has
each backend's median over rounds of its per-round median step, in examples/s, and the
median over rounds of the ratio to the first backend in the same round. Arguments after
``--`` go to every ``resnet-multi bench`` (default: its own, the quick preset's 32x32,
batch 256). The repository's ``resnet_multi`` comes first on each python's path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("train", "inference")


def bench_once(env_dir: Path, backend: str, bench_args: list[str], out: Path, source: Path = REPO) -> dict:
    """One ``resnet-multi bench`` of ``backend``, with the package imported from ``source``."""
    python = env_dir / backend / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no environment for {backend} at {python.parent.parent} (tox -e {backend} builds it)")
    command = [
        str(python),
        "-m",
        "resnet_multi.cli",
        "bench",
        "--backend",
        backend,
        "--no-textbook",
        "--quiet",
        "--json",
        str(out),
        *bench_args,
    ]
    env = {**os.environ, "PYTHONPATH": str(source), "MPLBACKEND": "Agg"}
    print(" ".join(command), file=sys.stderr)
    done = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{backend}'s bench failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", type=Path, default=Path.home() / ".cache/resnet-multi/tox")
    parser.add_argument("--backends", default="torch,jax", help="comma-separated; ratios are to the first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args, bench_args = parser.parse_known_args(argv)
    bench_args = [a for a in bench_args if a != "--"]
    backends = args.backends.split(",")
    if len(backends) < 2 or args.rounds < 1:
        parser.error("give at least two backends and one round")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rounds.append({b: bench_once(args.env_dir, b, bench_args, Path(tmp) / f"{b}-{r}.json") for b in backends})
    first = rounds[0][backends[0]]
    loads = [load for rnd in rounds for run in rnd.values() for load in run["machine"]["load_average_1min"].values()]
    print(
        f"{first['arch']} (width {first['width']}), input {'x'.join(map(str, first['input_shape']))}, "
        f"{first['steps']} timed steps after {first['warmup']} warm-up per run, {args.rounds} alternating "
        f"rounds; {first['machine']['processor']}, {first['machine']['cpus']} CPUs, "
        f"1-min load {min(loads):.2f}-{max(loads):.2f}"
    )
    print(
        f"{'backend':10s} {'version':22s} {'device':8s} "
        + " ".join(f"{p + ' ex/s':>16s} {p + ' / ' + backends[0]:>18s}" for p in PHASES)
    )
    for b in backends:
        run = rounds[0][b]
        cells = []
        for phase in PHASES:
            speeds = [rnd[b]["models"]["package"][phase]["examples_per_s"] for rnd in rounds]
            ratios = [
                rnd[b]["models"]["package"][phase]["examples_per_s"]
                / rnd[backends[0]]["models"]["package"][phase]["examples_per_s"]
                for rnd in rounds
            ]
            cells.append(f"{statistics.median(speeds):16.1f} {statistics.median(ratios):18.2f}")
        print(f"{b:10s} {run['framework_version'].split()[0]:22s} {run['device']:8s} " + " ".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"backends": backends, "bench_args": bench_args, "rounds": rounds}, indent=1))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
