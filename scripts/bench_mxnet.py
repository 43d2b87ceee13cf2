"""Side-by-side speed of the MXNet backend and the textbook's own MXNet code.

    python -m scripts.bench_mxnet [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's MXNet ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Gluon layers), trained in its own idiom:
  ``autograd.record()``, ``l.backward()``, ``trainer.step(batch_size)``, with the loss
  sum and accuracy read back every batch as its ``train_ch6`` does;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs, compiled
  (the default) and eager (``--eager``).

Training at 32x32, batch 256; inference at 96x96, batch 64 (``Backend.forward`` against
the textbook net's ``net(X)`` read back to NumPy). Figures are examples per second.
"""
from __future__ import annotations

import argparse

import numpy as onp
from mxnet import autograd, gluon, init, np, npx
from mxnet.gluon import nn

from resnet_multi.mxnet import BACKEND

from .side_by_side import compare, table

npx.set_np()


# ---- the textbook's code (d2l, "Residual Networks (ResNet)", MXNet tab) ----------------
class Residual(nn.Block):
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X):
        Y = npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return npx.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


def textbook_net():
    net = nn.Sequential()
    net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
            nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(resnet_block(64, 2, first_block=True), resnet_block(128, 2), resnet_block(256, 2),
            resnet_block(512, 2))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(init.Xavier())
    net(np.zeros((1, 1, 32, 32)))  # Gluon infers input sizes on the first call
    return net


def textbook_step(net, trainer, loss, X, y):
    with autograd.record():
        y_hat = net(X)
        l = loss(y_hat, y)  # noqa: E741  (the textbook's name)
    l.backward()
    trainer.step(X.shape[0])
    # train_ch6's metric.add(l.sum(), accuracy(y_hat, y), X.shape[0]): read back per batch
    return float(l.sum()), float((y_hat.argmax(axis=1).astype(y.dtype) == y).sum())  # d2l.accuracy


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
    net = textbook_net()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    X, Y = np.array(x), np.array(y)
    compiled, eager = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18", eager=True)
    train = compare({
        "textbook": lambda: textbook_step(net, trainer, loss, X, Y),
        "sgd_step compiled": lambda: BACKEND.sgd_step(compiled, x, y, 0.05),
        "sgd_step eager": lambda: BACKEND.sgd_step(eager, x, y, 0.05),
    }, args.train_batch, args.rounds, args.steps)
    table(f"Training, d2l-resnet18, 32x32, batch {args.train_batch}", train)

    x = rng.standard_normal((args.infer_batch, 1, 96, 96)).astype(onp.float32)
    X = np.array(x)
    infer = compare({
        "textbook": lambda: net(X).asnumpy(),
        "forward compiled": lambda: BACKEND.forward(compiled, x),
        "forward eager": lambda: BACKEND.forward(eager, x),
    }, args.infer_batch, args.rounds, args.steps)
    table(f"Inference, d2l-resnet18, 96x96, batch {args.infer_batch}", infer)


if __name__ == "__main__":
    main()
