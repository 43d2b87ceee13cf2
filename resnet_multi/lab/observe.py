"""What a check measures on a module, for the student's and the reference alike.
Framework-free.

For each case: canonical weights with nothing trivial in them (random biases, BatchNorm
scales, shifts and running statistics), an input batch on which the reference keeps every
ReLU input and max-pool runner-up away from its kink (float32 could take the other branch
there), a cotangent for the output (the check's loss is ``sum(cotangent * output)``) and a
learning rate. An :class:`Observation` is what a module does with them: its inference-mode
output, then one training step -- the training-mode output, the gradients of the input and
of every weight, the BatchNorm running statistics after it, and the weights after one SGD
step.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from ..spec import ArchSpec
from . import reference
from .exercises import Case

LR = 0.05  # the chapter's learning rate


@dataclass
class CaseData:
    x: np.ndarray  # NCHW float32
    cotangent: np.ndarray  # the spec's output shape, float32
    weights: dict[str, np.ndarray]  # canonical names, the spec's tensors and the structural variants'
    lr: float = LR
    expected: Observation | None = field(default=None, repr=False)  # the spec's reference, once computed

    @functools.cached_property
    def weights64(self) -> dict[str, np.ndarray]:
        """The weights in float64, once, for the reference to share."""
        return {k: v.astype(np.float64) for k, v in self.weights.items()}


@dataclass
class Observation:
    error: str | None = None  # the inference-mode forward pass raised (or the shapes cannot be added)
    train_error: str | None = None  # the training step raised (BatchNorm with one value per channel)
    shape: tuple | None = None  # the inference-mode output's shape, NCHW
    out_eval: np.ndarray | None = None
    out_train: np.ndarray | None = None
    dx: np.ndarray | None = None
    grads: dict = field(default_factory=dict)  # canonical name -> gradient (trainable tensors)
    stats: dict = field(default_factory=dict)  # canonical name -> BN running statistic after the step
    after: dict = field(default_factory=dict)  # canonical name -> value after one SGD step
    count: int | None = None  # trainable parameters
    record: list = field(default_factory=list)  # the reference's named layer outputs (training mode)
    record_eval: list = field(default_factory=list)

    @property
    def numeric(self) -> bool:
        return self.out_train is not None


@functools.cache
def union_tensors(spec) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Every tensor the spec's module has, and those its structural variants add (conv biases
    the spec leaves out, a BatchNorm after the projection), so that whatever of them a
    student's module holds can be given a value."""
    out = {}
    variants = [frozenset(), frozenset({"projection_bn"})]
    variants.append(frozenset({"conv_bias"}) if not _has_bias(spec) else frozenset())
    for mistakes in variants:
        out.update(reference.tensors(reference.build(spec, mistakes)))
    return out


def _has_bias(spec) -> bool:
    first = spec if hasattr(spec, "conv_bias") else (spec.blocks[0] if hasattr(spec, "blocks") else None)
    return bool(first.conv_bias) if first is not None else True


def random_weights(spec, seed: int) -> dict[str, np.ndarray]:
    """Values for :func:`union_tensors`: Xavier-uniform kernels, random biases, BatchNorm
    scales in [0.5, 1.5], shifts and running means around 0, running variances in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, _) in union_tensors(spec).items():
        leaf = name.rpartition(".")[2]
        layer = name.rpartition(".")[0]
        is_bn = len(shape) == 1 and _is_bn(layer)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            fan_out = shape[0] * int(np.prod(shape[2:]))
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-bound, bound, shape)
        elif is_bn and leaf == "weight":
            value = rng.uniform(0.5, 1.5, shape)
        elif is_bn and leaf == "bias":
            value = rng.normal(0, 0.2, shape)
        elif leaf == "running_mean":
            value = rng.normal(0, 0.2, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # a conv's or the dense layer's bias
            value = rng.normal(0, 0.1, shape)
        out[name] = value.astype(np.float32)
    if isinstance(spec, ArchSpec):
        _damp(spec, out)
    return out


DAMPING = 0.05


def _damp(spec: ArchSpec, weights: dict) -> None:
    """Scale each block's residual branch by ``DAMPING`` (its last BatchNorm's scale, or a
    pre-activation block's last conv), as zero-init-residual recipes start: a deep net with
    full branches amplifies float32 rounding in its gradients beyond the tolerance
    (tests/helpers.py's ``random_weights`` does the same for the parity suite)."""
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage.blocks):
            last = len(block.convs())
            name = f"stages.{i}.{j}.conv{last}.weight" if block.preact else f"stages.{i}.{j}.bn{last}.weight"
            weights[name] = (weights[name] * DAMPING).astype(np.float32)


def _is_bn(layer: str) -> bool:
    return layer.rpartition(".")[2].startswith("bn")


def case_data(case: Case, seed: int, *, margin: float = 2e-5, tries: int | None = None) -> CaseData:
    """Weights, a kink-free input (the first of ``tries`` seeded batches whose training-mode
    pass through the spec's reference keeps every kink ``margin`` away, else the best of
    them), a cotangent and the learning rate for one case. A whole net has too many ReLUs
    for any batch to keep them all that far: it gets the best of a few."""
    if tries is None:
        tries = 4 if isinstance(case.spec, ArchSpec) else 60
    if not case.numeric:  # the output's shape alone: no weights
        x = np.random.default_rng((seed, 0)).standard_normal(case.input_shape).astype(np.float32)
        ref = reference.build(_narrow(case.spec))
        ref.train(False)
        return CaseData(x, np.zeros(ref.forward(x.astype(reference.DTYPE)).shape, np.float32), {})
    weights = random_weights(case.spec, seed)
    ref = reference.build(case.spec)
    reference.load(ref, weights)
    best, best_margin = None, -1.0
    for trial in range(tries):
        rng = np.random.default_rng((seed, trial))
        x = rng.standard_normal(case.input_shape).astype(np.float32)
        ref.train(True)
        out = ref.forward(x.astype(reference.DTYPE))
        m = reference.kink_margin(ref)
        reference.load(ref, weights)  # the training pass moved the running statistics
        if m > best_margin:
            best, best_margin = x, m
            cotangent = np.random.default_rng((seed, trial, 1)).standard_normal(out.shape).astype(np.float32)
        if m >= margin:
            break
    return CaseData(best, cotangent, weights)


def _narrow(spec):
    """The same net with a stem of 2 channels: the same shapes of input and output."""
    return dataclasses.replace(spec, width=2) if isinstance(spec, ArchSpec) else spec


def observe_reference(case: Case, data: CaseData, mistakes=frozenset(), *, quick: bool = False) -> Observation:
    """The reference's observation of one case with ``mistakes`` planted; ``quick`` leaves out
    the backward pass (no gradients), for screening many mistakes."""
    ref = reference.build(case.spec, mistakes)
    obs = Observation(count=reference.params_count(ref))
    x = data.x.astype(reference.DTYPE)
    if not case.numeric:  # the shape alone: a narrow net of zeros has the same one
        narrow = reference.build(_narrow(case.spec), mistakes)
        narrow.train(False)
        try:
            obs.shape = tuple(narrow.forward(x).shape)
        except (reference.ShapeMismatch, ValueError) as e:
            obs.error = str(e)
        return obs
    reference.load(ref, data.weights64)
    if quick:
        return _quick(ref, x, data, obs)
    ref.train(False)
    try:
        out = ref.forward(x, obs.record_eval)
    except (reference.ShapeMismatch, ValueError) as e:
        obs.error = str(e)
        return obs
    obs.shape, obs.out_eval = tuple(out.shape), out
    if not case.numeric or out.shape != data.cotangent.shape:
        return obs
    ref.train(True)
    try:
        obs.out_train = ref.forward(x, obs.record)
    except (reference.ShapeMismatch, ValueError) as e:  # BatchNorm with one value per channel
        obs.train_error = str(e)
        return obs
    obs.dx = ref.backward(data.cotangent.astype(reference.DTYPE))
    for name, layer in ref.layers.items():
        for key, grad in layer.grads.items():
            obs.grads[f"{name}.{key}"] = grad
            obs.after[f"{name}.{key}"] = layer.params[key] - data.lr * grad
        for key, value in layer.buffers.items():
            obs.stats[f"{name}.{key}"] = value
    return obs


def _quick(ref, x, data: CaseData, obs: Observation) -> Observation:
    """The training-mode forward pass alone: its output and the BatchNorm statistics after it
    (an inference-mode pass only to tell a failure of the shapes from one of BatchNorm's)."""
    ref.train(True)
    try:
        out = ref.forward(x, obs.record)
    except (reference.ShapeMismatch, ValueError) as e:
        ref.train(False)
        try:
            out = ref.forward(x)
        except (reference.ShapeMismatch, ValueError) as e2:
            obs.error = str(e2)
            return obs
        obs.shape, obs.train_error = tuple(out.shape), str(e)
        return obs
    obs.shape = tuple(out.shape)
    if out.shape == data.cotangent.shape:
        obs.out_train = out
        for name, layer in ref.layers.items():
            for key, value in layer.buffers.items():
                obs.stats[f"{name}.{key}"] = value
    return obs
