"""MindSpore training and inference speed: the package's model against the textbook's
MindSpore ResNet-18, each in PyNative (eager) and compiled (``mindspore.jit``), side by side.

d2l has no MindSpore tab, so the baseline is :mod:`resnet_multi.textbook.mindspore` (the
one ``resnet-multi bench`` runs): the chapter's PyTorch code translated layer for layer
into MindSpore's default cells, keeping the chapter's explicit paddings
(``pad_mode='pad'``) and conv biases (``has_bias=True``), trained by that module's
``trainer`` in the same idiom as the backend: ``value_and_grad`` over the loss, then
``nn.SGD`` (its ``predictor`` for inference). Until this script took its baseline from
that module it built its own from MindSpore's bare defaults (``nn.Conv2d`` with 'same'
padding and no bias, ``nn.MaxPool2d(pad_mode='same')``): the same shapes and
convolution FLOPs, but no bias adds and asymmetric padding, so figures from before
then compare against a slightly different network. Now both models compute the same
architecture, and the ratio is the package's cost alone. Rounds are interleaved
(one step of each variant per round) so that a shared machine's load hits all alike;
the table gives medians over the timed rounds, after one untimed warm-up step. The
first call (trace + compile + one step) and the first call on the epoch's last,
smaller batch (a second trace) are timed apart. CPU seconds per step are printed too,
since wall time on a shared machine mostly measures the other processes.

    python scripts/bench_mindspore.py                 # d2l-resnet18, 32x32, batch 256
    python scripts/bench_mindspore.py --no-isa-cap    # MindSpore's oneDNN uncapped
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32, help="training image size (default 32)")
    p.add_argument("--batch", type=int, default=256, help="training batch size (default 256)")
    p.add_argument(
        "--last-batch",
        type=int,
        default=208,
        help="the epoch's last, smaller batch (the quick preset's: 2000 = 7 x 256 + 208)",
    )
    p.add_argument("--infer-size", type=int, default=96)
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    p.add_argument("--only", choices=["package", "textbook"], help="time only one model's two variants")
    p.add_argument(
        "--no-isa-cap",
        action="store_true",
        help="leave MindSpore's oneDNN at the CPU's full ISA (sets ONEDNN_MAX_CPU_ISA=ALL)",
    )
    return p.parse_args()


ARGS = parse_args()
if ARGS.no_isa_cap:
    os.environ["ONEDNN_MAX_CPU_ISA"] = "ALL"  # read by oneDNN at its first kernel; the module then leaves it

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from resnet_multi import mindspore as rn  # noqa: E402  (imported before MindSpore runs anything)
from resnet_multi.spec import get_arch  # noqa: E402
from resnet_multi.textbook import mindspore as book  # noqa: E402

ms = rn.ms
LR = 0.05


def textbook_variant(eager):
    """The textbook model's train step and inference, PyNative or compiled."""
    model = book.net(width=get_arch("d2l-resnet18").width)  # the chapter's 64
    return book.trainer(model, LR, eager=eager), book.predictor(model, eager=eager)


def package_variant(eager):
    backend = rn.BACKEND
    model = backend.build("d2l-resnet18", eager=eager)
    return (lambda x, y: backend.sgd_step(model, x, y, LR)), (lambda x: backend.forward(model, x))


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    rng = np.random.default_rng(0)

    def data(n, size):
        return rng.random((n, 1, size, size), dtype=np.float32), rng.integers(0, 10, n)

    x, y = data(ARGS.batch, ARGS.size)
    x_last, y_last = data(ARGS.last_batch, ARGS.size)
    x_inf, _ = data(ARGS.infer_batch, ARGS.infer_size)
    variants = {}
    for label, make in (("package", package_variant), ("textbook", textbook_variant)):
        if ARGS.only and not label.startswith(ARGS.only):
            continue
        for eager in (True, False):
            variants[f"{label}, {'PyNative' if eager else 'jit'}"] = make(eager)

    first, first_last, first_inf = {}, {}, {}
    for name, (train, predict) in variants.items():  # first calls: trace, compile, run
        first[name] = timed(train, x, y)
        first_last[name] = timed(train, x_last, y_last)
        first_inf[name] = timed(predict, x_inf)
        print(
            f"warm-up {name}: first step {first[name][0]:.1f} s, first last-batch step "
            f"{first_last[name][0]:.1f} s, first inference {first_inf[name][0]:.1f} s",
            flush=True,
        )
    steps = {name: [] for name in variants}
    infers = {name: [] for name in variants}
    for r in range(ARGS.rounds):
        for name, (train, predict) in variants.items():
            steps[name].append(timed(train, x, y))
            infers[name].append(timed(predict, x_inf))
        print(
            f"round {r + 1}/{ARGS.rounds}: " + ", ".join(f"{n} {steps[n][-1][0]:.2f} s" for n in variants), flush=True
        )

    def med(pairs, i):
        return statistics.median(p[i] for p in pairs)

    cap = "off (ONEDNN_MAX_CPU_ISA=ALL)" if ARGS.no_isa_cap else ("AVX2" if rn.ONEDNN_ISA_CAPPED else "not applied")
    print(
        f"\nMindSpore {ms.__version__}, d2l-resnet18, train {ARGS.size}x{ARGS.size} batch {ARGS.batch}, "
        f"inference {ARGS.infer_size}x{ARGS.infer_size} batch {ARGS.infer_batch}; oneDNN ISA cap: {cap}; "
        f"{os.cpu_count()} CPUs; medians of {ARGS.rounds} interleaved rounds"
    )
    base = next(n for n in variants if n.endswith("PyNative") and (ARGS.only or n.startswith("textbook")))
    print(
        f"| variant | train ex/s | train CPU-s/step | vs {base} | first step s | first last-batch "
        f"step s | inference ex/s | inference CPU-s/batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in variants:
        wall = med(steps[name], 0)
        print(
            f"| {name} | {ARGS.batch / wall:.1f} | {med(steps[name], 1):.2f} | "
            f"{med(steps[base], 0) / wall:.2f} | {first[name][0]:.1f} | {first_last[name][0]:.1f} | "
            f"{ARGS.infer_batch / med(infers[name], 0):.1f} | {med(infers[name], 1):.2f} |"
        )


if __name__ == "__main__":
    main()
