"""The Residual Networks chapter in PyTorch.

    from resnet_multi import torch as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

PyTorch's conventions are the spec's own: NCHW, OIHW kernels, ``(out, in)``
dense weights, and BatchNorm with ``running = (1 - m) * running + m * batch``
fed by the unbiased variance. So the canonical weight names are exactly this
module's ``state_dict`` keys (less ``num_batches_tracked``), and nothing needs
translating.

No ``torch.compile`` (``compiles = False``): on this project's 2-core CPU it does not
reliably pay back its compile time over the quick preset's 96 steps. Measured with
torch 2.13 (inductor, default mode) on d2l-resnet18, batch 256 at 32x32, the SGD step
as ``_sgd_step`` runs it, on the shared machine (1-minute load 20-23, so every figure
is slow; eager and compiled steps interleaved in one process): from cold caches (a
fresh environment, CI, a lab's first run) the first training step compiled for 336 s,
the preset's last, 208-image batch recompiled for 268 s, and the first inference
batch for 104 s: 708 s. With inductor's on-disk caches warm, 113 s. The compiled step
then ran at a median 8.8 s against 12.5 s eager (1.42x), saving about 3.7 s a step,
354 s over 96 steps: less than a cold compile, more than a warm one, so it pays only
from the second run on a machine, and only as long as the load slows the steps more
than the compiler.
``scripts/torch_compile_payback.py`` repeats the measurement.

The training loop's step (``TorchBackend.train_step``, what ``train.fit`` runs) is
written for a GPU; only its CPU path has been run so far:

* no host synchronisation a step: loss x images, correct predictions and the first
  non-finite loss are summed in device tensors (:class:`DeviceMetrics`) and read once
  per progress mark (five an epoch) and at the epoch's end;
* on CUDA (``device_batches``), the uint8 images are copied to the device once, from
  pinned memory, and every batch is gathered, scaled and resized there
  (:func:`resize_bilinear`: the host pipeline's two matrices, so the same batches to
  float32 rounding); on the CPU the host pipeline's batches, bit-identical to every
  other backend's;
* channels-last (NHWC in memory) on CUDA, where cuDNN's convolutions, bfloat16 ones
  most of all, run in it without transposing; contiguous NCHW on the CPU, the layout
  the parity suite measures;
* ``precision="bf16"``: the step's forward pass under ``torch.autocast`` in bfloat16
  (weights, gradients and the SGD update stay float32; bfloat16 has float32's range,
  so no loss scaling). The parity suite runs ``sgd_step``, always float32.
"""
from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict

import numpy as np

from . import data
from .backend import Backend, MetricsReading, Model, StepMetrics, TrainingPass, require
from .shapes import check_block_input_shape, check_input_shape
from .spec import ArchSpec, BatchNormSpec, block_spec, get_arch, stage_spec
from .weights import check_weights, init_weights

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional


def batch_norm(channels: int, bn: BatchNormSpec) -> nn.BatchNorm2d:
    # PyTorch's momentum is the spec's: running = (1 - m) * running + m * batch (unbiased var).
    return nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum)


class Residual(nn.Module):
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
        bns = dict(spec.bn_names())
        self.convs = [name for name, *_ in spec.convs()]
        for name, cin, cout, k, s, p in spec.convs():
            setattr(self, name, nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=spec.conv_bias))
            setattr(self, "bn" + name[-1], batch_norm(bns["bn" + name[-1]], spec.bn))
        self.shortcut = None
        if spec.projection:
            layers = OrderedDict(conv=nn.Conv2d(spec.in_channels, spec.out_channels, 1, stride=spec.stride,
                                                bias=spec.conv_bias))
            if spec.shortcut == "conv_bn":
                layers["bn"] = batch_norm(spec.out_channels, spec.bn)
            self.shortcut = nn.Sequential(layers)

    def forward(self, x):
        check_block_tensor(self, x)
        if self.spec.preact:  # BN -> ReLU -> conv; a projection reads the pre-activated input
            pre = F.relu(self.bn1(x))
            y = self.conv1(pre)
            for name in self.convs[1:]:
                y = getattr(self, name)(F.relu(getattr(self, "bn" + name[-1])(y)))
            return y + (self.shortcut(pre) if self.shortcut else x)
        y = x
        for name in self.convs[:-1]:
            y = F.relu(getattr(self, "bn" + name[-1])(getattr(self, name)(y)))
        last = self.convs[-1]
        y = getattr(self, "bn" + last[-1])(getattr(self, last)(y))
        return F.relu(y + (self.shortcut(x) if self.shortcut else x))


class ResnetBlock(nn.Sequential):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        super().__init__(*(Residual(block) for block in spec.blocks))
        self.spec = spec


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options))


class ResNet(nn.Sequential):
    """``stem`` -> ``stages`` -> ``head``, each an ``nn.Sequential`` of named layers,
    so iterating over the net walks the chapter's layers in order."""

    def __init__(self, spec: ArchSpec):
        stem = OrderedDict(conv=nn.Conv2d(spec.in_channels, spec.width, 7, stride=2, padding=3,
                                          bias=spec.conv_bias))
        if not spec.preact:
            stem.update(bn=batch_norm(spec.width, spec.bn), relu=nn.ReLU())
        stem["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
        head = OrderedDict(bn=batch_norm(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact \
            else OrderedDict()
        head.update(pool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(),
                    fc=nn.Linear(spec.features, spec.num_classes))
        super().__init__(OrderedDict(
            stem=nn.Sequential(stem),
            stages=nn.Sequential(*(ResnetBlock(s) for s in spec.stages)),
            head=nn.Sequential(head),
        ))
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


def _check_tensor(x, weight, what: str) -> None:
    """``x`` is a tensor of ``weight``'s dtype on its device, or a TypeError / ValueError
    saying how to convert it (PyTorch's own message names neither the layer nor the fix)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}; convert with "
                        f"torch.as_tensor(x, dtype={weight.dtype})")
    # under autocast (--precision bf16) a block receives activations in the autocast dtype
    autocast = torch.is_autocast_enabled(x.device.type) \
        and x.dtype == torch.get_autocast_dtype(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(f"expected {weight.dtype} input (the {what}'s parameters are {weight.dtype}), got "
                        f"{x.dtype}; convert with x.to({weight.dtype}), or the {what} with "
                        f".to({x.dtype}) if you mean to compute in {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device}, the {what} on {weight.device}; move it with "
                         f"x.to('{weight.device}')")


def check_input_tensor(net: ResNet, x) -> None:
    """A batch that fits ``net``: a tensor of the parameters' dtype, on their device,
    of a shape the spec accepts; else a TypeError or ValueError saying how to convert it."""
    _check_tensor(x, net.stem.conv.weight, "net")
    check_input_shape(net.spec, x.shape, training=net.training)


def check_block_tensor(block: Residual, x) -> None:
    """The same for one block, called on its own as in the chapter's shape checks (a net
    checks its input once, at the stem; the blocks' checks are then a few comparisons)."""
    _check_tensor(x, getattr(block, block.convs[0]).weight, "block")
    check_block_input_shape(block.spec, x.shape)


def check_device(device) -> str:
    """``device`` if this PyTorch has it, else a ValueError listing the ones it has."""
    name = str(device)
    available = devices()
    if name == "cuda" and len(available) > 1:  # PyTorch's spelling of the current GPU
        return name
    if name not in available:
        why = "" if torch.cuda.is_available() else " (this PyTorch build has no CUDA, or sees no GPU)"
        raise ValueError(f"device {name!r} is not available{why}; available: {', '.join(available)}")
    return name


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``."""
    device = check_device(device)
    spec = get_arch(arch, **overrides)
    model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    return model.to(device)


# ---- canonical weights: the state_dict, less PyTorch's own BN batch counter ----------------
def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    # strict=False only because num_batches_tracked is not canonical; check_weights covered the rest.
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"canonical names out of step with the module: {missing} {result.unexpected_keys}")


def devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class TorchBackend(Backend):
    name = "torch"

    def framework_version(self):
        return torch.__version__

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

    # -- the training loop's step -------------------------------------------------------
    precisions = ("float32", "bf16")

    def configure_training(self, model, *, precision="float32", channels_last=None, device_batches=None):
        if precision not in self.precisions:
            raise ValueError(f"precision {precision!r} is not available with torch: choose float32 or "
                             f"bf16 (mixed precision: autocast to bfloat16, float32 weights)")
        cuda = torch.device(model.device).type == "cuda"
        options = {"precision": precision,
                   "channels_last": cuda if channels_last is None else bool(channels_last),
                   "device_batches": cuda if device_batches is None else bool(device_batches)}
        model.module.to(memory_format=torch.channels_last if options["channels_last"] else torch.contiguous_format)
        model.cache["training"] = options

    def training_batches(self, model, images, labels, *, batch_size, resize):
        if not _options(model)["device_batches"]:
            return super().training_batches(model, images, labels, batch_size=batch_size, resize=resize)
        data.iterate_batches(images, labels, batch_size, shuffle=False, resize=resize)  # its checks, at once
        return DeviceBatches(images, self._check_labels(model, images, labels), batch_size=batch_size,
                             resize=resize, device=model.device)

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
        return TrainingPass(loss.item(), logits.detach().cpu().numpy(), grads)

    @staticmethod
    def _optimizer(model, lr):
        optimizer = model.cache.get("sgd")
        if optimizer is None or optimizer.param_groups[0]["lr"] != lr:
            optimizer = model.cache["sgd"] = torch.optim.SGD(model.module.parameters(), lr=lr)
        return optimizer

    def _step(self, model, x, y, lr, *, mixed: bool):
        """One SGD step on device tensors; (loss, logits), detached, still on the device.
        ``mixed``: under the model's training precision (train_step); sgd_step, what the
        parity suite runs, is always float32."""
        module = model.module.train(True)
        optimizer = self._optimizer(model, lr)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(model) if mixed else contextlib.nullcontext():
            logits = module(x)
            loss = F.cross_entropy(logits, y)  # autocast computes it in float32
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()

    def _sgd_step(self, model, x, y, lr):
        loss, logits = self._step(model, self._tensor(model, x), self._tensor(model, y), lr, mixed=False)
        return loss.item(), logits.cpu().numpy()

    def _residual_output_shape(self, x, args, options):
        with torch.no_grad():
            return tuple(Residual(*args, **options)(torch.from_numpy(x)).shape)

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


class DeviceMetrics(StepMetrics):
    """:class:`resnet_multi.backend.StepMetrics` summed in tensors on the model's device:
    ``add`` only queues work, ``read`` waits for it (one copy to the host). The loss
    is summed in float64 as loss x images, in step order, as the host version sums
    Python floats, so the two give the same figures bit for bit."""

    deferred = True

    def __init__(self, device):
        super().__init__()
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._bad_step = torch.full((), -1.0, dtype=torch.float64, device=device)  # -1: none yet
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss, logits, y):
        self.steps += 1
        self.seen += len(y)
        loss = loss.double()
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, float(self.steps), self._bad_step)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        self._loss_sum += loss * len(y)
        self._correct += (logits.argmax(dim=1) == y).sum()

    def read(self):
        loss_sum, correct, bad_step, bad_loss = torch.stack(
            [self._loss_sum, self._correct.double(), self._bad_step, self._bad_loss]).tolist()
        return MetricsReading(loss_sum, int(correct), self.seen, self.steps,
                              None if bad_step < 0 else (int(bad_step), bad_loss))


@functools.lru_cache(maxsize=16)
def _resize_matrices(height: int, width: int, size: int, device: str):
    rows, cols = data.resize_matrices(height, width, size)
    return torch.tensor(rows, device=device), torch.tensor(cols.T, device=device)


def resize_bilinear(x, size: int):
    """(N, H, W) float32 tensor -> (N, size, size) on its own device: ``rows @ x @ cols.T``
    with :func:`resnet_multi.data.resize_bilinear`'s matrices, so the two agree to float32
    rounding (each output sums two nonzero terms per matmul; only FMA and the order of
    the two can differ)."""
    rows, cols_t = _resize_matrices(x.shape[1], x.shape[2], int(size), str(x.device))
    return rows @ x @ cols_t


class DeviceBatches:
    """``(seed, epoch) ->`` the batches :func:`resnet_multi.data.iterate_batches` gives
    (the same order, pixel / 255, the same resize), built on ``device``: the uint8 images
    and labels are copied there once, each epoch's order once (from pinned memory,
    asynchronously, on CUDA), and every batch is gathered, scaled and resized there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, resize: int | None,
                 device: str):
        self.pinned = torch.device(device).type == "cuda"
        self.device, self.batch_size, self.resize = device, int(batch_size), resize
        self.images = self._upload(np.ascontiguousarray(images, dtype=np.uint8))
        self.labels = self._upload(np.ascontiguousarray(labels, dtype=np.int64))

    def _upload(self, array: np.ndarray):
        host = torch.from_numpy(array)
        if self.pinned:
            host = host.pin_memory()
        return host.to(self.device, non_blocking=self.pinned)

    def __call__(self, seed, epoch):
        order = self._upload(data.batch_order(len(self.labels), shuffle=True, seed=seed, epoch=epoch))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx].to(torch.float32) / float(np.float32(1 / data.SCALE))
            if self.resize is not None:
                x = resize_bilinear(x, self.resize)
            yield x[:, None], self.labels[idx]


BACKEND = TorchBackend()


# What PyTorch does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing torch; the tests
# check the machine-readable fields against torch's own defaults.
CONVENTIONS = {
    "framework": "PyTorch",
    "padding": {"default": "padding=0; padding='same' is refused at stride 2; explicit padding is symmetric",
                "pads": None, "here": "the spec's symmetric padding, passed as padding=p"},
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed through"},
    "bn_momentum": {"default": "0.1: running = (1 - m) * running + m * batch (the spec's convention)",
                    "momentum": 0.1, "keeps": "new", "here": "the spec's momentum, passed through (batch_norm)"},
    "bn_running_var": {"default": "unbiased batch variance", "variance": "unbiased", "here": "nothing to do"},
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)", "here": "nothing to do"},
    "param_names": {"default": "state_dict keys; BN weight, bias, running_mean, running_var, num_batches_tracked",
                    "bn": ["weight", "bias", "running_mean", "running_var"],
                    "here": "the canonical names are the state_dict keys, less num_batches_tracked"},
    "init": {"default": "conv and dense: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt fan_in), biases U(+-1/sqrt fan_in)",
             "conv_bias": True, "conv_weight": ["uniform", "1/sqrt(fan_in)"],
             "here": "overwritten by the spec's weights (set_weights)"},
    "mode_switch": {"default": "module.train() / module.eval(); starts in training", "starts": "training",
                    "here": "the seam calls train(training) before every pass"},
}
