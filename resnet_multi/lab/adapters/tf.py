"""The lab's TensorFlow adapter: Keras layers, ``Residual(num_channels, use_1x1conv, strides)``
as the chapter writes it (the input channels found on the first call), NHWC inside; kernels
converted with :mod:`resnet_multi.nhwc` (HWIO and ``(in, out)`` to the canonical layouts)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ... import nhwc  # noqa: E402
from ..structure import Node  # noqa: E402
from ..submission import StudentError  # noqa: E402

keras = tf.keras
BLOCK_STYLE = "inferred"
TITLE = "TensorFlow"
# a canonical leaf -> the Keras variable's attribute
NAMES = {"weight": "kernel", "bias": "bias"}
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def is_module(obj) -> bool:
    return isinstance(obj, keras.layers.Layer)


def instantiate(obj, args, kwargs):
    return obj(*args, **kwargs)


def sequential(items):
    return keras.Sequential(list(items))


def _nhwc(x):
    return tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x)


def _nchw(out) -> np.ndarray:
    if not isinstance(out, (tf.Tensor, tf.Variable)):
        raise StudentError(f"call returned a {type(out).__name__}, not a tf.Tensor", "type")
    value = out.numpy()
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value


class Model:
    def __init__(self, module):
        self.module = module

    def forward(self, x, training: bool) -> np.ndarray:
        return _nchw(self.module(_nhwc(x), training=training))


def wrap(module) -> Model:
    if not isinstance(module, keras.layers.Layer):
        raise StudentError(f"got a {type(module).__name__}, not a Keras layer or model", "type")
    return Model(module)


def _kind(layer) -> str:
    if isinstance(layer, keras.layers.Conv2D):
        return "conv"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "bn"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return "other"


def _variable(layer, leaf):
    names = BN_NAMES if _kind(layer) == "bn" else NAMES
    return getattr(layer, names[leaf], None)


def _canonical_shape(kind, leaf, shape):
    if kind == "conv" and leaf == "weight":
        h, w, i, o = shape
        return (o, i, h, w)
    if kind == "dense" and leaf == "weight":
        return tuple(reversed(shape))
    return tuple(shape)


def _converters(kind, leaf):
    role = {"conv": "conv", "dense": "fc"}.get(kind) if leaf == "weight" else None
    return nhwc.LAYOUTS.get(role, (lambda a: a, lambda a: a))


def _children(layer):
    if isinstance(layer, keras.Sequential):
        return [(str(i), c) for i, c in enumerate(layer.layers)]
    out = []
    for name, value in vars(layer).items():
        if name.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            out.append((name, value))
        elif isinstance(value, (list, tuple)):
            out += [(f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, keras.layers.Layer)]
        elif isinstance(value, dict):
            out += [(str(k), v) for k, v in value.items() if isinstance(v, keras.layers.Layer)]
    return out


def _node(name, layer) -> Node:
    kind = _kind(layer)
    tensors, info = {}, {}
    if kind != "other":
        leaves = BN_NAMES if kind == "bn" else NAMES
        for leaf in leaves:
            var = _variable(layer, leaf)
            if var is not None:
                tensors[leaf] = _canonical_shape(kind, leaf, tuple(var.shape))
    if kind == "conv" and len(set(layer.strides)) == 1:
        info["stride"] = int(layer.strides[0])
    return Node(name, kind, layer, [_node(n, c) for n, c in _children(layer)], tensors, True, info)


def tree(model: Model) -> Node:
    return _node("", model.module)


def count(model: Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.module.trainable_variables))


def load(model: Model, assignments) -> None:
    for node, leaf, value in assignments:
        _, from_canonical = _converters(node.kind, leaf)
        _variable(node.handle, leaf).assign(np.ascontiguousarray(from_canonical(value)))


def train_step(model: Model, x, cotangent, lr, probes) -> dict:
    m = model.module
    X = _nhwc(x)
    trainable = list(m.trainable_variables)
    probe_vars = {key: _variable(node.handle, leaf) for key, node, leaf in probes}
    watched = {id(v): v for v in [*trainable, *probe_vars.values()]}
    with tf.GradientTape(persistent=False) as tape:
        tape.watch(X)
        Y = m(X, training=True)
        out = _nchw(Y)
        loss = tf.reduce_sum(Y * _nhwc(cotangent))
    variables = list(watched.values())
    dx, *grads = tape.gradient(loss, [X, *variables])
    by_id = {id(v): g for v, g in zip(variables, grads)}
    result_grads, stats = {}, {}
    for key, node, leaf in probes:
        var = probe_vars[key]
        to_canonical, _ = _converters(node.kind, leaf)
        if leaf in ("running_mean", "running_var"):
            stats[key] = np.array(to_canonical(var.numpy()))
        else:
            g = by_id.get(id(var))
            g = np.zeros(var.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
            result_grads[key] = np.ascontiguousarray(to_canonical(g))
    pairs = [(by_id[id(v)], v) for v in trainable if by_id.get(id(v)) is not None]
    if pairs:  # a layer that tracks no variable has nothing to step
        keras.optimizers.SGD(learning_rate=lr).apply_gradients(pairs)
    after = {}
    for key, node, leaf in probes:
        if key in result_grads:
            to_canonical, _ = _converters(node.kind, leaf)
            after[key] = np.ascontiguousarray(to_canonical(probe_vars[key].numpy()))
    dx = np.zeros_like(x) if dx is None else dx.numpy().transpose(0, 3, 1, 2)
    return {"out_train": out, "dx": dx, "grads": result_grads, "stats": stats, "after": after}
