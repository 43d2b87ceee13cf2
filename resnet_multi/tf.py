"""The Residual Networks chapter in TensorFlow (Keras 3), on NHWC batches.

    from resnet_multi import tf as rn
    net = rn.net("d2l-resnet18")                     # the chapter's network, the spec's weights
    logits = net(tf.zeros((2, 96, 96, 1)), training=False)
    print(rn.shape_table(net, (1, 96, 96, 1)))       # or: python -m resnet_multi.tf

First the chapter's classes, then the exercises' blocks, the stage and the network; then the
layers that translate Keras' defaults to the spec (each says why), the canonical weights and
the backend seam. The textbook's own Keras code is in :mod:`resnet_multi.textbook.tf`.
"""

from __future__ import annotations

import os

import numpy as np

from . import nhwc, shapes
from .backend import Backend, TrainingPass, optimizer_settings, require
from .errors import InputError
from .spec import ArchSpec, BatchNormSpec, BlockSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .weights import init_weights

# Keras 3 runs on whichever backend KERAS_BACKEND names; this module is the TensorFlow one.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = require("tensorflow", "tf")
keras = require("keras", "tf")
if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"resnet_multi.tf needs Keras on its TensorFlow backend, but Keras was loaded with "
        f"KERAS_BACKEND={keras.backend.backend()!r}; unset it or set it to 'tensorflow'"
    )
layers = keras.layers


# ---- the chapter's block ----------------------------------------------------------------------
class Residual(layers.Layer):
    """The Residual block of ResNet models: ``relu(F(X) + X)``, with a 1x1 conv (``conv3``)
    on the shortcut when ``use_1x1conv``.

    Unlike the textbook's Keras code it takes ``input_channels``, so that its weights exist
    (and can be counted and loaded) before the first call. ``conv_bias``, ``bn`` and
    ``shortcut="conv_bn"`` (torchvision's BN after the projection: ``bn3``) are the spec's
    options (:class:`resnet_multi.spec.BlockSpec`); a BlockSpec may stand for all arguments.
    """

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        super().__init__()
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        self.conv1 = conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, spec.conv_bias, padding=1)
        self.conv2 = conv2d(spec.out_channels, spec.out_channels, 3, 1, spec.conv_bias, padding=1)
        self.conv3 = None
        if spec.projection:
            self.conv3 = conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias)
        self.bn1 = BatchNorm(spec.out_channels, spec.bn)
        self.bn2 = BatchNorm(spec.out_channels, spec.bn)
        self.bn3 = None
        if spec.projection and spec.shortcut == "conv_bn":
            self.bn3 = BatchNorm(spec.out_channels, spec.bn)
        self.built = True  # every sublayer is built: Keras need not wait for a first call

    def __call__(self, X, *args, **kwargs):
        check_block_input(self.spec, X)  # before Keras' own __call__ casts X to float32
        return super().__call__(X, *args, **kwargs)

    def call(self, X, training=False):
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X, training=training)
        return tf.nn.relu(Y + X)


# ---- the exercises' blocks --------------------------------------------------------------------
class Bottleneck(layers.Layer):
    """Exercise 3, the block of ResNet-50 and deeper: a 1x1 conv narrowing to
    ``num_channels // 4``, a 3x3 conv, a 1x1 conv widening back. The stride sits on the 3x3
    conv, or with ``stride_on="1x1"`` on the first 1x1 (the paper's original). The
    projection is ``shortcut``, since ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        super().__init__()
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        mid, bias = spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(spec.in_channels, mid, 1, stride1, bias)
        self.conv2 = conv2d(mid, mid, 3, stride2, bias, padding=1)
        self.conv3 = conv2d(mid, spec.out_channels, 1, 1, bias)
        self.bn1 = BatchNorm(mid, spec.bn)
        self.bn2 = BatchNorm(mid, spec.bn)
        self.bn3 = BatchNorm(spec.out_channels, spec.bn)
        self.shortcut = Shortcut(spec) if spec.projection else None
        self.built = True

    def __call__(self, X, *args, **kwargs):
        check_block_input(self.spec, X)  # before Keras casts X to float32
        return super().__call__(X, *args, **kwargs)

    def call(self, X, training=False):
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.shortcut is not None:
            X = self.shortcut(X, training=training)
        return tf.nn.relu(Y + X)


class PreActResidual(layers.Layer):
    """Exercise 4, He et al.'s "Identity Mappings" block: BN -> ReLU -> conv, twice, and no
    ReLU after the sum; the projection ``conv3`` (with ``bn3`` for ``shortcut="conv_bn"``)
    reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        super().__init__()
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        self.conv1 = conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, spec.conv_bias, padding=1)
        self.conv2 = conv2d(spec.out_channels, spec.out_channels, 3, 1, spec.conv_bias, padding=1)
        self.conv3 = None
        if spec.projection:
            self.conv3 = conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias)
        self.bn1 = BatchNorm(spec.in_channels, spec.bn)  # normalises conv1's input
        self.bn2 = BatchNorm(spec.out_channels, spec.bn)
        self.bn3 = None
        if spec.projection and spec.shortcut == "conv_bn":
            self.bn3 = BatchNorm(spec.out_channels, spec.bn)
        self.built = True

    def __call__(self, X, *args, **kwargs):
        check_block_input(self.spec, X)  # before Keras casts X to float32
        return super().__call__(X, *args, **kwargs)

    def call(self, X, training=False):
        P = tf.nn.relu(self.bn1(X, training=training))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        if self.conv3 is not None:
            X = self.conv3(P)
            if self.bn3 is not None:
                X = self.bn3(X, training=training)
        return Y + X


class PreActBottleneck(layers.Layer):
    """The bottleneck in pre-activation order (ResNet-50 v2): BN -> ReLU -> conv three times,
    no ReLU after the sum; the projection ``shortcut`` reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        super().__init__()
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        self.spec = spec
        mid, bias = spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv2d(spec.in_channels, mid, 1, stride1, bias)
        self.conv2 = conv2d(mid, mid, 3, stride2, bias, padding=1)
        self.conv3 = conv2d(mid, spec.out_channels, 1, 1, bias)
        self.bn1 = BatchNorm(spec.in_channels, spec.bn)  # each normalises its conv's input
        self.bn2 = BatchNorm(mid, spec.bn)
        self.bn3 = BatchNorm(mid, spec.bn)
        self.shortcut = Shortcut(spec) if spec.projection else None
        self.built = True

    def __call__(self, X, *args, **kwargs):
        check_block_input(self.spec, X)  # before Keras casts X to float32
        return super().__call__(X, *args, **kwargs)

    def call(self, X, training=False):
        P = tf.nn.relu(self.bn1(X, training=training))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        Y = self.conv3(tf.nn.relu(self.bn3(Y, training=training)))
        if self.shortcut is not None:
            X = self.shortcut(P, training=training)
        return Y + X


class Shortcut(layers.Layer):
    """A bottleneck's projection: a 1x1 conv with the block's stride (``conv``), then, for
    ``shortcut="conv_bn"``, a BN (``bn``)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv = conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, spec.conv_bias)
        self.bn = BatchNorm(spec.out_channels, spec.bn) if spec.shortcut == "conv_bn" else None
        self.built = True

    def call(self, X, training=False):
        X = self.conv(X)
        return X if self.bn is None else self.bn(X, training=training)


BLOCKS = {
    "Residual": Residual,
    "Bottleneck": Bottleneck,
    "PreActResidual": PreActResidual,
    "PreActBottleneck": PreActBottleneck,
}


def block(spec: BlockSpec) -> layers.Layer:
    """The block ``spec`` describes, built by the class for its kind (:data:`BLOCKS`)."""
    return BLOCKS[block_class(spec)](spec)


# ---- the stage and the network ------------------------------------------------------------------
class ResnetBlock(layers.Layer):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``.

    The textbook iterates ``self.residual_layers.layers``, which Keras 3 no longer
    has on a list attribute; the blocks are a plain list here, which Keras 3 tracks."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        super().__init__()
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        self.spec = spec
        self.residual_layers = [block(b) for b in spec.blocks]
        self.built = True

    def call(self, x, training=False):
        for blk in self.residual_layers:
            x = blk(x, training=training)
        return x


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options).residual_layers)


class ResNet(keras.Model):
    """stem -> stages -> head on NHWC input; :meth:`named_outputs` walks the chapter's
    layers in order. Call it as ``net(x, training=...)``: a Keras model called without
    ``training`` runs in inference mode outside ``fit``, and its layers inherit that."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.stem_conv = conv2d(spec.in_channels, spec.width, 7, 2, spec.conv_bias, padding=3)
        self.stem_bn = None if spec.preact else BatchNorm(spec.width, spec.bn)
        self.stem_pool = MaxPool2D(3, 2, 1)
        self.stages = [ResnetBlock(s) for s in spec.stages]
        self.head_bn = BatchNorm(spec.features, spec.bn) if spec.preact else None
        self.head_pool = layers.GlobalAveragePooling2D(keepdims=True)
        self.head_flatten = layers.Flatten()
        self.head_fc = layers.Dense(spec.num_classes)
        self.head_fc.build((None, spec.features))
        self.built = True

    def __call__(self, x, *args, **kwargs):
        check_input_dtype(x, self.spec.name)  # before Keras casts it
        return super().__call__(x, *args, **kwargs)

    def _check(self, x):
        shape = tuple(x.shape)
        if len(shape) == 4 and None not in shape:
            n, h, w, c = shape
            if c != self.spec.in_channels and shape[1] == self.spec.in_channels:
                raise InputError(
                    f"{self.spec.name} takes NHWC batches (N, H, W, {self.spec.in_channels}), "
                    f"got {shape}, which looks NCHW: use tf.transpose(x, (0, 2, 3, 1))"
                )
            shapes.check_input_shape(self.spec, (n, c, h, w))
        elif len(shape) != 4:
            raise InputError(
                f"{self.spec.name} expects a 4-d NHWC batch (N, H, W, {self.spec.in_channels}), got shape {shape}"
            )

    def named_outputs(self, x, training=False):
        """Each named layer's output in turn: the chapter's shape table."""
        self._check(x)
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = tf.nn.relu(self.stem_bn(x, training=training))
        x = self.stem_pool(x)
        yield "stem", x
        for i, stage in enumerate(self.stages):
            x = stage(x, training=training)
            yield f"stages.{i}", x
        if self.head_bn is not None:
            x = self.head_bn(x, training=training)
            yield "head.bn", x
            x = tf.nn.relu(x)
            yield "head.relu", x
        for name in ("pool", "flatten", "fc"):
            x = getattr(self, "head_" + name)(x)
            yield f"head.{name}", x

    def call(self, x, training=False):
        *_, (_, logits) = self.named_outputs(x, training)  # the walk's last output: head.fc's
        return logits


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``. Its
    variables live on ``device``; run it inside ``with tf.device(...)`` for the same."""
    spec = get_arch(arch, **overrides)
    if device not in devices():
        raise InputError(f"device {device!r} is not available to tf; available: {devices()}")
    if device != "cpu":
        # TensorFlow runs float32 convs and matmuls in TF32 on Ampere and newer GPUs by
        # default: 10-bit mantissas, errors of 1e-3. The spec's float32 means float32.
        tf.config.experimental.enable_tensor_float_32_execution(False)
    with tf.device(_device_name(device)):
        model = ResNet(spec)
        set_weights(model, init_weights(spec, seed))
    return model


# ---- the framework plumbing: input checks, and layers that translate Keras' defaults ------------
def check_block_input(spec: BlockSpec, X) -> None:
    """Refuse a batch a block cannot take, with the block's own message (Keras' would name a
    kernel, not the block): not float32, or, where the shape is known, not NHWC with the
    block's input channels."""
    check_input_dtype(X, f"Residual({spec.in_channels} -> {spec.out_channels})")
    if None not in tuple(X.shape):
        shapes.check_block_input_shape(spec, X.shape, layout="NHWC")


def check_input_dtype(x, what: str) -> None:
    """Refuse a batch that is not float32. Keras would cast float64 (and integer images)
    to the layer's float32 silently; a float64 batch usually means the caller meant to
    compute in float64, and unscaled integer images give nonsense, so both are refused."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and tf.as_dtype(dtype) != tf.float32:
        raise shapes.float32_input_error(what, tf.as_dtype(dtype).name, "tf.cast(x, tf.float32)")


def pad(x, padding: int, value: float = 0.0):
    """Pad H and W by ``padding`` on both sides. Keras ``padding="same"`` with stride 2
    pads ``(k - 2) // 2`` before and the rest after on even sizes (2 and 3 for the 7x7
    stem), which shifts every window by one pixel against the spec (and PyTorch): the
    shapes agree but the logits do not. So strided convs and the max pool pad here."""
    if not padding:
        return x
    return tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


class Conv2D(layers.Conv2D):
    """``Conv2D`` padded symmetrically by ``symmetric_padding`` on H and W.

    At stride 1 with ``padding == (kernel_size - 1) / 2`` Keras ``"same"`` pads
    exactly that on both sides, and is used as is (no separate pad op). Elsewhere (the
    strided 3x3 and 7x7 convs) the input is padded explicitly (:func:`pad`) and the conv
    runs ``"valid"``: handing the padding to the ops themselves (``tf.nn.conv2d`` and
    ``tf.nn.max_pool2d`` with explicit paddings) made the compiled training step much
    slower on a CPU (``scripts/bench_tf.py``)."""

    def __init__(self, filters, kernel_size, strides=1, symmetric_padding=0, **kwargs):
        same = strides == 1 and 2 * symmetric_padding == kernel_size - 1
        super().__init__(filters, kernel_size, strides=strides, padding="same" if same else "valid", **kwargs)
        self.symmetric_padding = 0 if same else symmetric_padding

    def call(self, inputs):
        return super().call(pad(inputs, self.symmetric_padding))


def conv2d(
    input_channels: int, filters: int, kernel_size: int, strides: int, use_bias: bool, padding: int = 0
) -> Conv2D:
    """A :class:`Conv2D` padding ``padding`` on each side, built for ``input_channels``, so
    its kernel exists before the first call, as in the other frameworks."""
    conv = Conv2D(filters, kernel_size, strides=strides, symmetric_padding=padding, use_bias=use_bias)
    conv.build((None, None, None, input_channels))
    return conv


class BatchNorm(layers.BatchNormalization):
    """``BatchNormalization`` in the spec's convention, built for ``channels``.

    Keras defaults to epsilon 1e-3 and ``moving = momentum * moving + (1 - momentum) * batch``
    with momentum 0.99, so the spec's momentum ``m`` (PyTorch's) is Keras' ``1 - m``.
    Keras also feeds the *biased* batch variance into the moving variance; the spec
    (and PyTorch) feed the unbiased one. The batch itself is normalised with the
    biased variance in both. Training mode therefore runs :meth:`fused_training_pass`.
    """

    def __init__(self, channels: int, bn: BatchNormSpec, **kwargs):
        super().__init__(axis=-1, momentum=1.0 - bn.momentum, epsilon=bn.eps, **kwargs)
        self.spec_momentum = bn.momentum  # kept exact: 1 - (1 - m) is not always m in floating point
        self.build((None, None, None, channels))

    def call(self, inputs, training=False):
        if not (training and self.trainable):
            return super().call(inputs, training=False)
        return self.fused_training_pass(inputs)

    def fused_training_pass(self, inputs):
        """TensorFlow's fused kernel (``FusedBatchNormV3``, one op forward and one backward,
        where Keras 3 builds BN from a dozen small ops), which already follows the spec:
        given the running statistics and ``exponential_avg_factor=m`` it returns
        ``(1 - m) * running + m * batch`` with the unbiased batch variance."""
        # tf.raw_ops, not tf.compat.v1.nn.fused_batch_norm: that wrapper raises epsilon to 1.001e-5.
        out = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=self.gamma.value,
            offset=self.beta.value,
            mean=self.moving_mean.value,
            variance=self.moving_variance.value,
            epsilon=self.epsilon,
            exponential_avg_factor=self.spec_momentum,
            data_format="NHWC",
            is_training=True,
        )
        self.moving_mean.assign(out.batch_mean)
        self.moving_variance.assign(out.batch_variance)
        return out.y


class MaxPool2D(layers.MaxPooling2D):
    """``MaxPooling2D`` padded symmetrically with -inf (padding never wins the max).
    Keras ``padding="same"`` pads (0, 1) on even sizes where the spec pads (1, 1); zero
    padding would do only after a ReLU, and pre-activation stems have none."""

    def __init__(self, pool_size=3, strides=2, padding=1):
        super().__init__(pool_size, strides, padding="valid")
        self.symmetric_padding = padding

    def call(self, inputs):
        return super().call(pad(inputs, self.symmetric_padding, float("-inf")))


# ---- devices --------------------------------------------------------------------------------------
def _device_name(device: str) -> str:
    """The seam's device names ('cpu', 'cuda:0') as TensorFlow's ('/CPU:0', '/GPU:0')."""
    return "/CPU:0" if device == "cpu" else "/GPU:" + device.split(":")[1]


def devices() -> list[str]:
    """'cpu', then one 'cuda:i' per GPU TensorFlow sees."""
    return ["cpu"] + [f"cuda:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]


def device_of(model: ResNet) -> str:
    """The seam's name for the device that holds ``model``'s variables."""
    where = tf.DeviceSpec.from_string(model.head_fc.kernel.value.device)
    return "cpu" if where.device_type in (None, "CPU") else f"cuda:{where.device_index or 0}"


# ---- canonical weights: TensorFlow's layouts and names inside, the canonical ones out -------------
KERAS_NAMES = {"weight": "kernel", "bias": "bias"}  # a canonical leaf -> Conv2D's and Dense's attribute
KERAS_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _variable(layer, leaf: str):
    names = KERAS_BN_NAMES if isinstance(layer, layers.BatchNormalization) else KERAS_NAMES
    return getattr(layer, names[leaf])


def _canonical_variables(model: ResNet):
    """(canonical name, Keras variable, layout converter to canonical, converter from canonical)."""
    return nhwc.canonical_variables(model, _variable)


def get_weights(model: ResNet) -> dict[str, np.ndarray]:
    """The canonical weights (NCHW / OIHW / ``(out, in)``, canonical names) of a net whose
    variables are Keras' (HWIO kernels, ``(in, out)`` dense kernels, ``gamma``...)."""
    return nhwc.get_weights(model, _variable, lambda var: var.numpy())


def set_weights(model: ResNet, weights: dict[str, np.ndarray]) -> None:
    nhwc.set_weights(model, weights, _variable, lambda var, array: var.assign(array))


def shape_table(model: ResNet, input_shape=(1, 96, 96, 1)) -> str:
    """The chapter's per-layer table for an NHWC input shape: the canonical NCHW shape,
    then TensorFlow's own NHWC shape, measured by running the layers on zeros."""
    return nhwc.shape_table(BACKEND, model, input_shape, device_of(model))


# ---- the backend seam: NCHW NumPy in and out, NHWC inside ------------------------------------
# How compiled models' steps are compiled: a tf.function (a graph that Grappler
# optimises, with oneDNN's kernels on CPU); reduce_retracing leaves the batch size open
# after a second shape, so an epoch's last, smaller batch costs one retrace, not one per
# size. No XLA (jit_compile=True): on a CPU it ran the training step, the textbook's Keras
# model's too, many times slower (scripts/bench_tf.py); Keras' own fit leaves it off there
# as well (jit_compile="auto").
COMPILE = dict(reduce_retracing=True)


class TFBackend(Backend):
    """The seam for TensorFlow: every step runs in a ``tf.function``, as Keras' ``fit`` runs
    its steps; ``build(..., eager=True)`` (``--eager``) runs the same Python op by op."""

    name = "tf"
    native_layout = "NHWC"
    compiles = True  # Model.eager=False (the default) runs every step in a tf.function
    # Seen here with tensorflow-cpu 2.21.0: a training step on one image kills the process
    # (SIGSEGV in Conv2DBackpropInput) whenever oneDNN runs on more than one thread, eager
    # and compiled alike; TF_NUM_INTRAOP_THREADS=1 or TF_ENABLE_ONEDNN_OPTS=0 avoid it.
    min_training_batch = 2
    min_training_batch_why = (
        "TensorFlow 2.21's oneDNN convolution backward pass crashes the process "
        "(segmentation fault) on a batch of one image on CPU"
    )

    def framework_version(self):
        return f"{tf.__version__} (Keras {keras.__version__})"

    def cpu_threads(self):
        default = "TensorFlow's default (0: chosen from the cores)"
        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads() or default,
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or default,
        }

    def devices(self):
        return devices()

    def _build(self, spec, device):
        if device != "cpu":
            tf.config.experimental.enable_tensor_float_32_execution(False)  # see net()
        with tf.device(_device_name(device)):
            return ResNet(spec)

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    @staticmethod
    def _nhwc(x: np.ndarray):
        return tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))

    @staticmethod
    def _loss(y, logits):
        # mean over the batch of the softmax cross-entropy, as in the chapter
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)

    def _step(self, model, kind):
        """The model's ``kind`` step ("infer", "train_forward", "grads", "sgd") as a
        function of NHWC tensors: plain Python run op by op when ``model.eager``, else
        one ``tf.function`` per model (traced once per batch shape; see COMPILE)."""
        key = ("step", kind)
        if key not in model.cache:
            module = model.module
            variables = [var for _, var, _ in self._trainable(model)]

            def infer(x):
                return module(x, training=False)

            def train_forward(x):
                return module(x, training=True)

            def grads(x, y):
                with tf.GradientTape() as tape:
                    logits = module(x, training=True)
                    loss = self._loss(y, logits)
                return loss, logits, tape.gradient(loss, variables)

            def sgd(x, y):
                loss, logits, g = grads(x, y)
                self._optimizer(model).apply_gradients(zip(g, variables))
                return loss, logits

            def momentum(x, y):
                # The canonical update (resnet_multi.optim) in TensorFlow ops: Keras' SGD keeps
                # lr inside its velocity (m = mu * m - lr * g) and decays weights apart from the
                # gradient, both unlike PyTorch's once the schedule changes the rate.
                settings = optimizer_settings(model)
                mu, wd = settings.momentum, settings.weight_decay
                with tf.GradientTape() as tape:
                    logits = module(x, training=True)
                    loss = self._smoothed_loss(y, logits, settings.label_smoothing)
                lr = self._velocity(model)["lr"]
                for var, grad, v in zip(variables, tape.gradient(loss, variables), self._velocity(model)["slots"]):
                    if wd:
                        grad = grad + wd * var
                    if mu:
                        v.assign(mu * v + grad)
                        grad = grad + mu * v if settings.nesterov else v
                    var.assign_sub(lr * grad)
                return loss, logits

            fn = {"infer": infer, "train_forward": train_forward, "grads": grads, "sgd": sgd, "momentum": momentum}[
                kind
            ]
            model.cache[key] = fn if model.eager else tf.function(fn, **COMPILE)
        return model.cache[key]

    @staticmethod
    def _trainable(model):
        """(canonical name, trainable variable, converter to the canonical layout)."""
        if "trainable" not in model.cache:
            model.cache["trainable"] = [
                (name, var, to_canonical)
                for name, var, to_canonical, _ in _canonical_variables(model.module)
                if var.trainable
            ]
        return model.cache["trainable"]

    @staticmethod
    def _optimizer(model):
        """Keras' SGD (no momentum), one per model; its learning rate is a variable that
        each step sets, so a new rate neither rebuilds it nor retraces the step."""
        optimizer = model.cache.get("sgd")
        if optimizer is None:
            optimizer = model.cache["sgd"] = keras.optimizers.SGD(learning_rate=0.01)
            optimizer.build([var for _, var, _ in TFBackend._trainable(model)])  # before any trace
        return optimizer

    @staticmethod
    def _smoothed_loss(y, logits, smoothing):
        # Keras' label smoothing is the canonical one: (1 - s) * one_hot + s / classes
        targets = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)(targets, logits)

    @staticmethod
    def _velocity(model):
        """The momentum buffers (one variable per trainable variable, its native layout) and
        the learning rate, a variable that each step sets, so that no new rate retraces."""
        velocity = model.cache.get("velocity")
        if velocity is None:
            with tf.device(_device_name(model.device)):
                velocity = model.cache["velocity"] = {
                    "slots": [
                        tf.Variable(tf.zeros_like(var), trainable=False) for _, var, _ in TFBackend._trainable(model)
                    ],
                    "lr": tf.Variable(0.0, dtype=tf.float32, trainable=False),
                }
        return velocity

    def _configure_optimizer(self, model, optimizer):
        # the compiled step bakes the settings in: trace it again, with zero buffers
        for key in ("velocity", ("step", "momentum")):
            model.cache.pop(key, None)

    def _get_optimizer_state(self, model):
        return {
            name: np.ascontiguousarray(to_canonical(v.numpy()))
            for (name, _, to_canonical), v in zip(self._trainable(model), self._velocity(model)["slots"])
        }

    def _set_optimizer_state(self, model, state):
        from_canonical = {name: convert for name, _, _, convert in _canonical_variables(model.module)}
        for (name, _, _), v in zip(self._trainable(model), self._velocity(model)["slots"]):
            v.assign(from_canonical[name](state[name]))

    def _forward(self, model, x, training):
        with tf.device(_device_name(model.device)):
            return self._step(model, "train_forward" if training else "infer")(self._nhwc(x)).numpy()

    def _loss_and_grads(self, model, x, y):
        with tf.device(_device_name(model.device)):
            loss, logits, grads = self._step(model, "grads")(self._nhwc(x), tf.constant(y))
        return TrainingPass(
            float(loss),
            logits.numpy(),
            {
                name: np.ascontiguousarray(to_canonical(g.numpy()))
                for (name, _, to_canonical), g in zip(self._trainable(model), grads)
            },
        )

    def _sgd_step(self, model, x, y, lr):
        if not optimizer_settings(model).plain:
            with tf.device(_device_name(model.device)):
                self._velocity(model)["lr"].assign(lr)
                loss, logits = self._step(model, "momentum")(self._nhwc(x), tf.constant(y))
            return float(loss), logits.numpy()
        with tf.device(_device_name(model.device)):
            optimizer = self._optimizer(model)
            optimizer.learning_rate = lr
            loss, logits = self._step(model, "sgd")(self._nhwc(x), tf.constant(y))
        return float(loss), logits.numpy()

    def _residual_output_shape(self, x, args, options):
        with tf.device("/CPU:0"):
            return tuple(block(block_spec(*args, **options))(self._nhwc(x), training=True).shape)

    def count_parameters(self, model):
        module = model.module
        params = sum(int(np.prod(v.shape)) for v in module.trainable_variables)
        buffers = sum(int(np.prod(v.shape)) for v in module.non_trainable_variables)
        return params, buffers

    def _named_outputs(self, model, x, training):
        with tf.device(_device_name(model.device)):
            return [(name, out.numpy()) for name, out in model.module.named_outputs(self._nhwc(x), training=training)]


BACKEND = TFBackend()


if __name__ == "__main__":
    # python -m resnet_multi.tf [arch] [size]: the per-layer shape table
    import sys

    arch = sys.argv[1] if len(sys.argv) > 1 else "d2l-resnet18"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    model = net(arch)
    print(shape_table(model, (1, size, size, model.spec.in_channels)))


# What TensorFlow / Keras 3 does by default, and what this module does about it: one
# column of `resnet-multi conventions`, read as a literal without importing TensorFlow;
# the tests check the machine-readable fields against Keras' own defaults.
CONVENTIONS = {
    "framework": "TensorFlow (Keras 3)",
    "padding": {
        "default": "padding='valid'; 'same' pads the smaller half before: (2, 3) for 7x7/2 and "
        "(0, 1) for 3x3/2 on even sizes",
        "pads": [2, 3],
        "here": "'same' at stride 1 (already symmetric there); explicit symmetric tf.pad, then "
        "'valid', for strided convs and the max pool (which pads -inf)",
    },
    "bn_eps": {"default": 0.001, "eps": 0.001, "here": "the spec's eps, passed as epsilon (BatchNorm)"},
    "bn_momentum": {
        "default": "0.99: moving = m * moving + (1 - m) * batch",
        "momentum": 0.99,
        "keeps": "old",
        "here": "momentum = 1 - the spec's (BatchNorm)",
    },
    "bn_running_var": {
        "default": "biased batch variance",
        "variance": "biased",
        "here": "training mode runs tf.raw_ops.FusedBatchNormV3, which feeds the unbiased "
        "variance with the spec's momentum as exponential_avg_factor",
    },
    "data_layout": {
        "default": "NHWC (channels_last)",
        "layout": "NHWC",
        "here": "NCHW <-> NHWC at the seam only (TFBackend)",
    },
    "kernel_layout": {"default": "HWIO", "layout": "HWIO", "here": "transposed to OIHW in get/set_weights"},
    "dense_layout": {"default": "(in, out)", "layout": "(in, out)", "here": "transposed in get/set_weights"},
    "param_names": {
        "default": "kernel, bias; BN gamma, beta, moving_mean, moving_variance",
        "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
        "here": "mapped to canonical names in _canonical_variables",
    },
    "init": {
        "default": "GlorotUniform kernels, zero biases",
        "conv_bias": True,
        "conv_weight": ["uniform", "sqrt(6/(fan_in+fan_out))"],
        "here": "overwritten by the spec's weights (set_weights)",
    },
    "mode_switch": {
        "default": "training= argument per call; inference when omitted (outside fit)",
        "starts": "inference",
        "here": "training= passed explicitly everywhere",
    },
    "optimizer": {
        "default": "keras.optimizers.SGD: m = mu * m - lr * g; p += m (Nesterov: p += mu * m - lr * g), lr inside "
        "the velocity; weight_decay decoupled (p -= lr * wd * p), not in the gradient",
        "lr_in_velocity": True,
        "here": "the canonical update written in TensorFlow ops inside the compiled step (one velocity variable "
        "per weight), so a schedule's changing lr scales the whole step; CategoricalCrossentropy(label_smoothing)",
    },
    "execution": {
        "default": "eager; Keras fit wraps its step in tf.function",
        "cpu_mode": "compiled",
        "here": "every step in a tf.function (no XLA); --eager runs it op by op",
    },
}
