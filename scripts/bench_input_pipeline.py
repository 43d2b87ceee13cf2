"""How many training images a second each input pipeline builds, without training.

* host: ``data.iterate_batches`` (NumPy: gather, /255, resize_bilinear), what every
  backend trains from on the CPU;
* torch device: ``resnet_multi.torch.DeviceBatches``, what the torch backend trains
  from on CUDA (the uint8 images copied to the device once; each batch gathered,
  scaled and resized there), timed on every device torch reports; on CUDA the clock
  stops after a synchronize, so the figure is work done, not work queued.

One shuffled epoch of synthetic uint8 28x28 images per figure (the content does not
change the work), after one untimed warm-up epoch; the best of ``--repeat`` epochs.
The issue's bar: a pipeline that feeds at least 100,000 images/s at 96x96.

    python scripts/bench_input_pipeline.py [--images 20000] [--sizes 96,32] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from resnet_multi import data


def _epoch_seconds(make_epoch, sync) -> float:
    tic = time.perf_counter()
    for _ in make_epoch():
        pass
    sync()
    return time.perf_counter() - tic


def _best(make_epoch, sync, repeat: int) -> float:
    _epoch_seconds(make_epoch, sync)  # warm-up: caches, allocator, first kernel launches
    return min(_epoch_seconds(make_epoch, sync) for _ in range(repeat))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--sizes", default="96,32", help="image sides, comma-separated")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)

    rows = []
    for size in sizes:
        seconds = _best(
            lambda: data.iterate_batches(images, labels, args.batch_size, shuffle=True, seed=0, resize=size),
            lambda: None,
            args.repeat,
        )
        rows.append(("host (NumPy)", "cpu", size, args.images / seconds))
    try:
        import torch

        from resnet_multi import torch as rt
    except ImportError as e:
        print(f"(torch device pipeline not measured: {e})", file=sys.stderr)
    else:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        for device in devices:
            sync = (lambda d=device: torch.cuda.synchronize(d)) if device.startswith("cuda") else (lambda: None)
            for size in sizes:
                batches = rt.DeviceBatches(images, labels, batch_size=args.batch_size, resize=size, device=device)
                seconds = _best(lambda: batches(0, 0), sync, args.repeat)
                rows.append(("torch DeviceBatches", device, size, args.images / seconds))

    threads = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"{args.images:,} images, batch {args.batch_size}, best of {args.repeat} epochs; "
        f"{', '.join(f'{k}={v}' for k, v in threads.items())}; cores {os.cpu_count()}"
        + (f"; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else "")
    )
    print(f"{'pipeline':<22}{'device':<9}{'size':>6}{'images/s':>14}")
    for name, device, size, rate in rows:
        print(f"{name:<22}{device:<9}{size:>6}{rate:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
