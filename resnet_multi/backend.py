"""The backend seam: one small interface that the tests and the command line use
for every framework.

Everything crossing the seam is NumPy in the canonical layout: batches NCHW
float32, weights as in :mod:`resnet_multi.weights`. A backend whose framework is
NHWC (TensorFlow) converts here, inside its adapter, and nowhere else.
Backends subclass :class:`Backend` and implement the underscored methods;
the public ones validate input first, so every backend refuses bad input with
the same message, and check what the framework computed before returning it: a NaN
or infinite output, loss, gradient or BatchNorm statistic raises
:class:`resnet_multi.errors.NonFiniteError` naming it, never a number to report.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from . import data, frameworks, optim, shapes, validate
from . import weights as canonical
from .errors import InputError, NonFiniteError
from .spec import ArchSpec, get_arch


# The seam checks every result for NaN/Inf itself and names it; NumPy's per-operation
# overflow warnings would only repeat that, once per array.
def _quiet():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")  # one per use: not reentrant


# backend name -> (module, pip extra that installs its framework), from the one registry
BACKENDS = {f.name: (f.module, f.extra) for f in frameworks.FRAMEWORKS.values()}


def require(module: str, backend: str):
    """Import a framework, or raise an ImportError (one line) that says where to get it:
    its own tox environment, or its install line (:meth:`Framework.install_hint`)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"resnet_multi.{backend} needs {module}, which is not installed in this environment; "
            f"{frameworks.get(backend).install_hint()}"
        ) from e


@dataclass
class Model:
    """A framework model together with the spec it was built from and its device."""

    spec: ArchSpec
    module: object
    device: str
    # True: run every step op by op (PyTorch-style eager / PyNative), as a reader steps
    # through it; False: the backend's compiled step where it has one (see Backend.compiles).
    # Backend.build resolves "not said" to the backend's faster mode (Backend.default_eager).
    eager: bool = False
    cache: dict = field(default_factory=dict)  # backend-private: optimizer objects and the like


@dataclass
class TrainingPass:
    """What one training-mode forward and backward pass gives."""

    loss: float
    logits: np.ndarray
    grads: dict[str, np.ndarray]  # canonical names and layouts


class StepMetrics:
    """One epoch's running training metrics, summed over :meth:`Backend.train_step` calls:
    loss x images, correct predictions, images, and the first step whose loss was not
    finite. This one sums on the host, from each step's (float loss, NumPy logits); a
    backend that keeps them on its device subclasses it, so that nothing waits for the
    device until :meth:`read`."""

    # Whether read() has to wait for a device: the loop then reads only at its progress
    # marks; otherwise it reads (for nothing) after every step, so it stops at a bad one.
    deferred = False

    def __init__(self):
        self.seen = 0  # images: known on the host from the batch shapes, so never deferred
        self.steps = 0
        self._loss_sum, self._correct, self._bad = 0.0, 0, None

    def add(self, loss: float, logits: np.ndarray, y: np.ndarray) -> None:
        self.steps += 1
        self.seen += len(y)
        if self._bad is None and not np.isfinite(loss):
            self._bad = (self.steps, float(loss))
        self._loss_sum += float(loss) * len(y)
        self._correct += int((logits.argmax(axis=1) == y).sum())

    def read(self) -> MetricsReading:
        return MetricsReading(self._loss_sum, self._correct, self.seen, self.steps, self._bad)


@dataclass(frozen=True)
class MetricsReading:
    """What :meth:`StepMetrics.read` gives: sums so far, and ``diverged`` = (step within
    the epoch, 1-based, loss) of the first non-finite loss, or None."""

    loss_sum: float
    correct: int
    seen: int
    steps: int
    diverged: tuple[int, float] | None


class Backend:
    name: str = ""
    native_layout: str = "NCHW"
    # Whether this backend has a compiled mode (tf.function, hybridize, to_static, graph
    # mode) distinct from eager execution; the parity suite then runs both.
    compiles: bool = False
    # The smallest batch the framework can train on here, and why, where that is more than
    # one image (BatchNorm's own limit, one value per channel, is checked from the spec).
    min_training_batch: int = 1
    min_training_batch_why: str = ""
    # Training precisions fit(precision=...) accepts; "float32" is the parity suite's.
    precisions: tuple[str, ...] = ("float32",)

    # -- what each framework implements ------------------------------------------
    def framework_version(self) -> str:
        raise NotImplementedError

    def devices(self) -> list[str]:
        """Devices this backend can run on here: 'cpu' always, then e.g. 'cuda:0'."""
        raise NotImplementedError

    def default_eager(self, device: str) -> bool:
        """The mode ``build`` picks when not told: whichever of eager and compiled trains
        faster on ``device``; the compiled step, unless a backend measured otherwise."""
        return False

    def cpu_threads(self) -> dict:
        """The framework's own CPU thread settings as it reports them (for a benchmark's
        record; {} where the framework has no API that says)."""
        return {}

    def _build(self, spec: ArchSpec, device: str):
        """A framework model for ``spec`` on ``device`` (weights are set afterwards)."""
        raise NotImplementedError

    def _get_weights(self, model: Model) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_weights(self, model: Model, weights: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _forward(self, model: Model, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def _loss_and_grads(self, model: Model, x: np.ndarray, y: np.ndarray) -> TrainingPass:
        raise NotImplementedError

    def _sgd_step(self, model: Model, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        """One training step in the framework's own idiom: mean cross-entropy,
        gradients, SGD with learning rate ``lr``; BN statistics update once. Returns
        (loss before the step, logits). Plain SGD (no momentum, no weight decay, no
        label smoothing) unless :meth:`configure_optimizer` set more: then
        :func:`optimizer_settings` ``(model)``, with the update of :mod:`resnet_multi.optim`."""
        raise NotImplementedError

    def _configure_optimizer(self, model: Model, optimizer: optim.Optimizer) -> None:
        """Drop the framework's optimizer objects for ``model``, so the next step builds
        them for ``optimizer`` with zero momentum buffers."""
        raise NotImplementedError

    def _get_optimizer_state(self, model: Model) -> dict[str, np.ndarray]:
        """The momentum buffer of every trainable canonical tensor (canonical layout;
        zeros before the first step)."""
        raise NotImplementedError

    def _set_optimizer_state(self, model: Model, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _residual_output_shape(self, x: np.ndarray, args: tuple, options: dict) -> tuple[int, ...]:
        """Build the module's own ``Residual(*args, **options)``, apply it to ``x``
        (NCHW) in training mode, and return the output's native shape."""
        raise NotImplementedError

    def _named_outputs(self, model: Model, x: np.ndarray, training: bool) -> list[tuple[str, np.ndarray]]:
        """(name, output as NumPy in the native layout) for each layer in ``spec.layer_names()``:
        the shape table's walk, with values (the framework's ``named_outputs``)."""
        raise NotImplementedError

    def count_parameters(self, model: Model) -> tuple[int, int]:
        """(trainable parameters, BN running-statistic elements), read from the
        framework's own objects, not from the spec."""
        raise NotImplementedError

    # -- the seam, shared ------------------------------------------------------------
    def choose_device(self, device: str | None) -> str:
        """``device``, checked; None: the first accelerator, else cpu (d2l's ``try_gpu``)."""
        available = self.devices()
        if device is None:
            return next((d for d in available if d != "cpu"), "cpu")
        if device not in available:
            raise InputError(f"device {device!r} is not available to {self.name}; available: {', '.join(available)}")
        return device

    def check_device(self, device: str) -> str:
        available = self.devices()
        if device not in available:
            raise InputError(f"device {device!r} is not available to {self.name}; available: {available}")
        return device

    def build(
        self, arch="d2l-resnet18", *, device: str = "cpu", seed: int = 0, eager: bool | None = None, **overrides
    ) -> Model:
        """Build ``arch`` on ``device`` with the spec's initial weights for ``seed``.
        ``eager=True`` runs op by op (for teaching and debugging), ``False`` the backend's
        compiled step where it has one, None the faster of the two here (:meth:`default_eager`)."""
        spec = get_arch(arch, **overrides)
        checked = self.check_device(device)
        eager = self.default_eager(checked) if eager is None else bool(eager)
        model = Model(spec, self._build(spec, checked), device, eager=eager)
        self._set_weights(model, canonical.init_weights(spec, seed))
        return model

    def get_weights(self, model: Model) -> dict[str, np.ndarray]:
        """Canonical weights (float32 NumPy, canonical names and layouts)."""
        with _quiet():  # a value beyond float32 becomes Inf, which the callers' checks name
            weights = self._get_weights(model)
        canonical.check_weights(model.spec, weights, source=f"{self.name} weights")
        return weights

    def set_weights(self, model: Model, weights: dict[str, np.ndarray]) -> None:
        """Set canonical weights, checked as :func:`resnet_multi.weights.load_weights` checks
        a file's: names, shapes, dtypes, and values (no NaN/Inf, no negative BN variance)."""
        canonical.check_weights(model.spec, weights)
        bad = validate.bad_tensors(weights)
        if bad:
            raise canonical.WeightsError(
                f"refusing weights that no trained network has, in {len(bad)} tensor(s): {validate.describe(bad)}; "
                f"pass the weights of a run that did not diverge (or load_weights an earlier checkpoint)"
            )
        self._set_weights(model, weights)

    def save_weights(self, model: Model, path):
        return canonical.save_weights(path, self.get_weights(model), model.spec)

    def load_weights(self, model: Model, path) -> None:
        self._set_weights(model, canonical.load_weights(path, model.spec))

    def forward(self, model: Model, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        """Logits for an NCHW float32 batch. ``training=True`` normalises with batch
        statistics and updates the BN running statistics, as one training step's
        forward pass does."""
        shapes.check_finite_input(shapes.check_input_array(model.spec, x, training=training))
        with _quiet():
            logits = self._forward(model, x, training)
        self._check_logits(model, x, logits, "forward pass", training=training)
        if training:
            self._check_statistics(model, "a training-mode forward pass")
        return logits

    def loss_and_grads(self, model: Model, x: np.ndarray, y: np.ndarray) -> TrainingPass:
        """Mean softmax cross-entropy over the batch and its gradient for every
        trainable canonical parameter, in training mode (BN statistics update once)."""
        y = self._check_training_input(model, x, y)
        shapes.check_finite_input(x)
        with _quiet():
            result = self._loss_and_grads(model, x, y)
        specs = [t.name for t in canonical.tensor_specs(model.spec) if t.trainable]
        if set(result.grads) != set(specs):
            raise RuntimeError(
                f"{self.name} returned gradients for the wrong tensors: {sorted(set(result.grads) ^ set(specs))[:5]}"
            )
        self._check_loss(model, x, result.loss, result.logits, "forward pass of loss_and_grads")
        bad = [(name, validate.nonfinite_summary(result.grads[name])) for name in specs]
        bad = [(name, summary) for name, summary in bad if summary]
        if bad:
            raise _nonfinite(
                f"{self.name}: the gradient of {bad[0][0]} is not finite ({bad[0][1]})"
                + (f", nor those of {len(bad) - 1} more tensor(s)" if len(bad) > 1 else "")
                + f", although the loss is ({result.loss:.6g}): the backward pass overflows float32",
                _after(False),
            )
        return result

    def sgd_step(self, model: Model, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        """One SGD training step on a batch; returns (loss, logits) of the forward pass.
        NonFiniteError if either is not finite: the step has then been applied with a
        non-finite gradient, so the model's weights must be set again before further use."""
        y = self._check_training_input(model, x, y)
        shapes.check_finite_input(x)
        lr = validate.check_learning_rate(lr)
        with _quiet():
            loss, logits = self._sgd_step(model, x, y, lr)
        self._check_loss(model, x, loss, logits, "SGD step", applied=True)
        return loss, logits

    # -- the optimizer beyond plain SGD (resnet_multi.optim) -----------------------------
    def configure_optimizer(self, model: Model, optimizer: optim.Optimizer | None = None) -> None:
        """SGD's settings for the steps of ``model`` (:class:`resnet_multi.optim.Optimizer`;
        None: the chapter's plain SGD). The momentum buffers start at zero."""
        optimizer = optim.PLAIN if optimizer is None else optimizer
        if not isinstance(optimizer, optim.Optimizer):
            raise InputError(f"optimizer must be a resnet_multi.optim.Optimizer, got {type(optimizer).__name__}")
        self._configure_optimizer(model, optimizer)
        model.cache["optimizer"] = optimizer

    def get_optimizer_state(self, model: Model) -> dict[str, np.ndarray]:
        """The optimizer's state: each trainable canonical tensor's momentum buffer,
        float32; empty for an optimizer without momentum, which keeps none."""
        if not optimizer_settings(model).stateful:
            return {}
        with _quiet():
            state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self._get_optimizer_state(model).items()}
        self._check_optimizer_state(model, state, f"{self.name}'s optimizer state")
        return state

    def set_optimizer_state(self, model: Model, state: dict[str, np.ndarray]) -> None:
        """Set the momentum buffers (as :meth:`get_optimizer_state` gives them)."""
        if not optimizer_settings(model).stateful:
            if state:
                raise InputError(
                    "this optimizer keeps no state (no momentum), but a state was passed: "
                    "configure_optimizer with the momentum it was saved with first"
                )
            return
        self._check_optimizer_state(model, state, "the optimizer state")
        self._set_optimizer_state(model, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()})

    @staticmethod
    def _check_optimizer_state(model: Model, state: dict, what: str) -> None:
        specs = {t.name: t.shape for t in canonical.tensor_specs(model.spec) if t.trainable}
        if set(state) != set(specs):
            missing, extra = sorted(set(specs) - set(state)), sorted(set(state) - set(specs))
            raise InputError(
                f"{what} does not fit {model.spec.name}: missing {missing[:3]}, unexpected {extra[:3]}; "
                f"pass the state of a run of the same network"
            )
        wrong = [f"{k}: expected {specs[k]}, got {np.shape(v)}" for k, v in state.items() if np.shape(v) != specs[k]]
        if wrong:
            raise InputError(f"{what} has mis-shaped buffers ({'; '.join(wrong[:3])})")
        bad = validate.bad_tensors(state)
        if bad:
            raise NonFiniteError(
                f"{what} holds {validate.describe(bad)}; resume from a checkpoint of a run that did not diverge"
            )

    # -- the training loop's step (train.fit); defaults are sgd_step on host batches ---
    def configure_training(
        self,
        model: Model,
        *,
        precision: str = "float32",
        channels_last: bool | None = None,
        device_batches: bool | None = None,
    ) -> None:
        """Options for :meth:`train_step` on ``model`` (train.fit sets them): ``precision``
        (one of :attr:`precisions`), ``channels_last`` and ``device_batches`` (None: the
        backend's choice for the device). Only the torch backend has the last two."""
        if precision not in self.precisions:
            raise InputError(
                f"precision {precision!r} is not available with {self.name}, which trains in "
                f"{' or '.join(self.precisions)}; mixed precision (--precision bf16) is "
                f"available with --backend torch"
            )
        if channels_last:
            raise InputError(
                f"--channels-last (a PyTorch memory format) is available only with --backend "
                f"torch; {self.name} lays its tensors out itself"
            )
        if device_batches:
            raise InputError(
                f"batches built on the device are available only with --backend torch; {self.name} takes NumPy batches"
            )
        model.cache["training"] = {"precision": precision, "channels_last": False, "device_batches": False}

    def training_batches(
        self,
        model: Model,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        resize: int | None,
        augment: str | None = None,
    ):
        """A function (seed, epoch) -> that epoch's shuffled batches, in the form
        :meth:`train_step` takes; here NumPy (x, y) from :func:`resnet_multi.data.iterate_batches`
        (``augment``: its seeded augmentation)."""
        return lambda seed, epoch: data.iterate_batches(
            images, labels, batch_size, shuffle=True, seed=seed, epoch=epoch, resize=resize, augment=augment
        )

    def new_metrics(self, model: Model) -> StepMetrics:
        """An empty accumulator for one epoch of :meth:`train_step` calls."""
        return StepMetrics()

    def train_step(self, model: Model, batch, lr: float, metrics: StepMetrics) -> None:
        """The training loop's step: :meth:`sgd_step` on a batch from
        :meth:`training_batches`, its loss and accuracy added to ``metrics``."""
        x, y = batch
        loss, logits = self.sgd_step(model, x, y, lr)
        metrics.add(loss, logits, y)

    def layer_shapes(self, model: Model, input_shape) -> list[shapes.LayerShape]:
        """The per-layer shape table, measured by running the framework's layers on a
        batch of zeros, reported in the canonical NCHW layout."""
        shape = shapes.check_input_shape(model.spec, input_shape)
        native = self._native_shapes(model, np.zeros(shape, np.float32))
        return [
            shapes.LayerShape(name, self.to_canonical_shape(s))
            for name, s in zip(model.spec.layer_names(), native, strict=True)
        ]

    def native_layer_shapes(self, model: Model, input_shape) -> list[tuple[int, ...]]:
        shape = shapes.check_input_shape(model.spec, input_shape)
        return self._native_shapes(model, np.zeros(shape, np.float32))

    def _native_shapes(self, model: Model, x: np.ndarray) -> list[tuple[int, ...]]:
        """Output shape of each layer in ``spec.layer_names()``, in the native layout: the
        inference-mode walk of :meth:`_named_outputs`."""
        return [tuple(int(d) for d in np.shape(out)) for _, out in self._named_outputs(model, x, False)]

    def named_outputs(self, model: Model, x: np.ndarray, *, training: bool = False) -> dict[str, np.ndarray]:
        """Each named layer's output (``spec.layer_names()``) for an NCHW float32 batch, in
        the canonical layout: what :mod:`resnet_multi.trace` records per stage.
        ``training=True`` uses batch statistics and updates the BN running statistics,
        as ``forward(training=True)`` does."""
        shapes.check_finite_input(shapes.check_input_array(model.spec, x, training=training))
        out = {}
        with _quiet():
            named = self._named_outputs(model, x, training)
        for name, value in named:
            value = np.asarray(value)
            if self.native_layout == "NHWC" and value.ndim == 4:
                value = value.transpose(0, 3, 1, 2)
            out[name] = np.ascontiguousarray(value, dtype=np.float32)
        if list(out) != model.spec.layer_names():
            raise RuntimeError(f"{self.name} named its layer outputs {list(out)}, not {model.spec.layer_names()}")
        for name, value in out.items():  # in the order the network computes them
            summary = validate.nonfinite_summary(value)
            if summary:
                raise _nonfinite(
                    f"{self.name}: the output of layer {name} is not finite ({summary}) in "
                    f"{'training' if training else 'inference'} mode",
                    _after(False),
                )
        if training:
            self._check_statistics(model, "a training-mode pass")
        return out

    def residual_output_shape(self, input_shape, *args, **options) -> tuple[int, ...]:
        """The chapter's block check: ``Residual(*args, **options)`` on a random batch of
        ``input_shape`` (NCHW); the output shape in NCHW."""
        x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
        return self.to_canonical_shape(self._residual_output_shape(x, args, options))

    # -- what the framework computed, checked before it is returned --------------------
    def _first_nonfinite_layer(self, model: Model, x: np.ndarray) -> str | None:
        """The first layer (``spec.layer_names()`` order) whose inference-mode output on ``x``
        is not finite; None if none is. Run only once something is known to be wrong."""
        with _quiet():
            named = self._named_outputs(model, x, False)
        for name, value in named:
            if not np.isfinite(np.asarray(value)).all():
                return name
        return None

    def _check_logits(self, model: Model, x, logits, what: str, *, training: bool, applied: bool = False) -> None:
        summary = validate.nonfinite_summary(logits)
        if summary is None:
            return
        images = np.flatnonzero(~np.isfinite(np.asarray(logits)).all(axis=1))
        shown = ", ".join(map(str, images[:5])) + (", ..." if len(images) > 5 else "")
        if training:
            where = "its BatchNorm layers normalised with this batch's statistics and updated their running ones"
        else:
            layer = self._first_nonfinite_layer(model, x)
            where = (
                f"the first layer whose output is not finite is {layer}" if layer else "every layer's output is finite"
            )
        raise _nonfinite(
            f"{self.name}: the {what} ({'training' if training else 'inference'} mode) gave non-finite "
            f"logits ({summary}) for {len(images)} of {len(logits)} image(s) ({shown}); {where}",
            _after(applied),
        )

    def _check_loss(self, model: Model, x, loss, logits, what: str, *, applied: bool = False) -> None:
        self._check_logits(model, x, logits, what, training=True, applied=applied)
        if not np.isfinite(loss):
            raise _nonfinite(
                f"{self.name}: the {what} gave a loss of {float(loss)} on finite logits (the "
                f"cross-entropy overflows float32)",
                _after(applied),
            )

    def _check_statistics(self, model: Model, what: str) -> None:
        """The BN running statistics after a training-mode pass: finite, variances >= 0."""
        with _quiet():
            weights = self._get_weights(model)
        stats = {t.name: weights[t.name] for t in canonical.tensor_specs(model.spec) if not t.trainable}
        bad = validate.bad_tensors(stats)
        if bad:
            raise _nonfinite(
                f"{self.name}: {what} left BatchNorm running statistics no network can use: {validate.describe(bad)}",
                "the batch's values or the activations are too large for float32 (their squares "
                "overflow): scale the input as training does ([0, 1]), then set good weights again "
                "(set_weights or load_weights)",
            )

    def _check_training_input(self, model: Model, x: np.ndarray, y) -> np.ndarray:
        """A NumPy training batch the backend can take, or a clear error; the labels as int64."""
        shapes.check_input_array(model.spec, x, training=True)
        if x.shape[0] < self.min_training_batch:
            raise InputError(
                f"{self.name} cannot train on a batch of {x.shape[0]} image(s): "
                f"{self.min_training_batch_why}; use batches of at least {self.min_training_batch}"
            )
        return self._check_labels(model, x, y)

    @staticmethod
    def _check_labels(model: Model, x: np.ndarray, y) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= model.spec.num_classes:
            raise InputError(f"labels must lie in [0, {model.spec.num_classes}), got {y.min()}..{y.max()}")
        return y.astype(np.int64)

    def to_canonical_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        if self.native_layout == "NHWC" and len(shape) == 4:
            n, h, w, c = shape
            return (n, c, h, w)
        return shape


def optimizer_settings(model: Model) -> optim.Optimizer:
    """The SGD settings :meth:`Backend.configure_optimizer` gave ``model`` (plain SGD by default)."""
    return model.cache.get("optimizer", optim.PLAIN)


def _nonfinite(finding: str, fix: str) -> NonFiniteError:
    """The error for a non-finite result: ``finding`` (what and where, its ``short``), then the fix."""
    return NonFiniteError(f"{finding}; {fix}", short=finding)


def _after(applied: bool) -> str:
    if applied:
        return (
            "the step has been applied, so the model's weights may hold NaN/Inf now: set good "
            "weights again (set_weights or load_weights) and train with a lower learning rate"
        )
    return "the weights or the input overflow float32: check both, or load a good copy of the weights"


def load_backend(name: str) -> Backend:
    """The adapter for a backend by name; ImportError (naming the extra) if its
    framework is missing, ValueError if the name is unknown."""
    return importlib.import_module(frameworks.get(name).module).BACKEND
