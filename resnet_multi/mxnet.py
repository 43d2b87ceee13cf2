"""The Residual Networks chapter in MXNet Gluon, with ``mxnet.np`` as the textbook uses it: the
chapter's ``Residual``, its exercises' blocks, the stages and the net, then the backend.

    from resnet_multi import mxnet as rn
    net = rn.net("d2l-resnet18")            # the chapter's network, spec'd weights
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)

MXNet 1.9.1, its last release, imports only with ``numpy<1.24``. Where Gluon's defaults differ
from the spec (BatchNorm's running statistics, lazily inferred shapes), the layers defined after
the net translate them; ``CONVENTIONS`` at the end lists each difference.
"""

from __future__ import annotations

import functools

import numpy as onp  # NumPy proper: what crosses the seam; ``np`` below is mxnet.np

from .backend import Backend, Model, TrainingPass, optimizer_settings, require
from .errors import InputError, InputTypeError
from .shapes import check_block_input_shape, check_input_shape, float32_input_error
from .spec import ArchSpec, BatchNormSpec, BlockSpec, block_class, block_spec, block_spec_for, get_arch, stage_spec
from .weights import check_weights, init_weights, module_paths, rename_layers

mx = require("mxnet", "mxnet")
from mxnet import autograd, gluon, np, npx  # noqa: E402  (only once require() has succeeded)
from mxnet.gluon import nn  # noqa: E402

npx.set_np()  # NumPy semantics for arrays and Gluon, as the textbook's MXNet code runs


class Residual(nn.HybridBlock):
    """The chapter's residual block. The book's MXNet code infers ``input_channels`` on the
    first call; here it is given, so the weights exist at once. A ``HybridBlock``, so that a
    net can compile it. ``options`` are the spec's other knobs (``conv_bias``,
    ``shortcut="conv_bn"``, ``bn``; see :class:`resnet_multi.spec.BlockSpec`)."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Residual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv(input_channels, num_channels, kernel_size=3, padding=1, strides=strides, bias=bias)
        self.bn1 = BatchNorm(num_channels, spec.bn)
        self.conv2 = conv(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = BatchNorm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv(input_channels, num_channels, kernel_size=1, strides=strides, bias=bias)
        else:
            self.conv3 = None
        # torchvision's projection has a BN after the 1x1 conv; the chapter's has none
        self.bn3 = BatchNorm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):  # Gluon's entry point: checks the input, then runs hybrid_forward
        check_block_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        Y = F.npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
            if self.bn3:
                X = self.bn3(X)
        return F.npx.relu(Y + X)


# ---- the exercises' blocks -----------------------------------------------------------------------
class Bottleneck(nn.HybridBlock):
    """Exercise 3: 1x1 conv -> 3x3 conv -> 1x1 conv, narrowing to ``num_channels // 4``
    inside; the stride on the 3x3 conv (torchvision's "v1.5") or, with ``stride_on="1x1"``,
    on the first 1x1 conv (the paper's). The projection is ``shortcut``: ``conv3`` is taken."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("Bottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv(input_channels, mid, kernel_size=1, strides=stride1, bias=bias)
        self.bn1 = BatchNorm(mid, spec.bn)
        self.conv2 = conv(mid, mid, kernel_size=3, padding=1, strides=stride2, bias=bias)
        self.bn2 = BatchNorm(mid, spec.bn)
        self.conv3 = conv(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = BatchNorm(num_channels, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        Y = F.npx.relu(self.bn1(self.conv1(X)))
        Y = F.npx.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.shortcut:
            X = self.shortcut(X)
        return F.npx.relu(Y + X)


class PreActResidual(nn.HybridBlock):
    """Exercise 4: He et al.'s pre-activation block, BN -> ReLU -> conv twice, no ReLU
    after the sum; a projection (``conv3``, with ``bn3`` for ``shortcut="conv_bn"``) reads
    the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActResidual", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, strides, bias = spec.in_channels, spec.out_channels, spec.stride, spec.conv_bias
        self.conv1 = conv(input_channels, num_channels, kernel_size=3, padding=1, strides=strides, bias=bias)
        self.bn1 = BatchNorm(input_channels, spec.bn)  # normalises conv1's input
        self.conv2 = conv(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = BatchNorm(num_channels, spec.bn)
        if spec.projection:
            self.conv3 = conv(input_channels, num_channels, kernel_size=1, strides=strides, bias=bias)
        else:
            self.conv3 = None
        self.bn3 = BatchNorm(num_channels, spec.bn) if spec.projection and spec.shortcut == "conv_bn" else None

    def forward(self, X):
        check_block_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        P = F.npx.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(F.npx.relu(self.bn2(Y)))
        if self.conv3:
            X = self.conv3(P)
            if self.bn3:
                X = self.bn3(X)
        return Y + X


class PreActBottleneck(nn.HybridBlock):
    """The pre-activation bottleneck: BN -> ReLU before each of the three convs, no ReLU
    after the sum; the projection (``shortcut``) reads the pre-activated input."""

    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options):
        spec = block_spec_for("PreActBottleneck", input_channels, num_channels, use_1x1conv, strides, **options)
        super().__init__()
        self.spec = spec
        input_channels, num_channels, mid, bias = spec.in_channels, spec.out_channels, spec.mid_channels, spec.conv_bias
        stride1, stride2 = (spec.stride, 1) if spec.stride_on == "1x1" else (1, spec.stride)
        self.conv1 = conv(input_channels, mid, kernel_size=1, strides=stride1, bias=bias)
        self.bn1 = BatchNorm(input_channels, spec.bn)  # each bnK normalises convK's input
        self.conv2 = conv(mid, mid, kernel_size=3, padding=1, strides=stride2, bias=bias)
        self.bn2 = BatchNorm(mid, spec.bn)
        self.conv3 = conv(mid, num_channels, kernel_size=1, bias=bias)
        self.bn3 = BatchNorm(mid, spec.bn)
        self.shortcut = projection(spec) if spec.projection else None

    def forward(self, X):
        check_block_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        P = F.npx.relu(self.bn1(X))  # the pre-activated input
        Y = self.conv1(P)
        Y = self.conv2(F.npx.relu(self.bn2(Y)))
        Y = self.conv3(F.npx.relu(self.bn3(Y)))
        if self.shortcut:
            X = self.shortcut(P)
        return Y + X


BLOCKS = {
    "Residual": Residual,
    "Bottleneck": Bottleneck,
    "PreActResidual": PreActResidual,
    "PreActBottleneck": PreActBottleneck,
}


def block(spec: BlockSpec) -> nn.HybridBlock:
    """The block ``spec`` describes, built by the class for its kind."""
    return BLOCKS[block_class(spec)](spec)


# ---- the stages and the net ----------------------------------------------------------------------
class ResnetBlock(nn.HybridSequential):
    """A stage of residual blocks:
    ``ResnetBlock(input_channels, num_channels, num_residuals, first_block=False)``."""

    def __init__(self, input_channels, num_channels=None, num_residuals=None, first_block=False, **options):
        super().__init__()
        spec = stage_spec(input_channels, num_channels, num_residuals, first_block, **options)
        self.spec = spec
        self.add(*(block(b) for b in spec.blocks))


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **options) -> list:
    """The chapter's helper: the stage's blocks as a list (``net.add(*resnet_block(...))``)."""
    return list(ResnetBlock(input_channels, num_channels, num_residuals, first_block, **options))


class Named(nn.HybridSequential):
    """``nn.HybridSequential`` whose children keep names (``net.stem.conv``, ``net.head.fc``)
    instead of ``0, 1, ...``, so the parameter names are the canonical ones."""

    def __init__(self, **layers):
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)  # Gluon registers the child under this name, in order

    def named_children(self):
        return self._children.items()


class ResNet(Named):
    """``stem`` -> ``stages`` -> ``head``: iterating over the net walks the chapter's layers.

    ``net.hybridize()`` compiles the whole net into one graph (Gluon's ``CachedOp``). Python
    code does not run inside a graph, so the graph returns, besides the logits, each
    BatchNorm's batch mean and ``1 / sqrt(var + eps)``; in training mode the net then updates
    the running statistics from them, as each layer does on its own when the net runs op by
    op. Only the whole net compiles: a block or BatchNorm hybridized on its own is refused,
    rather than leaving its statistics silently unchanged.
    """

    def __init__(self, spec: ArchSpec):
        stem = dict(conv=conv(spec.in_channels, spec.width, 7, strides=2, padding=3, bias=spec.conv_bias))
        if not spec.preact:
            stem.update(bn=BatchNorm(spec.width, spec.bn), relu=nn.Activation("relu"))
        stem["pool"] = nn.MaxPool2D(pool_size=3, strides=2, padding=1)  # pads with -inf
        stages = nn.HybridSequential()
        stages.add(*(ResnetBlock(s) for s in spec.stages))
        head = dict(bn=BatchNorm(spec.features, spec.bn), relu=nn.Activation("relu")) if spec.preact else {}
        head.update(
            pool=nn.GlobalAvgPool2D(), flatten=nn.Flatten(), fc=nn.Dense(spec.num_classes, in_units=spec.features)
        )
        super().__init__(stem=Named(**stem), stages=stages, head=Named(**head))
        self.spec = spec
        # Of the compiled graph, in its output order: each BatchNorm's update_statistics and
        # its input (a symbol); a bound method, since Gluon warns of Blocks kept in a list.
        self._traced_updates, self._traced_inputs = [], None
        self._batch_counts = {}  # input shape -> values per channel at each traced BatchNorm

    def hybridize(self, active=True, **kwargs):
        # The net compiles as a whole; its blocks stay op by op when called on their own
        # (named_outputs), since only the whole net carries BN statistics out of a graph.
        super().hybridize(active, **kwargs)
        for child in self._children.values():
            child.hybridize(False)

    def forward(self, X):
        if isinstance(X, mx.sym.Symbol):
            raise InputTypeError(
                "a resnet_multi.mxnet.ResNet compiles on its own (net.hybridize()), not as part of a larger graph"
            )
        check_input_dtype(X, self.spec.name)
        check_input_shape(self.spec, X.shape, training=autograd.is_training())
        if not self._active:
            return super().forward(X)  # op by op: each BatchNorm updates its own statistics
        logits, *statistics = super().forward(X)
        if autograd.is_training():
            counts = self._batch_counts.get(X.shape)
            if counts is None:  # once per input shape: each BatchNorm's input shape
                counts = self._batch_counts[X.shape] = [
                    batch_count(shape) for shape in self._traced_inputs.infer_shape(data=X.shape)[1]
                ]
            for update, mean, inv_std, count in zip(
                self._traced_updates, statistics[::2], statistics[1::2], counts, strict=True
            ):
                update(mean, inv_std, count)
        return logits

    def hybrid_forward(self, F, X):
        if F is not mx.symbol:
            return super().hybrid_forward(F, X)
        _tracing.append([])
        try:
            logits = super().hybrid_forward(F, X)
        finally:
            traced = _tracing.pop()
        self._traced_updates = [bn.update_statistics for bn, *_ in traced]
        self._traced_inputs, self._batch_counts = mx.sym.Group([x for _, x, *_ in traced]), {}
        return [logits] + [s for _, _, mean, inv_std in traced for s in (mean, inv_std)]

    def named_outputs(self, X):
        """Each named layer's output in turn: the chapter's shape table."""
        X = self.stem(X)
        yield "stem", X
        for i, stage in enumerate(self.stages):
            X = stage(X)
            yield f"stages.{i}", X
        for name, layer in self.head.named_children():
            X = layer(X)
            yield f"head.{name}", X


def net(arch="d2l-resnet18", *, seed: int = 0, device: str = "cpu", **overrides) -> ResNet:
    """Build a named architecture with the spec's initial weights for ``seed``."""
    spec = get_arch(arch, **overrides)
    model = ResNet(spec)
    model.initialize(ctx=context(device))  # Gluon's own init, overwritten at once
    set_weights(model, init_weights(spec, seed))
    return model


# ---- layers in the spec's conventions ------------------------------------------------------------
def conv(in_channels, channels, kernel_size, strides=1, padding=0, bias=True) -> nn.Conv2D:
    """``nn.Conv2D`` with the spec's symmetric padding, told its input channels (Gluon would
    infer them on the first call) so that its weights exist, can be counted and loaded at once."""
    return nn.Conv2D(channels, kernel_size, strides=strides, padding=padding, use_bias=bias, in_channels=in_channels)


def projection(spec: BlockSpec) -> Named:
    """A bottleneck's projection shortcut: a strided 1x1 conv, then BN for ``shortcut="conv_bn"``."""
    layers = dict(conv=conv(spec.in_channels, spec.out_channels, 1, strides=spec.stride, bias=spec.conv_bias))
    if spec.shortcut == "conv_bn":
        layers["bn"] = BatchNorm(spec.out_channels, spec.bn)
    return Named(**layers)


class BatchNorm(nn.BatchNorm):
    """Gluon's BatchNorm with the spec's running statistics:
    ``running = (1 - m) * running + m * batch``, fed by the unbiased batch variance,
    updated in the training-mode forward pass (inside ``autograd.record()``).

    Gluon's own update is the other convention (momentum 0.9 keeps 90% of the old value),
    takes the biased variance, and runs in ``backward()``. Here Gluon's fused op normalises
    (and differentiates) with momentum 1, so that its own update (``1 * running + 0 * batch``)
    never changes the statistics. The op also hands out the batch mean and
    ``1 / sqrt(var + eps)`` it normalised with, and the statistics are computed from those
    (times ``n / (n - 1)``): no second pass over the activations. Run op by op, the layer
    updates its statistics itself; traced into the compiled graph of a :class:`ResNet`, it
    hands them to the net, which updates them after the graph has run. So a forward pass
    inside ``autograd.record()`` and a whole training step leave the same statistics.
    """

    def __init__(self, channels: int, bn: BatchNormSpec = BatchNormSpec(), **kwargs):
        super().__init__(momentum=1.0, epsilon=bn.eps, in_channels=channels, **kwargs)
        self.spec_momentum = bn.momentum

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        # counted (and checked) before the op: Gluon would quietly normalise a single value to 0
        count = batch_count(x.shape) if F is mx.ndarray and autograd.is_training() else None
        y, mean, inv_std = F.npx.batch_norm(
            x, gamma, beta, running_mean, running_var, output_mean_var=True, name="fwd", **self._kwargs
        )
        if F is mx.symbol:
            _current_trace().append((self, x, mean, inv_std))
        elif count:
            self.update_statistics(mean, inv_std, count)
        return y

    def update_statistics(self, mean, inv_std, count: int):
        """The spec's update from one batch's mean and ``1 / sqrt(var + eps)`` (the op's
        outputs) over ``count`` values per channel."""
        with autograd.pause():  # statistics are not part of the graph
            var = (inv_std**-2 - self._kwargs["eps"]) * (count / (count - 1))  # biased -> unbiased
            m = self.spec_momentum
            for param, batch in ((self.running_mean, mean), (self.running_var, var)):
                running = param.data(mean.ctx)
                running[:] = (1 - m) * running + m * batch


def batch_count(shape) -> int:
    """Values per channel that a BatchNorm averages over for an NCHW ``shape``."""
    count = int(onp.prod(shape)) // shape[1]
    if count < 2:  # PyTorch raises too
        raise InputError(
            f"BatchNorm in training mode needs more than one value per channel, got input shape {tuple(shape)}"
        )
    return count


# While a ResNet traces its graph: the (BatchNorm, input, mean, inv_std) symbols of its layers.
_tracing: list[list] = []


def _current_trace() -> list:
    if not _tracing:
        raise InputTypeError(
            "resnet_multi.mxnet.BatchNorm can be compiled only as part of a whole ResNet, which "
            "carries its running statistics out of the graph: hybridize the net "
            "(net.hybridize()), not a block or layer on its own"
        )
    return _tracing[-1]


# ---- input checks: MXNet's own messages name the convolution operator, not the fix ---------------
def check_input_dtype(X, what: str) -> None:
    """Refuse a batch that is not float32, naming the fix."""
    if X.dtype != onp.float32:
        raise float32_input_error(what, onp.dtype(X.dtype).name, "X.astype('float32')")


def check_block_input(blk: nn.HybridBlock, X) -> None:
    """The same, and the shape, for one block called on an array, as in the chapter's shape
    checks. Traced into a net's graph, ``X`` is a symbol: the net has checked its input."""
    if not isinstance(X, mx.sym.Symbol):
        check_input_dtype(X, f"Residual({blk.spec.in_channels} -> {blk.spec.out_channels})")
        check_block_input_shape(blk.spec, X.shape)


# ---- devices: MXNet contexts, named as the other backends name devices ---------------------------
def context(device: str):
    """An MXNet context for a device name from :func:`devices` (``"cpu"``, ``"cuda:N"``;
    MXNet's own ``"gpu:N"`` is accepted too)."""
    if device == "cpu":
        return npx.cpu()
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "gpu") or not index.isdigit():
        raise InputError(f"unknown MXNet device {device!r}; use 'cpu' or 'cuda:N'")
    return npx.gpu(int(index))


def devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(npx.num_gpus())]


# ---- canonical weights: Gluon's structural names, BN gamma/beta read as weight/bias --------------
_BN_NAMES = {"gamma": "weight", "beta": "bias"}


@functools.cache
def canonical_names(spec: ArchSpec | BlockSpec) -> dict[str, str]:
    """Attribute path of each layer -> its canonical name, for a net (weights.module_paths,
    inverted) or a single block (BlockSpec.attribute_names, inverted)."""
    paths = spec.attribute_names() if isinstance(spec, BlockSpec) else module_paths(spec)
    return {path: name for name, path in paths.items()}


def canonical_params(model: nn.Block) -> dict:
    """Canonical name -> Gluon Parameter, for a net or a single block. Gluon's structural
    names (those ``save_parameters`` writes, ``stages.1.0.conv3.weight``) are attribute paths
    in the spec's layouts (NCHW, OIHW kernels, ``(out, in)`` dense weights)."""
    out = {}
    for name, param in model._collect_params_with_prefix().items():
        prefix, _, leaf = name.rpartition(".")
        out[f"{prefix}.{_BN_NAMES.get(leaf, leaf)}"] = param
    return rename_layers(out, canonical_names(model.spec))


def get_weights(model: nn.Block) -> dict[str, onp.ndarray]:
    return {k: p.data().asnumpy().copy() for k, p in canonical_params(model).items()}


def set_weights(model: ResNet, weights: dict[str, onp.ndarray]) -> None:
    check_weights(model.spec, weights)  # names and shapes, all reported at once
    params = canonical_params(model)
    if set(params) != set(weights):
        raise RuntimeError(f"canonical names out of step with the module: {sorted(set(params) ^ set(weights))}")
    for name, param in params.items():
        param.set_data(np.array(weights[name], dtype=weights[name].dtype))  # on every context it lives on


# ---- the backend seam ----------------------------------------------------------------------------
class MXNetBackend(Backend):
    """Training mode is ``autograd.record()``, not a flag on the model: the seam records for
    every training pass. Compiled by default (the whole net as one graph); eager runs it op by op."""

    name = "mxnet"
    compiles = True

    def framework_version(self):
        return mx.__version__

    def devices(self):
        return devices()

    def _build(self, spec, device):
        model = ResNet(spec)
        model.initialize(ctx=context(device))
        return model

    def _get_weights(self, model):
        return get_weights(model.module)

    def _set_weights(self, model, weights):
        set_weights(model.module, weights)

    def _array(self, model: Model, x):
        return np.array(x, dtype=x.dtype, ctx=context(model.device))

    @staticmethod
    def _net(model: Model) -> ResNet:
        """The net, compiled unless the model runs eagerly (the flag may change between calls)."""
        compiled = not model.eager
        if model.cache.get("compiled") != compiled:
            # memory planned once and reused while the input shape stays (another shape
            # replans): a faster training step than either flag alone, or neither
            model.module.hybridize(compiled, static_alloc=True, static_shape=True)
            model.cache["compiled"] = compiled
        return model.module

    def _forward(self, model, x, training):
        net, X = self._net(model), self._array(model, x)
        if training:  # batch statistics, and BatchNorm updates the running ones
            with autograd.record():
                return net(X).asnumpy()
        return net(X).asnumpy()

    def _loss_and_grads(self, model, x, y):
        net, loss_fn = self._net(model), gluon.loss.SoftmaxCrossEntropyLoss()
        with autograd.record():
            logits = net(self._array(model, x))
            loss = loss_fn(logits, self._array(model, y)).mean()
        loss.backward()
        grads = {k: p.grad().asnumpy() for k, p in canonical_params(model.module).items() if p.grad_req != "null"}
        return TrainingPass(float(loss), logits.asnumpy(), grads)

    def _sgd_step(self, model, x, y, lr):
        settings = optimizer_settings(model)
        if not settings.plain:
            return self._momentum_step(model, x, y, lr, settings)
        # The textbook's loop: per-example losses, l.backward() sums them, and
        # trainer.step(batch_size) divides by the batch size. Plain SGD: no momentum, wd 0.
        net, trainer = self._net(model), model.cache.get("trainer")
        if trainer is None:
            trainer = model.cache["trainer"] = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
        trainer.set_learning_rate(lr)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        with autograd.record():
            logits = net(self._array(model, x))
            l = loss_fn(logits, self._array(model, y))  # noqa: E741  (the textbook's name)
        l.backward()
        trainer.step(x.shape[0])
        return float(l.mean()), logits.asnumpy()

    # The recipe's SGD (resnet_multi.optim), written out in MXNet ops. Gluon's 'sgd' and
    # 'nag' kernels keep lr inside their momentum (sgd: state = mu * state - lr * (g + wd * w);
    # w += state), which departs from the canonical update once a schedule changes the rate;
    # nag_mom_update's state, too, comes out as -lr times the canonical velocity.
    def _momentum_step(self, model, x, y, lr, settings):
        net = self._net(model)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
        labels = npx.one_hot(self._array(model, y), model.spec.num_classes)
        smoothing = settings.label_smoothing
        targets = labels * (1 - smoothing) + smoothing / model.spec.num_classes if smoothing else labels
        with autograd.record():
            logits = net(self._array(model, x))
            l = loss_fn(logits, targets)  # noqa: E741
        l.backward()
        mu, wd, rescale = settings.momentum, settings.weight_decay, 1.0 / x.shape[0]
        velocity = self._velocity(model)
        for name, param in self._trainable(model).items():
            w, g = param.data().as_nd_ndarray(), param.grad().as_nd_ndarray()
            v = velocity[name]
            step = g * rescale + wd * w if wd else g * rescale
            if mu:
                v[:] = mu * v + step
                step = step + mu * v if settings.nesterov else v
            w[:] = w - lr * step
        return float(l.mean()), logits.asnumpy()

    @staticmethod
    def _trainable(model):
        return {k: p for k, p in canonical_params(model.module).items() if p.grad_req != "null"}

    def _velocity(self, model):
        velocity = model.cache.get("velocity")
        if velocity is None:
            velocity = model.cache["velocity"] = {
                name: mx.nd.zeros(p.shape, ctx=context(model.device), dtype="float32")
                for name, p in self._trainable(model).items()
            }
        return velocity

    def _configure_optimizer(self, model, optimizer):
        model.cache.pop("velocity", None)

    def _get_optimizer_state(self, model):
        return {name: v.asnumpy() for name, v in self._velocity(model).items()}

    def _set_optimizer_state(self, model, state):
        velocity = self._velocity(model)
        for name, v in velocity.items():
            v[:] = mx.nd.array(state[name], ctx=v.context, dtype="float32")

    def _residual_output_shape(self, x, args, options):
        blk = block(block_spec(*args, **options))
        blk.initialize()
        with autograd.record():
            return tuple(blk(np.array(x)).shape)

    def count_parameters(self, model):
        """Gluon registers BN running statistics as parameters with ``grad_req='null'``:
        those are the buffers, everything else is trainable."""
        params = model.module.collect_params().values()
        trainable = sum(int(onp.prod(p.shape)) for p in params if p.grad_req != "null")
        buffers = sum(int(onp.prod(p.shape)) for p in params if p.grad_req == "null")
        return trainable, buffers

    def _named_outputs(self, model, x, training):
        X = self._array(model, x)
        if training:  # batch statistics, and BatchNorm updates the running ones
            with autograd.record():
                return [(name, out.asnumpy()) for name, out in model.module.named_outputs(X)]
        return [(name, out.asnumpy()) for name, out in model.module.named_outputs(X)]


BACKEND = MXNetBackend()


# What MXNet Gluon does by default, and what this module does about it: one column of
# `resnet-multi conventions`, read as a literal without importing MXNet; the tests
# check the machine-readable fields against Gluon's own defaults.
CONVENTIONS = {
    "framework": "MXNet Gluon",
    "padding": {
        "default": "padding=0; no 'same' mode; explicit padding is symmetric",
        "pads": None,
        "here": "the spec's symmetric padding, passed as padding=p",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, passed as epsilon"},
    "bn_momentum": {
        "default": "0.9: running = m * running + (1 - m) * batch, updated in backward()",
        "momentum": 0.9,
        "keeps": "old",
        "here": "Gluon's update off (momentum 1); BatchNorm.update_statistics updates in the "
        "spec's convention after each training pass, compiled or eager",
    },
    "bn_running_var": {
        "default": "biased batch variance",
        "variance": "biased",
        "here": "BatchNorm.update_statistics feeds the unbiased one, from the fused op's own "
        "batch mean and 1/sqrt(var + eps), times n/(n - 1)",
    },
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {
        "default": "(out, in); Dense flattens its input and infers in_units lazily",
        "layout": "(out, in)",
        "here": "in_units and in_channels given, so weights exist at once",
    },
    "param_names": {
        "default": "weight, bias; BN gamma, beta, running_mean, running_var (grad_req='null')",
        "bn": ["gamma", "beta", "running_mean", "running_var"],
        "here": "gamma/beta read as weight/bias (canonical_params)",
    },
    "init": {
        "default": "Uniform(-0.07, 0.07) weights whatever the fan-in, zero biases",
        "conv_bias": True,
        "conv_weight": ["uniform", "0.07"],
        "here": "overwritten by the spec's weights (set_weights)",
    },
    "mode_switch": {
        "default": "autograd.record() (training) vs outside it (inference)",
        "starts": "inference",
        "here": "the seam records for every training pass",
    },
    "optimizer": {
        "default": "Gluon Trainer 'sgd': state = mu * state - lr * (g + wd * w); w += state, lr inside the "
        "velocity; 'nag' (nag_mom_update) keeps lr inside its state too",
        "lr_in_velocity": True,
        "here": "the canonical update written in MXNet ops (one velocity array per parameter); smoothed one-hot "
        "labels into SoftmaxCrossEntropyLoss(sparse_label=False)",
    },
    "execution": {
        "default": "imperative; net.hybridize() compiles the net into one graph",
        "cpu_mode": "compiled",
        "here": "hybridized (static_alloc, static_shape); --eager runs it op by op",
    },
}
