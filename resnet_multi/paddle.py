"""The Residual Networks chapter in PaddlePaddle: the chapter's ``Residual``, its exercises'
blocks, the stages and the net, then the backend the tests and the command line use.

    from resnet_multi import paddle as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

Where Paddle's conventions differ from the spec's, one place translates each: BatchNorm's
momentum and running variance (:class:`BatchNorm2D`), its tensor names and the dense
layer's ``(in, out)`` weight (:func:`canonical_tensors`), the process-wide device (:func:`on_device`).
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from . import machine
from .backend import Backend, TrainingPass, optimizer_settings, require
from .errors import InputError
from .shapes import check_block_input_shape, check_input_shape, float32_input_error
from .spec import ArchSpec, BatchNormSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .weights import WeightsError, check_weights, init_weights, module_paths

# Read before Paddle's import, which sets OMP_NUM_THREADS to 1 where it is unset (see cpu_threads_to_cores)
_OMP_THREADS_BEFORE_IMPORT = None if "paddle" in sys.modules else os.environ.get("OMP_NUM_THREADS")
paddle = require("paddle", "paddle")
nn = paddle.nn
F = paddle.nn.functional


class Residual(nn.Layer):
    """The chapter's residual block. ``options`` are the spec's other knobs (``conv_bias``,
    ``shortcut="conv_bn"``, ``bn``; see :class:`resnet_multi.spec.BlockSpec`)."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = BatchNorm2D(num_channels, spec.bn)
        self.conv2 = conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = BatchNorm2D(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        # torchvision's projection has a BN after the 1x1 conv; the chapter's has none
        self.bn3 = BatchNorm2D(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        check_block_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return F.relu(Y + X)


# ---- the exercises' blocks -----------------------------------------------------------------------
class Bottleneck(nn.Layer):
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
        self.bn1 = BatchNorm2D(mid, spec.bn)
        self.conv2 = conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = BatchNorm2D(mid, spec.bn)
        self.conv3 = conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = BatchNorm2D(num_channels, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.shortcut is not None:
            X = self.shortcut(X)
        return F.relu(Y + X)


class PreActResidual(nn.Layer):
    """Exercise 4: He et al.'s pre-activation block, BN -> ReLU -> conv twice, no ReLU
    after the sum; a projection (``conv3``, with ``bn3`` for ``shortcut="conv_bn"``) reads
    the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = BatchNorm2D(input_channels, spec.bn)  # normalises conv1's input
        self.conv2 = conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = BatchNorm2D(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        self.bn3 = BatchNorm2D(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        check_block_input(self, X)
        P = F.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(F.relu(self.bn2(Y)))
        if self.conv3 is not None:
            X = self.conv3(P)
            if self.bn3 is not None:
                X = self.bn3(X)
        return Y + X


class PreActBottleneck(nn.Layer):
    """The pre-activation bottleneck: BN -> ReLU before each of the three convs, no ReLU
    after the sum; the projection (``shortcut``) reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = BatchNorm2D(input_channels, spec.bn)  # each bnK normalises convK's input
        self.conv2 = conv2d(mid, mid, kernel_size=3, padding=1, stride=stride2, bias=bias)
        self.bn2 = BatchNorm2D(mid, spec.bn)
        self.conv3 = conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = BatchNorm2D(mid, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_input(self, X)
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
        stem = OrderedDict(
            conv=conv2d(spec.in_channels, spec.width, kernel_size=7, stride=2, padding=3, bias=spec.conv_bias)
        )
        if not spec.preact:
            stem.update(bn=BatchNorm2D(spec.width, spec.bn), relu=nn.ReLU())
        stem["pool"] = nn.MaxPool2D(3, stride=2, padding=1)  # pads with -inf, like the spec
        head = OrderedDict(bn=BatchNorm2D(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact else OrderedDict()
        head.update(
            pool=nn.AdaptiveAvgPool2D((1, 1)), flatten=nn.Flatten(), fc=nn.Linear(spec.features, spec.num_classes)
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
        check_input_dtype(x, self.spec.name)
        # unknown_ok: paddle.onnx.export traces a dynamic batch as -1
        check_input_shape(self.spec, x.shape, training=self.training, unknown_ok=True)
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
    """Build a named architecture on ``device`` with the spec's initial weights for ``seed``
    (not Paddle's default initialisers)."""
    spec = get_arch(arch, **overrides)
    with on_device(device):  # parameters are created on the global device
        model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    return model


# ---- layers in the spec's conventions ------------------------------------------------------------
class BatchNorm2D(nn.BatchNorm2D):
    """``nn.BatchNorm2D`` in the spec's convention.

    Paddle's momentum is ``1 - m`` of the spec's, and its running variance is fed
    with the biased batch variance (divided by n), where the spec (PyTorch's
    convention) feeds the unbiased one (divided by n - 1). The batch is still
    normalised by Paddle's kernel with the biased variance, as in every framework;
    only the batch's share of the running-variance update is scaled by n / (n - 1).
    """

    def __init__(self, channels: int, bn: BatchNormSpec = BatchNormSpec()):
        super().__init__(channels, momentum=1.0 - bn.momentum, epsilon=bn.eps)

    def forward(self, x):
        if not self.training:
            return F.batch_norm(
                x, self._mean, self._variance, self.weight, self.bias, training=False, epsilon=self._epsilon
            )
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n < 2:
            raise InputError(
                f"BatchNorm needs more than one value per channel when training, got input shape {list(x.shape)}"
            )
        m = self._momentum  # Paddle's: the share kept of the old value
        with paddle.no_grad():
            kept = m * self._variance  # before Paddle's kernel overwrites it
        # (not super().forward: it warns on every training call that statistics are tracked)
        y = F.batch_norm(
            x, self._mean, self._variance, self.weight, self.bias, training=True, momentum=m, epsilon=self._epsilon
        )
        with paddle.no_grad():
            # The kernel wrote kept + (1 - m) * biased; scale that batch term by n / (n - 1)
            # to feed the unbiased variance: a few ops on one value per channel, where
            # computing the variance again would take a pass over the whole batch.
            variance = kept + (self._variance - kept) * (n / (n - 1))
            if paddle.in_dynamic_mode():
                # set_value: paddle.assign(..., output=) would bump the tensor's version,
                # and backward() then refuses the tensor the kernel saved
                self._variance.set_value(variance)
            else:  # traced by paddle.jit.to_static, where tensors have no set_value
                paddle.assign(variance, output=self._variance)
        return y


def conv2d(
    input_channels: int, num_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
) -> nn.Conv2D:
    # bias_attr=False drops the bias; None keeps Paddle's default bias parameter
    return nn.Conv2D(
        input_channels, num_channels, kernel_size, stride=stride, padding=padding, bias_attr=None if bias else False
    )


def projection(spec) -> nn.Sequential:
    """A bottleneck's projection shortcut: a strided 1x1 conv, then BN for ``shortcut="conv_bn"``."""
    layers = OrderedDict(
        conv=conv2d(spec.in_channels, spec.out_channels, kernel_size=1, stride=spec.stride, bias=spec.conv_bias)
    )
    if spec.shortcut == "conv_bn":
        layers["bn"] = BatchNorm2D(spec.out_channels, spec.bn)
    return nn.Sequential(layers)


# ---- input checks: Paddle's own messages are about the data in a tensor container ----------------
def check_input_dtype(x, what: str) -> None:
    """Refuse a batch that is not float32, naming the fix."""
    if x.dtype != paddle.float32:
        raise float32_input_error(what, str(x.dtype).replace("paddle.", ""), "x.astype('float32')")


def check_block_input(blk: nn.Layer, x) -> None:
    """A batch that fits one block, called on its own as in the chapter's shape checks."""
    check_input_dtype(x, f"Residual({blk.spec.in_channels} -> {blk.spec.out_channels})")
    check_block_input_shape(blk.spec, x.shape, unknown_ok=True)


# ---- speed: Paddle's CPU threads -------------------------------------------------------------------
def cpu_threads_to_cores() -> int | None:
    """Run Paddle's CPU kernels on every core this process may use, unless the user chose.

    Paddle's import sets ``OMP_NUM_THREADS=1`` where it is unset, and its CPU convolutions
    (im2col + MKL GEMM) then use one thread; ``paddle.base.core.set_num_threads`` lets MKL
    and OpenMP use every core. An ``OMP_NUM_THREADS`` the user set (in the process's
    environment, or in ``os.environ`` before this import) is kept. Returns the threads set,
    or None where nothing was changed.
    """
    if _omp_threads_from_user():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1:
        paddle.base.core.set_num_threads(cores)
    return cores


def _omp_threads_from_user() -> bool:
    if _OMP_THREADS_BEFORE_IMPORT is not None:
        return True
    started = machine.started_environment()  # None (no /proc): only what was seen before the import
    return started is not None and "OMP_NUM_THREADS" in started


CPU_THREADS = cpu_threads_to_cores()


# ---- devices: Paddle's is process-wide, so every entry point restores the caller's ---------------
def devices() -> list[str]:
    # 'cuda:i' like every other backend's seam; Paddle itself calls it 'gpu:i'
    return ["cpu"] + [f"cuda:{i}" for i in range(paddle.device.cuda.device_count())]


def paddle_device(device: str) -> str:
    """Paddle's name for a device: 'cpu', or 'gpu:i' for 'cuda:i' (both accepted)."""
    kind, _, index = str(device).partition(":")
    if kind == "cpu" and not index:
        return "cpu"
    if kind in ("cuda", "gpu") and (index or "0").isdigit():
        return f"gpu:{int(index or 0)}"
    raise InputError(f"unknown device {device!r}; use 'cpu' or 'cuda:<index>' (Paddle's 'gpu:<index>')")


@contextmanager
def on_device(device: str):
    """Run the block with Paddle's global device set to ``device``; the caller's comes back
    afterwards, also when the block raises."""
    previous = paddle.get_device()
    paddle.set_device(paddle_device(device))
    try:
        yield
    finally:
        paddle.set_device(previous)


# ---- canonical weights ---------------------------------------------------------------------------
_BN_STATS = {"_mean": "running_mean", "_variance": "running_var"}


def canonical_tensors(model: ResNet):
    """(canonical name, Paddle tensor, transposed?) for every parameter, BN statistics included
    (Paddle keeps those as parameters with ``trainable=False``). Layer paths are attribute
    paths (``stages.1.0.conv3``), named canonically (``stages.1.0.shortcut.conv``) here."""
    names = {path: name for name, path in module_paths(model.spec).items()}
    for path, layer in model.named_sublayers(include_self=True):
        prefix = names.get(path, path)
        for name, tensor in layer.named_parameters(include_sublayers=False):
            full = f"{prefix}.{_BN_STATS.get(name, name)}" if prefix else _BN_STATS.get(name, name)
            yield full, tensor, isinstance(layer, nn.Linear) and name == "weight"


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    return {
        name: np.array(t.numpy().T if transposed else t.numpy(), order="C", copy=True)
        for name, t, transposed in canonical_tensors(model)
    }


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    """Load canonical weights; every name and shape is checked before anything is written,
    because Paddle's own ``set_state_dict`` would skip a mis-shaped tensor with a warning."""
    check_weights(model.spec, weights)
    plan = []
    for name, tensor, transposed in canonical_tensors(model):
        if name not in weights:
            raise WeightsError(f"canonical names out of step with the Paddle layer: {name} has no weight")
        value = np.ascontiguousarray(weights[name].T if transposed else weights[name])
        if tuple(value.shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{name}: the Paddle tensor has shape {list(tensor.shape)}, "
                f"the canonical weight gives {list(value.shape)}"
            )
        plan.append((tensor, value))
    if len(plan) != len(weights):
        raise WeightsError(
            f"canonical names out of step with the Paddle layer: "
            f"{sorted(set(weights) - {n for n, _, _ in canonical_tensors(model)})}"
        )
    for tensor, value in plan:
        tensor.set_value(value)


# ---- the backend seam ----------------------------------------------------------------------------
class PaddleBackend(Backend):
    name = "paddle"
    # Dynamic graph only. paddle.jit.to_static on the net's forward (full_graph=True; backward
    # and SGD in dygraph) keeps parity (tests/test_paddle_backend.py) but was no faster than
    # dygraph in scripts/bench_paddle.py's interleaved rounds, and traces again for each new
    # input shape and train/eval mode. Its programs are keyed by train/eval mode but not by
    # whether gradients are recorded: a training-mode program first traced under no_grad
    # later gives a training step no gradients.
    compiles = False

    def framework_version(self):
        return paddle.__version__

    def cpu_threads(self):
        # Paddle has no getter: the count it was given, by cpu_threads_to_cores or by the user
        return {"cpu_math_threads": CPU_THREADS or int(os.environ.get("OMP_NUM_THREADS", "1"))}

    def devices(self):
        return devices()

    def _build(self, spec, device):
        with on_device(device):
            return ResNet(spec)

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    def _forward(self, model, x, training):
        if training:
            model.module.train()
        else:
            model.module.eval()
        with on_device(model.device), paddle.no_grad():
            return model.module(paddle.to_tensor(x)).numpy()

    def _loss(self, model, x, y, smoothing=0.0):
        model.module.train()
        logits = model.module(paddle.to_tensor(x))
        if smoothing:  # Paddle's label smoothing is the canonical one: (1 - s) * one_hot + s / classes
            return F.cross_entropy(logits, paddle.to_tensor(y), label_smoothing=smoothing), logits
        return F.cross_entropy(logits, paddle.to_tensor(y)), logits  # mean over the batch

    # The recipe's SGD (resnet_multi.optim): paddle.optimizer.Momentum is the canonical update
    # (velocity = mu * velocity + g; nesterov: p -= lr * (g + mu * velocity), else p -= lr *
    # velocity), and a float weight_decay is L2Decay, added to the gradient before the velocity.
    def _momentum_optimizer(self, model, lr, settings):
        optimizer = model.cache.get("momentum")
        if optimizer is None:
            optimizer = model.cache["momentum"] = paddle.optimizer.Momentum(
                learning_rate=lr,
                momentum=settings.momentum,
                parameters=[t for _, t, _ in self._trainable(model)],
                use_nesterov=settings.nesterov,
                weight_decay=settings.weight_decay or None,
            )
            if "pending_state" in model.cache:  # Paddle holds it until the first step creates the velocity
                optimizer.set_state_dict(model.cache["pending_state"])
        optimizer.set_lr(lr)
        return optimizer

    @staticmethod
    def _trainable(model):
        return [(name, t, transposed) for name, t, transposed in canonical_tensors(model.module) if t.trainable]

    def _configure_optimizer(self, model, optimizer):
        model.cache.pop("momentum", None)
        model.cache.pop("pending_state", None)

    def _get_optimizer_state(self, model):
        optimizer = model.cache.get("momentum")
        saved = {} if optimizer is None else optimizer.state_dict()
        saved.update(model.cache.get("pending_state", {}))
        state = {}
        for name, t, transposed in self._trainable(model):
            value = saved.get(f"{t.name}_velocity_0")
            value = np.zeros(t.shape, np.float32) if value is None else np.asarray(value.numpy())
            state[name] = np.ascontiguousarray(value.T if transposed else value)
        return state

    def _set_optimizer_state(self, model, state):
        values = {
            f"{t.name}_velocity_0": paddle.to_tensor(np.ascontiguousarray(state[name].T if transposed else state[name]))
            for name, t, transposed in self._trainable(model)
        }
        optimizer = model.cache.get("momentum")
        if optimizer is None:  # the velocity is created at the first step: the optimizer, then
            model.cache["pending_state"] = values
        else:
            optimizer.set_state_dict(values)

    def _loss_and_grads(self, model, x, y):
        module = model.module
        module.clear_gradients(set_to_zero=False)  # Paddle accumulates gradients otherwise
        with on_device(model.device):
            loss, logits = self._loss(model, x, y)
            loss.backward()
            grads = {
                name: np.ascontiguousarray(t.grad.numpy().T if transposed else t.grad.numpy())
                for name, t, transposed in canonical_tensors(module)
                if t.trainable
            }
            return TrainingPass(float(loss), logits.numpy(), grads)

    def _sgd_step(self, model, x, y, lr):
        settings = optimizer_settings(model)
        if not settings.plain:
            optimizer = self._momentum_optimizer(model, lr, settings)
            with on_device(model.device):
                loss, logits = self._loss(model, x, y, settings.label_smoothing)
                loss.backward()
                optimizer.step()
                optimizer.clear_grad(set_to_zero=False)
                model.cache.pop("pending_state", None)  # in the optimizer's velocity now
                return float(loss), logits.numpy()
        optimizer = model.cache.get("sgd")
        if optimizer is None or optimizer.get_lr() != lr:
            # trainable ones only: BN statistics are parameters in Paddle too
            params = [p for p in model.module.parameters() if p.trainable]
            optimizer = model.cache["sgd"] = paddle.optimizer.SGD(learning_rate=lr, parameters=params)
        with on_device(model.device):
            loss, logits = self._loss(model, x, y)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)
            return float(loss), logits.numpy()

    def _residual_output_shape(self, x, args, options):
        with on_device("cpu"), paddle.no_grad():
            return tuple(block(block_spec(*args, **options))(paddle.to_tensor(x)).shape)

    def count_parameters(self, model):
        params = model.module.parameters()
        trainable = sum(int(p.size) for p in params if p.trainable)
        # BN statistics: non-trainable parameters in Paddle (plus any buffers, of which there are none)
        stats = sum(int(p.size) for p in params if not p.trainable)
        return trainable, stats + sum(int(b.size) for b in model.module.buffers())

    def _named_outputs(self, model, x, training):
        if training:
            model.module.train()
        else:
            model.module.eval()
        with on_device(model.device), paddle.no_grad():
            return [(name, out.numpy()) for name, out in model.module.named_outputs(paddle.to_tensor(x))]


BACKEND = PaddleBackend()


def print_shapes(model: ResNet, input_shape=(1, 1, 96, 96)) -> None:
    """The chapter's shape walk: each named layer's output shape on a batch of zeros."""
    model.eval()
    with paddle.no_grad():
        x = paddle.to_tensor(np.zeros(input_shape, np.float32), place=model.parameters()[0].place)
        for name, out in model.named_outputs(x):
            print(f"{name:<14}output shape: {list(out.shape)}")


if __name__ == "__main__":  # python -m resnet_multi.paddle
    print_shapes(net("d2l-resnet18"))


# What PaddlePaddle does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing Paddle; the tests
# check the machine-readable fields against Paddle's own defaults.
CONVENTIONS = {
    "framework": "PaddlePaddle",
    "padding": {
        "default": "padding=0; padding='SAME' pads the smaller half before, (2, 3) for 7x7/2 on even sizes",
        "pads": [2, 3],
        "here": "the spec's symmetric padding, passed as padding=p",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed as epsilon"},
    "bn_momentum": {
        "default": "0.9: running = m * running + (1 - m) * batch",
        "momentum": 0.9,
        "keeps": "old",
        "here": "momentum = 1 - the spec's (BatchNorm2D)",
    },
    "bn_running_var": {
        "default": "biased batch variance",
        "variance": "biased",
        "here": "BatchNorm2D.forward rewrites the running variance with the unbiased one",
    },
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(in, out)", "layout": "(in, out)", "here": "transposed in get/set_weights"},
    "param_names": {
        "default": "weight, bias; BN weight, bias, _mean, _variance (non-trainable parameters)",
        "bn": ["weight", "bias", "_mean", "_variance"],
        "here": "_mean/_variance read as running_mean/running_var (canonical_tensors)",
    },
    "init": {
        "default": "conv Normal(0, sqrt(2 / fan_in)), dense XavierUniform, zero biases",
        "conv_bias": True,
        "conv_weight": ["normal", "sqrt(2/fan_in)"],
        "here": "overwritten by the spec's weights (set_weights)",
    },
    "mode_switch": {
        "default": "layer.train() / layer.eval(); starts in training",
        "starts": "training",
        "here": "the seam calls train() or eval() before every pass",
    },
    "optimizer": {
        "default": "paddle.optimizer.Momentum: v = mu * v + g; p -= lr * v (use_nesterov: lr * (g + mu * v)); "
        "a float weight_decay is L2Decay, added to the gradient first",
        "lr_in_velocity": False,
        "here": "paddle.optimizer.Momentum(use_nesterov, weight_decay) over the trainable parameters, set_lr "
        "every step; F.cross_entropy(label_smoothing)",
    },
    "execution": {
        "default": "dynamic graph; paddle.jit.to_static compiles; import sets OMP_NUM_THREADS=1 where unset",
        "cpu_mode": "eager",
        "here": "dynamic graph on every core (unless OMP_NUM_THREADS is set); to_static was no faster, and "
        "oneDNN's kernels are not used in dynamic-graph training",
    },
}
