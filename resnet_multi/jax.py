"""The Residual Networks chapter in JAX, with Flax NNX modules.

    from resnet_multi import jax as rn
    net = rn.net("d2l-resnet18")                     # the chapter's network, spec'd weights
    logits = net(jnp.zeros((2, 96, 96, 1)), train=False)
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    print(rn.shape_table(net, (1, 96, 96, 1)))       # or: python -m resnet_multi.jax

Why Flax NNX and not Linen: NNX modules are Python objects that hold their
parameters from construction on, so ``Residual(input_channels, num_channels, ...)``
takes the chapter's arguments and can be counted, loaded and called at once, as in
the other five frameworks; a Linen module is a dataclass of hyperparameters whose
weights appear only from ``init``, which would make every chapter snippet a two-step
one. Where JAX's functional idiom matters -- the compiled training step -- the
backend adapter splits the module into a graph definition and two pytrees
(``nnx.split(net, nnx.Param, nnx.BatchStat, ...)``), and ``jax.jit`` compiles a pure
function that takes parameters and BN statistics and returns new ones: parameters
are immutable arrays, so a step hands back the next state instead of updating it in
place. The chapter's own Linen code, as the book writes it, is in
:mod:`resnet_multi.textbook.jax`.

This module follows Flax's conventions: batches NHWC, conv kernels HWIO, dense
kernels ``(in, out)``, BN ``scale`` / ``bias`` / ``mean`` / ``var``. Only
:func:`get_weights`, :func:`set_weights` and the backend adapter speak the
canonical NCHW / OIHW / ``(out, in)`` layout. Where Flax's defaults differ from the
spec, the code says why at the spot:

* ``padding="SAME"`` at stride 2 pads the smaller half before ((2, 3) for the 7x7
  stem on an even size): every conv and the max pool here pad symmetrically and
  explicitly, as ``((p, p), (p, p))``, which ``lax.conv_general_dilated`` and
  ``lax.reduce_window`` take as they are (no separate pad op).
* Flax BN uses the opposite momentum convention and feeds the *biased* variance
  into the running one (:class:`BatchNorm`).
* ``train=`` is passed explicitly everywhere (default: inference), rather than
  flipping ``use_running_average`` on the modules: the compiled step is a pure
  function of its inputs, and the mode is one of them.
* Explicit PRNG keys: Flax needs an ``nnx.Rngs`` to build layers; the initial
  weights still come from the spec's NumPy seed (:func:`net` overwrites them), so
  the key only fills the arrays before that.
* float32 only: JAX without ``jax_enable_x64`` turns float64 input into float32
  silently; :class:`ResNet` refuses any input whose dtype is not its parameters'
  instead, as torch does, so nobody believes they computed in float64.

Speed on the CPU: XLA compiles this network's convolutions and max pool into code far
slower than PyTorch's oneDNN here (the jitted step trained 10x slower than torch's).
Three changes, each measured layer by layer (``scripts/bench_jax_conv.py``), and all
three only in a step compiled for a CPU with :func:`jit_for_cpu`, as the backend's are
(op by op, and on a GPU, the layers are Flax's and XLA's own): convolutions are kept
out of YNNPACK (:data:`CPU_COMPILER_OPTIONS`); the convs where Eigen's are slow too
are one matmul over image patches (:func:`conv_general_dilated`, which ``nnx.Conv``
takes as its ``conv_general_dilated``); and the max pool is a running maximum of
strided views (:func:`shifted_max_pool`). Each computes the same function as Flax's
layer, gradient included, which the tests check.

Through the backend seam (``JaxBackend``) every step is ``jax.jit``-compiled (once per
batch shape); ``build(..., eager=True)`` (``--eager``) runs the same pure functions
op by op, which is how JAX runs code outside ``jit``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import numpy as np

from . import shapes
from .backend import Backend, TrainingPass, require
from .spec import ArchSpec, BatchNormSpec, block_spec, get_arch, stage_spec
from .weights import check_weights, init_weights

# This file is resnet_multi/jax.py, but absolute imports find the real JAX: the package's
# module is resnet_multi.jax, and a bare "jax" is looked up on sys.path, not beside this file.
jax = require("jax", "jax")
jnp = require("jax.numpy", "jax")
flax = require("flax", "jax")
nnx = require("flax.nnx", "jax")
optax = require("optax", "jax")
lax = jax.lax


def _rngs(rngs):
    # The key only fills arrays that the spec's weights overwrite (see the module docstring).
    return rngs if rngs is not None else nnx.Rngs(0)


# ---- layers the spec needs and Flax does not have as such ---------------------------------
def _reads_input(start: int, stride: int, count: int, pad_before: int, size: int) -> bool:
    """Whether a tap at offset ``start`` of the padded axis reads any real (unpadded) pixel."""
    return any(pad_before <= start + stride * o < pad_before + size for o in range(count))


def _strided_views(padded, taps, strides, output_hw):
    """For each tap ``(i, j)`` of a window, the strided view of ``padded`` (NHWC) that it
    reads at every output position: what a conv's patches and a pool's maximum are made of."""
    n, _, _, c = padded.shape
    (sh, sw), (ho, wo) = strides, output_hw
    return [lax.slice(padded, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            for i, j in taps]


def patches_matmul_conv(x, kernel, strides, padding, *, precision=None):
    """An NHWC x HWIO convolution as one matmul over image patches (im2col): the
    kernel's strided views of the padded input, side by side on the channel axis, times
    the kernel's taps stacked to ``(taps * C, K)``. A tap that reads only padding adds
    zeros and is left out: on a 1x1 map a 3x3 conv is its centre tap, a 1/9 of the work.
    The same sum as ``lax.conv_general_dilated`` in another order (float32 results agree
    to ~1e-6); JAX differentiates it into matmuls and pads."""
    n, h, w, c = x.shape
    kh, kw, _, k = kernel.shape
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = shapes.conv_out(h, kh, sh, ph), shapes.conv_out(w, kw, sw, pw)
    padded = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    live = [(i, j) for i in range(kh) for j in range(kw)
            if _reads_input(i, sh, ho, ph[0], h) and _reads_input(j, sw, wo, pw[0], w)]
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
    chapter's layers at 32x32 and 96x96, batch 256, forward and gradient
    (``scripts/bench_jax_conv.py``): a 1x1 conv, which is a matmul (1.3-2.1x faster as one,
    but for the last stage's at 96x96, 13 ms against 11), and a map of at most 2x2 out,
    where Eigen's kernel falls off a cliff (a 3x3 conv on 2x2x256: 641 ms against 15).
    Every other conv, strided or not, the stem included, is faster as Eigen's."""
    return tuple(kernel_hw) == (1, 1) or output_hw[0] * output_hw[1] <= 4


_NHWC = ("NHWC", "HWIO", "NHWC")


# XLA's CPU compiler (jaxlib 0.10) hands dots, reductions and convolutions to YNNPACK by
# default; Eigen's convolutions are 1.4-3.0x faster on this chapter's layers, forward and
# gradient (the same script). The backend compiles its CPU steps with YNNPACK kept for
# dots and reductions only, the same as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
# -individual_convolution (jit_for_cpu passes it).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


_CPU_KERNELS = contextvars.ContextVar("resnet_multi.jax CPU kernels", default=False)


@contextlib.contextmanager
def _cpu_kernels():
    """While tracing under this, :func:`conv_general_dilated` and :func:`max_pool` put the
    CPU's faster formulations in the program (for a CPU only: ``lax.platform_dependent``
    still picks XLA's own ops when it is lowered for another platform). Outside it, they
    are Flax's layers as they are, which is what ``--eager`` runs op by op. Private: jit
    caches a trace by function, not by this context, so only :func:`jit_for_cpu`, which
    enters it inside a function of its own, uses it."""
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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **options):
    """``lax.conv_general_dilated`` with the same arguments, which ``nnx.Conv`` calls.
    Traced under :func:`jit_for_cpu` for a CPU, the plain NHWC convolutions that
    :func:`matmul_is_faster_on_cpu` names are :func:`patches_matmul_conv`; every other
    case, every other platform (cuDNN on a GPU) and every op-by-op call is the
    convolution itself."""
    def convolution(x, w):
        return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        **options)

    if not _CPU_KERNELS.get():
        return convolution(lhs, rhs)
    # Flax passes out_sharding=None (and preferred_element_type only when it is set)
    plain = (all(value is None for value in options.values()) and feature_group_count == 1
             and isinstance(padding, (tuple, list))
             and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if not plain:
        return convolution(lhs, rhs)
    strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
    output_hw = [shapes.conv_out(lhs.shape[1 + i], rhs.shape[i], strides[i], pads[i]) for i in range(2)]
    if not matmul_is_faster_on_cpu(rhs.shape[:2], output_hw):
        return convolution(lhs, rhs)
    return lax.platform_dependent(
        lhs, rhs, cpu=lambda x, w: patches_matmul_conv(x, w, strides, pads, precision=precision),
        default=convolution)


def conv2d(input_channels: int, filters: int, kernel_size: int, strides: int, use_bias: bool,
           padding: int = 0, *, rngs=None) -> nnx.Conv:
    """``nnx.Conv`` padded ``padding`` on each side of H and W. Flax's ``"SAME"`` pads
    ``(2, 3)`` for a 7x7/2 conv on an even size and ``(0, 1)`` for a 3x3/2, which shifts
    every window by a pixel against the spec (and PyTorch): the shapes agree, the
    logits do not. Explicit pairs are symmetric at every stride."""
    return nnx.Conv(input_channels, filters, (kernel_size, kernel_size), strides=(strides, strides),
                    padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                    conv_general_dilated=conv_general_dilated, rngs=_rngs(rngs))


def _window(size: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(size) for j in range(size)]  # row-major: the first maximum wins


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def shifted_max_pool(x, window: int, strides: int, padding: int):
    """Max pool on NHWC as the running maximum of its window's strided views. Its
    gradient goes to the *first* maximum of each window (row-major), as PyTorch's, the
    NumPy reference's and ``reduce_window``'s gradient do; ``jnp.maximum``'s own
    gradient would split ties, which a ReLU's zeros and Fashion-MNIST's flat background
    make common. On this CPU it is 3.5-7x faster than ``reduce_window`` and its
    ``select_and_scatter`` gradient (the chapter's stem pool, batch 256: 18 ms against 120
    at 32x32, 290 against 1,020 at 96x96)."""
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
        grad_padded = grad_padded + lax.pad(jnp.where(first, grad, 0).astype(grad.dtype), jnp.array(0, grad.dtype), (
            (0, 0, 0), (i, hp - i - strides * (ho - 1) - 1, strides - 1),
            (j, wp - j - strides * (wo - 1) - 1, strides - 1), (0, 0, 0)))
    h, w = hp - 2 * padding, wp - 2 * padding
    return (grad_padded[:, padding:padding + h, padding:padding + w, :],)


shifted_max_pool.defvjp(_shifted_max_pool_forward, _shifted_max_pool_backward)


def max_pool(x, window: int = 3, strides: int = 2, padding: int = 1):
    """Max pool padded symmetrically, never choosing the padding (Flax pads with -inf,
    ``reduce_window``'s initial value), as pre-activation stems need. Traced under
    :func:`jit_for_cpu` for a CPU it is :func:`shifted_max_pool`; otherwise Flax's own
    ``nnx.max_pool``."""
    def flax_pool(x):
        return nnx.max_pool(x, (window, window), strides=(strides, strides),
                            padding=((padding, padding), (padding, padding)))

    if not _CPU_KERNELS.get():
        return flax_pool(x)
    return lax.platform_dependent(x, cpu=lambda x: shifted_max_pool(x, window, strides, padding),
                                  default=flax_pool)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` in the spec's convention.

    Flax keeps ``running = momentum * running + (1 - momentum) * batch`` (momentum 0.99 by
    default), so the spec's momentum ``m`` (PyTorch's) is Flax's ``1 - m``; and Flax feeds
    the *biased* batch variance into the running variance, with no option for the
    unbiased one the spec (and PyTorch) use. So the training pass is written here: the
    batch is normalised with the biased variance, as in every framework, and the
    running variance is fed ``n / (n - 1)`` times it. Inference is Flax's own.
    The batch variance is the two-pass mean of squared deviations, not Flax's default
    ``E[x^2] - E[x]^2`` (``use_fast_variance``), which cancels badly in float32.
    """

    def __init__(self, channels: int, bn: BatchNormSpec, *, rngs=None):
        super().__init__(channels, momentum=1.0 - bn.momentum, epsilon=bn.eps, use_fast_variance=False,
                         rngs=_rngs(rngs))
        self.spec_momentum = bn.momentum  # kept exact: 1 - (1 - m) is not always m in floating point

    def __call__(self, x, train: bool = False):
        if not train:
            return super().__call__(x, use_running_average=True)
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)  # biased
        n = x.size // x.shape[-1]
        m = self.spec_momentum
        self.mean[...] = lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
        self.var[...] = lax.stop_gradient((1 - m) * self.var[...] + m * var * (n / (n - 1)))
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]


# ---- the chapter's blocks -------------------------------------------------------------------
class Residual(nnx.Module):
    """The chapter's residual block: ``relu(F(x) + shortcut(x))`` on NHWC input.

    ``Residual(input_channels, num_channels, use_1x1conv=False, strides=1)``: like the
    chapter's PyTorch code it takes ``input_channels`` (Flax NNX layers need their input
    size to create their weights). ``kind="bottleneck"``, ``preact=True``, ``conv_bias``,
    ``shortcut="conv_bn"`` and ``stride_on`` select the exercises' variants (see
    :class:`resnet_multi.spec.BlockSpec`); ``rngs`` is Flax's usual key holder.
    """

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *, rngs=None,
                 **options):
        spec = block_spec(input_channels, num_channels, use_1x1conv, strides, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        bns = dict(spec.bn_names())
        self.convs = tuple(name for name, *_ in spec.convs())
        for name, cin, cout, k, s, p in spec.convs():
            setattr(self, name, conv2d(cin, cout, k, s, spec.conv_bias, padding=p, rngs=rngs))
            setattr(self, "bn" + name[-1], BatchNorm(bns["bn" + name[-1]], spec.bn, rngs=rngs))
        # each attribute is assigned once: NNX fixes on first assignment whether it is data
        self.shortcut_conv = conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias,
                                    rngs=rngs) if spec.projection else None
        self.shortcut_bn = BatchNorm(spec.out_channels, spec.bn, rngs=rngs) \
            if spec.projection and spec.shortcut == "conv_bn" else None

    def _bn(self, conv_name, x, train):
        return getattr(self, "bn" + conv_name[-1])(x, train)

    def _shortcut(self, x, train):
        y = self.shortcut_conv(x)
        return self.shortcut_bn(y, train) if self.shortcut_bn is not None else y

    def __call__(self, x, train: bool = False):
        # at trace time under jax.jit (shapes and dtypes are static), at every call eagerly
        what = f"Residual({self.spec.in_channels} -> {self.spec.out_channels})"
        if x.dtype != jnp.float32:
            raise TypeError(f"{what} expects float32 input, got {x.dtype}; convert with x.astype(jnp.float32) "
                            f"(JAX without jax_enable_x64 would turn float64 into float32 silently)")
        shapes.check_block_input_shape(self.spec, np.shape(x), layout="NHWC")
        if self.spec.preact:  # BN -> ReLU -> conv; a projection reads the pre-activated input
            first, *rest = self.convs
            pre = nnx.relu(self._bn(first, x, train))
            y = getattr(self, first)(pre)
            for name in rest:
                y = getattr(self, name)(nnx.relu(self._bn(name, y, train)))
            return y + (self._shortcut(pre, train) if self.shortcut_conv is not None else x)
        y = x
        for name in self.convs[:-1]:
            y = nnx.relu(self._bn(name, getattr(self, name)(y), train))
        last = self.convs[-1]
        y = self._bn(last, getattr(self, last)(y), train)
        return nnx.relu(y + (self._shortcut(x, train) if self.shortcut_conv is not None else x))

    def named_layers(self, prefix=""):
        """(canonical name, layer) for every layer with weights."""
        for name in self.convs:
            bn = "bn" + name[-1]
            pair = [(prefix + name, getattr(self, name)), (prefix + bn, getattr(self, bn))]
            yield from (pair[::-1] if self.spec.preact else pair)
        if self.shortcut_conv is not None:
            yield prefix + "shortcut.conv", self.shortcut_conv
        if self.shortcut_bn is not None:
            yield prefix + "shortcut.bn", self.shortcut_bn


class ResnetBlock(nnx.Module):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``.
    The blocks sit in an ``nnx.List``: Flax 0.12 refuses a plain list of modules as an
    attribute (it would be static data, invisible to ``nnx.split``)."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, *,
                 rngs=None, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        self.residual_layers = nnx.List([Residual(block, rngs=rngs) for block in spec.blocks])

    def __call__(self, x, train: bool = False):
        for blk in self.residual_layers:
            x = blk(x, train)
        return x

    def named_layers(self, prefix=""):
        for j, blk in enumerate(self.residual_layers):
            yield from blk.named_layers(f"{prefix}{j}.")


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options).residual_layers)


class ResNet(nnx.Module):
    """stem -> stages -> head on NHWC float32 input; :meth:`named_outputs` walks the
    chapter's layers in order. Call it as ``net(x, train=...)``: the default is inference."""

    def __init__(self, spec: ArchSpec, *, rngs=None):
        rngs = _rngs(rngs)
        self.spec = spec
        self.stem_conv = conv2d(spec.in_channels, spec.width, 7, 2, spec.conv_bias, padding=3, rngs=rngs)
        self.stem_bn = None if spec.preact else BatchNorm(spec.width, spec.bn, rngs=rngs)
        self.stages = nnx.List([ResnetBlock(s, rngs=rngs) for s in spec.stages])
        self.head_bn = BatchNorm(spec.features, spec.bn, rngs=rngs) if spec.preact else None
        self.head_fc = nnx.Linear(spec.features, spec.num_classes, rngs=rngs)

    def _check(self, x, train):
        """A batch that fits: NHWC, of the parameters' dtype (float32), of a shape the spec
        accepts; else a TypeError or ValueError saying how to convert it."""
        shape, dtype = tuple(np.shape(x)), self.head_fc.kernel[...].dtype
        if len(shape) != 4:
            raise ValueError(f"{self.spec.name} expects a 4-d NHWC batch (N, H, W, {self.spec.in_channels}), "
                             f"got shape {shape}")
        n, h, w, c = shape
        if c != self.spec.in_channels and h == self.spec.in_channels:
            raise ValueError(f"{self.spec.name} takes NHWC batches (N, H, W, {self.spec.in_channels}), "
                             f"got {shape}, which looks NCHW: use x.transpose(0, 2, 3, 1)")
        if x.dtype != dtype:
            raise TypeError(f"expected {dtype} input (the net's parameters are {dtype}), got {x.dtype}; "
                            f"convert with x.astype(jnp.{dtype}). JAX computes in float32 unless "
                            f"jax_enable_x64 is set, and would otherwise turn float64 into float32 silently")
        shapes.check_input_shape(self.spec, (n, c, h, w), training=train)

    def named_outputs(self, x, train: bool = False):
        """Each named layer's output in turn: the chapter's shape table."""
        self._check(x, train)
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = nnx.relu(self.stem_bn(x, train))
        x = max_pool(x, 3, 2, 1)
        yield "stem", x
        for i, stage in enumerate(self.stages):
            x = stage(x, train)
            yield f"stages.{i}", x
        if self.head_bn is not None:
            x = self.head_bn(x, train)
            yield "head.bn", x
            x = nnx.relu(x)
            yield "head.relu", x
        x = jnp.mean(x, axis=(1, 2), keepdims=True)  # global average pooling; Flax has no layer for it
        yield "head.pool", x
        x = x.reshape(x.shape[0], -1)
        yield "head.flatten", x
        yield "head.fc", self.head_fc(x)

    def __call__(self, x, train: bool = False):
        for _, x in self.named_outputs(x, train):
            pass
        return x

    def named_layers(self):
        """(canonical name, layer) for every layer with weights, in canonical order."""
        yield "stem.conv", self.stem_conv
        if self.stem_bn is not None:
            yield "stem.bn", self.stem_bn
        for i, stage in enumerate(self.stages):
            yield from stage.named_layers(f"stages.{i}.")
        if self.head_bn is not None:
            yield "head.bn", self.head_bn
        yield "head.fc", self.head_fc


# ---- devices --------------------------------------------------------------------------------
def _gpus() -> list:
    try:
        return jax.devices("cuda")
    except RuntimeError:  # no CUDA backend: a CPU-only jaxlib, or no GPU
        return []


def devices() -> list[str]:
    """'cpu', then one 'cuda:i' per GPU JAX sees (``jax.devices("cuda")``)."""
    return ["cpu"] + [f"cuda:{i}" for i in range(len(_gpus()))]


def jax_device(device: str):
    """The seam's device name as a JAX device; ValueError listing those available."""
    if device not in devices():
        raise ValueError(f"device {device!r} is not available to jax; available: {devices()}")
    if device == "cpu":
        return jax.devices("cpu")[0]
    # JAX runs float32 matmuls and convs on GPUs at "default" precision, TF32 on Ampere and
    # newer (10-bit mantissas, errors of 1e-3). The spec's float32 means float32.
    jax.config.update("jax_default_matmul_precision", "highest")
    return _gpus()[int(device.split(":")[1])]


def to_device(module: nnx.Module, device: str) -> None:
    """Move every array of ``module`` to ``device`` (in place)."""
    nnx.update(module, jax.device_put(nnx.state(module), jax_device(device)))


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``, on ``device``."""
    spec = get_arch(arch, **overrides)
    jax_device(device)  # refuse an unknown device before building
    model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    to_device(model, device)
    return model


# ---- canonical weights: names from named_layers(), layouts converted here --------------------
def _canonical_variables(model: ResNet):
    """(canonical name, Flax variable, layout converter to canonical, converter from canonical)."""
    same = (lambda a: a, lambda a: a)
    for prefix, layer in model.named_layers():
        if isinstance(layer, nnx.Conv):  # HWIO <-> OIHW
            yield f"{prefix}.weight", layer.kernel, (lambda a: a.transpose(3, 2, 0, 1)), \
                (lambda a: a.transpose(2, 3, 1, 0))
            if layer.bias is not None:
                yield f"{prefix}.bias", layer.bias, *same
        elif isinstance(layer, nnx.Linear):  # (in, out) <-> (out, in)
            yield f"{prefix}.weight", layer.kernel, (lambda a: a.T), (lambda a: a.T)
            yield f"{prefix}.bias", layer.bias, *same
        else:
            for name, var in (("weight", layer.scale), ("bias", layer.bias),
                              ("running_mean", layer.mean), ("running_var", layer.var)):
                yield f"{prefix}.{name}", var, *same


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(to_canonical(np.asarray(var[...])))
            for name, var, to_canonical, _ in _canonical_variables(model)}


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; each array goes where the variable's old one lived."""
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    for name, var, _, from_canonical in _canonical_variables(model):
        old = var[...]
        var[...] = jax.device_put(np.ascontiguousarray(from_canonical(np.asarray(weights[name]))), old.sharding)


def shape_table(model: ResNet, input_shape=(1, 96, 96, 1)) -> str:
    """The chapter's per-layer table for an NHWC input shape: the canonical NCHW shape,
    then JAX's own NHWC shape, measured by running the layers on zeros."""
    native = [tuple(int(d) for d in out.shape)
              for _, out in model.named_outputs(jnp.zeros(input_shape), train=False)]
    rows = [shapes.LayerShape(name, BACKEND.to_canonical_shape(s))
            for name, s in zip(model.spec.layer_names(), native, strict=True)]
    return shapes.format_table(rows, native=native, native_layout="NHWC")


# ---- the backend seam: NCHW NumPy in and out, NHWC inside ------------------------------------
def cross_entropy(logits, y):
    """The chapter's loss: mean softmax cross-entropy over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def steps(module: ResNet) -> dict:
    """The training and inference steps of ``module`` as pure functions of its state, JAX's
    idiom: ``params`` and ``stats`` (the BN statistics) go in, the next ones come out;
    ``jax.jit`` compiles any of them as they are.

    * ``infer(params, stats, x) -> logits``
    * ``train_forward(params, stats, x) -> (logits, stats)``
    * ``grads(params, stats, x, y) -> (loss, logits, stats, grads)``
    * ``sgd(params, stats, opt_state, x, y) -> (params, stats, opt_state, loss, logits)``,
      with ``optax.sgd`` (learning rate in ``opt_state``, see :func:`sgd_optimizer`).

    Each merges the state into a fresh copy of the module (``copy=True``: the caller's
    variables are never mutated, so the functions stay pure outside ``jit`` too) and
    splits the BN statistics back out after the training pass has updated them.
    """
    graphdef, _, _, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    tx = sgd_optimizer()

    def merged(params, stats):
        return nnx.merge(graphdef, params, stats, rest, copy=True)

    def forward(params, stats, x, train):
        model = merged(params, stats)
        logits = model(x, train=train)
        return logits, nnx.state(model, nnx.BatchStat)

    def grads(params, stats, x, y):
        model = merged(params, stats)

        def loss_fn(model):
            logits = model(x, train=True)
            return cross_entropy(logits, y), logits

        # nnx.value_and_grad: gradients with respect to the nnx.Param variables, and the BN
        # statistics the pass updates carried out of the differentiated function
        (loss, logits), g = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return loss, logits, nnx.state(model, nnx.BatchStat), g

    def sgd(params, stats, opt_state, x, y):
        loss, logits, stats, g = grads(params, stats, x, y)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, logits

    return {"infer": lambda params, stats, x: forward(params, stats, x, False)[0],
            "train_forward": lambda params, stats, x: forward(params, stats, x, True),
            "grads": grads, "sgd": sgd}


def sgd_optimizer():
    """Plain SGD (no momentum, no weight decay); ``inject_hyperparams`` keeps the learning
    rate in the optimizer state, so a new rate is new data, not a recompile."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)


class JaxBackend(Backend):
    name = "jax"
    native_layout = "NHWC"
    compiles = True  # Model.eager=False (the default) runs every step under jax.jit

    def framework_version(self):
        return f"{jax.__version__} (Flax {flax.__version__}, optax {optax.__version__})"

    def devices(self):
        return devices()

    def _build(self, spec, device):
        module = ResNet(spec)
        to_device(module, device)
        return module

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    def _input(self, model, x):
        return jax.device_put(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), jax_device(model.device))

    def _labels(self, model, y):
        return jax.device_put(y.astype(np.int32), jax_device(model.device))  # int32: JAX's default integer

    def _step(self, model, kind):
        """The model's ``kind`` step from :func:`steps`, under ``jax.jit`` unless
        ``model.eager`` (then op by op). Built once per model; jit compiles once per shape."""
        key = ("step", kind)
        if key not in model.cache:
            fn = steps(model.module)[kind]
            if model.eager:
                model.cache[key] = fn
            elif jax_device(model.device).platform == "cpu":
                model.cache[key] = jit_for_cpu(fn)
            else:
                model.cache[key] = jax.jit(fn)
        return model.cache[key]

    @staticmethod
    def _state(model):
        _, params, stats, _ = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
        return params, stats

    def _forward(self, model, x, training):
        params, stats = self._state(model)
        if not training:
            return np.asarray(self._step(model, "infer")(params, stats, self._input(model, x)))
        logits, stats = self._step(model, "train_forward")(params, stats, self._input(model, x))
        nnx.update(model.module, stats)
        return np.asarray(logits)

    def _loss_and_grads(self, model, x, y):
        params, stats = self._state(model)
        loss, logits, stats, grads = self._step(model, "grads")(
            params, stats, self._input(model, x), self._labels(model, y))
        nnx.update(model.module, stats)  # BN statistics update once, as in a training step
        # the gradients have the parameters' structure: merged into a copy of the module, they
        # sit where the parameters do, and the weights' own names and layouts read them out
        graphdef, _, _, rest = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
        as_module = nnx.merge(graphdef, grads, stats, rest)
        out = {name: np.ascontiguousarray(to_canonical(np.asarray(var[...])))
               for name, var, to_canonical, _ in _canonical_variables(as_module) if isinstance(var, nnx.Param)}
        return TrainingPass(float(loss), np.asarray(logits), out)

    def _sgd_step(self, model, x, y, lr):
        params, stats = self._state(model)
        device = jax_device(model.device)
        opt_state = model.cache.get("opt_state")
        if opt_state is None:
            # committed to the model's device, like the step's outputs: an uncommitted
            # argument is another jit cache entry, and the second step would compile again
            opt_state = model.cache["opt_state"] = jax.device_put(sgd_optimizer().init(params), device)
        opt_state.hyperparams["learning_rate"] = jax.device_put(np.float32(lr), device)
        params, stats, opt_state, loss, logits = self._step(model, "sgd")(
            params, stats, opt_state, self._input(model, x), self._labels(model, y))
        model.cache["opt_state"] = opt_state
        nnx.update(model.module, params, stats)
        return float(loss), np.asarray(logits)

    def _residual_output_shape(self, x, args, options):
        return tuple(Residual(*args, **options)(jnp.asarray(x.transpose(0, 2, 3, 1)), train=True).shape)

    def count_parameters(self, model):
        def size(kind):
            return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model.module, kind)))
        return size(nnx.Param), size(nnx.BatchStat)

    def _named_outputs(self, model, x, training):
        return [(name, np.asarray(out))
                for name, out in model.module.named_outputs(self._input(model, x), train=training)]


BACKEND = JaxBackend()


if __name__ == "__main__":
    # python -m resnet_multi.jax [arch] [size]: the per-layer shape table
    import sys

    arch = sys.argv[1] if len(sys.argv) > 1 else "d2l-resnet18"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    model = net(arch)
    print(shape_table(model, (1, size, size, model.spec.in_channels)))


# What JAX / Flax NNX does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing JAX; the tests check the
# machine-readable fields against Flax's own defaults.
CONVENTIONS = {
    "framework": "JAX (Flax NNX)",
    "padding": {"default": "padding='SAME'; it pads the smaller half before: (2, 3) for 7x7/2 and "
                           "(0, 1) for 3x3/2 on even sizes",
                "pads": [2, 3], "here": "explicit symmetric ((p, p), (p, p)) for every conv and the max pool "
                                        "(which pads -inf)"},
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed as epsilon (BatchNorm)"},
    "bn_momentum": {"default": "0.99: running = m * running + (1 - m) * batch", "momentum": 0.99, "keeps": "old",
                    "here": "momentum = 1 - the spec's (BatchNorm)"},
    "bn_running_var": {"default": "biased batch variance", "variance": "biased",
                       "here": "BatchNorm's training pass feeds n / (n - 1) times the biased variance"},
    "data_layout": {"default": "NHWC", "layout": "NHWC", "here": "NCHW <-> NHWC at the seam only (JaxBackend)"},
    "kernel_layout": {"default": "HWIO", "layout": "HWIO", "here": "transposed to OIHW in get/set_weights"},
    "dense_layout": {"default": "(in, out)", "layout": "(in, out)", "here": "transposed in get/set_weights"},
    "param_names": {"default": "kernel, bias; BN scale, bias, mean, var",
                    "bn": ["scale", "bias", "mean", "var"],
                    "here": "mapped to canonical names in _canonical_variables"},
    "init": {"default": "lecun_normal kernels (truncated normal, std 1/sqrt fan_in), zero biases",
             "conv_bias": True, "conv_weight": ["normal", "1/sqrt(fan_in)"],
             "here": "overwritten by the spec's weights (set_weights)"},
    "mode_switch": {"default": "BatchNorm(use_running_average=False): training until told otherwise",
                    "starts": "training", "here": "train= passed explicitly everywhere (default inference)"},
}
