"""d2l's ResNet-18 in PaddlePaddle, as the chapter writes it: Paddle's default layers
(``BatchNorm2D(momentum=0.9)``, Paddle's default initialisers), dynamic graph, and
d2l's ``train_ch6`` step: ``paddle.optimizer.SGD``, ``nn.CrossEntropyLoss``,
``clear_grad`` / ``backward`` / ``step``. No ``paddle.jit.to_static`` (the chapter
does not use it), so ``eager`` changes nothing here.

Changes to run here: ``width`` replaces the chapter's literal 64/128/256/512 (the
default is the chapter's), and ``net`` seeds Paddle's generator.
"""

from __future__ import annotations

import numpy as np

from ..backend import require

paddle = require("paddle", "paddle")
nn = paddle.nn
F = paddle.nn.functional

LAYOUT = "NCHW"


class Residual(nn.Layer):  # @save
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2D(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2D(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
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


def net(width: int = 64, device: str = "cpu", seed: int = 0):
    if device != "cpu":
        raise ValueError("the textbook Paddle baseline runs on cpu only here")
    paddle.seed(seed)
    w = width  # the chapter: 64
    b1 = nn.Sequential(
        nn.Conv2D(1, w, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2D(w),
        nn.ReLU(),
        nn.MaxPool2D(kernel_size=3, stride=2, padding=1),
    )
    b2 = nn.Sequential(*resnet_block(w, w, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(w, 2 * w, 2))
    b4 = nn.Sequential(*resnet_block(2 * w, 4 * w, 2))
    b5 = nn.Sequential(*resnet_block(4 * w, 8 * w, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2D((1, 1)), nn.Flatten(), nn.Linear(8 * w, 10))


def idiom(eager: bool = False) -> str:
    return "optimizer loop, dynamic graph"


def trainer(model, lr: float, eager: bool = False):
    optimizer = paddle.optimizer.SGD(learning_rate=lr, parameters=model.parameters())
    loss = nn.CrossEntropyLoss()

    def step(X, y):
        model.train()
        optimizer.clear_grad()
        X, y = paddle.to_tensor(X), paddle.to_tensor(y)
        y_hat = model(X)
        l = loss(y_hat, y)
        l.backward()
        optimizer.step()
        return float(l), y_hat.detach().numpy()

    return step


def predictor(model, eager: bool = False):
    def predict(X):
        model.eval()
        with paddle.no_grad():
            return model(paddle.to_tensor(np.ascontiguousarray(X))).numpy()

    return predict


def parameter_count(model) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters() if not p.stop_gradient))
