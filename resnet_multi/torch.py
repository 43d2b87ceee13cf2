"""The Residual Networks chapter in PyTorch: the chapter's ``Residual``, its exercises'
blocks, the stages and the net, then the backend the tests and the command line use.

    from resnet_multi import torch as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

PyTorch's conventions are the spec's own (NCHW, OIHW kernels, BatchNorm's momentum), so
little needs translating here.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from . import data
from .backend import Backend, Model, TrainingPass, optimizer_settings, require
from .errors import InputError, InputTypeError
from .shapes import check_block_input_shape, check_input_shape
from .spec import ArchSpec, BatchNormSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .torch_device import DeviceBatches, DeviceMetrics, resize_bilinear  # noqa: F401 (resize_bilinear: re-exported)
from .weights import check_weights, init_weights, module_paths, rename_layers

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional


class Residual(nn.Module):
    """The chapter's residual block. ``options`` are the spec's other knobs (``conv_bias``,
    ``shortcut="conv_bn"``, ``bn``; see :class:`resnet_multi.spec.BlockSpec`)."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = batch_norm(num_channels, spec.bn)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = batch_norm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        # torchvision's projection has a BN after the 1x1 conv; the chapter's has none
        self.bn3 = batch_norm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        check_block_tensor(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return F.relu(Y + X)


# ---- the exercises' blocks -----------------------------------------------------------------------
class Bottleneck(nn.Module):
    """Exercise 3: 1x1 conv -> 3x3 conv -> 1x1 conv, narrowing to ``num_channels // 4``
    inside; the stride on the 3x3 conv (torchvision's "v1.5") or, with ``stride_on="1x1"``,
    on the first 1x1 conv (the paper's). The projection is ``shortcut``: ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = nn.Conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = batch_norm(mid, spec.bn)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = batch_norm(mid, spec.bn)
        self.conv3 = nn.Conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = batch_norm(num_channels, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_tensor(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.shortcut is not None:
            X = self.shortcut(X)
        return F.relu(Y + X)


class PreActResidual(nn.Module):
    """Exercise 4: He et al.'s pre-activation block, BN -> ReLU -> conv twice, no ReLU
    after the sum; a projection (``conv3``, with ``bn3`` for ``shortcut="conv_bn"``) reads
    the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = batch_norm(input_channels, spec.bn)  # normalises conv1's input
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = batch_norm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        self.bn3 = batch_norm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        check_block_tensor(self, X)
        P = F.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(F.relu(self.bn2(Y)))
        if self.conv3 is not None:
            X = self.conv3(P)
            if self.bn3 is not None:
                X = self.bn3(X)
        return Y + X


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck: BN -> ReLU before each of the three convs, no ReLU
    after the sum; the projection (``shortcut``) reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = nn.Conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = batch_norm(input_channels, spec.bn)  # each bnK normalises convK's input
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = batch_norm(mid, spec.bn)
        self.conv3 = nn.Conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = batch_norm(mid, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_tensor(self, X)
        P = F.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
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
class ResnetBlock(nn.Sequential):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        super().__init__(*(block(b) for b in spec.blocks))
        self.spec = spec


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options))


class ResNet(nn.Sequential):
    """``stem`` -> ``stages`` -> ``head``, each an ``nn.Sequential`` of named layers,
    so iterating over the net walks the chapter's layers in order."""

    def __init__(self, spec: ArchSpec):
        stem = OrderedDict(conv=nn.Conv2d(spec.in_channels, spec.width, 7, stride=2, padding=3, bias=spec.conv_bias))
        if not spec.preact:
            stem.update(bn=batch_norm(spec.width, spec.bn), relu=nn.ReLU())
        stem["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
        head = OrderedDict(bn=batch_norm(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact else OrderedDict()
        head.update(
            pool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(), fc=nn.Linear(spec.features, spec.num_classes)
        )
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(stem),
                stages=nn.Sequential(*(ResnetBlock(s) for s in spec.stages)),
                head=nn.Sequential(head),
            )
        )
        self.spec = spec

    def forward(self, x):
        check_input_tensor(self, x)
        return super().forward(x)

    def named_outputs(self, x):
        """Each named layer's output in turn: the chapter's shape table."""
        x = self.stem(x)
        yield "stem", x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            yield f"stages.{i}", x
        for name, layer in self.head.named_children():
            x = layer(x)
            yield f"head.{name}", x


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``."""
    device = check_device(device)
    spec = get_arch(arch, **overrides)
    model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    return model.to(device)


# ---- layers in the spec's conventions ------------------------------------------------------------
def batch_norm(channels: int, bn: BatchNormSpec) -> nn.BatchNorm2d:
    # PyTorch's momentum is the spec's: running = (1 - m) * running + m * batch (unbiased var).
    return nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum)


def projection(spec) -> nn.Sequential:
    """A bottleneck's projection shortcut: a strided 1x1 conv, then BN for ``shortcut="conv_bn"``."""
    layers = OrderedDict(
        conv=nn.Conv2d(spec.in_channels, spec.out_channels, 1, stride=spec.stride, bias=spec.conv_bias)
    )
    if spec.shortcut == "conv_bn":
        layers["bn"] = batch_norm(spec.out_channels, spec.bn)
    return nn.Sequential(layers)


# ---- input checks: PyTorch's own messages name neither the layer nor the fix ---------------------
def _check_tensor(x, weight, what: str) -> None:
    """``x`` is a tensor of ``weight``'s dtype on its device, or a TypeError / ValueError
    saying how to convert it."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(
            f"expected a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(x, dtype={weight.dtype})"
        )
    # under autocast (--precision bf16) a block receives activations in the autocast dtype
    autocast = torch.is_autocast_enabled(x.device.type) and x.dtype == torch.get_autocast_dtype(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise InputTypeError(
            f"expected {weight.dtype} input (the {what}'s parameters are {weight.dtype}), got "
            f"{x.dtype}; convert with x.to({weight.dtype}), or the {what} with "
            f".to({x.dtype}) if you mean to compute in {x.dtype}"
        )
    if x.device != weight.device:
        raise InputError(f"input is on {x.device}, the {what} on {weight.device}; move it with x.to('{weight.device}')")


def check_input_tensor(net: ResNet, x) -> None:
    """A batch that fits ``net``: a tensor of the parameters' dtype, on their device,
    of a shape the spec accepts; else a TypeError or ValueError saying how to convert it."""
    _check_tensor(x, net.stem.conv.weight, "net")
    check_input_shape(net.spec, x.shape, training=net.training)


def check_block_tensor(blk: nn.Module, x) -> None:
    """The same for one block, called on its own as in the chapter's shape checks (a net
    checks its input once, at the stem; the blocks' checks are then a few comparisons)."""
    _check_tensor(x, blk.conv1.weight, "block")
    check_block_input_shape(blk.spec, x.shape)


def check_device(device) -> str:
    """``device`` if this PyTorch has it, else a ValueError listing the ones it has."""
    name = str(device)
    available = devices()
    if name == "cuda" and len(available) > 1:  # PyTorch's spelling of the current GPU
        return name
    if name not in available:
        why = "" if torch.cuda.is_available() else " (this PyTorch build has no CUDA, or sees no GPU)"
        raise InputError(f"device {name!r} is not available{why}; available: {', '.join(available)}")
    return name


def devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


# ---- canonical weights: the state_dict, less PyTorch's own BN batch counter ----------------------
# Its keys are attribute paths (stages.1.0.conv3.weight), which weights.module_paths maps
# to and from the canonical names (stages.1.0.shortcut.conv.weight).
def canonical_names(spec: ArchSpec) -> dict[str, str]:
    """Attribute path of each layer -> its canonical name: module_paths, inverted."""
    return {path: name for name, path in module_paths(spec).items()}


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    state = {
        k: v.detach().cpu().numpy().copy()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    return rename_layers(state, canonical_names(model.spec))


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    # strict=False only because num_batches_tracked is not canonical; check_weights covered the rest.
    result = model.load_state_dict(rename_layers(state, module_paths(model.spec)), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"canonical names out of step with the module: {missing} {result.unexpected_keys}")


# ---- the backend seam ----------------------------------------------------------------------------
class TorchBackend(Backend):
    name = "torch"
    # No torch.compile: on a small CPU its compile (per batch shape, and again for inference)
    # takes longer than it saves over a short run's steps unless inductor's on-disk caches are
    # already warm. scripts/torch_compile_payback.py measures both sides.
    compiles = False

    def framework_version(self):
        return torch.__version__

    def cpu_threads(self):
        return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}

    def devices(self):
        return devices()

    def _build(self, spec, device):
        if device != "cpu":
            # cuDNN runs float32 convolutions in TF32 (10-bit mantissas, errors ~1e-3) by
            # default on Ampere and newer GPUs; the spec's float32 means float32, as in tf.py.
            # --precision bf16 is the way to ask for speed over digits.
            torch.backends.cudnn.allow_tf32 = False
        return ResNet(spec).to(device)

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    def _tensor(self, model: Model, x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(model.device)

    def _forward(self, model, x, training):
        model.module.train(training)
        with torch.no_grad(), _autocast(model):
            return model.module(self._tensor(model, x)).float().cpu().numpy()

    # -- the training loop's step (GPU-ready: see resnet_multi.torch_device) -----------------
    # On CUDA by default: batches built on the device, and channels-last memory (NHWC), in
    # which cuDNN's convolutions, bfloat16 ones most of all, run without transposing; on the
    # CPU contiguous NCHW, the layout the parity suite measures. precision="bf16" runs the
    # forward pass under torch.autocast in bfloat16 (weights, gradients and the SGD update stay
    # float32; bfloat16 has float32's range, so no loss scaling); sgd_step is always float32.
    precisions = ("float32", "bf16")

    def configure_training(self, model, *, precision="float32", channels_last=None, device_batches=None):
        if precision not in self.precisions:
            raise InputError(
                f"precision {precision!r} is not available with torch: choose float32 or "
                f"bf16 (mixed precision: autocast to bfloat16, float32 weights)"
            )
        cuda = torch.device(model.device).type == "cuda"
        options = {
            "precision": precision,
            "channels_last": cuda if channels_last is None else bool(channels_last),
            "device_batches": cuda if device_batches is None else bool(device_batches),
        }
        model.module.to(memory_format=torch.channels_last if options["channels_last"] else torch.contiguous_format)
        model.cache["training"] = options

    def training_batches(self, model, images, labels, *, batch_size, resize, augment=None):
        # Augmented batches come from the shared NumPy pipeline, so every backend sees the same pixels.
        if augment is not None or not _options(model)["device_batches"]:
            return super().training_batches(
                model, images, labels, batch_size=batch_size, resize=resize, augment=augment
            )
        data.iterate_batches(images, labels, batch_size, shuffle=False, resize=resize)  # its checks, at once
        return DeviceBatches(
            images, self._check_labels(model, images, labels), batch_size=batch_size, resize=resize, device=model.device
        )

    def new_metrics(self, model):
        return DeviceMetrics(model.device)

    def train_step(self, model, batch, lr, metrics):
        x, y = batch
        if isinstance(x, np.ndarray):  # host batches: checked as sgd_step checks them
            x, y = self._tensor(model, x), self._tensor(model, self._check_training_input(model, x, y))
        if _options(model)["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = self._step(model, x, y, lr, mixed=True)
        metrics.add(loss, logits, y)

    def _loss_and_grads(self, model, x, y):
        module = model.module.train(True)
        module.zero_grad(set_to_none=True)
        logits = module(self._tensor(model, x))
        loss = F.cross_entropy(logits, self._tensor(model, y))
        loss.backward()
        grads = {k: p.grad.detach().cpu().numpy() for k, p in module.named_parameters()}
        return TrainingPass(
            loss.item(), logits.detach().cpu().numpy(), rename_layers(grads, canonical_names(model.spec))
        )

    @staticmethod
    def _optimizer(model, lr):
        settings = optimizer_settings(model)
        optimizer = model.cache.get("sgd")
        if settings.plain:
            if optimizer is None or optimizer.param_groups[0]["lr"] != lr:
                optimizer = model.cache["sgd"] = torch.optim.SGD(model.module.parameters(), lr=lr)
            return optimizer
        # With momentum the optimizer (and its buffers) lives on; the schedule sets each step's lr.
        if optimizer is None:
            optimizer = model.cache["sgd"] = torch.optim.SGD(
                model.module.parameters(),
                lr=lr,
                momentum=settings.momentum,
                nesterov=settings.nesterov,
                weight_decay=settings.weight_decay,
            )
        for group in optimizer.param_groups:
            group["lr"] = lr
        return optimizer

    @staticmethod
    def _loss(model, logits, y):
        smoothing = optimizer_settings(model).label_smoothing
        if smoothing:
            return F.cross_entropy(logits, y, label_smoothing=smoothing)
        return F.cross_entropy(logits, y)

    def _configure_optimizer(self, model, optimizer):
        model.cache.pop("sgd", None)

    def _get_optimizer_state(self, model):
        optimizer = model.cache.get("sgd")
        state = {}
        for name, p in model.module.named_parameters():
            buffer = None if optimizer is None else optimizer.state.get(p, {}).get("momentum_buffer")
            state[name] = np.zeros(tuple(p.shape), np.float32) if buffer is None else buffer.detach().cpu().numpy()
        return rename_layers(state, canonical_names(model.spec))

    def _set_optimizer_state(self, model, state):
        optimizer = self._optimizer(model, 1.0)  # the lr is set again at every step
        state = rename_layers(state, module_paths(model.spec))
        for name, p in model.module.named_parameters():
            optimizer.state[p]["momentum_buffer"] = torch.from_numpy(state[name].copy()).to(p.device)

    def _step(self, model, x, y, lr, *, mixed: bool):
        """One SGD step on device tensors; (loss, logits), detached, still on the device.
        ``mixed``: under the model's training precision (train_step); sgd_step, what the
        parity suite runs, is always float32."""
        module = model.module.train(True)
        optimizer = self._optimizer(model, lr)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(model) if mixed else contextlib.nullcontext():
            logits = module(x)
            loss = self._loss(model, logits, y)  # autocast computes it in float32
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()

    def _sgd_step(self, model, x, y, lr):
        loss, logits = self._step(model, self._tensor(model, x), self._tensor(model, y), lr, mixed=False)
        return loss.item(), logits.cpu().numpy()

    def _residual_output_shape(self, x, args, options):
        with torch.no_grad():
            return tuple(block(block_spec(*args, **options))(torch.from_numpy(x)).shape)

    def count_parameters(self, model):
        params = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
        buffers = sum(b.numel() for k, b in model.module.named_buffers() if not k.endswith("num_batches_tracked"))
        return params, buffers

    def _named_outputs(self, model, x, training):
        model.module.train(training)
        with torch.no_grad():
            return [(name, out.cpu().numpy()) for name, out in model.module.named_outputs(self._tensor(model, x))]


def _options(model: Model) -> dict:
    return model.cache.get("training") or {"precision": "float32", "channels_last": False, "device_batches": False}


def _autocast(model: Model):
    if _options(model)["precision"] == "bf16":
        return torch.autocast(device_type=torch.device(model.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


BACKEND = TorchBackend()


# What PyTorch does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing torch; the tests
# check the machine-readable fields against torch's own defaults.
CONVENTIONS = {
    "framework": "PyTorch",
    "padding": {
        "default": "padding=0; padding='same' is refused at stride 2; explicit padding is symmetric",
        "pads": None,
        "here": "the spec's symmetric padding, passed as padding=p",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed through"},
    "bn_momentum": {
        "default": "0.1: running = (1 - m) * running + m * batch (the spec's convention)",
        "momentum": 0.1,
        "keeps": "new",
        "here": "the spec's momentum, passed through (batch_norm)",
    },
    "bn_running_var": {"default": "unbiased batch variance", "variance": "unbiased", "here": "nothing to do"},
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)", "here": "nothing to do"},
    "param_names": {
        "default": "state_dict keys; BN weight, bias, running_mean, running_var, num_batches_tracked",
        "bn": ["weight", "bias", "running_mean", "running_var"],
        "here": "state_dict keys less num_batches_tracked; conv3/bn3 read as shortcut.conv/.bn (module_paths)",
    },
    "init": {
        "default": "conv and dense: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt fan_in), biases U(+-1/sqrt fan_in)",
        "conv_bias": True,
        "conv_weight": ["uniform", "1/sqrt(fan_in)"],
        "here": "overwritten by the spec's weights (set_weights)",
    },
    "mode_switch": {
        "default": "module.train() / module.eval(); starts in training",
        "starts": "training",
        "here": "the seam calls train(training) before every pass",
    },
    "optimizer": {
        "default": "torch.optim.SGD: v = mu * v + (g + wd * p); p -= lr * v (Nesterov: lr * (g + wd * p + mu * v)); "
        "lr outside the velocity; weight_decay on every parameter it is given",
        "lr_in_velocity": False,
        "here": "torch.optim.SGD(momentum, nesterov, weight_decay) over all parameters, its lr set every step; "
        "cross_entropy(label_smoothing)",
    },
    "execution": {
        "default": "eager; torch.compile on request",
        "cpu_mode": "eager",
        "here": "eager: on a small CPU torch.compile's compile takes longer than it saves in a short run "
        "(scripts/torch_compile_payback.py)",
    },
}
