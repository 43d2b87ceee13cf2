"""The Residual Networks chapter in MindSpore: the chapter's ``Residual``, its exercises'
blocks, the stages and the net, then the backend the tests and the command line use.

    from resnet_multi import mindspore as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

MindSpore's defaults that differ from the spec's are translated where they arise: padding
and conv biases (:func:`conv2d`), BatchNorm's momentum (:func:`batch_norm`) and tensor names
(:data:`BN_NAMES`). Importing this module also keeps its CPU convolutions off oneDNN's
slow reference kernel (:func:`cap_onednn_isa`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .backend import Backend, Model, TrainingPass, optimizer_settings, require
from .errors import InputError
from .shapes import check_block_input_shape, check_input_shape, float32_input_error
from .spec import ArchSpec, BatchNormSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .weights import check_weights, init_weights, module_paths, tensor_specs

ms = require("mindspore", "mindspore")
nn, ops, Tensor = ms.nn, ms.ops, ms.Tensor


class Residual(nn.Cell):
    """The chapter's residual block. ``options`` are the spec's other knobs (``conv_bias``,
    ``shortcut="conv_bn"``, ``bn``; see :class:`resnet_multi.spec.BlockSpec`)."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = batch_norm(num_channels, spec.bn)
        self.conv2 = conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = batch_norm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        # torchvision's projection has a BN after the 1x1 conv; the chapter's has none
        self.bn3 = batch_norm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def __call__(self, X, *args, **kwargs):
        check_block_input(self, X)  # from Python only: a compiled graph parses construct, not this
        return super().__call__(X, *args, **kwargs)

    def construct(self, X):
        Y = ops.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return ops.relu(Y + X)


# ---- the exercises' blocks -----------------------------------------------------------------------
class Bottleneck(nn.Cell):
    """Exercise 3: 1x1 conv -> 3x3 conv -> 1x1 conv, narrowing to ``num_channels // 4``
    inside; the stride on the 3x3 conv (torchvision's "v1.5") or, with ``stride_on="1x1"``,
    on the first 1x1 conv (the paper's). The projection is ``shortcut``: ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = batch_norm(mid, spec.bn)
        self.conv2 = conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = batch_norm(mid, spec.bn)
        self.conv3 = conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = batch_norm(num_channels, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def __call__(self, X, *args, **kwargs):
        check_block_input(self, X)
        return super().__call__(X, *args, **kwargs)

    def construct(self, X):
        Y = ops.relu(self.bn1(self.conv1(X)))
        Y = ops.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.shortcut is not None:
            X = self.shortcut(X)
        return ops.relu(Y + X)


class PreActResidual(nn.Cell):
    """Exercise 4: He et al.'s pre-activation block, BN -> ReLU -> conv twice, no ReLU
    after the sum; a projection (``conv3``, with ``bn3`` for ``shortcut="conv_bn"``) reads
    the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = batch_norm(input_channels, spec.bn)  # normalises conv1's input
        self.conv2 = conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = batch_norm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        self.bn3 = batch_norm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def __call__(self, X, *args, **kwargs):
        check_block_input(self, X)
        return super().__call__(X, *args, **kwargs)

    def construct(self, X):
        P = ops.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(ops.relu(self.bn2(Y)))
        if self.conv3 is not None:
            X = self.conv3(P)
            if self.bn3 is not None:
                X = self.bn3(X)
        return Y + X


class PreActBottleneck(nn.Cell):
    """The pre-activation bottleneck: BN -> ReLU before each of the three convs, no ReLU
    after the sum; the projection (``shortcut``) reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = batch_norm(input_channels, spec.bn)  # each bnK normalises convK's input
        self.conv2 = conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = batch_norm(mid, spec.bn)
        self.conv3 = conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = batch_norm(mid, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def __call__(self, X, *args, **kwargs):
        check_block_input(self, X)
        return super().__call__(X, *args, **kwargs)

    def construct(self, X):
        P = ops.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(ops.relu(self.bn2(Y)))
        Y = self.conv3(ops.relu(self.bn3(Y)))
        if self.shortcut is not None:
            X = self.shortcut(P)
        return Y + X


BLOCKS = {
    "Residual": Residual,
    "Bottleneck": Bottleneck,
    "PreActResidual": PreActResidual,
    "PreActBottleneck": PreActBottleneck,
}


def block(spec):
    """The block ``spec`` describes, built by the class for its kind."""
    return BLOCKS[block_class(spec)](spec)


# ---- the stages and the net ----------------------------------------------------------------------
class ResnetBlock(nn.SequentialCell):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        super().__init__([block(b) for b in spec.blocks])
        self.spec = spec


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options))


class ResNet(nn.SequentialCell):
    """``stem`` -> ``stages`` -> ``head``, each an ``nn.SequentialCell`` of named layers,
    so iterating over the net walks the chapter's layers in order."""

    def __init__(self, spec: ArchSpec):
        stem = OrderedDict(
            conv=conv2d(spec.in_channels, spec.width, kernel_size=7, stride=2, padding=3, bias=spec.conv_bias)
        )
        if not spec.preact:
            stem.update(bn=batch_norm(spec.width, spec.bn), relu=nn.ReLU())
        # pad_mode='pad' pads with -inf, symmetrically; 'same' would pad (0, 1) on even sizes.
        stem["pool"] = nn.MaxPool2d(3, 2, pad_mode="pad", padding=1)
        head = OrderedDict(bn=batch_norm(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact else OrderedDict()
        head.update(
            pool=nn.AdaptiveAvgPool2d((1, 1)),
            flatten=nn.Flatten(),
            fc=nn.Dense(spec.features, spec.num_classes, weight_init="zeros", bias_init="zeros"),
        )
        super().__init__(
            OrderedDict(
                stem=nn.SequentialCell(stem),
                stages=nn.SequentialCell([ResnetBlock(s) for s in spec.stages]),
                head=nn.SequentialCell(head),
            )
        )
        self.spec = spec

    def __call__(self, x, *args, **kwargs):
        # Checked here, not in construct: a graph compiled with mindspore.jit parses construct
        # and would drop a Python call from it (logging a warning on every compile); a
        # compiled step gets its input through the seam, which checks it.
        check_input_dtype(x, self.spec.name)
        check_input_shape(self.spec, x.shape, training=self.training)
        return super().__call__(x, *args, **kwargs)

    def construct(self, x):
        return self.head(self.stages(self.stem(x)))

    def named_outputs(self, x):
        """Each named layer's output in turn: the chapter's shape table."""
        x = self.stem(x)
        yield "stem", x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            yield f"stages.{i}", x
        for name, layer in self.head.name_cells().items():
            x = layer(x)
            yield f"head.{name}", x


def net(arch="d2l-resnet18", *, seed: int = 0, device: str | None = None, **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed`` on ``device``
    (default and only choice: this process's device, see :func:`devices`)."""
    spec = get_arch(arch, **overrides)
    _check_device(device or devices()[0])
    model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    return model


# ---- layers in the spec's conventions ------------------------------------------------------------
def conv2d(
    input_channels: int, num_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
) -> nn.Conv2d:
    # pad_mode='pad' pads symmetrically, as the spec (and PyTorch) does; the default 'same'
    # pads (2, 3) for the 7x7/2 stem on an even size. has_bias from the spec: MindSpore's
    # default is no bias. Zero init: the spec's weights are set right after construction,
    # so MindSpore's own HeUniform draw would be wasted work.
    return nn.Conv2d(
        input_channels,
        num_channels,
        kernel_size,
        stride=stride,
        pad_mode="pad",
        padding=padding,
        has_bias=bias,
        weight_init="zeros",
        bias_init="zeros",
    )


def batch_norm(channels: int, bn: BatchNormSpec) -> nn.BatchNorm2d:
    # MindSpore keeps m * running + (1 - m) * batch: the spec's momentum is 1 - MindSpore's.
    # Its running variance takes the unbiased batch variance, as the spec's does.
    return nn.BatchNorm2d(channels, eps=bn.eps, momentum=1.0 - bn.momentum)


def projection(spec) -> nn.SequentialCell:
    """A bottleneck's projection shortcut: a strided 1x1 conv, then BN for ``shortcut="conv_bn"``."""
    layers = OrderedDict(
        conv=conv2d(spec.in_channels, spec.out_channels, kernel_size=1, stride=spec.stride, bias=spec.conv_bias)
    )
    if spec.shortcut == "conv_bn":
        layers["bn"] = batch_norm(spec.out_channels, spec.bn)
    return nn.SequentialCell(layers)


# ---- input checks: MindSpore's own messages name the operator's inputs ---------------------------
def check_input_dtype(x, what: str) -> None:
    """Refuse a batch that is not float32, naming the fix."""
    if x.dtype != ms.float32:
        raise float32_input_error(what, str(x.dtype).lower(), "x.astype(mindspore.float32)")


def check_block_input(blk: nn.Cell, x) -> None:
    """A batch that fits one block, called on its own as in the chapter's shape checks. In
    ``__call__``, which runs from Python (PyNative) only: inside a compiled graph MindSpore
    parses ``construct`` and never comes here, so the graph carries no Python checks."""
    check_input_dtype(x, f"Residual({blk.spec.in_channels} -> {blk.spec.out_channels})")
    check_block_input_shape(blk.spec, x.shape)


# ---- canonical weights ---------------------------------------------------------------------------
# MindSpore's BatchNorm2d names its tensors differently; conv and dense already agree.
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def canonical_parameters(model: ResNet) -> dict[str, ms.Parameter]:
    """Canonical name -> the model's own Parameter, in the spec's order. Cell paths are
    attribute paths (``stages.1.0.conv3`` for the canonical ``stages.1.0.shortcut.conv``:
    :func:`resnet_multi.weights.module_paths`); BN tensor names are translated."""
    cells = dict(model.cells_and_names())
    paths = module_paths(model.spec)
    out = {}
    for t in tensor_specs(model.spec):
        layer, leaf = t.name.rsplit(".", 1)
        cell = cells[paths[layer]]
        param = getattr(cell, BN_NAMES[leaf] if isinstance(cell, nn.BatchNorm2d) else leaf, None)
        if not isinstance(param, ms.Parameter):
            raise RuntimeError(
                f"canonical name {t.name} has no parameter in the model (cell {paths[layer]}: "
                f"{type(cell).__name__}); the module is out of step with the spec"
            )
        out[t.name] = param
    return out


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    return {k: p.asnumpy().copy() for k, p in canonical_parameters(model).items()}


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    for name, param in canonical_parameters(model).items():
        # copy_ writes into the Parameter's own storage. set_data would swap in the new
        # tensor (sharing the caller's memory) while an existing optimizer keeps updating
        # the old one, so every SGD step after a set_weights would be silently lost.
        param.copy_(Tensor(np.array(weights[name], np.float32)))


# ---- devices -------------------------------------------------------------------------------------
def _process_device() -> str:
    target = ms.get_context("device_target")
    kind = {"CPU": "cpu", "GPU": "cuda"}.get(target, target.lower())  # the other backends' names
    return "cpu" if kind == "cpu" else f"{kind}:{ms.get_context('device_id')}"


def devices() -> list[str]:
    """The one device this process runs on: 'cpu', 'cuda:N' or 'ascend:N'.

    MindSpore places every kernel of a process on the device that
    ``mindspore.set_device(target, id)`` names (or that it picked itself), and that
    choice cannot change once set or once a kernel has run; so unlike PyTorch
    there is no per-model placement, and no second device to list.
    """
    return [_process_device()]


def _check_device(device: str) -> str:
    if device not in devices():
        raise InputError(
            f"device {device!r} is not available to mindspore in this process; available: {devices()}. "
            f"MindSpore runs a whole process on one device: call mindspore.set_device('GPU', 0) "
            f"(or 'Ascend') before building anything"
        )
    return device


# ---- speed: MindSpore's CPU convolutions and oneDNN's reference kernel ---------------------------
_DNNL_CPU_ISA_AVX2 = 0x7  # dnnl_cpu_isa_t (oneDNN's dnnl_types.h)


def _onednn_library():
    """MindSpore's own oneDNN (mindspore/lib/libdnnl.so.3), or None where it has none."""
    path = Path(ms.__file__).parent / "lib" / "libdnnl.so.3"
    return ctypes.CDLL(str(path)) if path.is_file() else None


def cap_onednn_isa() -> bool:
    """Cap MindSpore's oneDNN at AVX2, so that its convolutions avoid the reference kernel.

    MindSpore's CPU Conv2D gives oneDNN plain-layout (NCHW/OIHW) tensors; on AVX-512 CPUs
    oneDNN 3.10 (bundled with MindSpore 2.10) then routes the forward and backward-data
    passes through ``jit_uni_ncsp``, whose inner convolution is the reference one
    (``ref:any``), many times slower; below AVX-512 it uses im2col + JIT GEMM (``gemm:jit``).
    scripts/bench_mindspore.py measures both. Only MindSpore's copy of oneDNN is capped (other
    frameworks in the process bundle their own), and only before its first kernel runs:
    oneDNN fixes its ISA then, so this runs on import. ``ONEDNN_MAX_CPU_ISA`` in the
    environment, e.g. ``ALL``, is left to oneDNN and turns the cap off. Returns whether the
    cap was applied.
    """
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "DNNL_MAX_CPU_ISA" in os.environ:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    lib = _onednn_library()
    if lib is None:
        return False
    if lib.dnnl_set_max_cpu_isa(_DNNL_CPU_ISA_AVX2) != 0:
        warnings.warn(
            "resnet_multi.mindspore was imported after MindSpore ran its first CPU kernel, so "
            "its oneDNN ISA cap could not be set and convolutions may use oneDNN's slow reference "
            "kernel; import resnet_multi.mindspore before running anything in MindSpore",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


ONEDNN_ISA_CAPPED = cap_onednn_isa()


# ---- the backend seam ----------------------------------------------------------------------------
class MindSporeBackend(Backend):
    """Gradients from ``mindspore.value_and_grad``, the update from ``nn.SGD``.

    Compiled (``build(..., eager=False)``, the default on a GPU or Ascend), each step runs
    under ``mindspore.jit`` (graph mode for one function, while the process stays in
    PyNative): the training step (forward, loss, gradients, SGD update, BN statistics), the
    gradient pass and inference, each once per model and batch shape, since a compiled graph
    keeps the shapes and the training flag it was traced with. Eager (``eager=True``, the
    default on a CPU, where it is as fast or faster: :meth:`default_eager`) runs the same cells op by op
    in PyNative mode, MindSpore 2's default. Cells start in inference mode; the seam calls
    ``set_train`` before every pass.
    """

    name = "mindspore"
    compiles = True  # mindspore.jit steps; Model.eager runs them in PyNative

    def framework_version(self):
        return ms.__version__

    def default_eager(self, device):
        # On a CPU, PyNative runs the training step as fast as mindspore.jit's graph or faster
        # (docs/benchmarks.md, MindSpore's modes), so a CPU run steps op by op unless told to
        # compile; on a GPU or Ascend the compiled step is the default.
        return device == "cpu"

    def cpu_threads(self):
        # the size of the CPU kernels' thread pool, as MindSpore reports it
        return {"cpu_kernel_threads": ms.get_context("runtime_num_threads")}

    def devices(self):
        return devices()

    def check_device(self, device):
        return _check_device(device)  # the seam's check, with how MindSpore picks its one device

    def _build(self, spec, device):
        return ResNet(spec)  # the process's device (checked above): nothing to move

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    def _compiled(self, model: Model, key: str, fn):
        """``fn`` under ``mindspore.jit``, once per model and ``key`` (``fn`` itself for an
        eager model). One compiled function per purpose: a graph keeps the training flag
        it was traced with, and ``mindspore.jit`` traces again for each new batch shape
        (the last, smaller batch of an epoch costs one more compile) and reuses it after."""
        if key not in model.cache:
            model.cache[key] = fn if model.eager else ms.jit(fn)
        return model.cache[key]

    def _forward(self, model, x, training):
        module = model.module
        key = "training_forward" if training else "inference"
        if key not in model.cache:
            # Two functions, not one: each compiled graph keeps the training flag it was traced with.
            def inference(x):
                return module(x)

            def training_forward(x):
                return module(x)

            self._compiled(model, key, training_forward if training else inference)
        module.set_train(training)  # training: batch statistics, moving statistics updated
        return model.cache[key](Tensor(x)).asnumpy()

    def _grad_fn(self, model: Model):
        """``value_and_grad`` of the mean cross-entropy with respect to the trainable
        parameters, in canonical order; the logits ride along as auxiliary output."""
        if "grad_fn" not in model.cache:
            module = model.module
            params = [p for p in canonical_parameters(module).values() if p.requires_grad]
            loss_fn = nn.CrossEntropyLoss()

            def forward_fn(x, y):
                logits = module(x)
                return loss_fn(logits, y), logits

            model.cache["params"] = params
            model.cache["grad_fn"] = ms.value_and_grad(forward_fn, None, params, has_aux=True)
        return model.cache["grad_fn"]

    def _loss_and_grads(self, model, x, y):
        if "loss_and_grads" not in model.cache:
            grad_fn = self._grad_fn(model)

            def loss_and_grads(x, y):
                return grad_fn(x, y)

            self._compiled(model, "loss_and_grads", loss_and_grads)
        model.module.set_train(True)
        (loss, logits), grads = model.cache["loss_and_grads"](Tensor(x), Tensor(y.astype(np.int32)))
        names = [t.name for t in tensor_specs(model.spec) if t.trainable]
        return TrainingPass(
            float(loss.asnumpy()), logits.asnumpy(), {n: g.asnumpy() for n, g in zip(names, grads, strict=True)}
        )

    # The recipe's SGD (resnet_multi.optim). nn.Momentum's ApplyMomentum is the canonical
    # update without Nesterov (accum = mu * accum + g; p -= lr * accum), its weight_decay adds
    # wd * p to the gradient first (given as one group: a plain list of parameters leaves out
    # every one named gamma or beta, BN's), and nn.CrossEntropyLoss's label_smoothing is the
    # canonical one. The rate is the optimizer's learning_rate Parameter, set before each step,
    # so a new rate compiles nothing. Nesterov steps are written out in MindSpore ops: the CPU
    # kernel of ApplyMomentum(use_nesterov=True) takes the plain momentum step.
    def _momentum_step(self, model, x, y, lr, settings):
        if "momentum_step" not in model.cache:
            module = model.module
            params = [p for p in canonical_parameters(module).values() if p.requires_grad]
            loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

            def forward_fn(x, y):
                logits = module(x)
                return loss_fn(logits, y), logits

            grad_fn = ms.value_and_grad(forward_fn, None, params, has_aux=True)
            if settings.nesterov:
                moments = ms.ParameterTuple(params).clone(prefix="velocity", init="zeros")
                mu, wd = settings.momentum, settings.weight_decay

                def momentum_step(x, y, lr):
                    (loss, logits), grads = grad_fn(x, y)
                    for p, v, g in zip(params, moments, grads):
                        if wd:
                            g = g + wd * p
                        ops.assign(v, mu * v + g)
                        ops.assign_sub(p, lr * (g + mu * v))
                    return loss, logits

            else:
                optimizer = nn.Momentum(
                    [{"params": params, "weight_decay": settings.weight_decay}],
                    learning_rate=float(lr),
                    momentum=settings.momentum,
                )
                moments = optimizer.moments

                def momentum_step(x, y, lr):
                    optimizer.learning_rate.copy_(lr)
                    (loss, logits), grads = grad_fn(x, y)
                    optimizer(grads)
                    return loss, logits

            model.cache["moments"] = moments
            self._compiled(model, "momentum_step", momentum_step)
            for moment, value in zip(moments, model.cache.pop("pending_state", ())):
                moment.copy_(Tensor(value))
        model.module.set_train(True)
        loss, logits = model.cache["momentum_step"](Tensor(x), Tensor(y.astype(np.int32)), Tensor(np.float32(lr)))
        return float(loss.asnumpy()), logits.asnumpy()

    def _configure_optimizer(self, model, optimizer):
        for key in ("momentum_step", "moments", "pending_state"):
            model.cache.pop(key, None)

    def _trainable_names(self, model):
        return [name for name, p in canonical_parameters(model.module).items() if p.requires_grad]

    def _get_optimizer_state(self, model):
        moments = model.cache.get("moments")
        names = self._trainable_names(model)
        if moments is not None:
            return {name: m.asnumpy().copy() for name, m in zip(names, moments, strict=True)}
        pending = model.cache.get("pending_state")
        if pending is not None:
            return dict(zip(names, pending, strict=True))
        params = canonical_parameters(model.module)
        return {name: np.zeros(params[name].shape, np.float32) for name in names}

    def _set_optimizer_state(self, model, state):
        values = [np.array(state[name], np.float32) for name in self._trainable_names(model)]
        moments = model.cache.get("moments")
        if moments is None:  # the optimizer is built at the first step, and takes them then
            model.cache["pending_state"] = values
            return
        for moment, value in zip(moments, values, strict=True):
            moment.copy_(Tensor(value))  # into the optimizer's own storage (see set_weights)

    def _sgd_step(self, model, x, y, lr):
        settings = optimizer_settings(model)
        if not settings.plain:
            return self._momentum_step(model, x, y, lr, settings)
        if model.cache.get("lr") != lr:
            grad_fn = self._grad_fn(model)
            # nn.SGD's defaults are plain SGD: momentum 0, dampening 0, weight decay 0.
            optimizer = nn.SGD(model.cache["params"], learning_rate=lr)

            def train_step(x, y):
                (loss, logits), grads = grad_fn(x, y)
                optimizer(grads)
                return loss, logits

            model.cache.pop("train_step", None)  # a new learning rate: a new optimizer and step
            self._compiled(model, "train_step", train_step)
            model.cache["lr"] = lr
        model.module.set_train(True)
        loss, logits = model.cache["train_step"](Tensor(x), Tensor(y.astype(np.int32)))
        return float(loss.asnumpy()), logits.asnumpy()

    def _residual_output_shape(self, x, args, options):
        blk = block(block_spec(*args, **options))
        blk.set_train(True)
        return tuple(blk(Tensor(x)).shape)

    def count_parameters(self, model):
        # BN's moving statistics are Parameters with requires_grad=False.
        trainable = sum(p.size for p in model.module.trainable_params())
        statistics = sum(p.size for p in model.module.untrainable_params())
        return trainable, statistics

    def _named_outputs(self, model, x, training):
        model.module.set_train(training)
        return [(name, out.asnumpy()) for name, out in model.module.named_outputs(Tensor(x))]


BACKEND = MindSporeBackend()


# What MindSpore does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing MindSpore; the tests
# check the machine-readable fields against MindSpore's own defaults.
CONVENTIONS = {
    "framework": "MindSpore",
    "padding": {
        "default": "pad_mode='same' by default: pads the smaller half before, (2, 3) for 7x7/2 on even sizes",
        "pads": [2, 3],
        "here": "pad_mode='pad' with the spec's symmetric padding",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed through"},
    "bn_momentum": {
        "default": "0.9: running = m * running + (1 - m) * batch",
        "momentum": 0.9,
        "keeps": "old",
        "here": "momentum = 1 - the spec's (batch_norm)",
    },
    "bn_running_var": {"default": "unbiased batch variance", "variance": "unbiased", "here": "nothing to do"},
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)", "here": "nothing to do"},
    "param_names": {
        "default": "weight, bias; BN gamma, beta, moving_mean, moving_variance",
        "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
        "here": "translated in canonical_parameters (BN_NAMES)",
    },
    "init": {
        "default": "HeUniform weights; conv has no bias (has_bias=False), dense bias U(+-1/sqrt fan_in)",
        "conv_bias": False,
        "conv_weight": ["uniform", "1/sqrt(fan_in)"],
        "here": "has_bias from the spec; weights overwritten by the spec's",
    },
    "mode_switch": {
        "default": "cell.set_train(True / False); starts in inference",
        "starts": "inference",
        "here": "the seam calls set_train(training) before every pass",
    },
    "optimizer": {
        "default": "nn.Momentum (ApplyMomentum): v = mu * v + g; p -= lr * v; weight_decay skips parameters "
        "named gamma or beta (BN's) unless given as a group; on the CPU use_nesterov=True takes the plain step",
        "lr_in_velocity": False,
        "here": "nn.Momentum with all parameters in one group (so BN's are decayed too), its learning_rate "
        "Parameter set every step; Nesterov written in MindSpore ops; CrossEntropyLoss(label_smoothing)",
    },
    "execution": {
        "default": "PyNative (op by op); mindspore.jit compiles a function into a graph",
        "cpu_mode": "eager",
        "here": "PyNative on a CPU, where it trains as fast or faster; mindspore.jit on a GPU or Ascend "
        "and with --compiled",
    },
}
