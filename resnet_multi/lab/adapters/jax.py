"""The lab's JAX adapter: Flax Linen as the chapter's JAX tab writes it (``Residual`` a dataclass
with ``num_channels``, ``use_1x1conv``, ``strides`` and ``training`` fields; the weights in the
variables ``init`` returns), and Flax NNX (``Residual(input_channels, num_channels, use_1x1conv,
strides, rngs=...)``, weights held by the module). NHWC inside; kernels converted with
:mod:`resnet_multi.nhwc`. The SGD step is optax's."""

from __future__ import annotations

import dataclasses
import inspect

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ... import nhwc
from ..structure import Node
from ..submission import StudentError

BLOCK_STYLE = "inferred"
TITLE = "JAX"
LINEN = {"weight": "kernel", "bias": "bias"}
LINEN_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean")}
LINEN_BN["running_var"] = ("batch_stats", "var")
NNX_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def is_module(obj) -> bool:
    return isinstance(obj, (linen.Module, nnx.Module))


def _is_linen_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, linen.Module)


def instantiate(obj, args, kwargs):
    kwargs = dict(kwargs)
    if _is_linen_class(obj):
        fields = {f.name for f in dataclasses.fields(obj)}
        if "strides" in kwargs:  # the chapter passes strides=(2, 2)
            kwargs["strides"] = (kwargs["strides"],) * 2
        if "training" in fields:
            kwargs.setdefault("training", True)
        return obj(*args, **kwargs)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    if "rngs" in params:
        kwargs["rngs"] = nnx.Rngs(0)
    if "training" in params:
        kwargs["training"] = True
    return obj(*args, **kwargs)


def sequential(items):
    if items and all(isinstance(i, linen.Module) for i in items):
        return linen.Sequential(list(items))
    return _NNXSequential(items)


class _NNXSequential(nnx.Module):
    def __init__(self, items):
        self.layers = nnx.List(list(items))

    def __call__(self, x, train: bool = False):
        for layer in self.layers:
            x = _call_nnx(layer, x, train)
        return x


def _nhwc(x):
    return jnp.asarray(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x)


def _nchw(out) -> np.ndarray:
    if not isinstance(out, jax.Array):
        raise StudentError(f"__call__ returned a {type(out).__name__}, not a jax.Array", "type")
    value = np.asarray(out)
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value


def _takes(fn, name) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call_nnx(module, x, train: bool):
    if _takes(module.__call__, "train"):
        return module(x, train=train)
    if _takes(module.__call__, "training"):
        return module(x, training=train)
    module.train() if train else module.eval()
    return module(x)


# ---- Linen: the module is a description, the weights live in ``variables`` ----------------------
def _with_training(module, flag: bool):
    """The same Linen module in the other mode: its ``training`` field (and that of every block
    of a Sequential) set to ``flag``."""
    if isinstance(module, linen.Sequential):
        return linen.Sequential([_with_training(m, flag) for m in module.layers])
    if "training" in {f.name for f in dataclasses.fields(module)}:
        return module.clone(training=flag)
    return module


class LinenModel:
    def __init__(self, module):
        self.module, self.variables = module, None

    def _apply(self, x, training: bool, mutable=False):
        module = _with_training(self.module, training)
        kwargs = {}
        for name in ("train", "training"):
            if _takes(module.__call__, name):
                kwargs[name] = training
        if self.variables is None:
            self.variables = dict(_with_training(self.module, False).init(jax.random.PRNGKey(0), x, **kwargs))
        if mutable:
            return module.apply(self.variables, x, mutable=["batch_stats"], **kwargs)
        return module.apply(self.variables, x, **kwargs)

    def forward(self, x, training: bool) -> np.ndarray:
        X = _nhwc(x)
        if training:
            out, _ = self._apply(X, True, mutable=True)
            return _nchw(out)
        return _nchw(self._apply(X, False))


def _get(tree, path):
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _set(tree, path, value):
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _linen_leaf(node, leaf):
    """(collection, path) of a canonical leaf of a Linen layer node."""
    if node.kind == "bn":
        collection, name = LINEN_BN[leaf]
        return collection, (*node.handle, name)
    return "params", (*node.handle, LINEN[leaf])


def _linen_node(name, params, stats, path, bound) -> Node:
    kind, tensors, info = "other", {}, {}
    kernel = params.get("kernel") if isinstance(params, dict) else None
    if kernel is not None and np.ndim(kernel) == 4:
        kind = "conv"
        h, w, i, o = np.shape(kernel)
        tensors = {"weight": (o, i, h, w)}
    elif kernel is not None and np.ndim(kernel) == 2:
        kind = "dense"
        tensors = {"weight": tuple(np.shape(kernel))[::-1]}
    elif isinstance(stats, dict) and "mean" in stats:
        kind = "bn"
        tensors = {"running_mean": np.shape(stats["mean"]), "running_var": np.shape(stats["var"])}
        for leaf, key in (("weight", "scale"), ("bias", "bias")):
            if key in params:
                tensors[leaf] = tuple(np.shape(params[key]))
    if kind in ("conv", "dense") and "bias" in params:
        tensors["bias"] = tuple(np.shape(params["bias"]))
    strides = getattr(bound, "strides", None)
    if kind == "conv" and strides is not None:
        s = tuple(strides) if isinstance(strides, (tuple, list)) else (strides,)
        if len(set(s)) == 1:
            info["stride"] = int(s[0])
    children = []
    if kind == "other":
        for key in params if isinstance(params, dict) else {}:
            if isinstance(params[key], dict):
                child_stats = stats.get(key, {}) if isinstance(stats, dict) else {}
                children.append(_linen_node(key, params[key], child_stats, (*path, key), _bound_child(bound, key)))
    return Node(name, kind, tuple(path), children, {k: tuple(v) for k, v in tensors.items()}, True, info)


def _bound_child(bound, key):
    if bound is None:
        return None
    try:
        if key.startswith("layers_") and isinstance(getattr(bound, "layers", None), (list, tuple)):
            return bound.layers[int(key.removeprefix("layers_"))]
        return getattr(bound, key, None)
    except Exception:  # setup() of a student's module may fail here; strides are optional
        return None


# ---- NNX: the module holds its weights --------------------------------------------------------------
class NNXModel:
    def __init__(self, module):
        self.module = module

    def forward(self, x, training: bool) -> np.ndarray:
        return _nchw(_call_nnx(self.module, _nhwc(x), training))


def _nnx_kind(m) -> str:
    if isinstance(m, nnx.Conv):
        return "conv"
    if isinstance(m, nnx.BatchNorm):
        return "bn"
    if isinstance(m, nnx.Linear):
        return "dense"
    return "other"


def _nnx_var(m, leaf):
    return getattr(m, NNX_BN[leaf] if _nnx_kind(m) == "bn" else LINEN[leaf], None)


def _nnx_children(m):
    if isinstance(m, nnx.List):
        return [(str(i), c) for i, c in enumerate(m) if isinstance(c, nnx.Module)]
    out = []
    for name, value in vars(m).items():
        if name.startswith("_"):
            continue
        if isinstance(value, nnx.Module):
            out.append((name, value))
        elif isinstance(value, (list, tuple)):
            out += [(f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, nnx.Module)]
    return out


def _nnx_node(name, m) -> Node:
    kind = _nnx_kind(m)
    tensors, info = {}, {}
    if kind != "other":
        for leaf in NNX_BN if kind == "bn" else LINEN:
            var = _nnx_var(m, leaf)
            if var is None:
                continue
            shape = tuple(np.shape(var[...]))
            if kind == "conv" and leaf == "weight":
                h, w, i, o = shape
                shape = (o, i, h, w)
            elif kind == "dense" and leaf == "weight":
                shape = shape[::-1]
            tensors[leaf] = shape
    if kind == "conv":
        s = tuple(m.strides) if isinstance(m.strides, (tuple, list)) else (m.strides,)
        if len(set(s)) == 1:
            info["stride"] = int(s[0])
    return Node(name, kind, m, [_nnx_node(n, c) for n, c in _nnx_children(m)], tensors, True, info)


# ---- the adapter's interface --------------------------------------------------------------------------
def wrap(module):
    if isinstance(module, linen.Module):
        return LinenModel(module)
    inner = getattr(module, "module", None)  # a Linen module with its variables beside it
    if isinstance(inner, linen.Module) and isinstance(getattr(module, "variables", None), dict):
        model = LinenModel(inner)
        model.variables = dict(module.variables)
        return model
    if isinstance(module, nnx.Module):
        return NNXModel(module)
    raise StudentError(f"got a {type(module).__name__}, not a Flax Linen or NNX module", "type")


def _converters(kind, leaf):
    role = {"conv": "conv", "dense": "fc"}.get(kind) if leaf == "weight" else None
    return nhwc.LAYOUTS.get(role, (lambda a: a, lambda a: a))


def tree(model) -> Node:
    if isinstance(model, NNXModel):
        return _nnx_node("", model.module)
    v = model.variables
    try:
        bound = model.module.bind(v)
    except Exception:  # strides are optional
        bound = None
    return _linen_node("", v.get("params", {}), v.get("batch_stats", {}), (), bound)


def count(model) -> int:
    if isinstance(model, NNXModel):
        return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model.module, nnx.Param))))
    return int(sum(np.size(x) for x in jax.tree.leaves(model.variables.get("params", {}))))


def load(model, assignments) -> None:
    if isinstance(model, LinenModel):
        model.variables = _copy(model.variables)
    for node, leaf, value in assignments:
        _, from_canonical = _converters(node.kind, leaf)
        array = jnp.asarray(np.ascontiguousarray(from_canonical(value)))
        if isinstance(model, NNXModel):
            _nnx_var(node.handle, leaf)[...] = array
        else:
            collection, path = _linen_leaf(node, leaf)
            _set(model.variables[collection], path, array)


def _canonical(node, leaf, array):
    to_canonical, _ = _converters(node.kind, leaf)
    return np.ascontiguousarray(to_canonical(np.asarray(array)))


def train_step(model, x, cotangent, lr, probes) -> dict:
    X, C = _nhwc(x), _nhwc(cotangent)
    tx = optax.sgd(lr)
    if isinstance(model, NNXModel):

        def loss(m, X):
            Y = _call_nnx(m, X, True)
            if not isinstance(Y, jax.Array):
                raise StudentError(f"__call__ returned a {type(Y).__name__}, not a jax.Array", "type")
            return jnp.sum(Y * C), Y

        # nnx.value_and_grad: gradients of the Params, BatchStat updates written back to the module
        # compiled as one graph: op by op, every primitive and its VJP would compile on its own
        step = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, Y), (g_state, dx) = step(model.module, X)
        paths = {id(n): p for p, n in _walk_nnx(model.module)}
        grads, stats = {}, {}
        for key, node, leaf in probes:
            if leaf in ("running_mean", "running_var"):
                stats[key] = _canonical(node, leaf, _nnx_var(node.handle, leaf)[...])
            else:
                grads[key] = _canonical(node, leaf, _state_at(g_state, paths[id(node.handle)], node, leaf))
        params = nnx.state(model.module, nnx.Param)
        nnx.update(model.module, optax.apply_updates(params, tx.update(g_state, tx.init(params), params)[0]))
        after = {
            key: _canonical(node, leaf, _nnx_var(node.handle, leaf)[...]) for key, node, leaf in probes if key in grads
        }
        return {"out_train": _nchw(Y), "dx": _nchw(dx), "grads": grads, "stats": stats, "after": after}

    variables = model.variables

    def loss(params, X):
        out, updates = _with_training(model.module, True).apply(
            {**variables, "params": params}, X, mutable=["batch_stats"], **_mode_kwargs(model.module, True)
        )
        if not isinstance(out, jax.Array):
            raise StudentError(f"__call__ returned a {type(out).__name__}, not a jax.Array", "type")
        return jnp.sum(out * C), (out, updates)

    params = variables["params"]
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (Y, updates)), (g_params, dx) = step(params, X)
    new_params = optax.apply_updates(params, tx.update(g_params, tx.init(params), params)[0])
    model.variables = {**variables, "params": new_params, **updates}
    grads, stats, after = {}, {}, {}
    for key, node, leaf in probes:
        collection, path = _linen_leaf(node, leaf)
        if collection == "batch_stats":
            stats[key] = _canonical(node, leaf, _get(model.variables["batch_stats"], path))
        else:
            grads[key] = _canonical(node, leaf, _get(g_params, path))
            after[key] = _canonical(node, leaf, _get(new_params, path))
    return {"out_train": _nchw(Y), "dx": _nchw(dx), "grads": grads, "stats": stats, "after": after}


def _mode_kwargs(module, training):
    return {name: training for name in ("train", "training") if _takes(module.__call__, name)}


def _walk_nnx(m, path=()):
    yield path, m
    for name, child in _nnx_children(m):
        yield from _walk_nnx(child, (*path, name))


def _state_at(state, path, node, leaf):
    """The array at a layer's attribute path (and a canonical leaf) in an ``nnx.State``."""
    for part in path:
        if part.endswith("]"):
            attr, _, index = part[:-1].partition("[")
            state = state[attr][int(index)]
        else:
            state = state[int(part) if part.isdigit() else part]
    name = NNX_BN[leaf] if node.kind == "bn" else LINEN[leaf]
    value = state[name]
    return value[...] if hasattr(value, "__getitem__") and not isinstance(value, jax.Array) else value
