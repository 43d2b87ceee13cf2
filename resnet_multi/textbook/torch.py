"""d2l's ResNet-18 in PyTorch, as the chapter writes it (the ``Residual(input_channels,
num_channels, ...)`` edition), and d2l's ``train_ch6`` step: Xavier-uniform init,
``torch.optim.SGD``, ``nn.CrossEntropyLoss``, an eager optimizer loop.

Changes to run here: ``width`` replaces the chapter's literal 64/128/256/512 (the
default is the chapter's), and ``net`` takes a seed and a device.
"""

from __future__ import annotations

import numpy as np

from ..backend import require

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional

LAYOUT = "NCHW"


class Residual(nn.Module):  # @save
    """The Residual block of ResNet models."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

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
    torch.manual_seed(seed)
    w = width  # the chapter: 64
    b1 = nn.Sequential(
        nn.Conv2d(1, w, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b2 = nn.Sequential(*resnet_block(w, w, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(w, 2 * w, 2))
    b4 = nn.Sequential(*resnet_block(2 * w, 4 * w, 2))
    b5 = nn.Sequential(*resnet_block(4 * w, 8 * w, 2))
    model = nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(8 * w, 10))

    def init_weights(m):  # train_ch6's
        if type(m) is nn.Linear or type(m) is nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    model.apply(init_weights)
    return model.to(device)


def idiom(eager: bool = False) -> str:
    return "optimizer loop, eager"


def trainer(model, lr: float, eager: bool = False):
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()

    def step(X, y):
        model.train()
        optimizer.zero_grad()
        X, y = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        y_hat = model(X)
        l = loss(y_hat, y)
        l.backward()
        optimizer.step()
        return l.item(), y_hat.detach().cpu().numpy()

    return step


def predictor(model, eager: bool = False):
    device = next(model.parameters()).device

    def predict(X):
        model.eval()
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(X)).to(device)).cpu().numpy()

    return predict


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
