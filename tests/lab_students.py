"""Students' code for the lab's tests: the chapter's ``Residual`` in each framework with one
known mistake planted (``MISTAKES[framework]`` lists which), written as a student would write
it in that framework, and a from-scratch NumPy student built on the reference itself.

``residual(framework, mistake)`` returns the class; ``mistake=None`` is a correct one.
"""

from resnet_multi.lab import reference
from resnet_multi.spec import block_spec_for

# framework -> the mistakes planted in its Residual (each must be named by its own hint)
MISTAKES = {
    "torch": (
        "stride_on_conv2",
        "projection_no_stride",
        "relu_before_add",
        "no_relu_after_add",
        "bn_after_relu",
        "skip_bn2",
        "no_conv_bias",
        "bn_momentum=0.9",
        "bn_eps=0.001",
    ),
    "tf": ("padding_same", "stride_on_conv2", "bn_momentum=0.9", "skip_bn2"),
    "mxnet": ("stride_on_conv2", "bn_momentum=0.9", "relu_before_add"),
    "paddle": ("padding_same", "stride_on_conv2", "bn_momentum=0.9"),
    "mindspore": ("padding_same", "no_conv_bias", "bn_momentum=0.9"),
    "jax": ("padding_same", "bn_momentum=0.9"),
}


def _strides(mistake, strides):
    return (1, strides) if mistake == "stride_on_conv2" else (strides, 1)


def torch_residual(mistake=None):
    import torch.nn.functional as F
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            s1, s2 = _strides(mistake, strides)
            bias = mistake != "no_conv_bias"
            self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=s1, bias=bias)
            self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1, stride=s2, bias=bias)
            if use_1x1conv:
                s3 = 1 if mistake == "projection_no_stride" else strides
                self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=s3, bias=bias)
            else:
                self.conv3 = None
            kw = {"momentum": 0.9} if mistake == "bn_momentum=0.9" else {}
            kw.update({"eps": 1e-3} if mistake == "bn_eps=0.001" else {})
            self.bn1 = nn.BatchNorm2d(num_channels, **kw)
            if mistake != "skip_bn2":
                self.bn2 = nn.BatchNorm2d(num_channels, **kw)

        def forward(self, X):
            if mistake == "bn_after_relu":
                Y = self.bn1(F.relu(self.conv1(X)))
            else:
                Y = F.relu(self.bn1(self.conv1(X)))
            Y = self.conv2(Y)
            if mistake != "skip_bn2":
                Y = self.bn2(Y)
            if self.conv3:
                X = self.conv3(X)
            if mistake == "relu_before_add":
                return F.relu(Y) + X
            if mistake == "no_relu_after_add":
                return Y + X
            return F.relu(Y + X)

    return Residual


def tf_residual(mistake=None):
    import tensorflow as tf

    class Residual(tf.keras.Model):
        def __init__(self, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            s1, s2 = _strides(mistake, strides)
            padding = "same" if mistake == "padding_same" else "valid"
            pad = (lambda x: x) if padding == "same" else tf.keras.layers.ZeroPadding2D(1)
            self.pad = pad
            self.conv1 = tf.keras.layers.Conv2D(num_channels, kernel_size=3, strides=s1, padding=padding)
            self.conv2 = tf.keras.layers.Conv2D(num_channels, kernel_size=3, strides=s2, padding=padding)
            self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
            momentum = 0.1 if mistake == "bn_momentum=0.9" else 0.9  # Keras': the old value's share
            self.bn1 = tf.keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-5)
            if mistake != "skip_bn2":
                self.bn2 = tf.keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-5)

        def call(self, X):
            Y = tf.keras.activations.relu(self.bn1(self.conv1(self.pad(X))))
            Y = self.conv2(self.pad(Y))
            if mistake != "skip_bn2":
                Y = self.bn2(Y)
            if self.conv3 is not None:
                X = self.conv3(X)
            return tf.keras.activations.relu(Y + X)

    return Residual


def mxnet_residual(mistake=None):
    from mxnet import npx
    from mxnet.gluon import nn

    class Residual(nn.Block):
        def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
            super().__init__(**kwargs)
            s1, s2 = _strides(mistake, strides)
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=s1)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=s2)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
            momentum = 0.1 if mistake == "bn_momentum=0.9" else 0.9  # Gluon's: the old value's share
            self.bn1 = nn.BatchNorm(momentum=momentum)
            self.bn2 = nn.BatchNorm(momentum=momentum)

        def forward(self, X):
            Y = npx.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            if mistake == "relu_before_add":
                return npx.relu(Y) + X
            return npx.relu(Y + X)

    return Residual


def paddle_residual(mistake=None):
    import paddle.nn.functional as F
    from paddle import nn

    class Residual(nn.Layer):
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            s1, s2 = _strides(mistake, strides)
            padding = "SAME" if mistake == "padding_same" else 1
            self.conv1 = nn.Conv2D(input_channels, num_channels, kernel_size=3, padding=padding, stride=s1)
            self.conv2 = nn.Conv2D(num_channels, num_channels, kernel_size=3, padding=padding, stride=s2)
            self.conv3 = nn.Conv2D(input_channels, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
            momentum = 0.1 if mistake == "bn_momentum=0.9" else 0.9  # Paddle's: the old value's share
            self.bn1 = nn.BatchNorm2D(num_channels, momentum=momentum)
            self.bn2 = nn.BatchNorm2D(num_channels, momentum=momentum)

        def forward(self, X):
            Y = F.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            return F.relu(Y + X)

    return Residual


def mindspore_residual(mistake=None):
    from mindspore import nn, ops

    class Residual(nn.Cell):
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            bias = mistake != "no_conv_bias"  # MindSpore's Conv2d has no bias unless told
            pad = {"pad_mode": "same"} if mistake == "padding_same" else {"pad_mode": "pad", "padding": 1}
            self.conv1 = nn.Conv2d(input_channels, num_channels, 3, stride=strides, has_bias=bias, **pad)
            self.conv2 = nn.Conv2d(num_channels, num_channels, 3, has_bias=bias, **pad)
            if use_1x1conv:
                self.conv3 = nn.Conv2d(input_channels, num_channels, 1, stride=strides, has_bias=bias)
            else:
                self.conv3 = None
            momentum = 0.1 if mistake == "bn_momentum=0.9" else 0.9  # MindSpore's: the old value's share
            self.bn1 = nn.BatchNorm2d(num_channels, momentum=momentum)
            self.bn2 = nn.BatchNorm2d(num_channels, momentum=momentum)

        def construct(self, X):
            Y = ops.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3 is not None:
                X = self.conv3(X)
            return ops.relu(Y + X)

    return Residual


def jax_residual(mistake=None):
    from flax import linen as nn

    padding = "same" if mistake == "padding_same" else ((1, 1), (1, 1))
    momentum = 0.1 if mistake == "bn_momentum=0.9" else 0.9  # Flax's: the old value's share

    class Residual(nn.Module):
        num_channels: int
        use_1x1conv: bool = False
        strides: tuple = (1, 1)
        training: bool = True

        def setup(self):
            self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding=padding, strides=self.strides)
            self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding=padding)
            if self.use_1x1conv:
                self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
            else:
                self.conv3 = None
            self.bn1 = nn.BatchNorm(not self.training, momentum=momentum)
            self.bn2 = nn.BatchNorm(not self.training, momentum=momentum)

        def __call__(self, X):
            Y = nn.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            return nn.relu(Y + X)

    return Residual


def residual(framework, mistake=None):
    return globals()[f"{framework}_residual"](mistake)


# ---- from scratch: the reference with a mistake planted, under the book's attribute names ---------
def planted(class_name, mistakes, **options):
    """A NumPy student's block class: the reference's block of ``class_name`` with ``mistakes``
    planted, its layers held under the book's attribute names."""

    class Block:
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            spec = block_spec_for(class_name, input_channels, num_channels, use_1x1conv, strides, **options)
            self._block = reference.Block(spec, frozenset(mistakes))
            names = spec.attribute_names()
            names.setdefault("shortcut.bn", "bn3" if spec.kind == "basic" else "shortcut.bn")
            for canonical, layer in self._block.layers.items():
                attribute = names.get(canonical, canonical)
                if "." in attribute:  # a bottleneck's shortcut: a container of conv and bn
                    holder, _, leaf = attribute.partition(".")
                    if not hasattr(self, holder):
                        setattr(self, holder, _Holder())
                    setattr(getattr(self, holder), leaf, layer)
                else:
                    setattr(self, attribute, layer)

        def forward(self, X):
            return self._block.forward(X)

        def backward(self, dout):
            return self._block.backward(dout)

    Block.__name__ = class_name
    return Block


class _Holder:
    def forward(self, X):  # never called: the block runs its own layers
        raise NotImplementedError
