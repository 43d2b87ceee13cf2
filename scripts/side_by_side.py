"""Timing shared by the side-by-side benchmark scripts: interleaved rounds, medians."""
from __future__ import annotations

import statistics
import time


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
