"""The chapter from scratch: ResNet in NumPy, forward and backward, in float64.

This is the oracle every framework backend is compared with, so it is written
to be read: each layer is a small class with ``forward`` (which remembers what
``backward`` needs) and ``backward`` (which takes the gradient of the loss with
respect to the layer's output, stores the gradients of its parameters in
``self.grads`` and returns the gradient with respect to its input).

    from resnet_multi import numpy as rn
    net = rn.net("d2l-resnet18")
    logits = net.forward(x)           # x: (N, 1, H, W)
    loss, dlogits = rn.softmax_cross_entropy(logits, y)
    net.backward(dlogits)             # fills every layer's .grads
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import shapes
from . import weights as canonical
from .backend import Backend, TrainingPass
from .spec import ArchSpec, BatchNormSpec, block_spec, get_arch, stage_spec

DTYPE = np.float64


class Layer:
    """A layer with named parameters, their gradients, and (for BN) buffers."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True

    def __call__(self, x):
        return self.forward(x)

    def named_layers(self, prefix=""):
        yield prefix, self


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
            raise ValueError(f"Conv2d expects an (N, {w.shape[1]}, H, W) input, got shape {x.shape}")
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
                dxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += np.einsum("nohw,oc->nchw", dout, w[:, :, i, j])
        return dxp[:, :, p:p + h, p:p + wd]


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
                raise ValueError(f"BatchNorm2d in training mode needs more than one value per channel, "
                                 f"got input shape {x.shape}; use a larger batch or larger images")
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
        return inv_std * (dx_hat - dx_hat.mean(axis=(0, 2, 3), keepdims=True)
                          - x_hat * (dx_hat * x_hat).mean(axis=(0, 2, 3), keepdims=True))


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
                dxp[:, :, i:i + s * ho:s, j:j + s * wo:s] += dout * (self.argmax == i * k + j)
        return dxp[:, :, p:p + h, p:p + w]


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


class Residual(Sequential):
    """The chapter's residual block: ``relu(F(x) + shortcut(x))`` (or, pre-activation,
    ``F(x) + shortcut(bn-relu(x))`` with no ReLU after the sum).

    ``Residual(input_channels, num_channels, use_1x1conv=False, strides=1)`` as in
    the chapter; ``kind="bottleneck"``, ``preact=True`` and the other
    :class:`~resnet_multi.spec.BlockSpec` fields select the exercises' variants.
    """

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec(input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        bns = dict(spec.bn_names())
        layers = {}
        for i, (name, cin, cout, k, s, p) in enumerate(spec.convs()):
            bn = "bn" + name[-1]
            if spec.preact:  # BN -> ReLU -> conv
                layers[bn] = BatchNorm2d(bns[bn], spec.bn)
                layers[f"relu{i + 1}"] = ReLU()
                layers[name] = Conv2d(cin, cout, k, s, p, bias=spec.conv_bias)
            else:  # conv -> BN (-> ReLU, except after the last BN: that comes after the sum)
                layers[name] = Conv2d(cin, cout, k, s, p, bias=spec.conv_bias)
                layers[bn] = BatchNorm2d(bns[bn], spec.bn)
                if i < len(spec.convs()) - 1:
                    layers[f"relu{i + 1}"] = ReLU()
        super().__init__(layers)
        self.shortcut = None
        if spec.projection:
            shortcut = {"conv": Conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, 0,
                                       bias=spec.conv_bias)}
            if spec.shortcut == "conv_bn":
                shortcut["bn"] = BatchNorm2d(spec.out_channels, spec.bn)
            self.shortcut = Sequential(shortcut)
        self.out_relu = None if spec.preact else ReLU()

    def forward(self, x):
        shapes.check_block_input_shape(self.spec, np.shape(x))
        layers = list(self.layers.values())
        if self.spec.preact:
            # The first BN-ReLU is shared: a projection reads the pre-activated input.
            pre = layers[1].forward(layers[0].forward(x))
            y = pre
            for layer in layers[2:]:
                y = layer.forward(y)
            shortcut_in = pre if self.shortcut else x
        else:
            y = super().forward(x)
            shortcut_in = x
        y = y + (self.shortcut.forward(shortcut_in) if self.shortcut else shortcut_in)
        return self.out_relu.forward(y) if self.out_relu else y

    def backward(self, dout):
        if self.out_relu:
            dout = self.out_relu.backward(dout)
        d_shortcut = self.shortcut.backward(dout) if self.shortcut else dout
        layers = list(self.layers.values())
        if self.spec.preact:
            d = dout
            for layer in reversed(layers[2:]):
                d = layer.backward(d)
            if self.shortcut:  # both paths met at the pre-activation
                return layers[0].backward(layers[1].backward(d + d_shortcut))
            return layers[0].backward(layers[1].backward(d)) + d_shortcut
        return super().backward(dout) + d_shortcut

    def named_layers(self, prefix=""):
        yield from super().named_layers(prefix)
        dot = f"{prefix}." if prefix else ""  # a block on its own names its layers without a leading dot
        if self.shortcut:
            yield from self.shortcut.named_layers(f"{dot}shortcut")
        if self.out_relu:
            yield f"{dot}relu", self.out_relu


class ResnetBlock(Sequential):
    """A stage: ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        self.spec = spec
        super().__init__({str(j): Residual(b) for j, b in enumerate(spec.blocks)})


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
        super().__init__({
            "stem": Sequential(stem),
            "stages": Sequential({str(i): ResnetBlock(s) for i, s in enumerate(spec.stages)}),
            "head": Sequential(head),
        })

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

    # canonical weights: "<layer path>.<parameter or buffer name>"
    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for path, layer in self.named_layers():
            for key, value in {**layer.params, **layer.buffers}.items():
                out[f"{path}.{key}"] = value
        return out

    def named_grads(self) -> dict[str, np.ndarray]:
        return {f"{path}.{key}": g for path, layer in self.named_layers() for key, g in layer.grads.items()}

    def load_state(self, weights: dict[str, np.ndarray]) -> None:
        canonical.check_weights(self.spec, weights)
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


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) and its gradient w.r.t. the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # for numerical stability
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return float(loss), dlogits / n


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
        result = self._loss_and_grads(model, x, y)
        for path, layer in model.module.named_layers():
            for key, grad in layer.grads.items():
                layer.params[key] -= lr * grad
        return result.loss, result.logits.astype(np.float32)

    def _residual_output_shape(self, x, args, options):
        return Residual(*args, **options).forward(x.astype(DTYPE)).shape

    def count_parameters(self, model):
        params = sum(v.size for _, layer in model.module.named_layers() for v in layer.params.values())
        buffers = sum(v.size for _, layer in model.module.named_layers() for v in layer.buffers.values())
        return params, buffers

    def _named_outputs(self, model, x, training):
        return [(name, out.astype(np.float32))
                for name, out in model.module.train(training).layer_outputs(x.astype(DTYPE))]

    # The oracle's float64 view, for tests that compare in double precision.
    def forward64(self, model, x, *, training=False):
        shapes.check_input_shape(model.spec, x.shape, training=training)
        return model.module.train(training).forward(np.asarray(x, DTYPE))


BACKEND = NumpyBackend()


# What the spec itself says, in the same form as each framework module's CONVENTIONS
# (resnet-multi conventions reads these literals without importing any framework).
CONVENTIONS = {
    "framework": "the spec (this NumPy reference)",
    "padding": {"default": "symmetric: 3 for the 7x7/2 stem, 1 for 3x3 convs and the 3x3/2 max pool "
                           "(which pads with -inf)", "pads": [3, 3]},
    "bn_eps": {"default": 1e-05, "eps": 1e-05},
    "bn_momentum": {"default": "0.1: running = (1 - m) * running + m * batch", "momentum": 0.1, "keeps": "new"},
    "bn_running_var": {"default": "unbiased batch variance (n - 1); the batch is normalised with the biased one",
                       "variance": "unbiased"},
    "data_layout": {"default": "NCHW", "layout": "NCHW"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW"},
    "dense_layout": {"default": "(out, in)", "layout": "(out, in)"},
    "param_names": {"default": "weight, bias; BN weight (gamma), bias (beta), running_mean, running_var",
                    "bn": ["weight", "bias", "running_mean", "running_var"]},
    "init": {"default": "none of its own: weights drawn in NumPy from the seed (weights.init_weights)",
             "conv_bias": True, "conv_weight": None},
    "mode_switch": {"default": "net.train() / net.eval(); starts in training", "starts": "training"},
}
