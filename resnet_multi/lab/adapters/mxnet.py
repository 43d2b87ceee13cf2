"""The lab's MXNet adapter: Gluon blocks on ``mxnet.np`` (``npx.set_np()``, as the chapter runs),
``Residual(num_channels, use_1x1conv, strides)`` with the input channels found on the first
call; training mode is ``autograd.record()``. Layouts are the canonical ones already."""

from __future__ import annotations

import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, np, npx
from mxnet.gluon import nn

from ..structure import Node
from ..submission import StudentError

npx.set_np()
BLOCK_STYLE = "inferred"
TITLE = "MXNet"
# a canonical leaf -> the Gluon parameter's attribute
NAMES = {"weight": "weight", "bias": "bias"}
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def is_module(obj) -> bool:
    return isinstance(obj, nn.Block)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    seq = nn.Sequential()
    seq.add(*items)
    return seq


def _numpy(out) -> onp.ndarray:
    if not isinstance(out, (np.ndarray, mx.nd.NDArray)):
        raise StudentError(f"forward returned a {type(out).__name__}, not an mxnet.np.ndarray", "type")
    return out.asnumpy()


class Model:
    def __init__(self, module):
        self.module = module
        self.initialized = False

    def _initialize(self):
        if not self.initialized:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "already initialized": a block built by the package
                self.module.initialize(ctx=mx.cpu())
            self.initialized = True

    def forward(self, x, training: bool) -> onp.ndarray:
        self._initialize()
        X = np.array(x)
        if training:
            with autograd.record():
                return _numpy(self.module(X))
        with autograd.predict_mode():
            return _numpy(self.module(X))


def wrap(module) -> Model:
    if not isinstance(module, nn.Block):
        raise StudentError(f"got a {type(module).__name__}, not a Gluon block", "type")
    return Model(module)


def _kind(block) -> str:
    if isinstance(block, nn.Conv2D):
        return "conv"
    if isinstance(block, nn.BatchNorm):
        return "bn"
    if isinstance(block, nn.Dense):
        return "dense"
    return "other"


def _param(block, leaf):
    names = BN_NAMES if _kind(block) == "bn" else NAMES
    return getattr(block, names[leaf], None)


def _node(name, block) -> Node:
    kind = _kind(block)
    tensors, info = {}, {}
    if kind != "other":
        for leaf in BN_NAMES if kind == "bn" else NAMES:
            p = _param(block, leaf)
            if p is not None:
                tensors[leaf] = tuple(p.shape)
    if kind == "conv" and len(set(block._kwargs["stride"])) == 1:
        info["stride"] = int(block._kwargs["stride"][0])
    children = [_node(n, c) for n, c in block._children.items()]
    return Node(name, kind, block, children, tensors, True, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    model._initialize()
    params = model.module.collect_params().values()
    return int(sum(onp.prod(p.shape) for p in params if p.grad_req != "null"))


def load(model: Model, assignments) -> None:
    for node, leaf, value in assignments:
        _param(node.handle, leaf).set_data(np.array(value))


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    X = np.array(x)
    X.attach_grad()
    with autograd.record():
        Y = m(X)
        out = _numpy(Y)
        loss = (Y * np.array(cotangent)).sum()
    loss.backward()
    grads, stats = {}, {}
    for key, node, leaf in probes:
        p = _param(node.handle, leaf)
        if leaf in ("running_mean", "running_var"):
            stats[key] = p.data().asnumpy().copy()
        elif p.grad_req == "null":
            grads[key] = onp.zeros(p.shape, onp.float32)
        else:
            grads[key] = p.grad().asnumpy().copy()
    params = m.collect_params()
    if any(p.grad_req != "null" for p in params.values()):  # nothing registered: nothing to step
        gluon.Trainer(params, "sgd", {"learning_rate": lr}).step(1)
    after = {key: _param(node.handle, leaf).data().asnumpy().copy() for key, node, leaf in probes if key in grads}
    return {"out_train": out, "dx": X.grad.asnumpy().copy(), "grads": grads, "stats": stats, "after": after}
