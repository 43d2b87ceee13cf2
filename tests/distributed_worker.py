"""One rank of a data-parallel run for tests/test_distributed.py, started by torchrun.

Trains the tiny net of the distributed tests from damped random weights (as the
training-parity test does, so that float32 rounding stays at its own size over the
steps) with :func:`resnet_multi.train.fit`; rank 0 writes the run directory.
``--fail-step K`` makes ``--fail-rank`` raise at its K-th step; ``--hang-step K`` makes
it stop answering there instead. The collectives that pickle Python objects are switched
off, so every run checks that the ranks exchange plain data only.
"""

import argparse
import time

from helpers import random_weights

from resnet_multi import data, distributed, train

N_IMAGES, BATCH, EPOCHS, SIZE, WIDTH, LR = 15, 15, 5, 32, 8, 0.05  # shards of 8 and 7: uneven


def tiny_dataset():
    ds = data.load_fashion_mnist(subset=True)
    return data.Dataset(
        ds.train_images[:N_IMAGES],
        ds.train_labels[:N_IMAGES],
        ds.test_images[:N_IMAGES],
        ds.test_labels[:N_IMAGES],
        ds.source,
    )


def _no_pickling_collectives():
    import torch.distributed as dist

    def refuse(*args, **kwargs):
        raise AssertionError("a collective that pickles Python objects was called")

    for name in (
        "broadcast_object_list",
        "all_gather_object",
        "gather_object",
        "scatter_object_list",
        "send_object_list",
    ):
        setattr(dist, name, refuse)


def main():
    _no_pickling_collectives()
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--fail-step", type=int)
    p.add_argument("--hang-step", type=int)
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--timeout", type=float, default=distributed.DEFAULT_TIMEOUT)
    args = p.parse_args()
    group = distributed.ProcessGroup(device="cpu", sync_bn=args.sync_bn, timeout=args.timeout)
    backend = group.backend()
    model = backend.build("d2l-resnet18", device=group.device, seed=0, width=WIDTH)
    backend.set_weights(model, random_weights(model.spec, 0, damp_residuals=True))
    if group.rank == args.fail_rank and (args.fail_step or args.hang_step):
        real_step, calls = backend._sgd_step, []

        def step(*a, **kw):
            calls.append(1)
            if len(calls) == args.fail_step:
                raise RuntimeError(f"simulated failure of rank {group.rank}")
            if len(calls) == args.hang_step:
                time.sleep(3600)
            return real_step(*a, **kw)

        backend._sgd_step = step
    train.fit(
        backend,
        model,
        tiny_dataset(),
        epochs=EPOCHS,
        lr=LR,
        batch_size=BATCH,
        resize=SIZE,
        seed=0,
        out=args.out,
        processes=group,
    )
    group.finish()


if __name__ == "__main__":
    main()
