"""Side-by-side speed of the MXNet backend and the textbook's own MXNet code.

    python -m scripts.bench_mxnet [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's MXNet ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Gluon layers), from
  :mod:`resnet_multi.textbook.mxnet` (the one ``resnet-multi bench`` runs), trained in its
  own idiom by that module's ``trainer``: ``autograd.record()``, ``l.backward()``,
  ``trainer.step(batch_size)``, with the loss and the logits read back every batch
  for ``train_ch6``'s metrics;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs, compiled
  (the default) and eager (``--eager``).

Every contender takes the same NumPy batch each step. Training at 32x32, batch 256;
inference at 96x96, batch 64 (``Backend.forward`` against the textbook module's
``predictor``, ``net(X)`` read back to NumPy). Figures are examples per second.
"""
from __future__ import annotations

import argparse

import numpy as onp

from resnet_multi.mxnet import BACKEND
from resnet_multi.spec import get_arch
from resnet_multi.textbook import mxnet as book

from .side_by_side import compare, table

LR = 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=64)
    args = parser.parse_args()
    rng = onp.random.default_rng(0)

    x = rng.standard_normal((args.train_batch, 1, 32, 32)).astype(onp.float32)
    y = rng.integers(0, 10, args.train_batch)
    net = book.net(width=get_arch("d2l-resnet18").width)  # the chapter's 64
    textbook_step, textbook_predict = book.trainer(net, LR), book.predictor(net)
    compiled, eager = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18", eager=True)
    train = compare({
        "textbook": lambda: textbook_step(x, y),
        "sgd_step compiled": lambda: BACKEND.sgd_step(compiled, x, y, LR),
        "sgd_step eager": lambda: BACKEND.sgd_step(eager, x, y, LR),
    }, args.train_batch, args.rounds, args.steps)
    table(f"Training, d2l-resnet18, 32x32, batch {args.train_batch}", train)

    x = rng.standard_normal((args.infer_batch, 1, 96, 96)).astype(onp.float32)
    infer = compare({
        "textbook": lambda: textbook_predict(x),
        "forward compiled": lambda: BACKEND.forward(compiled, x),
        "forward eager": lambda: BACKEND.forward(eager, x),
    }, args.infer_batch, args.rounds, args.steps)
    table(f"Inference, d2l-resnet18, 96x96, batch {args.infer_batch}", infer)


if __name__ == "__main__":
    main()
