"""The package's speed at two revisions, per backend, measured in alternating rounds.

    python scripts/bench_revisions.py --before 0bd3cc7 --backends torch,tf,mxnet,paddle,mindspore,jax \
        --rounds 3 --json benchmarks/revisions.json

A change that only moves code (a refactor) should leave every backend's step where it
was; this says whether it did. Each revision is checked out into a temporary worktree
(``--after`` defaults to the working tree itself). Each round runs ``resnet-multi bench
--no-textbook`` for every backend, before then after, so a change in the machine's load
falls on both. The table has, per backend and phase, the median over rounds of each
revision's per-round median step (examples/s) and the median of the per-round ratio
after / before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import PHASES, REPO, bench_once  # noqa: E402


def worktree(revision: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), revision], check=True)
    return into


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", type=Path, default=Path.home() / ".cache/resnet-multi/tox")
    parser.add_argument("--before", required=True, help="a git revision")
    parser.add_argument("--after", help="a git revision (default: the working tree)")
    parser.add_argument("--backends", default="torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args, bench_args = parser.parse_known_args(argv)
    bench_args = [a for a in bench_args if a != "--"]
    backends = args.backends.split(",")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"before": worktree(args.before, tmp / "before")}
        sources["after"] = worktree(args.after, tmp / "after") if args.after else REPO
        try:
            for r in range(args.rounds):
                rounds.append(
                    {
                        b: {
                            rev: bench_once(args.env_dir, b, bench_args, tmp / f"{b}-{rev}-{r}.json", source)
                            for rev, source in sources.items()
                        }
                        for b in backends
                    }
                )
        finally:
            for source in sources.values():
                if source != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(source)], check=False)
    loads = [
        load
        for rnd in rounds
        for pair in rnd.values()
        for run in pair.values()
        for load in run["machine"]["load_average_1min"].values()
    ]
    first = rounds[0][backends[0]]["after"]
    print(
        f"before {args.before}, after {args.after or 'working tree'}; {first['arch']} (width {first['width']}), "
        f"input {'x'.join(map(str, first['input_shape']))}, {first['steps']} timed steps per run, "
        f"{args.rounds} alternating rounds; {first['machine']['processor']}, {first['machine']['cpus']} CPUs, "
        f"1-min load {min(loads):.2f}-{max(loads):.2f}"
    )
    print(f"{'backend':10s} " + " ".join(f"{p + ' before':>17s} {p + ' after':>16s} {'ratio':>6s}" for p in PHASES))
    for b in backends:
        cells = []
        for phase in PHASES:
            speed = {
                rev: [rnd[b][rev]["models"]["package"][phase]["examples_per_s"] for rnd in rounds]
                for rev in ("before", "after")
            }
            ratio = statistics.median(a / w for a, w in zip(speed["after"], speed["before"]))
            cells.append(
                f"{statistics.median(speed['before']):17.1f} {statistics.median(speed['after']):16.1f} {ratio:6.2f}"
            )
        print(f"{b:10s} " + " ".join(cells))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "format": "resnet_multi.bench_revisions.v1",
                    "before": args.before,
                    "after": args.after,
                    "backends": backends,
                    "bench_args": bench_args,
                    "rounds": rounds,
                },
                indent=1,
            )
        )
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
