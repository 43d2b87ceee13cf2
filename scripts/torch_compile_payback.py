#!/usr/bin/env python3
"""Does ``torch.compile`` pay back its compile time over the quick preset's 96 steps?

Times, for d2l-resnet18 at the quick preset's shape (batch 256 of 32x32, and its
last 208-image batch), the torch backend's SGD step eagerly and with the module
under ``torch.compile`` (inductor, default mode): each first step (compile) apart,
then interleaved rounds of both, and prints the steps needed to repay the compile.
Inductor keeps on-disk caches (``/tmp/torchinductor_$USER``): the first run on a
machine measures a cold compile, later runs a warm one.

    python scripts/torch_compile_payback.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from resnet_multi.torch import BACKEND

QUICK_STEPS = 96  # the quick preset: 12 epochs of 2,000 images in batches of 256


def make_step(compiled: bool):
    module = BACKEND.build("d2l-resnet18").module.train()
    forward = torch.compile(module) if compiled else module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        return loss.item(), logits.detach().numpy()

    def first_inference(x):
        module.eval()
        with torch.no_grad():
            forward(x)
        module.train()

    return step, first_inference


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((256, 1, 32, 32), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 256))
    steps, first = {}, {}
    for compiled in (False, True):
        step, first_inference = make_step(compiled)
        first[compiled] = (timed(step, x, y), timed(step, x[:208], y[:208]), timed(first_inference, x))
        steps[compiled] = step
    times = {False: [], True: []}
    for r in range(args.rounds):
        for compiled in (False, True) if r % 2 == 0 else (True, False):
            times[compiled].append(timed(steps[compiled], x, y))
    median = {c: statistics.median(t) for c, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    for compiled, name in ((False, "eager"), (True, "torch.compile")):
        a, b, c = first[compiled]
        print(
            f"{name:>14}: first step {a:7.1f} s, first 208-image step {b:7.1f} s, first inference "
            f"{c:7.1f} s; step median {median[compiled]:.3f} s (min {min(times[compiled]):.3f}, "
            f"max {max(times[compiled]):.3f})"
        )
    compile_s = sum(first[True]) - sum(first[False])
    saved = median[False] - median[True]
    print(
        f"compile overhead {compile_s:.1f} s; saved per step {saved:.3f} s ({median[False] / median[True]:.2f}x); "
        f"over {QUICK_STEPS} steps {QUICK_STEPS * saved:.1f} s: "
        + ("pays back" if QUICK_STEPS * saved > compile_s else "does not pay back")
    )


if __name__ == "__main__":
    main()
