"""What the TensorFlow and JAX modules share, framework-free.

Both keep their framework's layouts inside (NHWC batches, HWIO conv kernels, ``(in, out)``
dense kernels) and speak the canonical NCHW / OIHW / ``(out, in)`` one only at the edges:
weights in and out (:func:`get_weights`, :func:`set_weights`) and the backend seam. Both
nets hold their layers alike: the stem's and head's as ``stem_conv``, ``stem_bn``,
``head_bn``, ``head_fc``; stage ``i``'s block ``j`` as ``stages[i].residual_layers[j]``.
"""

from __future__ import annotations

import functools

import numpy as np

from . import shapes
from .backend import Model
from .weights import check_weights, module_paths, tensor_specs


# ---- layouts ----------------------------------------------------------------------------------
def hwio_to_oihw(kernel):
    return kernel.transpose(3, 2, 0, 1)


def oihw_to_hwio(weight):
    return weight.transpose(2, 3, 1, 0)


def dense_to_canonical(kernel):
    return kernel.T  # (in, out) -> (out, in)


def dense_from_canonical(weight):
    return weight.T


def _same(array):
    return array


# a canonical tensor's role (weights.TensorSpec.role) -> (to the canonical layout, from it)
LAYOUTS = {"conv": (hwio_to_oihw, oihw_to_hwio), "fc": (dense_to_canonical, dense_from_canonical)}


# ---- canonical weights --------------------------------------------------------------------------
@functools.cache
def _tensors(spec) -> tuple[tuple[str, str, str, str], ...]:
    """(canonical name, attribute path of its layer, leaf, role) for every tensor of ``spec``, in
    canonical order (once per spec: weights are read and written more than once)."""
    paths = module_paths(spec)
    out = []
    for t in tensor_specs(spec):
        layer, _, leaf = t.name.rpartition(".")
        out.append((t.name, paths[layer], leaf, t.role))
    return tuple(out)


def layer_at(model, path: str):
    """The layer at an attribute path of :func:`resnet_multi.weights.module_paths` in a
    TensorFlow or JAX ``ResNet``: ``stem.conv`` is ``model.stem_conv``, ``stages.1.0.conv3``
    ``model.stages[1].residual_layers[0].conv3``."""
    part, *rest = path.split(".")
    if part == "stages":
        i, j, *rest = rest
        layer = model.stages[int(i)].residual_layers[int(j)]
    else:
        layer = getattr(model, f"{part}_{rest.pop(0)}")
    for name in rest:
        layer = getattr(layer, name)
    return layer


def canonical_variables(model, variable):
    """(canonical name, framework variable, converter to the canonical layout, converter from
    it) for every tensor of ``model``, in canonical order. ``variable(layer, leaf)`` is the
    framework's variable for a canonical leaf name (``weight``, ``bias``, ``running_mean``...)."""
    for name, path, leaf, role in _tensors(model.spec):
        to_canonical, from_canonical = LAYOUTS.get(role, (_same, _same))
        yield name, variable(layer_at(model, path), leaf), to_canonical, from_canonical


def get_weights(model, variable, read) -> dict[str, np.ndarray]:
    """Canonical weights of ``model``; ``read(var)`` is a variable's array."""
    return {
        name: np.ascontiguousarray(to_canonical(np.asarray(read(var))))
        for name, var, to_canonical, _ in canonical_variables(model, variable)
    }


def set_weights(model, weights: dict[str, np.ndarray], variable, write) -> None:
    """Copy canonical weights into ``model``; ``write(var, array)`` stores one array."""
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    for name, var, _, from_canonical in canonical_variables(model, variable):
        write(var, np.ascontiguousarray(from_canonical(np.asarray(weights[name]))))


# ---- the chapter's shape table ------------------------------------------------------------------
def shape_table(backend, module, input_shape, device: str) -> str:
    """The chapter's per-layer table for an NHWC ``input_shape``: the canonical NCHW shape, then
    the framework's own NHWC one, measured by the backend running ``module`` (on ``device``)."""
    n, h, w, c = input_shape
    model, nchw = Model(module.spec, module, device), (n, c, h, w)
    return shapes.format_table(
        backend.layer_shapes(model, nchw),
        native=backend.native_layer_shapes(model, nchw),
        native_layout=backend.native_layout,
    )
