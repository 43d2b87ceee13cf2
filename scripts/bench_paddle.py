"""Side-by-side speed of the Paddle backend and the textbook's own Paddle code.

    python -m scripts.bench_paddle [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's Paddle ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Paddle layers), trained in its own
  idiom: ``clear_grad()``, ``l.backward()``, ``optimizer.step()``, with the loss and
  accuracy read back every batch as its ``train_ch6`` does;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs (dygraph);
* ``sgd_step to_static``: the same with the backend's net converted by
  ``paddle.jit.to_static(net, full_graph=True)`` (backward and SGD stay in dygraph),
  the compiled mode that was tried and not adopted (see ``resnet_multi/paddle.py``).

Training at 32x32, batch 256; inference at 96x96, batch 64 (``Backend.forward`` against
the textbook net's forward read back to NumPy). Figures are examples per second.
"""
from __future__ import annotations

import argparse

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from resnet_multi.paddle import BACKEND

from .side_by_side import compare, table


# ---- the textbook's code (d2l, "Residual Networks (ResNet)", Paddle tab) ----------------
class Residual(nn.Layer):
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2D(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2D(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2D(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv \
            else None
        self.bn1 = nn.BatchNorm2D(num_channels, momentum=0.9)
        self.bn2 = nn.BatchNorm2D(num_channels, momentum=0.9)
        self.relu = nn.ReLU()

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def textbook_net():
    b1 = nn.Sequential(nn.Conv2D(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2D(64), nn.ReLU(),
                       nn.MaxPool2D(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2D((1, 1)), nn.Flatten(), nn.Linear(512, 10))


def textbook_step(net, optimizer, loss, X, y):
    net.train()
    optimizer.clear_grad()
    y_hat = net(X)
    l = loss(y_hat, y)  # noqa: E741  (the textbook's name)
    l.backward()
    optimizer.step()
    with paddle.no_grad():  # train_ch6's metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
        return float(l * X.shape[0]), float((y_hat.argmax(axis=1).astype(y.dtype) == y).astype(y.dtype).sum())


def textbook_predict(net, X):
    net.eval()
    with paddle.no_grad():
        return net(X).numpy()


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
    net = textbook_net()
    optimizer = paddle.optimizer.SGD(learning_rate=0.05, parameters=net.parameters())
    loss = nn.CrossEntropyLoss()
    X, Y = paddle.to_tensor(x), paddle.to_tensor(y)
    model, static = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18")
    static.module = paddle.jit.to_static(static.module, full_graph=True)
    train = compare({
        "textbook": lambda: textbook_step(net, optimizer, loss, X, Y),
        "sgd_step": lambda: BACKEND.sgd_step(model, x, y, 0.05),
        "sgd_step to_static": lambda: BACKEND.sgd_step(static, x, y, 0.05),
    }, args.train_batch, args.rounds, args.steps)
    table(f"Training, d2l-resnet18, 32x32, batch {args.train_batch}", train)

    x = rng.standard_normal((args.infer_batch, 1, 96, 96)).astype(np.float32)
    X = paddle.to_tensor(x)
    infer = compare({
        "textbook": lambda: textbook_predict(net, X),
        "forward": lambda: BACKEND.forward(model, x),
        "forward to_static": lambda: BACKEND.forward(static, x),
    }, args.infer_batch, args.rounds, args.steps)
    table(f"Inference, d2l-resnet18, 96x96, batch {args.infer_batch}", infer)


if __name__ == "__main__":
    main()
