"""JAX's CPU-speed machinery for :mod:`resnet_multi.jax`: not part of the chapter.

XLA compiles this network's convolutions and max pool into slow code on a CPU. Three
changes, each measured layer by layer (``scripts/bench_jax_conv.py``), and all three only
in a step compiled for a CPU with :func:`jit_for_cpu`, as the backend's are (op by op, and
on a GPU, the layers are Flax's and XLA's own):

* convolutions are kept out of YNNPACK (:data:`CPU_COMPILER_OPTIONS`);
* the convs where Eigen's are slow too are one matmul over image patches
  (:func:`conv_general_dilated`, which ``nnx.Conv`` takes as its ``conv_general_dilated``);
* the max pool is a running maximum of strided views (:func:`shifted_max_pool`).

Each computes the same function as Flax's layer, gradient included, which the tests check.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

from . import shapes
from .backend import require

jax = require("jax", "jax")
jnp = require("jax.numpy", "jax")
lax = jax.lax

# XLA's CPU compiler (jaxlib 0.10) hands dots, reductions and convolutions to YNNPACK by
# default, and Eigen's convolutions are faster on this chapter's layers, forward and gradient
# (scripts/bench_jax_conv.py). The backend compiles its CPU steps with YNNPACK kept for dots
# and reductions only, the same as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
# -individual_convolution (jit_for_cpu passes it).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}

_NHWC = ("NHWC", "HWIO", "NHWC")

_CPU_KERNELS = contextvars.ContextVar("resnet_multi.jax_cpu kernels", default=False)


# ---- compiling for a CPU -------------------------------------------------------------------
@contextlib.contextmanager
def _cpu_kernels():
    """While tracing under this, :func:`conv_general_dilated` and :func:`on_cpu` put the CPU's
    faster formulations in the program (for a CPU only: ``lax.platform_dependent`` still picks
    XLA's own ops when it is lowered for another platform). Outside it, the layers are Flax's
    as they are, which is what ``--eager`` runs op by op. Private: jit caches a trace by
    function, not by this context, so only :func:`jit_for_cpu`, which enters it inside a
    function of its own, uses it."""
    token = _CPU_KERNELS.set(True)
    try:
        yield
    finally:
        _CPU_KERNELS.reset(token)


def jit_for_cpu(fn, **jit_options):
    """``jax.jit(fn)`` for a CPU, with this module's CPU kernels traced in and
    :data:`CPU_COMPILER_OPTIONS`: what the backend compiles its CPU steps with. The kernels
    are entered inside the traced function, so every trace of it has them (a function it
    calls that was jitted and traced on its own keeps that trace)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with _cpu_kernels():
            return fn(*args, **kwargs)

    return jax.jit(traced, compiler_options=CPU_COMPILER_OPTIONS, **jit_options)


def on_cpu(operands, cpu, default):
    """``default(*operands)``; traced under :func:`jit_for_cpu`, ``cpu(*operands)`` where the
    program runs on a CPU and ``default`` elsewhere (``lax.platform_dependent``)."""
    if not _CPU_KERNELS.get():
        return default(*operands)
    return lax.platform_dependent(*operands, cpu=cpu, default=default)


# ---- convolutions as one matmul over image patches -----------------------------------------
def _reads_input(start: int, stride: int, count: int, pad_before: int, size: int) -> bool:
    """Whether a tap at offset ``start`` of the padded axis reads any real (unpadded) pixel."""
    return any(pad_before <= start + stride * o < pad_before + size for o in range(count))


def _strided_views(padded, taps, strides, output_hw):
    """For each tap ``(i, j)`` of a window, the strided view of ``padded`` (NHWC) that it
    reads at every output position: what a conv's patches and a pool's maximum are made of."""
    n, _, _, c = padded.shape
    (sh, sw), (ho, wo) = strides, output_hw
    return [
        lax.slice(padded, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
        for i, j in taps
    ]


def patches_matmul_conv(x, kernel, strides, padding, *, precision=None):
    """An NHWC x HWIO convolution as one matmul over image patches (im2col): the
    kernel's strided views of the padded input, side by side on the channel axis, times
    the kernel's taps stacked to ``(taps * C, K)``. A tap that reads only padding adds
    zeros and is left out: on a 1x1 map a 3x3 conv is its centre tap, a 1/9 of the work.
    The same sum as ``lax.conv_general_dilated`` in another order (float32 results agree
    to rounding); JAX differentiates it into matmuls and pads."""
    n, h, w, c = x.shape
    kh, kw, _, k = kernel.shape
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = shapes.conv_out(h, kh, sh, ph), shapes.conv_out(w, kw, sw, pw)
    padded = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    live = [
        (i, j)
        for i in range(kh)
        for j in range(kw)
        if _reads_input(i, sh, ho, ph[0], h) and _reads_input(j, sw, wo, pw[0], w)
    ]
    taps = _strided_views(padded, live, strides, (ho, wo))
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    if len(live) == kh * kw:
        weights = kernel.reshape(kh * kw * c, k)
    else:
        weights = jnp.concatenate([kernel[i, j] for i, j in live], axis=0)
    y = jnp.dot(patches.reshape(n * ho * wo, len(live) * c), weights, precision=precision)
    return y.reshape(n, ho, wo, k)


def matmul_is_faster_on_cpu(kernel_hw, output_hw) -> bool:
    """Where Eigen's convolution loses to :func:`patches_matmul_conv`, measured on the
    chapter's layers at 32x32 and 96x96, forward and gradient (``scripts/bench_jax_conv.py``):
    a 1x1 conv, which is a matmul, and a map of at most 2x2 out, where Eigen's kernel is
    pathologically slow. Every other conv, strided or not, the stem included, is faster as
    Eigen's."""
    return tuple(kernel_hw) == (1, 1) or output_hw[0] * output_hw[1] <= 4


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **options,
):
    """``lax.conv_general_dilated`` with the same arguments, which ``nnx.Conv`` calls.
    Traced under :func:`jit_for_cpu` for a CPU, the plain NHWC convolutions that
    :func:`matmul_is_faster_on_cpu` names are :func:`patches_matmul_conv`; every other
    case, every other platform (cuDNN on a GPU) and every op-by-op call is the
    convolution itself."""

    def convolution(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **options,
        )

    if not _CPU_KERNELS.get():
        return convolution(lhs, rhs)
    # Flax passes out_sharding=None (and preferred_element_type only when it is set)
    plain = (
        all(value is None for value in options.values())
        and feature_group_count == 1
        and isinstance(padding, (tuple, list))
        and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not plain:
        return convolution(lhs, rhs)
    strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
    output_hw = [shapes.conv_out(lhs.shape[1 + i], rhs.shape[i], strides[i], pads[i]) for i in range(2)]
    if not matmul_is_faster_on_cpu(rhs.shape[:2], output_hw):
        return convolution(lhs, rhs)
    return lax.platform_dependent(
        lhs, rhs, cpu=lambda x, w: patches_matmul_conv(x, w, strides, pads, precision=precision), default=convolution
    )


# ---- the max pool as a running maximum -----------------------------------------------------
def _window(size: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(size) for j in range(size)]  # row-major: the first maximum wins


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def shifted_max_pool(x, window: int, strides: int, padding: int):
    """Max pool on NHWC as the running maximum of its window's strided views. Its
    gradient goes to the *first* maximum of each window (row-major), as PyTorch's, the
    NumPy reference's and ``reduce_window``'s gradient do; ``jnp.maximum``'s own
    gradient would split ties, which a ReLU's zeros and Fashion-MNIST's flat background
    make common. On a CPU it is faster than ``reduce_window`` and its ``select_and_scatter``
    gradient (``scripts/bench_jax_conv.py``)."""
    return _shifted_max_pool_forward(x, window, strides, padding)[0]


def _shifted_max_pool_forward(x, window, strides, padding):
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = jnp.pad(x, pad, constant_values=-jnp.inf)  # padding never wins the max
    output_hw = [shapes.conv_out(x.shape[1 + a], window, strides, padding) for a in range(2)]
    out = functools.reduce(jnp.maximum, _strided_views(padded, _window(window), (strides, strides), output_hw))
    return out, (padded, out)


def _shifted_max_pool_backward(window, strides, padding, residuals, grad):
    padded, out = residuals
    _, hp, wp, _ = padded.shape
    ho, wo = out.shape[1:3]
    taken = jnp.zeros(out.shape, bool)
    grad_padded = jnp.zeros_like(padded)
    taps = _window(window)
    for (i, j), tap in zip(taps, _strided_views(padded, taps, (strides, strides), (ho, wo))):
        first = (tap == out) & ~taken
        taken = taken | first
        # scatter back to the tap's strided positions: interior padding spaces them by the stride
        grad_padded = grad_padded + lax.pad(
            jnp.where(first, grad, 0).astype(grad.dtype),
            jnp.array(0, grad.dtype),
            (
                (0, 0, 0),
                (i, hp - i - strides * (ho - 1) - 1, strides - 1),
                (j, wp - j - strides * (wo - 1) - 1, strides - 1),
                (0, 0, 0),
            ),
        )
    h, w = hp - 2 * padding, wp - 2 * padding
    return (grad_padded[:, padding : padding + h, padding : padding + w, :],)


shifted_max_pool.defvjp(_shifted_max_pool_forward, _shifted_max_pool_backward)
