"""Timing shared by the side-by-side benchmark scripts: interleaved rounds, medians."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

LR = 0.05


def rate(fn, n_examples, steps):
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return n_examples * steps / (time.perf_counter() - start)


def compare(contenders, n_examples, rounds, steps, warmup=2):
    """Median examples/s of each contender (name -> callable running one batch of
    ``n_examples``), over ``rounds`` interleaved rounds of ``steps`` calls each, so that
    load from other processes falls on every contender alike."""
    for fn in contenders.values():  # first calls trace graphs, build caches, allocate
        for _ in range(warmup):
            fn()
    rates = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            rates[name].append(rate(fn, n_examples, steps))
    return {name: statistics.median(r) for name, r in rates.items()}


def table(title, medians, baseline="textbook"):
    base = medians[baseline]
    print(f"\n{title}\n| contender | examples/s | vs {baseline} |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.0f} | {value / base:.2f} |")


def parse_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=64)
    return parser.parse_args()


def against_textbook(book, args, train_variants, infer_variants):
    """The textbook module's ResNet-18 (``book.net``, trained by ``book.trainer``, predicting
    with ``book.predictor``) against the package's variants, on the same NumPy batches:
    ``train_variants`` name -> fn(x, y) at 32x32, ``infer_variants`` name -> fn(x) at 96x96."""
    from resnet_multi.spec import get_arch

    rng = np.random.default_rng(0)
    net = book.net(width=get_arch("d2l-resnet18").width)  # the chapter's 64
    textbook_step, textbook_predict = book.trainer(net, LR), book.predictor(net)
    x = rng.standard_normal((args.train_batch, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.train_batch)
    train = compare(
        {
            "textbook": lambda: textbook_step(x, y),
            **{name: (lambda fn=fn: fn(x, y)) for name, fn in train_variants.items()},
        },
        args.train_batch,
        args.rounds,
        args.steps,
    )
    table(f"Training, d2l-resnet18, 32x32, batch {args.train_batch}", train)
    xi = rng.standard_normal((args.infer_batch, 1, 96, 96)).astype(np.float32)
    infer = compare(
        {
            "textbook": lambda: textbook_predict(xi),
            **{name: (lambda fn=fn: fn(xi)) for name, fn in infer_variants.items()},
        },
        args.infer_batch,
        args.rounds,
        args.steps,
    )
    table(f"Inference, d2l-resnet18, 96x96, batch {args.infer_batch}", infer)
