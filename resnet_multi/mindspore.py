"""The Residual Networks chapter in MindSpore.

    from resnet_multi import mindspore as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

MindSpore is NCHW with OIHW kernels and ``(out, in)`` dense weights, like the
spec, but five of its defaults differ from it, and this module handles each:

* ``nn.Conv2d`` has no bias by default and pads with ``pad_mode='same'``, which
  on even sizes pads asymmetrically (7x7/2: 2 before, 3 after). Every conv and
  the max pool here use ``pad_mode='pad'`` with the spec's symmetric padding,
  and ``has_bias`` follows the spec.
* ``nn.BatchNorm2d(momentum=m)`` means ``running = m * running + (1 - m) * batch``
  (default 0.9), the opposite of the spec's convention: it gets ``1 - momentum``.
  Its running variance is fed by the unbiased batch variance, as the spec's is.
* BatchNorm names: gamma/beta/moving_mean/moving_variance for the canonical
  weight/bias/running_mean/running_var (see :func:`canonical_parameters`).
* Cells start in inference mode; ``set_train(True)`` makes BN normalise with
  batch statistics and update its moving statistics during the forward pass.
* ``Parameter.set_data`` swaps in a new tensor that an existing optimizer never
  updates; :func:`set_weights` copies into the parameters instead (``copy_``).

Gradients come from ``mindspore.value_and_grad`` and the update from ``nn.SGD``. By
default the backend compiles each step with ``mindspore.jit`` (graph mode for one
function, while the process stays in PyNative): the training step (forward, loss,
gradients, SGD update, BN statistics), the gradient pass and inference, each once per
model and batch shape, since a compiled graph keeps the shapes and the training flag
it was traced with. ``build(..., eager=True)`` runs the same cells op by op in
PyNative mode (MindSpore 2's default), as a reader steps through them.

On x86 CPUs with AVX-512, MindSpore's CPU convolutions hand oneDNN plain NCHW/OIHW
tensors, for which oneDNN 3.10 (bundled with MindSpore 2.10) picks its reference
kernel for the forward and backward-data passes (``jit_uni_ncsp:conv+ref:any``);
capped at AVX2 it picks im2col + JIT GEMM (``gemm:jit``) instead. Importing this module
caps MindSpore's own oneDNN copy at AVX2 (:func:`cap_onednn_isa`) unless
``ONEDNN_MAX_CPU_ISA`` is set. Measured on a 2-core AVX-512 CPU (scripts/bench_mindspore.py):
a d2l-resnet18 training step at 32x32, batch 32, 4.1 CPU-seconds uncapped and 0.55 capped;
inference at 96x96, batch 8, 7.2 and 0.16.

MindSpore runs a whole process on one device, chosen with
``mindspore.set_device("GPU", 0)`` before the first kernel runs; see :func:`devices`.
"""
from __future__ import annotations

import ctypes
import os
import platform
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .backend import Backend, Model, TrainingPass, require
from .shapes import check_block_input_shape, check_input_shape, float32_input_error
from .spec import ArchSpec, BatchNormSpec, block_spec, get_arch, stage_spec
from .weights import check_weights, init_weights, tensor_specs

ms = require("mindspore", "mindspore")
nn, Tensor = ms.nn, ms.Tensor

# dnnl_cpu_isa_t values (oneDNN's dnnl_types.h)
_DNNL_CPU_ISA_AVX2 = 0x7


def _onednn_library():
    """MindSpore's own oneDNN (mindspore/lib/libdnnl.so.3), or None where it has none."""
    path = Path(ms.__file__).parent / "lib" / "libdnnl.so.3"
    return ctypes.CDLL(str(path)) if path.is_file() else None


def cap_onednn_isa() -> bool:
    """Cap MindSpore's oneDNN at AVX2, so that its convolutions avoid the reference kernel.

    MindSpore's CPU Conv2D gives oneDNN plain-layout tensors; on AVX-512 CPUs oneDNN 3.10
    then routes the forward and backward-data passes through ``jit_uni_ncsp``, whose
    inner convolution is the reference one (``ref:any``, some 10x slower here). Below
    AVX-512 it uses im2col + JIT GEMM. Only MindSpore's copy of oneDNN is capped (other
    frameworks in the process bundle their own), and only before its first kernel runs:
    oneDNN fixes its ISA then. ``ONEDNN_MAX_CPU_ISA`` in the environment, e.g. ``ALL``,
    is left to oneDNN and turns the cap off. Returns whether the cap was applied.
    """
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "DNNL_MAX_CPU_ISA" in os.environ:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    lib = _onednn_library()
    if lib is None:
        return False
    if lib.dnnl_set_max_cpu_isa(_DNNL_CPU_ISA_AVX2) != 0:
        warnings.warn("resnet_multi.mindspore was imported after MindSpore ran its first CPU kernel, so "
                      "its oneDNN ISA cap could not be set and convolutions may use oneDNN's slow reference "
                      "kernel; import resnet_multi.mindspore before running anything in MindSpore",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


ONEDNN_ISA_CAPPED = cap_onednn_isa()


def conv2d(cin: int, cout: int, kernel: int, stride: int, padding: int, bias: bool) -> nn.Conv2d:
    # pad_mode='pad' pads symmetrically, as the spec (and PyTorch) does; the default 'same'
    # pads (2, 3) for the 7x7/2 stem on an even size. Zero init: the spec's weights are set
    # right after construction, so MindSpore's own HeUniform draw would be wasted work.
    return nn.Conv2d(cin, cout, kernel, stride=stride, pad_mode="pad", padding=padding,
                     has_bias=bias, weight_init="zeros", bias_init="zeros")


def batch_norm(channels: int, bn: BatchNormSpec) -> nn.BatchNorm2d:
    # MindSpore keeps m * running + (1 - m) * batch: the spec's momentum is 1 - MindSpore's.
    return nn.BatchNorm2d(channels, eps=bn.eps, momentum=1.0 - bn.momentum)


def check_input_dtype(x, what: str) -> None:
    """Refuse a batch that is not float32, naming the fix (MindSpore's own message names
    the operator's inputs)."""
    if x.dtype != ms.float32:
        raise float32_input_error(what, str(x.dtype).lower(), "x.astype(mindspore.float32)")


class Residual(nn.Cell):
    """The chapter's residual block: ``relu(F(x) + shortcut(x))``.

    ``Residual(input_channels, num_channels, use_1x1conv=False, strides=1)`` as in
    the chapter; ``kind="bottleneck"``, ``preact=True``, ``conv_bias``,
    ``shortcut="conv_bn"`` and ``stride_on`` select the exercises' variants
    (see :class:`resnet_multi.spec.BlockSpec`).
    """

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        super().__init__()
        spec = block_spec(input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        self.preact = spec.preact
        self.bottleneck = spec.kind == "bottleneck"
        bns = dict(spec.bn_names())
        for name, cin, cout, k, s, p in spec.convs():
            setattr(self, name, conv2d(cin, cout, k, s, p, spec.conv_bias))
            setattr(self, "bn" + name[-1], batch_norm(bns["bn" + name[-1]], spec.bn))
        self.relu = nn.ReLU()
        self.shortcut = None
        if spec.projection:
            layers = OrderedDict(conv=conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, 0,
                                             spec.conv_bias))
            if spec.shortcut == "conv_bn":
                layers["bn"] = batch_norm(spec.out_channels, spec.bn)
            self.shortcut = nn.SequentialCell(layers)

    def __call__(self, x, *args, **kwargs):
        # Called from Python (PyNative); inside a compiled graph MindSpore parses construct
        # and never comes here, so the graph carries no Python checks.
        check_input_dtype(x, f"Residual({self.spec.in_channels} -> {self.spec.out_channels})")
        check_block_input_shape(self.spec, x.shape)
        return super().__call__(x, *args, **kwargs)

    def construct(self, x):
        # Written out layer by layer rather than looped over names, so that graph mode
        # (mindspore.jit) can compile it too.
        if self.preact:  # BN -> ReLU -> conv; a projection reads the pre-activated input
            pre = self.relu(self.bn1(x))
            y = self.conv2(self.relu(self.bn2(self.conv1(pre))))
            if self.bottleneck:
                y = self.conv3(self.relu(self.bn3(y)))
            if self.shortcut is not None:
                return y + self.shortcut(pre)
            return y + x
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.bottleneck:
            y = self.bn3(self.conv3(self.relu(y)))
        if self.shortcut is not None:
            return self.relu(y + self.shortcut(x))
        return self.relu(y + x)


class ResnetBlock(nn.SequentialCell):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        super().__init__([Residual(block) for block in spec.blocks])
        self.spec = spec


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options))


class ResNet(nn.SequentialCell):
    """``stem`` -> ``stages`` -> ``head``, each an ``nn.SequentialCell`` of named layers,
    so the cell names are the canonical weight names' prefixes."""

    def __init__(self, spec: ArchSpec):
        stem = OrderedDict(conv=conv2d(spec.in_channels, spec.width, 7, 2, 3, spec.conv_bias))
        if not spec.preact:
            stem.update(bn=batch_norm(spec.width, spec.bn), relu=nn.ReLU())
        # pad_mode='pad' pads with -inf, symmetrically; 'same' would pad (0, 1) on even sizes.
        stem["pool"] = nn.MaxPool2d(3, 2, pad_mode="pad", padding=1)
        head = OrderedDict(bn=batch_norm(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact \
            else OrderedDict()
        head.update(pool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(),
                    fc=nn.Dense(spec.features, spec.num_classes, weight_init="zeros", bias_init="zeros"))
        super().__init__(OrderedDict(
            stem=nn.SequentialCell(stem),
            stages=nn.SequentialCell([ResnetBlock(s) for s in spec.stages]),
            head=nn.SequentialCell(head),
        ))
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


# ---- canonical weights ----------------------------------------------------------------
# MindSpore's BatchNorm2d names its tensors differently; conv and dense already agree.
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
            "running_var": "moving_variance"}


def canonical_parameters(model: ResNet) -> dict[str, "ms.Parameter"]:
    """Canonical name -> the model's own Parameter, in the spec's order.

    Cell paths are the canonical prefixes (stem.conv, stages.0.1.bn2, ...): only
    the BN tensor names are translated.
    """
    cells = dict(model.cells_and_names())
    out = {}
    for t in tensor_specs(model.spec):
        prefix, leaf = t.name.rsplit(".", 1)
        cell = cells[prefix]
        param = getattr(cell, BN_NAMES[leaf] if isinstance(cell, nn.BatchNorm2d) else leaf, None)
        if not isinstance(param, ms.Parameter):
            raise RuntimeError(f"canonical name {t.name} has no parameter in the model (cell {prefix}: "
                               f"{type(cell).__name__}); the module is out of step with the spec")
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
        raise ValueError(
            f"device {device!r} is not available to mindspore in this process; available: {devices()}. "
            f"MindSpore runs a whole process on one device: call mindspore.set_device('GPU', 0) "
            f"(or 'Ascend') before building anything"
        )
    return device


class MindSporeBackend(Backend):
    name = "mindspore"
    compiles = True  # mindspore.jit steps by default; Model.eager runs them in PyNative

    def framework_version(self):
        return ms.__version__

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
        return TrainingPass(float(loss.asnumpy()), logits.asnumpy(),
                            {n: g.asnumpy() for n, g in zip(names, grads, strict=True)})

    def _sgd_step(self, model, x, y, lr):
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
        block = Residual(*args, **options)
        block.set_train(True)
        return tuple(block(Tensor(x)).shape)

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
    "padding": {"default": "pad_mode='same' by default: pads the smaller half before, (2, 3) for 7x7/2 on "
                           "even sizes", "pads": [2, 3], "here": "pad_mode='pad' with the spec's symmetric padding"},
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed through"},
    "bn_momentum": {"default": "0.9: running = m * running + (1 - m) * batch", "momentum": 0.9, "keeps": "old",
                    "here": "momentum = 1 - the spec's (batch_norm)"},
    "bn_running_var": {"default": "unbiased batch variance", "variance": "unbiased", "here": "nothing to do"},
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)", "here": "nothing to do"},
    "param_names": {"default": "weight, bias; BN gamma, beta, moving_mean, moving_variance",
                    "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
                    "here": "translated in canonical_parameters (BN_NAMES)"},
    "init": {"default": "HeUniform weights; conv has no bias (has_bias=False), dense bias U(+-1/sqrt fan_in)",
             "conv_bias": False, "conv_weight": ["uniform", "1/sqrt(fan_in)"],
             "here": "has_bias from the spec; weights overwritten by the spec's"},
    "mode_switch": {"default": "cell.set_train(True / False); starts in inference", "starts": "inference",
                    "here": "the seam calls set_train(training) before every pass"},
}
