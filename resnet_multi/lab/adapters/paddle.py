"""The lab's PaddlePaddle adapter: ``Residual(input_channels, num_channels, use_1x1conv, strides)``,
dynamic graph, ``layer.train()`` / ``layer.eval()``. Dense weights are ``(in, out)``: transposed."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from ..structure import Node
from ..submission import StudentError

BLOCK_STYLE = "explicit"
TITLE = "PaddlePaddle"
# a canonical leaf -> the Paddle parameter's attribute
NAMES = {"weight": "weight", "bias": "bias"}
BN_NAMES = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}


def is_module(obj) -> bool:
    return isinstance(obj, nn.Layer)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    return nn.Sequential(*items)


def _numpy(out) -> np.ndarray:
    if not isinstance(out, paddle.Tensor):
        raise StudentError(f"forward returned a {type(out).__name__}, not a paddle.Tensor", "type")
    return out.numpy()


class Model:
    def __init__(self, module):
        self.module = module

    def forward(self, x, training: bool) -> np.ndarray:
        self.module.train() if training else self.module.eval()
        with paddle.no_grad():
            return _numpy(self.module(paddle.to_tensor(x)))


def wrap(module) -> Model:
    if not isinstance(module, nn.Layer):
        raise StudentError(f"got a {type(module).__name__}, not a paddle.nn.Layer", "type")
    return Model(module)


def _kind(layer) -> str:
    if isinstance(layer, nn.Conv2D):
        return "conv"
    if isinstance(layer, nn.layer.norm._BatchNormBase):
        return "bn"
    if isinstance(layer, nn.Linear):
        return "dense"
    return "other"


def _tensor(layer, leaf):
    names = BN_NAMES if _kind(layer) == "bn" else NAMES
    return getattr(layer, names[leaf], None)


def _transposed(layer, leaf) -> bool:
    return _kind(layer) == "dense" and leaf == "weight"


def _node(name, layer) -> Node:
    kind = _kind(layer)
    tensors, info = {}, {}
    if kind != "other":
        for leaf in BN_NAMES if kind == "bn" else NAMES:
            t = _tensor(layer, leaf)
            if t is not None:
                shape = tuple(t.shape)
                tensors[leaf] = shape[::-1] if _transposed(layer, leaf) else shape
    if kind == "conv" and len(set(layer._stride)) == 1:
        info["stride"] = int(layer._stride[0])
    children = [_node(n, c) for n, c in layer.named_children()]
    return Node(name, kind, layer, children, tensors, True, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    return int(sum(np.prod(p.shape) for p in model.module.parameters() if not p.stop_gradient))


def load(model: Model, assignments) -> None:
    for node, leaf, value in assignments:
        value = value.T if _transposed(node.handle, leaf) else value
        _tensor(node.handle, leaf).set_value(np.ascontiguousarray(value))


def _canonical(node, leaf, array):
    return np.ascontiguousarray(array.T if _transposed(node.handle, leaf) else array)


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    m.train()
    trainable = [p for p in m.parameters() if not p.stop_gradient]
    for p in trainable:
        p.clear_gradient()
    X = paddle.to_tensor(x, stop_gradient=False)
    Y = m(X)
    out = _numpy(Y)
    (Y * paddle.to_tensor(cotangent)).sum().backward()
    grads, stats = {}, {}
    for key, node, leaf in probes:
        t = _tensor(node.handle, leaf)
        if leaf in ("running_mean", "running_var"):
            stats[key] = t.numpy().copy()
        else:
            g = t.grad
            grads[key] = _canonical(node, leaf, g.numpy() if g is not None else np.zeros(t.shape, np.float32))
    if trainable:  # a layer that registers no parameter has nothing to step
        paddle.optimizer.SGD(learning_rate=lr, parameters=trainable).step()
    after = {
        key: _canonical(node, leaf, _tensor(node.handle, leaf).numpy()) for key, node, leaf in probes if key in grads
    }
    dx = X.grad.numpy().copy() if X.grad is not None else np.zeros_like(x)
    return {"out_train": out, "dx": dx, "grads": grads, "stats": stats, "after": after}
