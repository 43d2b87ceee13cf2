"""The lab's NumPy adapter: a block written from scratch, as :mod:`resnet_multi.numpy` writes
it -- layers with ``params``, ``grads`` and ``buffers`` dictionaries and a ``training`` flag,
the block's ``forward(X)`` and ``backward(dY)`` (which returns dX and fills each layer's
``grads``) -- with the chapter's PyTorch signature. Its SGD step is the reference's:
``params[k] -= lr * grads[k]`` for every layer reachable from the block."""

from __future__ import annotations

import numpy as np

from ... import numpy as rn
from ..structure import Node
from ..submission import StudentError

BLOCK_STYLE = "explicit"
TITLE = "NumPy"


def _is_layer(obj) -> bool:
    return isinstance(obj, rn.Layer) or (
        not isinstance(obj, type) and callable(getattr(obj, "forward", None)) and hasattr(obj, "__dict__")
    )


def is_module(obj) -> bool:
    return _is_layer(obj)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    return rn.Sequential({str(i): item for i, item in enumerate(items)})


def _children(obj):
    for name, value in vars(obj).items():
        if name.startswith("_"):
            continue
        if _is_layer(value):
            yield name, value
        elif isinstance(value, dict):
            yield from ((str(k), v) for k, v in value.items() if _is_layer(v))
        elif isinstance(value, (list, tuple)):
            yield from ((str(i), v) for i, v in enumerate(value) if _is_layer(v))


def _layers(obj):
    seen = set()

    def walk(o):
        if id(o) in seen:
            return
        seen.add(id(o))
        yield o
        for _, c in _children(o):
            yield from walk(c)

    return list(walk(obj))


class Model:
    def __init__(self, module):
        self.module = module

    def train(self, mode: bool) -> None:
        for layer in _layers(self.module):
            if hasattr(layer, "training") or isinstance(layer, rn.Layer):
                layer.training = mode

    def forward(self, x, training: bool) -> np.ndarray:
        self.train(training)
        return _array(self.module.forward(x.astype(np.float64)), "forward")


def _array(out, what: str) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise StudentError(f"{what} returned a {type(out).__name__}, not a NumPy array", "type")
    return out


def wrap(module) -> Model:
    if not _is_layer(module):
        raise StudentError(f"got a {type(module).__name__}, not a layer with forward and backward", "type")
    return Model(module)


def _store(obj, name) -> dict:
    value = getattr(obj, name, None)
    return value if isinstance(value, dict) else {}


def _kind(obj) -> str:
    params, buffers = _store(obj, "params"), _store(obj, "buffers")
    if "running_mean" in buffers:
        return "bn"
    weight = params.get("weight")
    if weight is not None and np.ndim(weight) == 4:
        return "conv"
    if weight is not None and np.ndim(weight) == 2:
        return "dense"
    return "other"


def _node(name, obj) -> Node:
    kind = _kind(obj)
    tensors = {}
    if kind != "other":
        tensors = {k: tuple(np.shape(v)) for k, v in {**_store(obj, "params"), **_store(obj, "buffers")}.items()}
    stride = getattr(obj, "stride", None)
    info = {"stride": stride} if kind == "conv" and isinstance(stride, int) else {}
    return Node(name, kind, obj, [_node(n, c) for n, c in _children(obj)], tensors, True, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    return sum(int(np.size(v)) for layer in _layers(model.module) for v in _store(layer, "params").values())


def load(model: Model, assignments) -> None:
    for node, leaf, value in assignments:
        store = _store(node.handle, "buffers" if leaf in _store(node.handle, "buffers") else "params")
        store[leaf] = np.array(value, dtype=np.float64)


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    model.train(True)
    for layer in _layers(m):
        _store(layer, "grads").clear()
    out = _array(m.forward(x.astype(np.float64)), "forward")
    if not callable(getattr(m, "backward", None)):
        raise StudentError(f"{type(m).__name__} has no backward method", "type")
    dx = _array(m.backward(cotangent.astype(np.float64)), "backward")
    grads, stats = {}, {}
    for key, node, leaf in probes:
        params, buffers = _store(node.handle, "params"), _store(node.handle, "buffers")
        if leaf in buffers:
            stats[key] = np.array(buffers[leaf])
        else:
            g = _store(node.handle, "grads").get(leaf)
            grads[key] = np.array(g) if g is not None else np.zeros_like(params[leaf])
    for layer in _layers(m):  # plain SGD on every layer the block holds
        params, layer_grads = _store(layer, "params"), _store(layer, "grads")
        for k in params:
            if k in layer_grads:
                params[k] = params[k] - lr * layer_grads[k]
    after = {key: np.array(_store(node.handle, "params")[leaf]) for key, node, leaf in probes if key in grads}
    return {"out_train": out, "dx": dx, "grads": grads, "stats": stats, "after": after}
