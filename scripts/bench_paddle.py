"""Side-by-side speed of the Paddle backend and the textbook's own Paddle code.

    python -m scripts.bench_paddle [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's Paddle ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Paddle layers), from
  :mod:`resnet_multi.textbook.paddle` (the one ``resnet-multi bench`` runs), trained in
  its own idiom by that module's ``trainer``: ``clear_grad()``, ``l.backward()``,
  ``optimizer.step()``, with the loss and the logits read back every batch for
  ``train_ch6``'s metrics;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs (dygraph);
* ``sgd_step to_static``: the same with the backend's net converted by
  ``paddle.jit.to_static(net, full_graph=True)`` (backward and SGD stay in dygraph),
  the compiled mode that was tried and not adopted (see ``resnet_multi/paddle.py``).

Every contender takes the same NumPy batch each step. Training at 32x32, batch 256;
inference at 96x96, batch 64 (``Backend.forward`` against the textbook module's
``predictor``, the net's forward in eval mode read back to NumPy). Figures are
examples per second.
"""
from __future__ import annotations

import argparse

import numpy as np
import paddle

from resnet_multi.paddle import BACKEND
from resnet_multi.spec import get_arch
from resnet_multi.textbook import paddle as book

from .side_by_side import compare, table

LR = 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=64)
    args = parser.parse_args()
    paddle.set_device("cpu")
    rng = np.random.default_rng(0)

    x = rng.standard_normal((args.train_batch, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.train_batch)
    net = book.net(width=get_arch("d2l-resnet18").width)  # the chapter's 64
    textbook_step, textbook_predict = book.trainer(net, LR), book.predictor(net)
    model, static = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18")
    static.module = paddle.jit.to_static(static.module, full_graph=True)
    train = compare({
        "textbook": lambda: textbook_step(x, y),
        "sgd_step": lambda: BACKEND.sgd_step(model, x, y, LR),
        "sgd_step to_static": lambda: BACKEND.sgd_step(static, x, y, LR),
    }, args.train_batch, args.rounds, args.steps)
    table(f"Training, d2l-resnet18, 32x32, batch {args.train_batch}", train)

    x = rng.standard_normal((args.infer_batch, 1, 96, 96)).astype(np.float32)
    infer = compare({
        "textbook": lambda: textbook_predict(x),
        "forward": lambda: BACKEND.forward(model, x),
        "forward to_static": lambda: BACKEND.forward(static, x),
    }, args.infer_batch, args.rounds, args.steps)
    table(f"Inference, d2l-resnet18, 96x96, batch {args.infer_batch}", infer)


if __name__ == "__main__":
    main()
