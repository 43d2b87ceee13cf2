"""The lab's MindSpore adapter: ``Residual(input_channels, num_channels, use_1x1conv, strides)``
in PyNative mode, ``cell.set_train()``; gradients from ``mindspore.value_and_grad`` and the step
from ``nn.SGD``. Layouts are the canonical ones; BatchNorm's tensors are gamma, beta,
moving_mean and moving_variance."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ..structure import Node
from ..submission import StudentError

BLOCK_STYLE = "explicit"
TITLE = "MindSpore"
NAMES = {"weight": "weight", "bias": "bias"}
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def is_module(obj) -> bool:
    return isinstance(obj, nn.Cell)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    return nn.SequentialCell(list(items))


def _numpy(out) -> np.ndarray:
    if not isinstance(out, ms.Tensor):
        raise StudentError(f"construct returned a {type(out).__name__}, not a mindspore.Tensor", "type")
    return out.asnumpy()


class Model:
    def __init__(self, module):
        self.module = module

    def forward(self, x, training: bool) -> np.ndarray:
        self.module.set_train(training)
        return _numpy(self.module(ms.Tensor(x)))


def wrap(module) -> Model:
    if not isinstance(module, nn.Cell):
        raise StudentError(f"got a {type(module).__name__}, not a mindspore.nn.Cell", "type")
    return Model(module)


def _kind(cell) -> str:
    if isinstance(cell, nn.Conv2d):
        return "conv"
    if isinstance(cell, nn.BatchNorm2d):
        return "bn"
    if isinstance(cell, nn.Dense):
        return "dense"
    return "other"


def _param(cell, leaf):
    value = getattr(cell, (BN_NAMES if _kind(cell) == "bn" else NAMES)[leaf], None)
    return value if isinstance(value, ms.Parameter) else None


def _node(name, cell) -> Node:
    kind = _kind(cell)
    tensors, info = {}, {}
    if kind != "other":
        for leaf in BN_NAMES if kind == "bn" else NAMES:
            p = _param(cell, leaf)
            if p is not None:
                tensors[leaf] = tuple(p.shape)
    if kind == "conv":
        stride = cell.stride if isinstance(cell.stride, (tuple, list)) else (cell.stride,)
        if len(set(stride)) == 1:
            info["stride"] = int(stride[0])
    children = [_node(n, c) for n, c in cell.name_cells().items()]
    return Node(name, kind, cell, children, tensors, True, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    return int(sum(np.prod(p.shape) for p in model.module.trainable_params()))


def load(model: Model, assignments) -> None:
    for node, leaf, value in assignments:
        _param(node.handle, leaf).set_data(ms.Tensor(np.array(value, np.float32)))  # a copy: the step writes into it


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    m.set_train(True)
    trainable = list(m.trainable_params())
    probe_params = {key: _param(node.handle, leaf) for key, node, leaf in probes}
    extra = [p for k, p in probe_params.items() if p.requires_grad and all(p is not q for q in trainable)]
    weights = trainable + extra
    C = ms.Tensor(cotangent)

    def loss_fn(X):
        Y = m(X)
        if not isinstance(Y, ms.Tensor):
            raise StudentError(f"construct returned a {type(Y).__name__}, not a mindspore.Tensor", "type")
        return ops.sum(Y * C), Y

    grad_fn = ms.value_and_grad(loss_fn, grad_position=0, weights=weights, has_aux=True)
    (_, Y), (dx, grads) = grad_fn(ms.Tensor(x))
    by_id = {id(p): g for p, g in zip(weights, grads)}
    result_grads, stats = {}, {}
    for key, _, leaf in probes:
        p = probe_params[key]
        if leaf in ("running_mean", "running_var"):
            stats[key] = p.asnumpy().copy()
        else:
            g = by_id.get(id(p))
            result_grads[key] = g.asnumpy().copy() if g is not None else np.zeros(p.shape, np.float32)
    if trainable:  # a cell that registers no parameter has nothing to step
        nn.SGD(trainable, learning_rate=lr)(tuple(grads[: len(trainable)]))
    after = {key: probe_params[key].asnumpy().copy() for key in result_grads}
    return {"out_train": Y.asnumpy(), "dx": dx.asnumpy(), "grads": result_grads, "stats": stats, "after": after}
