"""The lab's PyTorch adapter: ``Residual(input_channels, num_channels, use_1x1conv, strides)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..structure import Node
from ..submission import StudentError

BLOCK_STYLE = "explicit"
TITLE = "PyTorch"


def is_module(obj) -> bool:
    return isinstance(obj, nn.Module)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    return nn.Sequential(*items)


class Model:
    def __init__(self, module: nn.Module):
        self.module = module

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self.module.train(training)
        with torch.no_grad():
            return to_numpy(self.module(torch.from_numpy(x)))


def wrap(module) -> Model:
    if not isinstance(module, nn.Module):
        raise StudentError(f"got a {type(module).__name__}, not a torch.nn.Module", "type")
    return Model(module)


def to_numpy(out) -> np.ndarray:
    if not isinstance(out, torch.Tensor):
        raise StudentError(f"forward returned a {type(out).__name__}, not a torch.Tensor", "type")
    return out.detach().cpu().numpy()


def _kind(m) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(m, nn.Linear):
        return "dense"
    return "other"


def _tensors(m, kind) -> dict:
    names = {"conv": ("weight", "bias"), "dense": ("weight", "bias")}.get(
        kind, ("weight", "bias", "running_mean", "running_var")
    )
    if kind == "other":
        return {}
    out = {}
    for name in names:
        value = getattr(m, name, None)
        if isinstance(value, torch.Tensor):
            out[name] = tuple(value.shape)
    return out


def _node(name: str, m: nn.Module, registered: bool = True) -> Node:
    kind = _kind(m)
    children = [_node(n, c) for n, c in m.named_children()]
    # modules kept in a plain list or dict: PyTorch does not register them
    for attr, value in vars(m).items():
        items = value.items() if isinstance(value, dict) and not attr.startswith("_") else None
        if isinstance(value, (list, tuple)):
            items = ((f"{attr}[{i}]", v) for i, v in enumerate(value))
        if items is None:
            continue
        for n, v in items:
            if isinstance(v, nn.Module):
                children.append(_node(str(n), v, registered=False))
    info = {}
    if kind == "conv" and len(set(m.stride)) == 1:
        info["stride"] = m.stride[0]
    return Node(name, kind, m, children, _tensors(m, kind), registered, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    return sum(p.numel() for p in model.module.parameters() if p.requires_grad)


def load(model: Model, assignments) -> None:
    with torch.no_grad():
        for node, leaf, value in assignments:
            getattr(node.handle, leaf).copy_(torch.from_numpy(np.ascontiguousarray(value)))


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    m.train(True)
    tensors = {key: getattr(node.handle, leaf) for key, node, leaf in probes}
    for t in tensors.values():
        t.grad = None
    m.zero_grad(set_to_none=True)
    X = torch.from_numpy(x.copy()).requires_grad_(True)
    Y = m(X)
    out = to_numpy(Y)
    (Y * torch.from_numpy(cotangent)).sum().backward()
    grads = {
        key: (t.grad.detach().numpy().copy() if t.grad is not None else np.zeros(tuple(t.shape), np.float32))
        for key, t in tensors.items()
        if t.requires_grad
    }
    stats = {key: t.detach().numpy().copy() for key, t in tensors.items() if not t.requires_grad}
    trainable = [p for p in m.parameters() if p.requires_grad]
    if trainable:  # a module that registers no parameter has nothing to step
        torch.optim.SGD(trainable, lr=lr).step()
    after = {key: t.detach().numpy().copy() for key, t in tensors.items() if t.requires_grad}
    dx = X.grad.numpy().copy() if X.grad is not None else np.zeros_like(x)
    return {"out_train": out, "dx": dx, "grads": grads, "stats": stats, "after": after}
