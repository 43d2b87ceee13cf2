"""The NumPy reference, with mistakes planted on request. Framework-free.

Built from the layers of :mod:`resnet_multi.numpy` (float64, explicit backward): a block is
a chain of named layers before the split (a pre-activation block's BatchNorm and ReLU), the
residual branch, the shortcut and the layers after the addition; a stage is a list of blocks;
a net adds the chapter's stem and head. ``Reference(spec, mistakes)`` builds the spec's
module with each named mistake of :mod:`resnet_multi.lab.mistakes` planted in it, so that
the numbers a known mistake produces can be compared with a student's.

Layers carry canonical names (``conv1``, ``shortcut.conv``, ``stages.1.0.bn2``, as in
:mod:`resnet_multi.weights`); a step records its output under that name when asked, which
says where two references first part.
"""

from __future__ import annotations

import numpy as np

from .. import numpy as rn
from ..spec import ArchSpec, BlockSpec, StageSpec, bn_for

DTYPE = rn.DTYPE


class ShapeMismatch(ValueError):
    """The branch and the shortcut of a block cannot be added."""


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's and Flax's ``padding='same'``: (before, after) for one axis; the smaller
    half goes before, so an even size at stride 2 gets (0, 1) for a 3x3 kernel."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad(rn.Layer):
    """``padding='same'`` as a layer in front of an unpadded conv or pool; backward crops."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x):
        (top, bottom), (left, right) = (same_pads(n, self.kernel, self.stride) for n in x.shape[2:])
        self.crop = (top, bottom, left, right)
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=self.value)

    def backward(self, dout):
        top, bottom, left, right = self.crop
        h, w = dout.shape[2:]
        return dout[:, :, top : h - bottom, left : w - right]


class BatchNorm(rn.BatchNorm2d):
    """The reference's BatchNorm with any epsilon and momentum (the spec's convention: the
    new batch's share), and a running variance fed by the biased batch variance on request,
    as MXNet's, Paddle's, Keras' and Flax's own BatchNorm layers do."""

    def __init__(self, channels: int, eps: float, momentum: float, biased: bool):
        super().__init__(channels)
        self.eps, self.momentum, self.biased = eps, momentum, biased

    def forward(self, x):
        if not (self.training and self.biased):
            return super().forward(x)
        old = self.buffers["running_var"]
        y = super().forward(x)
        self.buffers["running_var"] = (1 - self.momentum) * old + self.momentum * x.var(axis=(0, 2, 3))
        return y


class Chain(rn.Layer):
    """Named steps applied in order (a name of None records nothing); backward in reverse."""

    def __init__(self, steps):
        super().__init__()
        self.steps = list(steps)

    def forward(self, x, record=None):
        for name, layer in self.steps:
            x = layer.forward(x)
            if record is not None and name:
                record.append((name, x))
        return x

    def backward(self, dout):
        for _, layer in reversed(self.steps):
            dout = layer.backward(dout)
        return dout

    def train(self, mode: bool):
        for _, layer in self.steps:
            layer.training = mode


class _Builder:
    """Makes the named layers of one module, with the planted mistakes that concern layers."""

    def __init__(self, mistakes: frozenset, bn_eps: float, bn_momentum: float, prefix: str = ""):
        self.m = mistakes
        self.eps, self.momentum = bn_eps, bn_momentum
        for key in mistakes:
            if key.startswith("bn_eps="):
                self.eps = float(key.partition("=")[2])
            elif key.startswith("bn_momentum="):
                self.momentum = float(key.partition("=")[2])
        self.prefix = prefix
        self.layers: dict[str, rn.Layer] = {}

    def _name(self, name):
        return self.prefix + name

    def conv(self, name, cin, cout, k, stride, bias):
        if "conv_bias" in self.m or "no_conv_bias" in self.m:
            bias = not bias
        steps = []
        padding = k // 2
        if k > 1 and "padding_same" in self.m:
            steps.append((None, SamePad(k, stride)))
            padding = 0
        elif k == 3 and "padding_zero" in self.m:
            padding = 0
        conv = rn.Conv2d(cin, cout, k, stride, padding, bias=bias)
        self.layers[self._name(name)] = conv
        return [*steps, (self._name(name), conv)]

    def bn(self, name, channels):
        if f"skip_{name}" in self.m:
            return []
        layer = BatchNorm(channels, self.eps, self.momentum, "biased_running_var" in self.m)
        self.layers[self._name(name)] = layer
        return [(self._name(name), layer)]

    @staticmethod
    def relu():
        return [(None, rn.ReLU())]

    def bn_relu(self, name, channels):
        """BatchNorm then ReLU, or the other way round with the mistake planted."""
        if "bn_after_relu" in self.m:
            return self.relu() + self.bn(name, channels)
        return self.bn(name, channels) + self.relu()


class Block(rn.Layer):
    """One block of ``spec`` with ``mistakes`` planted; see :mod:`resnet_multi.lab.mistakes`."""

    def __init__(self, spec: BlockSpec, mistakes=frozenset(), *, prefix: str = ""):
        super().__init__()
        m = frozenset(mistakes)
        b = _Builder(m, spec.bn.eps, spec.bn.momentum, prefix)
        cin, cout, mid, s, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.stride, spec.conv_bias
        pre, post = [], b.relu()
        if spec.kind == "basic":
            s1, s2 = (1, s) if "stride_on_conv2" in m else (s, 1)
            if "no_stride" in m:
                s1 = s2 = 1
            if spec.preact:
                pre = b.bn_relu("bn1", cin)
                branch = b.conv("conv1", cin, cout, 3, s1, bias) + b.bn_relu("bn2", cout)
                branch += b.conv("conv2", cout, cout, 3, s2, bias)
                post = []
            else:
                branch = b.conv("conv1", cin, cout, 3, s1, bias) + b.bn_relu("bn1", cout)
                branch += b.conv("conv2", cout, cout, 3, s2, bias) + b.bn("bn2", cout)
        else:
            s1, s2 = (s, 1) if spec.stride_on == "1x1" else (1, s)
            if "stride_on_conv1" in m:
                s1, s2 = s2, s1
            if "no_stride" in m:
                s1 = s2 = 1
            if spec.preact:
                pre = b.bn_relu("bn1", cin)
                branch = b.conv("conv1", cin, mid, 1, s1, bias) + b.bn_relu("bn2", mid)
                branch += b.conv("conv2", mid, mid, 3, s2, bias) + b.bn_relu("bn3", mid)
                branch += b.conv("conv3", mid, cout, 1, 1, bias)
                post = []
            else:
                branch = b.conv("conv1", cin, mid, 1, s1, bias) + b.bn_relu("bn1", mid)
                branch += b.conv("conv2", mid, mid, 3, s2, bias) + b.bn_relu("bn2", mid)
                branch += b.conv("conv3", mid, cout, 1, 1, bias) + b.bn(bn_for("conv3"), cout)
        if "relu_before_add" in m:
            branch, post = branch + b.relu(), []
        if "no_relu_after_add" in m:
            post = []
        if "relu_after_add" in m:
            post = b.relu()
        shortcut = None
        if spec.projection and "projection_ignored" not in m:
            stride = 1 if "projection_no_stride" in m else s
            shortcut = b.conv("shortcut.conv", cin, cout, 1, stride, bias)
            if (spec.shortcut == "conv_bn") != ("projection_bn" in m or "no_projection_bn" in m):
                shortcut += b.bn("shortcut.bn", cout)
        self.spec, self.prefix = spec, prefix
        self.pre, self.branch, self.post = Chain(pre), Chain(branch), Chain(post)
        self.shortcut = Chain(shortcut) if shortcut is not None else None
        # a pre-activation projection reads relu(bn1(X)); the identity always reads X
        self.shortcut_reads_pre = spec.preact and "projection_reads_input" not in m
        self.layers = b.layers

    def train(self, mode: bool):
        for chain in (self.pre, self.branch, self.post, self.shortcut):
            if chain is not None:
                chain.train(mode)

    def forward(self, x, record=None):
        p = self.pre.forward(x, record)
        y = self.branch.forward(p, record)
        if self.shortcut is None:
            s = x
        else:
            s = self.shortcut.forward(p if self.shortcut_reads_pre else x, record)
        try:  # the frameworks broadcast, so a 1x1 branch adds to any shortcut
            total = y + s
        except ValueError:
            raise ShapeMismatch(f"cannot add the branch's {y.shape} to the shortcut's {s.shape}") from None
        self.shapes = (y.shape, s.shape)
        out = self.post.forward(total)
        if record is not None:
            record.append((self.prefix + "output", out))
        return out

    def backward(self, dout):
        d = self.post.backward(dout)
        y_shape, s_shape = self.shapes
        dp = self.branch.backward(_unbroadcast(d, y_shape))
        d_s = _unbroadcast(d, s_shape)
        dx = 0.0
        if self.shortcut is None:
            dx = d_s
        elif self.shortcut_reads_pre:
            dp = dp + self.shortcut.backward(d_s)
        else:
            dx = self.shortcut.backward(d_s)
        return self.pre.backward(dp) + dx


def _unbroadcast(grad, shape):
    """The gradient of a term that was broadcast to ``grad``'s shape: summed over the axes it
    was stretched along."""
    axes = tuple(i for i, (g, n) in enumerate(zip(grad.shape, shape)) if n == 1 and g != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class Stage(rn.Layer):
    def __init__(self, spec: StageSpec, mistakes=frozenset(), *, prefix: str = ""):
        super().__init__()
        m = frozenset(mistakes)
        blocks = list(spec.blocks)
        first = blocks[0]
        if "stage_no_downsample" in m and first.stride != 1:
            blocks[0] = _replace(first, stride=1)
        if "stage_first_block_strided" in m and first.stride == 1:
            blocks[0] = _replace(first, stride=2, projection=True)
        self.blocks = [Block(b, m, prefix=f"{prefix}{j}.") for j, b in enumerate(blocks)]
        self.layers = {k: v for blk in self.blocks for k, v in blk.layers.items()}

    def train(self, mode):
        for blk in self.blocks:
            blk.train(mode)

    def forward(self, x, record=None):
        for blk in self.blocks:
            x = blk.forward(x, record)
        return x

    def backward(self, dout):
        for blk in reversed(self.blocks):
            dout = blk.backward(dout)
        return dout


def _replace(spec: BlockSpec, **changes) -> BlockSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


class Net(rn.Layer):
    """The chapter's net: stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), stages, head."""

    def __init__(self, spec: ArchSpec, mistakes=frozenset()):
        super().__init__()
        m = frozenset(mistakes)
        b = _Builder(m, spec.bn.eps, spec.bn.momentum, "stem.")
        stem = b.conv("conv", spec.in_channels, spec.width, 7, 2, spec.conv_bias)
        if not spec.preact:
            stem += b.bn("bn", spec.width) + b.relu()
        if "padding_same" in m:
            stem += [(None, SamePad(3, 2, -np.inf)), ("stem.pool", rn.MaxPool2d(3, 2, 0))]
        else:
            stem += [("stem.pool", rn.MaxPool2d(3, 2, 1))]
        self.stem = Chain(stem)
        self.stages = [Stage(s, m, prefix=f"stages.{i}.") for i, s in enumerate(spec.stages)]
        fc = rn.Linear(spec.features, spec.num_classes)
        head = [(None, rn.GlobalAvgPool2d()), (None, rn.Flatten()), ("head.fc", fc)]
        if spec.preact:
            hb = _Builder(m, spec.bn.eps, spec.bn.momentum, "head.")
            head = hb.bn("bn", spec.features) + hb.relu() + head
            b.layers.update(hb.layers)
        self.head = Chain(head)
        self.layers = {**b.layers, **{k: v for s in self.stages for k, v in s.layers.items()}, "head.fc": fc}

    def train(self, mode):
        self.stem.train(mode)
        self.head.train(mode)
        for stage in self.stages:
            stage.train(mode)

    def forward(self, x, record=None):
        x = self.stem.forward(x, record)
        for stage in self.stages:
            x = stage.forward(x, record)
        return self.head.forward(x, record)

    def backward(self, dout):
        dout = self.head.backward(dout)
        for stage in reversed(self.stages):
            dout = stage.backward(dout)
        return self.stem.backward(dout)


def build(spec, mistakes=frozenset()):
    """The reference module for a block, stage or net spec, with ``mistakes`` planted."""
    if isinstance(spec, BlockSpec):
        return Block(spec, mistakes)
    if isinstance(spec, StageSpec):
        return Stage(spec, mistakes)
    return Net(spec, mistakes)


def tensors(module) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Canonical tensor name -> (shape, trainable) for every parameter and BN buffer."""
    out = {}
    for name, layer in module.layers.items():
        for key, value in layer.params.items():
            out[f"{name}.{key}"] = (value.shape, True)
        for key, value in layer.buffers.items():
            out[f"{name}.{key}"] = (value.shape, False)
    return out


def load(module, weights: dict[str, np.ndarray]) -> None:
    """Set every tensor the module has from ``weights`` (all must be there). Arrays already in
    float64 are shared, not copied: the layers replace their arrays, never write into them."""
    for name, layer in module.layers.items():
        for store in (layer.params, layer.buffers):
            for key in store:
                store[key] = np.asarray(weights[f"{name}.{key}"], dtype=DTYPE)


def params_count(module) -> int:
    return sum(int(v.size) for layer in module.layers.values() for v in layer.params.values())


def kink_margin(module) -> float:
    """The smallest distance of any ReLU input from 0 (or max-pool winner from its
    runner-up) in the last forward pass: see :meth:`resnet_multi.numpy.Net.kink_margin`."""
    margins = []

    def walk(obj):
        if isinstance(obj, Chain):
            for _, layer in obj.steps:
                if hasattr(layer, "margin"):
                    margins.append(layer.margin)
        elif isinstance(obj, Block):
            for chain in (obj.pre, obj.branch, obj.post, obj.shortcut):
                if chain is not None:
                    walk(chain)
        elif isinstance(obj, Stage):
            for blk in obj.blocks:
                walk(blk)
        elif isinstance(obj, Net):
            walk(obj.stem)
            for stage in obj.stages:
                walk(stage)
            walk(obj.head)

    walk(module)
    return min(margins, default=np.inf)
