"""The Residual Networks chapter from scratch: NumPy, float64, forward and backward written out.
It is the oracle every framework backend is compared with.

    from resnet_multi import numpy as rn
    net = rn.net("d2l-resnet18")
    loss, dlogits = rn.softmax_cross_entropy(net.forward(x), y)  # x: (N, 1, H, W)
    net.backward(dlogits)                                        # fills every layer's .grads

The chapter's blocks come first, then the stage and the net; the layers they are made of
(Conv2d, BatchNorm2d, ...), each with its own backward, follow.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import optim, shapes
from . import weights as canonical
from .backend import Backend, TrainingPass, optimizer_settings
from .errors import InputError
from .spec import ArchSpec, BatchNormSpec, BlockSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec

DTYPE = np.float64


class Layer:
    """A layer: ``forward`` computes the output and remembers what ``backward`` needs;
    ``backward`` takes the gradient of the loss with respect to the output, stores the
    gradients of the layer's parameters in ``grads`` and returns the gradient with respect
    to the input. BatchNorm's running statistics are its ``buffers``."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True

    def __call__(self, x):
        return self.forward(x)

    def named_layers(self, prefix=""):
        """(path, layer) for every innermost layer. A block holds its layers as attributes and
        names them by attribute, in the order it assigned them, as a PyTorch module does."""
        children = [(name, value) for name, value in vars(self).items() if isinstance(value, Layer)]
        if not children:
            yield prefix, self
        for name, child in children:
            yield from child.named_layers(f"{prefix}.{name}" if prefix else name)


class Residual(Layer):
    """The chapter's residual block, and its backward: the chain rule through the forward
    pass's steps in reverse. ``options`` are the spec's other knobs (``conv_bias``,
    ``shortcut="conv_bn"``, ``bn``; see :class:`resnet_multi.spec.BlockSpec`)."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = Conv2d(input_channels, num_channels, kernel_size=3, stride=strides, padding=1, bias=bias)
        self.bn1 = BatchNorm2d(num_channels, spec.bn)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = BatchNorm2d(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = Conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        # torchvision's projection has a BN after the 1x1 conv; the chapter's has none
        self.bn3 = BatchNorm2d(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None
        self.relu = ReLU()  # after the sum

    def forward(self, X):
        shapes.check_block_input_shape(self.spec, np.shape(X))
        Y = self.relu1(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
            if self.bn3:
                X = self.bn3(X)
        return self.relu(Y + X)

    def backward(self, dout):
        dY = dX = self.relu.backward(dout)  # the sum Y + X hands its gradient to both terms
        if self.conv3:
            if self.bn3:
                dX = self.bn3.backward(dX)
            dX = self.conv3.backward(dX)
        dY = self.bn2.backward(dY)
        dY = self.conv2.backward(dY)
        dY = self.relu1.backward(dY)
        dY = self.bn1.backward(dY)
        dY = self.conv1.backward(dY)
        return dY + dX  # X fed both conv1 and the sum


# ---- the exercises' blocks -----------------------------------------------------------------------
class Bottleneck(Layer):
    """Exercise 3: 1x1 conv -> 3x3 conv -> 1x1 conv, narrowing to ``num_channels // 4``
    inside; the stride on the 3x3 conv (torchvision's "v1.5") or, with ``stride_on="1x1"``,
    on the first 1x1 conv (the paper's). The projection is ``shortcut``: ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = Conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn1 = BatchNorm2d(mid, spec.bn)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(mid, mid, kernel_size=3, stride=stride2, padding=1, bias=bias)
        self.bn2 = BatchNorm2d(mid, spec.bn)
        self.relu2 = ReLU()
        self.conv3 = Conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = BatchNorm2d(num_channels, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None
        self.relu = ReLU()  # after the sum

    def forward(self, X):
        shapes.check_block_input_shape(self.spec, np.shape(X))
        Y = self.relu1(self.bn1(self.conv1(X)))
        Y = self.relu2(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.shortcut:
            X = self.shortcut(X)
        return self.relu(Y + X)

    def backward(self, dout):
        dY = dX = self.relu.backward(dout)
        if self.shortcut:
            dX = self.shortcut.backward(dX)
        dY = self.conv3.backward(self.bn3.backward(dY))
        dY = self.conv2.backward(self.bn2.backward(self.relu2.backward(dY)))
        dY = self.conv1.backward(self.bn1.backward(self.relu1.backward(dY)))
        return dY + dX


class PreActResidual(Layer):
    """Exercise 4: He et al.'s pre-activation block, BN -> ReLU -> conv twice, no ReLU
    after the sum; a projection (``conv3``, with ``bn3`` for ``shortcut="conv_bn"``) reads
    the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.bn1 = BatchNorm2d(input_channels, spec.bn)  # normalises conv1's input
        self.relu1 = ReLU()
        self.conv1 = Conv2d(input_channels, num_channels, kernel_size=3, stride=strides, padding=1, bias=bias)
        self.bn2 = BatchNorm2d(num_channels, spec.bn)
        self.relu2 = ReLU()
        self.conv2 = Conv2d(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        if spec.projection:
            self.conv3 = Conv2d(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)
        else:
            self.conv3 = None
        self.bn3 = BatchNorm2d(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        shapes.check_block_input_shape(self.spec, np.shape(X))
        P = self.relu1(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(self.relu2(self.bn2(Y)))
        if self.conv3:
            X = self.conv3(P)
            if self.bn3:
                X = self.bn3(X)
        return Y + X

    def backward(self, dout):
        dY = self.conv2.backward(dout)  # no ReLU after the sum: both terms get dout
        dY = self.conv1.backward(self.bn2.backward(self.relu2.backward(dY)))
        if self.conv3:  # both paths start from P: their gradients meet there
            dX = self.bn3.backward(dout) if self.bn3 else dout
            return self.bn1.backward(self.relu1.backward(dY + self.conv3.backward(dX)))
        return self.bn1.backward(self.relu1.backward(dY)) + dout


class PreActBottleneck(Layer):
    """The pre-activation bottleneck: BN -> ReLU before each of the three convs, no ReLU
    after the sum; the projection (``shortcut``) reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.bn1 = BatchNorm2d(input_channels, spec.bn)  # each bnK normalises convK's input
        self.relu1 = ReLU()
        self.conv1 = Conv2d(input_channels, mid, kernel_size=1, stride=stride1, bias=bias)
        self.bn2 = BatchNorm2d(mid, spec.bn)
        self.relu2 = ReLU()
        self.conv2 = Conv2d(mid, mid, kernel_size=3, stride=stride2, padding=1, bias=bias)
        self.bn3 = BatchNorm2d(mid, spec.bn)
        self.relu3 = ReLU()
        self.conv3 = Conv2d(mid, num_channels, kernel_size=1, bias=bias)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        shapes.check_block_input_shape(self.spec, np.shape(X))
        P = self.relu1(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(self.relu2(self.bn2(Y)))
        Y = self.conv3(self.relu3(self.bn3(Y)))
        if self.shortcut:
            X = self.shortcut(P)
        return Y + X

    def backward(self, dout):
        dY = self.conv3.backward(dout)
        dY = self.conv2.backward(self.bn3.backward(self.relu3.backward(dY)))
        dY = self.conv1.backward(self.bn2.backward(self.relu2.backward(dY)))
        if self.shortcut:  # both paths start from P: their gradients meet there
            return self.bn1.backward(self.relu1.backward(dY + self.shortcut.backward(dout)))
        return self.bn1.backward(self.relu1.backward(dY)) + dout


BLOCKS = {
    "Residual": Residual,
    "Bottleneck": Bottleneck,
    "PreActResidual": PreActResidual,
    "PreActBottleneck": PreActBottleneck,
}


def block(spec: BlockSpec) -> Layer:
    """The block ``spec`` describes, built by the class for its kind."""
    return BLOCKS[block_class(spec)](spec)


# ---- the stages and the net ----------------------------------------------------------------------
class Sequential(Layer):
    """Named layers applied in order; backward runs them in reverse."""

    def __init__(self, layers: dict[str, Layer]):
        super().__init__()
        self.layers = dict(layers)

    def forward(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        return dout

    def named_layers(self, prefix=""):
        for name, layer in self.layers.items():
            yield from layer.named_layers(f"{prefix}.{name}" if prefix else name)


class ResnetBlock(Sequential):
    """A stage: ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        self.spec = spec
        super().__init__({str(j): block(b) for j, b in enumerate(spec.blocks)})


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options).layers.values())


class Net(Sequential):
    """A whole ResNet with three named parts: ``stem``, ``stages``, ``head``."""

    def __init__(self, spec: ArchSpec):
        self.spec = spec
        stem = {"conv": Conv2d(spec.in_channels, spec.width, 7, 2, 3, bias=spec.conv_bias)}
        if not spec.preact:
            stem.update(bn=BatchNorm2d(spec.width, spec.bn), relu=ReLU())
        stem["pool"] = MaxPool2d(3, 2, 1)
        head = {"bn": BatchNorm2d(spec.features, spec.bn), "relu": ReLU()} if spec.preact else {}
        head.update(pool=GlobalAvgPool2d(), flatten=Flatten(), fc=Linear(spec.features, spec.num_classes))
        super().__init__(
            {
                "stem": Sequential(stem),
                "stages": Sequential({str(i): ResnetBlock(s) for i, s in enumerate(spec.stages)}),
                "head": Sequential(head),
            }
        )
        # canonical layer name <-> the layer's path here (stages.1.0.shortcut.conv is stages.1.0.conv3)
        self.paths = canonical.module_paths(spec)
        self.canonical_names = {path: name for name, path in self.paths.items()}

    def train(self, mode: bool = True):
        self.training = mode
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def forward(self, x):
        """Logits for an (N, in_channels, H, W) batch; refused, before any layer runs, if
        the shape does not fit the net (channels, empty batch, too small for BN to train)."""
        x = np.asarray(x)
        shapes.check_input_shape(self.spec, x.shape, training=self.training)
        return super().forward(x)

    def eval(self):
        return self.train(False)

    def layer_outputs(self, x):
        """Forward pass that also returns each named layer's output (the shape table)."""
        outputs = []
        shapes.check_input_shape(self.spec, np.shape(x), training=self.training)
        x = self.layers["stem"].forward(x)
        outputs.append(("stem", x))
        for i, stage in self.layers["stages"].layers.items():
            x = stage.forward(x)
            outputs.append((f"stages.{i}", x))
        for name, layer in self.layers["head"].layers.items():
            x = layer.forward(x)
            outputs.append((f"head.{name}", x))
        return outputs

    def kink_margin(self) -> float:
        """How close the last forward pass came to a decision the gradient depends on:
        the smallest |input| of any ReLU and the smallest gap between the winner and the
        runner-up of any max-pool window. Below float32's rounding error (~1e-6 here),
        a float32 framework may take the other branch and get a different gradient."""
        return min(layer.margin for _, layer in self.named_layers() if hasattr(layer, "margin"))

    # canonical weights: "<canonical layer name>.<parameter or buffer name>"
    def state(self) -> dict[str, np.ndarray]:
        """The live arrays (changing one changes the net), by canonical name."""
        out = {
            f"{path}.{key}": value
            for path, layer in self.named_layers()
            for key, value in {**layer.params, **layer.buffers}.items()
        }
        return canonical.rename_layers(out, self.canonical_names)

    def named_grads(self) -> dict[str, np.ndarray]:
        grads = {f"{path}.{key}": g for path, layer in self.named_layers() for key, g in layer.grads.items()}
        return canonical.rename_layers(grads, self.canonical_names)

    def load_state(self, weights: dict[str, np.ndarray]) -> None:
        canonical.check_weights(self.spec, weights)
        weights = canonical.rename_layers(weights, self.paths)
        for path, layer in self.named_layers():
            for store in (layer.params, layer.buffers):
                for key in store:
                    store[key] = np.array(weights[f"{path}.{key}"], dtype=DTYPE)


def net(arch="d2l-resnet18", *, seed: int = 0, **overrides) -> Net:
    """Build a named architecture with the spec's initial weights for ``seed``."""
    spec = get_arch(arch, **overrides)
    model = Net(spec)
    model.load_state(canonical.init_weights(spec, seed))
    return model


# ---- the layers, each with its backward ----------------------------------------------------------
class Conv2d(Layer):
    """Convolution (cross-correlation, as every framework computes it), OIHW kernel,
    symmetric zero padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.params["weight"] = np.zeros((out_channels, in_channels, kernel_size, kernel_size), DTYPE)
        if bias:
            self.params["bias"] = np.zeros(out_channels, DTYPE)

    def forward(self, x):
        w, s, p = self.params["weight"], self.stride, self.padding
        if x.ndim != 4 or x.shape[1] != w.shape[1]:  # einsum would broadcast a 1-channel input
            raise InputError(f"Conv2d expects an (N, {w.shape[1]}, H, W) input, got shape {x.shape}")
        k = w.shape[2]
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        # windows: (N, C, Ho, Wo, k, k), a view into xp, no copy
        windows = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        out = np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)
        if "bias" in self.params:
            out += self.params["bias"][None, :, None, None]
        self.cache = (x.shape, windows)
        return out

    def backward(self, dout):
        w, s, p = self.params["weight"], self.stride, self.padding
        k = w.shape[2]
        x_shape, windows = self.cache
        self.grads["weight"] = np.einsum("nohw,nchwij->ocij", dout, windows, optimize=True)
        if "bias" in self.params:
            self.grads["bias"] = dout.sum(axis=(0, 2, 3))
        # Each output position sent w * window to the output; send dout back through
        # every kernel offset (i, j) to the input positions it read.
        n, c, h, wd = x_shape
        dxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), DTYPE)
        ho, wo = dout.shape[2:]
        for i in range(k):
            for j in range(k):
                dxp[:, :, i : i + s * ho : s, j : j + s * wo : s] += np.einsum("nohw,oc->nchw", dout, w[:, :, i, j])
        return dxp[:, :, p : p + h, p : p + wd]


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel.

    Training: normalise with the batch mean and biased variance, and update
    ``running = (1 - m) * running + m * batch`` with the unbiased variance.
    Inference: normalise with the running statistics.
    """

    def __init__(self, channels, bn: BatchNormSpec = BatchNormSpec()):
        super().__init__()
        self.eps, self.momentum = bn.eps, bn.momentum
        self.params["weight"] = np.ones(channels, DTYPE)
        self.params["bias"] = np.zeros(channels, DTYPE)
        self.buffers["running_mean"] = np.zeros(channels, DTYPE)
        self.buffers["running_var"] = np.ones(channels, DTYPE)

    def forward(self, x):
        gamma, beta = self.params["weight"][None, :, None, None], self.params["bias"][None, :, None, None]
        if self.training:
            m, count = self.momentum, x.size // x.shape[1]
            if count < 2:  # the unbiased variance would divide by zero and poison running_var
                raise InputError(
                    f"BatchNorm2d in training mode needs more than one value per channel, "
                    f"got input shape {x.shape}; use a larger batch or larger images"
                )
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * var * count / (count - 1)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)[None, :, None, None]
        x_hat = (x - mean[None, :, None, None]) * inv_std
        self.cache = (x_hat, inv_std)
        return gamma * x_hat + beta

    def backward(self, dout):
        x_hat, inv_std = self.cache
        self.grads["weight"] = (dout * x_hat).sum(axis=(0, 2, 3))
        self.grads["bias"] = dout.sum(axis=(0, 2, 3))
        dx_hat = dout * self.params["weight"][None, :, None, None]
        if not self.training:  # the statistics are constants
            return dx_hat * inv_std
        # The batch mean and variance depend on x too; this is the usual closed form.
        return inv_std * (
            dx_hat
            - dx_hat.mean(axis=(0, 2, 3), keepdims=True)
            - x_hat * (dx_hat * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        )


class ReLU(Layer):
    def forward(self, x):
        self.mask = x > 0
        self.margin = np.abs(x).min()  # distance from the kink, see Net.kink_margin
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class MaxPool2d(Layer):
    """Max pooling; padding counts as -inf, so it is never the maximum."""

    def __init__(self, kernel_size=3, stride=2, padding=1):
        super().__init__()
        self.k, self.s, self.p = kernel_size, stride, padding

    def forward(self, x):
        k, s, p = self.k, self.s, self.p
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
        windows = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        n, c, ho, wo = windows.shape[:4]
        flat = windows.reshape(n, c, ho, wo, k * k)
        self.argmax = flat.argmax(axis=-1)  # the first maximum, as the frameworks pick
        top2 = -np.partition(-flat, 1, axis=-1)[..., :2]
        live = top2[..., 0] > 0  # a window of zeros after a ReLU sends no gradient anyway
        self.margin = (top2[..., 0] - top2[..., 1])[live].min(initial=np.inf)
        self.x_shape = x.shape
        return np.take_along_axis(flat, self.argmax[..., None], axis=-1)[..., 0]

    def backward(self, dout):
        k, s, p = self.k, self.s, self.p
        n, c, h, w = self.x_shape
        ho, wo = dout.shape[2:]
        dxp = np.zeros((n, c, h + 2 * p, w + 2 * p), DTYPE)
        for i in range(k):
            for j in range(k):  # route each gradient to the window position that won
                dxp[:, :, i : i + s * ho : s, j : j + s * wo : s] += dout * (self.argmax == i * k + j)
        return dxp[:, :, p : p + h, p : p + w]


class GlobalAvgPool2d(Layer):
    def forward(self, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, dout):
        n, c, h, w = self.x_shape
        return np.broadcast_to(dout / (h * w), self.x_shape).copy()


class Flatten(Layer):
    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self.x_shape)


class Linear(Layer):
    """Dense layer, weight (out, in): y = x W^T + b."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.params["weight"] = np.zeros((out_features, in_features), DTYPE)
        self.params["bias"] = np.zeros(out_features, DTYPE)

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dout):
        self.grads["weight"] = dout.T @ self.x
        self.grads["bias"] = dout.sum(axis=0)
        return dout @ self.params["weight"]


def projection(spec: BlockSpec) -> Sequential:
    """A bottleneck's projection shortcut: a strided 1x1 conv, then BN for ``shortcut="conv_bn"``."""
    layers = {"conv": Conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, 0, bias=spec.conv_bias)}
    if spec.shortcut == "conv_bn":
        layers["bn"] = BatchNorm2d(spec.out_channels, spec.bn)
    return Sequential(layers)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) and its gradient w.r.t. the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # for numerical stability
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return float(loss), dlogits / n


def smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy against the smoothed targets (:func:`resnet_multi.optim.smoothed_targets`)
    and its gradient w.r.t. the logits: softmax minus the target, over the batch size."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = optim.smoothed_targets(labels, logits.shape[1], smoothing, dtype=logits.dtype)
    n = logits.shape[0]
    loss = -(targets * log_probs).sum(axis=1).mean()
    return float(loss), (np.exp(log_probs) - targets) / n


# ---- the backend seam ----------------------------------------------------------------------------
class NumpyBackend(Backend):
    name = "numpy"

    def framework_version(self):
        return np.__version__

    def devices(self):
        return ["cpu"]

    def _build(self, spec, device):
        return Net(spec)

    def _get_weights(self, model):
        return {k: v.astype(np.float32) for k, v in model.module.state().items()}

    def _set_weights(self, model, weights):
        model.module.load_state(weights)

    def _forward(self, model, x, training):
        return model.module.train(training).forward(x.astype(DTYPE)).astype(np.float32)

    def _loss_and_grads(self, model, x, y):
        net_ = model.module.train(True)
        logits = net_.forward(x.astype(DTYPE))
        loss, dlogits = softmax_cross_entropy(logits, y)
        net_.backward(dlogits)
        return TrainingPass(loss, logits, dict(net_.named_grads()))

    def _sgd_step(self, model, x, y, lr):
        settings = optimizer_settings(model)
        if not settings.plain:
            return self._optimizer_step(model, x, y, lr, settings)
        result = self._loss_and_grads(model, x, y)
        for _, layer in model.module.named_layers():
            for key, grad in layer.grads.items():
                layer.params[key] -= lr * grad
        return result.loss, result.logits.astype(np.float32)

    # The canonical update (resnet_multi.optim), written out: the one every backend matches.
    def _optimizer_step(self, model, x, y, lr, settings):
        net_ = model.module.train(True)
        logits = net_.forward(x.astype(DTYPE))
        loss, dlogits = smoothed_cross_entropy(logits, y, settings.label_smoothing)
        net_.backward(dlogits)
        velocity = self._velocity(model)
        for path, layer in net_.named_layers():
            for key, grad in layer.grads.items():
                optim.sgd_update(layer.params[key], grad, velocity[f"{path}.{key}"], lr, settings)
        return loss, logits.astype(np.float32)

    @staticmethod
    def _velocity(model):
        """The momentum buffers, by layer path, float64 as the parameters are; zeros at first."""
        velocity = model.cache.get("velocity")
        if velocity is None:
            velocity = model.cache["velocity"] = {
                f"{path}.{key}": np.zeros_like(value)
                for path, layer in model.module.named_layers()
                for key, value in layer.params.items()
            }
        return velocity

    def _configure_optimizer(self, model, optimizer):
        model.cache.pop("velocity", None)

    def _get_optimizer_state(self, model):
        return canonical.rename_layers(self._velocity(model), model.module.canonical_names)

    def _set_optimizer_state(self, model, state):
        velocity = self._velocity(model)
        for path, value in canonical.rename_layers(state, model.module.paths).items():
            velocity[path] = np.array(value, dtype=DTYPE)

    def _residual_output_shape(self, x, args, options):
        return block(block_spec(*args, **options)).forward(x.astype(DTYPE)).shape

    def count_parameters(self, model):
        params = sum(v.size for _, layer in model.module.named_layers() for v in layer.params.values())
        buffers = sum(v.size for _, layer in model.module.named_layers() for v in layer.buffers.values())
        return params, buffers

    def _named_outputs(self, model, x, training):
        return [
            (name, out.astype(np.float32)) for name, out in model.module.train(training).layer_outputs(x.astype(DTYPE))
        ]

    # The oracle's float64 view, for tests that compare in double precision.
    def forward64(self, model, x, *, training=False):
        shapes.check_input_shape(model.spec, x.shape, training=training)
        return model.module.train(training).forward(np.asarray(x, DTYPE))


BACKEND = NumpyBackend()


# What the spec itself says, in the same form as each framework module's CONVENTIONS
# (resnet-multi conventions reads these literals without importing any framework).
CONVENTIONS = {
    "framework": "the spec (this NumPy reference)",
    "padding": {
        "default": "symmetric: 3 for the 7x7/2 stem, 1 for 3x3 convs and the 3x3/2 max pool (which pads with -inf)",
        "pads": [3, 3],
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05},
    "bn_momentum": {"default": "0.1: running = (1 - m) * running + m * batch", "momentum": 0.1, "keeps": "new"},
    "bn_running_var": {
        "default": "unbiased batch variance (n - 1); the batch is normalised with the biased one",
        "variance": "unbiased",
    },
    "data_layout": {"default": "NCHW", "layout": "NCHW"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)"},
    "param_names": {
        "default": "weight, bias; BN weight (gamma), bias (beta), running_mean, running_var",
        "bn": ["weight", "bias", "running_mean", "running_var"],
    },
    "init": {
        "default": "none of its own: weights drawn in NumPy from the seed (weights.init_weights)",
        "conv_bias": True,
        "conv_weight": None,
    },
    "mode_switch": {"default": "net.train() / net.eval(); starts in training", "starts": "training"},
    "optimizer": {
        "default": "the canonical SGD (resnet_multi.optim, PyTorch's): v = mu * v + (g + wd * p); "
        "p -= lr * (g + wd * p + mu * v) with Nesterov, else p -= lr * v; lr outside the velocity",
        "lr_in_velocity": False,
    },
    "execution": {
        "default": "op by op (NumPy)",
        "cpu_mode": "eager",
        "here": "the reference computes each step op by op; nothing to compile",
    },
}
