"""d2l's ResNet-18 in MXNet Gluon (NumPy interface), as the chapter writes it: Gluon's
default layers (``BatchNorm()``: momentum 0.9, eps 1e-5; channels inferred lazily),
``net.initialize(init=init.Xavier())`` and d2l's ``train_ch6`` step:
``autograd.record()`` around the forward pass and ``SoftmaxCrossEntropyLoss``,
``l.backward()``, ``gluon.Trainer('sgd').step(batch_size)``.

Not hybridized, as in the chapter: its ``Residual`` is an ``nn.Block`` and
``train_ch6`` never calls ``hybridize()``; so ``eager`` changes nothing here.

Changes to run here: ``width`` replaces the chapter's literal 64/128/256/512 (the
default is the chapter's), and ``net`` seeds MXNet's generator and initializes.
"""

from __future__ import annotations

import numpy as onp

from ..backend import require

mx = require("mxnet", "mxnet")
from mxnet import autograd, gluon, init, np, npx  # noqa: E402  (only once require() has succeeded)
from mxnet.gluon import nn  # noqa: E402

npx.set_np()

LAYOUT = "NCHW"


class Residual(nn.Block):  # @save
    """The Residual block of ResNet models."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
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


def net(width: int = 64, device: str = "cpu", seed: int = 0):
    if device != "cpu":
        raise ValueError("the textbook MXNet baseline runs on cpu only here")
    mx.random.seed(seed)
    w = width  # the chapter: 64
    model = nn.Sequential()
    model.add(
        nn.Conv2D(w, kernel_size=7, strides=2, padding=3),
        nn.BatchNorm(),
        nn.Activation("relu"),
        nn.MaxPool2D(pool_size=3, strides=2, padding=1),
    )
    model.add(
        resnet_block(w, 2, first_block=True), resnet_block(2 * w, 2), resnet_block(4 * w, 2), resnet_block(8 * w, 2)
    )
    model.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    model.initialize(force_reinit=True, ctx=npx.cpu(), init=init.Xavier())  # train_ch6's
    return model


def idiom(eager: bool = False) -> str:
    return "autograd.record + trainer.step, not hybridized"


def trainer(model, lr: float, eager: bool = False):
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    sgd = None  # made on the first step: Gluon's lazily inferred parameters exist only then

    def step(X, y):
        nonlocal sgd
        X, y = np.array(X), np.array(y)
        if sgd is None:
            model(X)  # infers the input channels (an inference pass: BN statistics untouched)
            sgd = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
        with autograd.record():
            y_hat = model(X)
            l = loss(y_hat, y)
        l.backward()
        sgd.step(X.shape[0])
        return float(l.mean()), y_hat.asnumpy()

    return step


def predictor(model, eager: bool = False):
    def predict(X):
        return model(np.array(X)).asnumpy()

    return predict


def parameter_count(model) -> int:
    return int(sum(onp.prod(p.shape) for p in model.collect_params().values() if p.grad_req != "null"))
