"""The chapter's ResNet-18 in MindSpore. d2l has no MindSpore tab, so this is its
PyTorch code translated layer for layer into MindSpore's default ``nn`` cells, with
MindSpore's defaults wherever the PyTorch code relies on PyTorch's (``BatchNorm2d``:
momentum 0.9 in MindSpore's convention, eps 1e-5; MindSpore's default initialisers).
The chapter's explicit arguments are kept: its paddings (``pad_mode='pad'``, which
MindSpore needs before it takes a ``padding``) and its conv biases (``has_bias=True``:
PyTorch's default, not MindSpore's), so that the architecture is the chapter's.

Training in MindSpore's own idiom: ``mindspore.value_and_grad`` over a forward
function, then ``nn.SGD``; in PyNative mode op by op (``eager=True``) or, by
default, the same step compiled with ``mindspore.jit``.

Changes to run here: ``width`` replaces the chapter's literal 64/128/256/512 (the
default is the chapter's), and ``net`` seeds MindSpore's generator.
"""

from __future__ import annotations

import numpy as np

from ..backend import require

ms = require("mindspore", "mindspore")
from mindspore import nn, ops  # noqa: E402  (only once require() has succeeded)

LAYOUT = "NCHW"


class Residual(nn.Cell):
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            input_channels, num_channels, kernel_size=3, stride=strides, pad_mode="pad", padding=1, has_bias=True
        )
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, pad_mode="pad", padding=1, has_bias=True)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides, has_bias=True)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def construct(self, X):
        Y = ops.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return ops.relu(Y + X)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def net(width: int = 64, device: str = "cpu", seed: int = 0):
    if device != "cpu":
        raise ValueError("the textbook MindSpore baseline runs on cpu only here")
    ms.set_seed(seed)
    w = width  # the chapter: 64
    b1 = nn.SequentialCell(
        [
            nn.Conv2d(1, w, kernel_size=7, stride=2, pad_mode="pad", padding=3, has_bias=True),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1),
        ]
    )
    b2 = nn.SequentialCell(resnet_block(w, w, 2, first_block=True))
    b3 = nn.SequentialCell(resnet_block(w, 2 * w, 2))
    b4 = nn.SequentialCell(resnet_block(2 * w, 4 * w, 2))
    b5 = nn.SequentialCell(resnet_block(4 * w, 8 * w, 2))
    return nn.SequentialCell([b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dense(8 * w, 10)])


def idiom(eager: bool = False) -> str:
    return "value_and_grad + nn.SGD, PyNative" if eager else "value_and_grad + nn.SGD, mindspore.jit"


def trainer(model, lr: float, eager: bool = False):
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.trainable_params(), learning_rate=lr)

    def forward_fn(X, y):
        logits = model(X)
        return loss_fn(logits, y), logits

    grad_fn = ms.value_and_grad(forward_fn, None, optimizer.parameters, has_aux=True)

    def train_step(X, y):
        (loss, logits), grads = grad_fn(X, y)
        optimizer(grads)
        return loss, logits

    compiled = train_step if eager else ms.jit(train_step)

    def step(X, y):
        model.set_train(True)
        loss, logits = compiled(ms.Tensor(X), ms.Tensor(y.astype(np.int32)))
        return float(loss.asnumpy()), logits.asnumpy()

    return step


def predictor(model, eager: bool = False):
    def forward(X):
        return model(X)

    compiled = forward if eager else ms.jit(forward)

    def predict(X):
        model.set_train(False)
        return compiled(ms.Tensor(X)).asnumpy()

    return predict


def parameter_count(model) -> int:
    return int(sum(np.prod(p.shape) for p in model.trainable_params()))
