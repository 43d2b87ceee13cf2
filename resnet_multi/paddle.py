"""The Residual Networks chapter in PaddlePaddle.

    from resnet_multi import paddle as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

Paddle is NCHW with OIHW kernels like the spec, but four things differ, and this
module translates each at one place:

* ``nn.Linear`` stores its weight as ``(in, out)``; canonical weights are
  ``(out, in)``, so :func:`get_weights` / :func:`set_weights` transpose it.
* BatchNorm names its statistics ``_mean`` / ``_variance`` (canonical
  ``running_mean`` / ``running_var``), keeps them as non-trainable parameters,
  takes momentum in the other convention (``running = m * running + (1 - m) *
  batch``) and feeds the *biased* batch variance into the running variance;
  :class:`BatchNorm2D` converts the momentum and updates the variance with the
  unbiased one, as the spec says.
* ``set_state_dict`` only warns on a shape mismatch and keeps the old tensor;
  :func:`set_weights` checks every tensor first and refuses.
* The device is global (``paddle.set_device``); :func:`on_device` sets it for one
  call and puts the caller's back afterwards.

No compiled mode (``compiles = False``): ``paddle.jit.to_static`` was tried on the
net's forward (``full_graph=True``; backward and SGD stay in dygraph) and keeps
parity, but did not pay. Side by side with ``scripts/bench_paddle.py``
(interleaved rounds in one process, medians, d2l-resnet18, a 2-core machine
shared with other jobs), in the least loaded of three runs (the textbook's loop
at 71 examples/s): to_static ran at 0.93x dygraph for training at 32x32, batch
256, and 0.92x for inference at 96x96, batch 64; the two heavily loaded runs
disagreed with each other (0.97 and 1.22, 1.17 and 0.92). And each new input
shape and train/eval mode costs a trace of about 11 s. Two traps met on the way:
to_static keys its programs by train/eval mode but not by whether gradients are
recorded (a training-mode program first traced under ``no_grad`` later gives a
training step no gradients),
and traced tensors have no ``set_value`` (:class:`BatchNorm2D` uses
``paddle.assign(..., output=)`` there; in dygraph that trips backward's
inplace-version check). ``paddle.jit.to_static(net)`` on this module's net works
and matches dygraph (tested).

Initial weights come from the spec (:func:`resnet_multi.weights.init_weights`),
not from Paddle's defaults (Normal for conv, XavierUniform for dense).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from .backend import Backend, TrainingPass, require
from .shapes import check_block_input_shape, check_input_shape, float32_input_error
from .spec import ArchSpec, BatchNormSpec, block_spec, get_arch, stage_spec
from .weights import WeightsError, check_weights, init_weights

paddle = require("paddle", "paddle")
nn = paddle.nn
F = paddle.nn.functional


# ---- devices: Paddle's is process-wide, so every entry point restores the caller's ---------
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
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda:<index>' (Paddle's 'gpu:<index>')")


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


# ---- layers ---------------------------------------------------------------------------------
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
            return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias,
                                training=False, epsilon=self._epsilon)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n < 2:
            raise ValueError(f"BatchNorm needs more than one value per channel when training, "
                             f"got input shape {list(x.shape)}")
        m = self._momentum  # Paddle's: the share kept of the old value
        with paddle.no_grad():
            kept = m * self._variance  # before Paddle's kernel overwrites it
        # (not super().forward: it warns on every training call that statistics are tracked)
        y = F.batch_norm(x, self._mean, self._variance, self.weight, self.bias, training=True,
                         momentum=m, epsilon=self._epsilon)
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


def conv(cin: int, cout: int, kernel: int, stride: int, padding: int, bias: bool) -> nn.Conv2D:
    # bias_attr=False drops the bias; None keeps Paddle's default bias parameter
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding=padding, bias_attr=None if bias else False)


def check_input_dtype(x, what: str) -> None:
    """Refuse a batch that is not float32, naming the fix (Paddle's own message is about
    the data in a tensor container)."""
    if x.dtype != paddle.float32:
        raise float32_input_error(what, str(x.dtype).replace("paddle.", ""), "x.astype('float32')")


class Residual(nn.Layer):
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
            setattr(self, name, conv(cin, cout, k, s, p, spec.conv_bias))
            setattr(self, "bn" + name[-1], BatchNorm2D(bns["bn" + name[-1]], spec.bn))
        self.shortcut = None
        if spec.projection:
            layers = OrderedDict(conv=conv(spec.in_channels, spec.out_channels, 1, spec.stride, 0,
                                           spec.conv_bias))
            if spec.shortcut == "conv_bn":
                layers["bn"] = BatchNorm2D(spec.out_channels, spec.bn)
            self.shortcut = nn.Sequential(layers)

    def forward(self, x):
        check_input_dtype(x, f"Residual({self.spec.in_channels} -> {self.spec.out_channels})")
        check_block_input_shape(self.spec, x.shape)
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
        stem = OrderedDict(conv=conv(spec.in_channels, spec.width, 7, 2, 3, spec.conv_bias))
        if not spec.preact:
            stem.update(bn=BatchNorm2D(spec.width, spec.bn), relu=nn.ReLU())
        stem["pool"] = nn.MaxPool2D(3, stride=2, padding=1)  # pads with -inf, like the spec
        head = OrderedDict(bn=BatchNorm2D(spec.features, spec.bn), relu=nn.ReLU()) if spec.preact \
            else OrderedDict()
        head.update(pool=nn.AdaptiveAvgPool2D((1, 1)), flatten=nn.Flatten(),
                    fc=nn.Linear(spec.features, spec.num_classes))
        super().__init__(OrderedDict(
            stem=nn.Sequential(stem),
            stages=nn.Sequential(*(ResnetBlock(s) for s in spec.stages)),
            head=nn.Sequential(head),
        ))
        self.spec = spec

    def forward(self, x):
        check_input_dtype(x, self.spec.name)
        check_input_shape(self.spec, x.shape, training=self.training)
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
    """Build a named architecture on ``device`` with the spec's initial weights for ``seed``."""
    spec = get_arch(arch, **overrides)
    with on_device(device):  # parameters are created on the global device
        model = ResNet(spec)
    set_weights(model, init_weights(spec, seed))
    return model


# ---- canonical weights ---------------------------------------------------------------------
_BN_STATS = {"_mean": "running_mean", "_variance": "running_var"}


def canonical_tensors(model: nn.Layer):
    """(canonical name, Paddle tensor, transposed?) for every parameter, BN statistics included
    (Paddle keeps those as parameters with ``trainable=False``)."""
    for prefix, layer in model.named_sublayers(include_self=True):
        for name, tensor in layer.named_parameters(include_sublayers=False):
            full = f"{prefix}.{_BN_STATS.get(name, name)}" if prefix else _BN_STATS.get(name, name)
            yield full, tensor, isinstance(layer, nn.Linear) and name == "weight"


def get_weights(model: nn.Layer) -> dict[str, np.ndarray]:
    return {name: np.array(t.numpy().T if transposed else t.numpy(), order="C", copy=True)
            for name, t, transposed in canonical_tensors(model)}


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
            raise WeightsError(f"{name}: the Paddle tensor has shape {list(tensor.shape)}, "
                               f"the canonical weight gives {list(value.shape)}")
        plan.append((tensor, value))
    if len(plan) != len(weights):
        raise WeightsError(f"canonical names out of step with the Paddle layer: "
                           f"{sorted(set(weights) - {n for n, _, _ in canonical_tensors(model)})}")
    for tensor, value in plan:
        tensor.set_value(value)


class PaddleBackend(Backend):
    name = "paddle"

    def framework_version(self):
        return paddle.__version__

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

    def _loss(self, model, x, y):
        model.module.train()
        logits = model.module(paddle.to_tensor(x))
        return F.cross_entropy(logits, paddle.to_tensor(y)), logits  # mean over the batch

    def _loss_and_grads(self, model, x, y):
        module = model.module
        module.clear_gradients(set_to_zero=False)  # Paddle accumulates gradients otherwise
        with on_device(model.device):
            loss, logits = self._loss(model, x, y)
            loss.backward()
            grads = {name: np.ascontiguousarray(t.grad.numpy().T if transposed else t.grad.numpy())
                     for name, t, transposed in canonical_tensors(module) if t.trainable}
            return TrainingPass(float(loss), logits.numpy(), grads)

    def _sgd_step(self, model, x, y, lr):
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
            return tuple(Residual(*args, **options)(paddle.to_tensor(x)).shape)

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
    "padding": {"default": "padding=0; padding='SAME' pads the smaller half before, (2, 3) for 7x7/2 on "
                           "even sizes", "pads": [2, 3], "here": "the spec's symmetric padding, passed as padding=p"},
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed as epsilon"},
    "bn_momentum": {"default": "0.9: running = m * running + (1 - m) * batch", "momentum": 0.9, "keeps": "old",
                    "here": "momentum = 1 - the spec's (BatchNorm2D)"},
    "bn_running_var": {"default": "biased batch variance", "variance": "biased",
                       "here": "BatchNorm2D.forward rewrites the running variance with the unbiased one"},
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {"default": "(in, out)", "layout": "(in, out)", "here": "transposed in get/set_weights"},
    "param_names": {"default": "weight, bias; BN weight, bias, _mean, _variance (non-trainable parameters)",
                    "bn": ["weight", "bias", "_mean", "_variance"],
                    "here": "_mean/_variance read as running_mean/running_var (canonical_tensors)"},
    "init": {"default": "conv Normal(0, sqrt(2 / fan_in)), dense XavierUniform, zero biases", "conv_bias": True,
             "conv_weight": ["normal", "sqrt(2/fan_in)"],
             "here": "overwritten by the spec's weights (set_weights)"},
    "mode_switch": {"default": "layer.train() / layer.eval(); starts in training", "starts": "training",
                    "here": "the seam calls train() or eval() before every pass"},
}
