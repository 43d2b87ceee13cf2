"""The Residual Networks chapter in JAX, with Flax NNX modules, on NHWC batches.

    from resnet_multi import jax as rn
    net = rn.net("d2l-resnet18")                     # the chapter's network, the spec's weights
    logits = net(jnp.zeros((2, 96, 96, 1)), train=False)
    print(rn.shape_table(net, (1, 96, 96, 1)))       # or: python -m resnet_multi.jax

First the chapter's classes, then the exercises' blocks, the stage and the network; then the
layers that translate Flax's defaults to the spec (each says why), the canonical weights and
the backend seam. Steps compiled for a CPU use the faster kernels of :mod:`resnet_multi.jax_cpu`.
The textbook's own Linen code is in :mod:`resnet_multi.textbook.jax`.
"""

from __future__ import annotations

import numpy as np

from . import jax_cpu, nhwc, shapes
from .backend import Backend, TrainingPass, optimizer_settings, require
from .errors import InputError, InputTypeError
from .spec import ArchSpec, BatchNormSpec, BlockSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .weights import init_weights

# This file is resnet_multi/jax.py, but absolute imports find the real JAX: the package's
# module is resnet_multi.jax, and a bare "jax" is looked up on sys.path, not beside this file.
jax = require("jax", "jax")
jnp = require("jax.numpy", "jax")
flax = require("flax", "jax")
nnx = require("flax.nnx", "jax")
optax = require("optax", "jax")
lax = jax.lax


# ---- the chapter's block ----------------------------------------------------------------------
class Residual(nnx.Module):
    """The Residual block of ResNet models: ``relu(F(X) + X)``, with a 1x1 conv (``conv3``)
    on the shortcut when ``use_1x1conv``.

    Flax NNX rather than the book's Linen: an NNX module holds its parameters from
    construction on, so ``Residual`` takes ``input_channels`` (as the chapter's PyTorch code
    does) and can be counted, loaded and called at once; a Linen module's weights appear only
    from ``init``. ``conv_bias``, ``bn`` and ``shortcut="conv_bn"`` (torchvision's BN after
    the projection: ``bn3``) are the spec's options (:class:`resnet_multi.spec.BlockSpec`);
    a BlockSpec may stand for all arguments; ``rngs`` is Flax's usual key holder.
    """

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *, rngs=None, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        self.conv1 = conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, spec.conv_bias, padding=1, rngs=rngs)
        self.conv2 = conv2d(spec.out_channels, spec.out_channels, 3, 1, spec.conv_bias, padding=1, rngs=rngs)
        # each attribute is assigned once: NNX fixes on first assignment whether it is data
        self.conv3 = (
            conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias, rngs=rngs)
            if spec.projection
            else None
        )
        self.bn1 = BatchNorm(spec.out_channels, spec.bn, rngs=rngs)
        self.bn2 = BatchNorm(spec.out_channels, spec.bn, rngs=rngs)
        self.bn3 = (
            BatchNorm(spec.out_channels, spec.bn, rngs=rngs) if spec.projection and spec.shortcut == "conv_bn" else None
        )

    def __call__(self, X, train: bool = False):
        check_block_input(self.spec, X)
        Y = nnx.relu(self.bn1(self.conv1(X), train))
        Y = self.bn2(self.conv2(Y), train)
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X, train)
        return nnx.relu(Y + X)


# ---- the exercises' blocks --------------------------------------------------------------------
class Bottleneck(nnx.Module):
    """Exercise 3, the block of ResNet-50 and deeper: a 1x1 conv narrowing to
    ``num_channels // 4``, a 3x3 conv, a 1x1 conv widening back. The stride sits on the 3x3
    conv, or with ``stride_on="1x1"`` on the first 1x1 (the paper's original). The
    projection is ``shortcut``, since ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *, rngs=None, **options):
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        mid, bias = spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(spec.in_channels, mid, 1, stride1, bias, rngs=rngs)
        self.conv2 = conv2d(mid, mid, 3, stride2, bias, padding=1, rngs=rngs)
        self.conv3 = conv2d(mid, spec.out_channels, 1, 1, bias, rngs=rngs)
        self.bn1 = BatchNorm(mid, spec.bn, rngs=rngs)
        self.bn2 = BatchNorm(mid, spec.bn, rngs=rngs)
        self.bn3 = BatchNorm(spec.out_channels, spec.bn, rngs=rngs)
        self.shortcut = Shortcut(spec, rngs=rngs) if spec.projection else None

    def __call__(self, X, train: bool = False):
        check_block_input(self.spec, X)
        Y = nnx.relu(self.bn1(self.conv1(X), train))
        Y = nnx.relu(self.bn2(self.conv2(Y), train))
        Y = self.bn3(self.conv3(Y), train)
        if self.shortcut is not None:
            X = self.shortcut(X, train)
        return nnx.relu(Y + X)


class PreActResidual(nnx.Module):
    """Exercise 4, He et al.'s "Identity Mappings" block: BN -> ReLU -> conv, twice, and no
    ReLU after the sum; the projection ``conv3`` (with ``bn3`` for ``shortcut="conv_bn"``)
    reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *, rngs=None, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        self.conv1 = conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, spec.conv_bias, padding=1, rngs=rngs)
        self.conv2 = conv2d(spec.out_channels, spec.out_channels, 3, 1, spec.conv_bias, padding=1, rngs=rngs)
        self.conv3 = (
            conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias, rngs=rngs)
            if spec.projection
            else None
        )
        self.bn1 = BatchNorm(spec.in_channels, spec.bn, rngs=rngs)  # normalises conv1's input
        self.bn2 = BatchNorm(spec.out_channels, spec.bn, rngs=rngs)
        self.bn3 = (
            BatchNorm(spec.out_channels, spec.bn, rngs=rngs) if spec.projection and spec.shortcut == "conv_bn" else None
        )

    def __call__(self, X, train: bool = False):
        check_block_input(self.spec, X)
        P = nnx.relu(self.bn1(X, train))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(nnx.relu(self.bn2(Y, train)))
        if self.conv3 is not None:
            X = self.conv3(P)
            if self.bn3 is not None:
                X = self.bn3(X, train)
        return Y + X


class PreActBottleneck(nnx.Module):
    """The bottleneck in pre-activation order (ResNet-50 v2): BN -> ReLU -> conv three times,
    no ReLU after the sum; the projection ``shortcut`` reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *, rngs=None, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        mid, bias = spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(spec.in_channels, mid, 1, stride1, bias, rngs=rngs)
        self.conv2 = conv2d(mid, mid, 3, stride2, bias, padding=1, rngs=rngs)
        self.conv3 = conv2d(mid, spec.out_channels, 1, 1, bias, rngs=rngs)
        self.bn1 = BatchNorm(spec.in_channels, spec.bn, rngs=rngs)  # each normalises its conv's input
        self.bn2 = BatchNorm(mid, spec.bn, rngs=rngs)
        self.bn3 = BatchNorm(mid, spec.bn, rngs=rngs)
        self.shortcut = Shortcut(spec, rngs=rngs) if spec.projection else None

    def __call__(self, X, train: bool = False):
        check_block_input(self.spec, X)
        P = nnx.relu(self.bn1(X, train))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(nnx.relu(self.bn2(Y, train)))
        Y = self.conv3(nnx.relu(self.bn3(Y, train)))
        if self.shortcut is not None:
            X = self.shortcut(P, train)
        return Y + X


class Shortcut(nnx.Module):
    """A bottleneck's projection: a 1x1 conv with the block's stride (``conv``), then, for
    ``shortcut="conv_bn"``, a BN (``bn``)."""

    def __init__(self, spec: BlockSpec, *, rngs=None):
        rngs = _rngs(rngs)
        self.conv = conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias, rngs=rngs)
        self.bn = BatchNorm(spec.out_channels, spec.bn, rngs=rngs) if spec.shortcut == "conv_bn" else None

    def __call__(self, X, train: bool = False):
        X = self.conv(X)
        return X if self.bn is None else self.bn(X, train)


BLOCKS = {
    "Residual": Residual,
    "Bottleneck": Bottleneck,
    "PreActResidual": PreActResidual,
    "PreActBottleneck": PreActBottleneck,
}


def block(spec: BlockSpec, *, rngs=None) -> nnx.Module:
    """The block ``spec`` describes, built by the class for its kind (:data:`BLOCKS`)."""
    return BLOCKS[block_class(spec)](spec, rngs=rngs)


# ---- the stage and the network ------------------------------------------------------------------
class ResnetBlock(nnx.Module):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``.
    The blocks sit in an ``nnx.List``: Flax 0.12 refuses a plain list of modules as an
    attribute (it would be static data, invisible to ``nnx.split``)."""

    def __init__(
        self, input_channels, num_channels=None, num_residuals=None, first_block=False, *, rngs=None, **options
    ):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        rngs = _rngs(rngs)
        self.spec = spec
        self.residual_layers = nnx.List([block(b, rngs=rngs) for b in spec.blocks])

    def __call__(self, x, train: bool = False):
        for blk in self.residual_layers:
            x = blk(x, train)
        return x


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options).residual_layers)


class ResNet(nnx.Module):
    """stem -> stages -> head on NHWC float32 input; :meth:`named_outputs` walks the
    chapter's layers in order. Call it as ``net(x, train=...)``: the default is inference.
    ``train=`` is passed down explicitly rather than flipping ``use_running_average`` on the
    modules: the compiled step is a pure function of its inputs, and the mode is one of them."""

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
            raise InputError(
                f"{self.spec.name} expects a 4-d NHWC batch (N, H, W, {self.spec.in_channels}), got shape {shape}"
            )
        n, h, w, c = shape
        if c != self.spec.in_channels and h == self.spec.in_channels:
            raise InputError(
                f"{self.spec.name} takes NHWC batches (N, H, W, {self.spec.in_channels}), "
                f"got {shape}, which looks NCHW: use x.transpose(0, 2, 3, 1)"
            )
        if x.dtype != dtype:
            raise InputTypeError(
                f"expected {dtype} input (the net's parameters are {dtype}), got {x.dtype}; "
                f"convert with x.astype(jnp.{dtype}). JAX computes in float32 unless "
                f"jax_enable_x64 is set, and would otherwise turn float64 into float32 silently"
            )
        # unknown_ok: an export (jax.export, jax2onnx) traces a dynamic batch as a symbolic dimension
        shapes.check_input_shape(self.spec, (n, c, h, w), training=train, unknown_ok=True)

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
        *_, (_, logits) = self.named_outputs(x, train)  # the walk's last output: head.fc's
        return logits


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``, on ``device``."""
    spec = get_arch(arch, **overrides)
    jax_device(device)  # refuse an unknown device before building
    model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    to_device(model, device)
    return model


# ---- the framework plumbing: input checks, and layers that translate Flax's defaults ------------
def _rngs(rngs):
    # Flax needs keys to build layers; they only fill arrays that the spec's weights overwrite
    # (net() and Backend.build set them from the spec's NumPy seed).
    return rngs if rngs is not None else nnx.Rngs(0)


def check_block_input(spec: BlockSpec, X) -> None:
    """Refuse a batch a block cannot take, with the block's own message: not float32, or not
    NHWC with the block's input channels. Under ``jax.jit`` this runs at trace time (shapes
    and dtypes are static), op by op at every call."""
    what = f"Residual({spec.in_channels} -> {spec.out_channels})"
    if X.dtype != jnp.float32:
        raise InputTypeError(
            f"{what} expects float32 input, got {X.dtype}; convert with x.astype(jnp.float32) "
            f"(JAX without jax_enable_x64 would turn float64 into float32 silently)"
        )
    shapes.check_block_input_shape(spec, np.shape(X), layout="NHWC", unknown_ok=True)


def conv2d(
    input_channels: int, filters: int, kernel_size: int, strides: int, use_bias: bool, padding: int = 0, *, rngs=None
) -> nnx.Conv:
    """``nnx.Conv`` padded ``padding`` on each side of H and W. Flax's ``"SAME"`` pads
    ``(2, 3)`` for a 7x7/2 conv on an even size and ``(0, 1)`` for a 3x3/2, which shifts
    every window by a pixel against the spec (and PyTorch): the shapes agree, the
    logits do not. Explicit pairs are symmetric at every stride, and
    ``lax.conv_general_dilated`` takes them as they are (no separate pad op). In a step
    compiled for a CPU, :func:`resnet_multi.jax_cpu.conv_general_dilated` picks the faster
    kernel."""
    return nnx.Conv(
        input_channels,
        filters,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((padding, padding), (padding, padding)),
        use_bias=use_bias,
        conv_general_dilated=jax_cpu.conv_general_dilated,
        rngs=_rngs(rngs),
    )


def max_pool(x, window: int = 3, strides: int = 2, padding: int = 1):
    """Max pool padded symmetrically, never choosing the padding (Flax pads with -inf,
    ``reduce_window``'s initial value), as pre-activation stems need: Flax's own
    ``nnx.max_pool``, or in a step compiled with :func:`resnet_multi.jax_cpu.jit_for_cpu` for
    a CPU, :func:`resnet_multi.jax_cpu.shifted_max_pool`."""

    def flax_pool(x):
        return nnx.max_pool(
            x, (window, window), strides=(strides, strides), padding=((padding, padding), (padding, padding))
        )

    return jax_cpu.on_cpu((x,), lambda x: jax_cpu.shifted_max_pool(x, window, strides, padding), flax_pool)


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
        super().__init__(
            channels, momentum=1.0 - bn.momentum, epsilon=bn.eps, use_fast_variance=False, rngs=_rngs(rngs)
        )
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
        raise InputError(f"device {device!r} is not available to jax; available: {devices()}")
    if device == "cpu":
        return jax.devices("cpu")[0]
    # JAX runs float32 matmuls and convs on GPUs at "default" precision, TF32 on Ampere and
    # newer (10-bit mantissas, errors of 1e-3). The spec's float32 means float32.
    jax.config.update("jax_default_matmul_precision", "highest")
    return _gpus()[int(device.split(":")[1])]


def to_device(module: nnx.Module, device: str) -> None:
    """Move every array of ``module`` to ``device`` (in place)."""
    nnx.update(module, jax.device_put(nnx.state(module), jax_device(device)))


def device_of(module: nnx.Module) -> str:
    """The seam's name for the device that holds ``module``'s parameters."""
    (where,) = jax.tree.leaves(nnx.state(module, nnx.Param))[0].devices()
    return "cpu" if where.platform == "cpu" else f"cuda:{_gpus().index(where)}"


# ---- canonical weights: Flax's layouts and names inside, the canonical ones out -------------------
FLAX_NAMES = {"weight": "kernel", "bias": "bias"}  # a canonical leaf -> nnx.Conv's and nnx.Linear's attribute
FLAX_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _variable(layer, leaf: str):
    names = FLAX_BN_NAMES if isinstance(layer, nnx.BatchNorm) else FLAX_NAMES
    return getattr(layer, names[leaf])


def _canonical_variables(model: ResNet):
    """(canonical name, Flax variable, layout converter to canonical, converter from canonical)."""
    return nhwc.canonical_variables(model, _variable)


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    """The canonical weights (NCHW / OIHW / ``(out, in)``, canonical names) of a net whose
    variables are Flax's (HWIO kernels, ``(in, out)`` dense kernels, ``scale``...)."""
    return nhwc.get_weights(model, _variable, lambda var: var[...])


def _write(var, array) -> None:
    var[...] = jax.device_put(array, var[...].sharding)  # where the variable's old array lived


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; each array goes where the variable's old one lived."""
    nhwc.set_weights(model, weights, _variable, _write)


def shape_table(model: ResNet, input_shape=(1, 96, 96, 1)) -> str:
    """The chapter's per-layer table for an NHWC input shape: the canonical NCHW shape,
    then JAX's own NHWC shape, measured by running the layers on zeros."""
    return nhwc.shape_table(BACKEND, model, input_shape, device_of(model))


# ---- the backend seam: NCHW NumPy in and out, NHWC inside ------------------------------------
def cross_entropy(logits, y):
    """The chapter's loss: mean softmax cross-entropy over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def steps(module: ResNet, settings=None) -> dict:
    """The training and inference steps of ``module`` as pure functions of its state, JAX's
    idiom: ``params`` and ``stats`` (the BN statistics) go in, the next ones come out (arrays
    are immutable: a step hands back the next state instead of updating it in place);
    ``jax.jit`` compiles any of them as they are.

    * ``infer(params, stats, x) -> logits``
    * ``train_forward(params, stats, x) -> (logits, stats)``
    * ``grads(params, stats, x, y) -> (loss, logits, stats, grads)``
    * ``sgd(params, stats, opt_state, x, y) -> (params, stats, opt_state, loss, logits)``,
      with ``optax.sgd`` (learning rate in ``opt_state``, see :func:`sgd_optimizer`).
    * ``momentum(params, stats, opt_state, x, y)``, the same with ``settings`` (a
      :class:`resnet_multi.optim.Optimizer`): :func:`recipe_optimizer` and smoothed labels.

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

    def momentum(params, stats, opt_state, x, y):
        model = merged(params, stats)

        def loss_fn(model):
            logits = model(x, train=True)
            targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), settings.label_smoothing)
            return optax.softmax_cross_entropy(logits, targets).mean(), logits

        (loss, logits), g = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = recipe_optimizer(settings).update(g, opt_state, params)
        return optax.apply_updates(params, updates), nnx.state(model, nnx.BatchStat), opt_state, loss, logits

    return {
        "infer": lambda params, stats, x: forward(params, stats, x, False)[0],
        "train_forward": lambda params, stats, x: forward(params, stats, x, True),
        "grads": grads,
        "sgd": sgd,
        "momentum": momentum,
    }


def sgd_optimizer():
    """Plain SGD (no momentum, no weight decay); ``inject_hyperparams`` keeps the learning
    rate in the optimizer state, so a new rate is new data, not a recompile."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)


def recipe_optimizer(settings):
    """The recipe's SGD (resnet_multi.optim) in optax: ``add_decayed_weights`` (wd * p added
    to the gradient, on every parameter), then ``optax.sgd`` with momentum, whose ``trace``
    is the canonical velocity (t = g + mu * t; Nesterov: g + mu * t) and whose learning
    rate scales the result, outside the velocity, as in PyTorch. The rate is injected, so
    that each step sets it as data."""

    def make(learning_rate):
        sgd = optax.sgd(learning_rate, momentum=settings.momentum or None, nesterov=settings.nesterov)
        return optax.chain(optax.add_decayed_weights(settings.weight_decay), sgd) if settings.weight_decay else sgd

    return optax.inject_hyperparams(make)(learning_rate=0.01)


class JaxBackend(Backend):
    """The seam for JAX: every step is ``jax.jit``-compiled (once per batch shape), for a CPU
    with :func:`resnet_multi.jax_cpu.jit_for_cpu`; ``build(..., eager=True)`` (``--eager``) runs
    the same pure functions op by op, which is how JAX runs code outside ``jit``."""

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
            fn = steps(model.module, optimizer_settings(model))[kind]
            if model.eager:
                model.cache[key] = fn
            elif jax_device(model.device).platform == "cpu":
                model.cache[key] = jax_cpu.jit_for_cpu(fn)
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
            params, stats, self._input(model, x), self._labels(model, y)
        )
        nnx.update(model.module, stats)  # BN statistics update once, as in a training step
        # the gradients have the parameters' structure: merged into a copy of the module, they
        # sit where the parameters do, and the weights' own names and layouts read them out
        graphdef, _, _, rest = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
        as_module = nnx.merge(graphdef, grads, stats, rest)
        out = {
            name: np.ascontiguousarray(to_canonical(np.asarray(var[...])))
            for name, var, to_canonical, _ in _canonical_variables(as_module)
            if isinstance(var, nnx.Param)
        }
        return TrainingPass(float(loss), np.asarray(logits), out)

    def _recipe_state(self, model):
        """The recipe optimizer's state (``optax`` pytree), made at first use on the model's device."""
        if "recipe_opt_state" not in model.cache:
            params, _ = self._state(model)
            init = recipe_optimizer(optimizer_settings(model)).init(params)
            model.cache["recipe_opt_state"] = jax.device_put(init, jax_device(model.device))
        return model.cache["recipe_opt_state"]

    def _configure_optimizer(self, model, optimizer):
        for key in ("recipe_opt_state", ("step", "momentum")):
            model.cache.pop(key, None)

    def _get_optimizer_state(self, model):
        trace = optax.tree_utils.tree_get(self._recipe_state(model), "trace")
        graphdef, _, stats, rest = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
        as_module = nnx.merge(graphdef, trace, stats, rest)
        return {
            name: np.ascontiguousarray(to_canonical(np.asarray(var[...])))
            for name, var, to_canonical, _ in _canonical_variables(as_module)
            if isinstance(var, nnx.Param)
        }

    def _set_optimizer_state(self, model, state):
        opt_state = self._recipe_state(model)
        graphdef, params, stats, rest = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
        as_module = nnx.merge(graphdef, params, stats, rest, copy=True)
        for name, var, _, from_canonical in _canonical_variables(as_module):
            if isinstance(var, nnx.Param):
                _write(var, np.ascontiguousarray(from_canonical(state[name])))
        trace = nnx.state(as_module, nnx.Param)
        model.cache["recipe_opt_state"] = optax.tree_utils.tree_set(opt_state, trace=trace)

    def _sgd_step(self, model, x, y, lr):
        if not optimizer_settings(model).plain:
            params, stats = self._state(model)
            opt_state = self._recipe_state(model)
            opt_state.hyperparams["learning_rate"] = jax.device_put(np.float32(lr), jax_device(model.device))
            params, stats, opt_state, loss, logits = self._step(model, "momentum")(
                params, stats, opt_state, self._input(model, x), self._labels(model, y)
            )
            model.cache["recipe_opt_state"] = opt_state
            nnx.update(model.module, params, stats)
            return float(loss), np.asarray(logits)
        params, stats = self._state(model)
        device = jax_device(model.device)
        opt_state = model.cache.get("opt_state")
        if opt_state is None:
            # committed to the model's device, like the step's outputs: an uncommitted
            # argument is another jit cache entry, and the second step would compile again
            opt_state = model.cache["opt_state"] = jax.device_put(sgd_optimizer().init(params), device)
        opt_state.hyperparams["learning_rate"] = jax.device_put(np.float32(lr), device)
        params, stats, opt_state, loss, logits = self._step(model, "sgd")(
            params, stats, opt_state, self._input(model, x), self._labels(model, y)
        )
        model.cache["opt_state"] = opt_state
        nnx.update(model.module, params, stats)
        return float(loss), np.asarray(logits)

    def _residual_output_shape(self, x, args, options):
        return tuple(block(block_spec(*args, **options))(jnp.asarray(x.transpose(0, 2, 3, 1)), train=True).shape)

    def count_parameters(self, model):
        def size(kind):
            return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model.module, kind)))

        return size(nnx.Param), size(nnx.BatchStat)

    def _named_outputs(self, model, x, training):
        return [
            (name, np.asarray(out)) for name, out in model.module.named_outputs(self._input(model, x), train=training)
        ]


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
    "padding": {
        "default": "padding='SAME'; it pads the smaller half before: (2, 3) for 7x7/2 and "
        "(0, 1) for 3x3/2 on even sizes",
        "pads": [2, 3],
        "here": "explicit symmetric ((p, p), (p, p)) for every conv and the max pool (which pads -inf)",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed as epsilon (BatchNorm)"},
    "bn_momentum": {
        "default": "0.99: running = m * running + (1 - m) * batch",
        "momentum": 0.99,
        "keeps": "old",
        "here": "momentum = 1 - the spec's (BatchNorm)",
    },
    "bn_running_var": {
        "default": "biased batch variance",
        "variance": "biased",
        "here": "BatchNorm's training pass feeds n / (n - 1) times the biased variance",
    },
    "data_layout": {"default": "NHWC", "layout": "NHWC", "here": "NCHW <-> NHWC at the seam only (JaxBackend)"},
    "kernel_layout": {"default": "HWIO", "layout": "HWIO", "here": "transposed to OIHW in get/set_weights"},
    "dense_layout": {"default": "(in, out)", "layout": "(in, out)", "here": "transposed in get/set_weights"},
    "param_names": {
        "default": "kernel, bias; BN scale, bias, mean, var",
        "bn": ["scale", "bias", "mean", "var"],
        "here": "mapped to canonical names in _canonical_variables",
    },
    "init": {
        "default": "lecun_normal kernels (truncated normal, std 1/sqrt fan_in), zero biases",
        "conv_bias": True,
        "conv_weight": ["normal", "1/sqrt(fan_in)"],
        "here": "overwritten by the spec's weights (set_weights)",
    },
    "mode_switch": {
        "default": "BatchNorm(use_running_average=False): training until told otherwise",
        "starts": "training",
        "here": "train= passed explicitly everywhere (default inference)",
    },
    "optimizer": {
        "default": "optax.sgd(momentum, nesterov): trace t = g + mu * t, then scaled by -lr (lr outside the "
        "velocity); weight decay is a separate transformation (add_decayed_weights)",
        "lr_in_velocity": False,
        "here": "inject_hyperparams(chain(add_decayed_weights(wd), sgd(lr, momentum, nesterov))), lr set every "
        "step; optax.smooth_labels",
    },
    "execution": {
        "default": "op by op; jax.jit compiles a function with XLA",
        "cpu_mode": "compiled",
        "here": "every step under jax.jit; --eager runs it op by op",
    },
}
