"""The training recipe's optimizer and learning-rate schedule, shared by every backend.

:class:`Optimizer` holds the settings of SGD beyond the chapter's plain step: momentum,
Nesterov momentum, weight decay and label smoothing. Each backend implements them in its
framework's own idiom, and the NumPy reference defines the update every backend must
match, PyTorch's formulation (``torch.optim.SGD``), for every parameter ``p`` with
gradient ``g`` of the (label-smoothed) mean cross-entropy and learning rate ``lr`` of the
step::

    g = g + weight_decay * p          # L2 decay coupled to the gradient, on every trainable tensor
    v = momentum * v + g              # v starts at zero (so the first step's v is g)
    d = g + momentum * v if nesterov else v
    p = p - lr * d

The learning rate stays outside the velocity, so a schedule that changes it every step
scales the whole step, as in PyTorch. Frameworks whose own optimizer puts ``lr`` inside
the velocity (Keras, MXNet's ``sgd``) differ from this as soon as the rate changes; those
backends say in their CONVENTIONS what they do about it.

Weight decay applies to every trainable tensor, BatchNorm's scale and shift and the
biases included: what each framework's optimizer does when given all of a model's
parameters, so every backend passes them as one group.

Label smoothing ``eps`` trains on the target ``(1 - eps) * one_hot + eps / classes``
(PyTorch's ``label_smoothing``, Keras's, ``optax.smooth_labels``).

The schedule (:func:`learning_rate`) is a pure function of the global step, computed
here and passed to the backend with every step, so every framework sees the same rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError

SCHEDULES = ("constant", "one-cycle", "cosine")
# one-cycle: the fraction of the steps that warms up, and where the warm-up starts
# (PyTorch's OneCycleLR defaults: pct_start 0.3, div_factor 25).
WARMUP_FRACTION = 0.3
WARMUP_START = 1 / 25


@dataclass(frozen=True)
class Optimizer:
    """SGD's settings; the defaults are the chapter's plain SGD."""

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        for name in ("momentum", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise InputError(f"nesterov must be True or False, got {self.nesterov!r}")
        object.__setattr__(self, "nesterov", bool(self.nesterov))
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"momentum must lie in [0, 1), got {self.momentum}; 0.9 is the usual choice")
        if self.nesterov and self.momentum == 0.0:
            raise InputError("Nesterov momentum needs a momentum above 0 (e.g. --momentum 0.9), or drop --nesterov")
        if self.weight_decay < 0.0:
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay}; 5e-4 is the usual choice")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}; 0.1 is the usual choice")

    @property
    def plain(self) -> bool:
        """The chapter's SGD: the backends then take their original step, unchanged."""
        return self == PLAIN

    @property
    def stateful(self) -> bool:
        """Whether the optimizer keeps a state (momentum buffers) that a checkpoint must hold."""
        return self.momentum > 0.0

    def to_dict(self) -> dict:
        return asdict(self)


PLAIN = Optimizer()


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return schedule


def learning_rate(schedule: str, step: int, total_steps: int, peak: float) -> float:
    """The learning rate of global step ``step`` (0-based) of ``total_steps``.

    ``constant``: ``peak`` throughout (the chapter's). ``cosine``: from ``peak`` down to
    zero along half a cosine. ``one-cycle``: a linear warm-up from ``peak / 25`` to ``peak``
    over the first 30% of the steps, then half a cosine down towards zero. Every rate is
    positive: the last step's is a small fraction of ``peak``, never zero.
    """
    check_schedule(schedule)
    if schedule == "constant":
        return peak
    if not 0 <= step < total_steps:
        raise InputError(f"step {step} lies outside the schedule's {total_steps} steps")
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return peak * (WARMUP_START + (1.0 - WARMUP_START) * step / warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total_steps - warmup)))


def smoothed_targets(labels: np.ndarray, classes: int, smoothing: float, dtype=np.float32) -> np.ndarray:
    """One-hot targets, smoothed: ``(1 - smoothing) * one_hot + smoothing / classes``."""
    targets = np.full((len(labels), classes), smoothing / classes, dtype=np.float64)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    return targets.astype(dtype)


def sgd_update(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: float, optimizer: Optimizer) -> None:
    """The canonical update (the module's formula), in place on ``param`` and ``velocity``."""
    g = grad + optimizer.weight_decay * param if optimizer.weight_decay else grad
    if optimizer.momentum:
        velocity *= optimizer.momentum
        velocity += g
        g = g + optimizer.momentum * velocity if optimizer.nesterov else velocity
    param -= lr * g
