"""The chapter's experiment, shared by every backend: train, evaluate, checkpoint, plot.

This is d2l's ``train_ch6`` once, for all frameworks. Everything framework-specific
sits behind the backend seam: ``Backend.train_step`` (one SGD step in the framework's
own idiom, ``sgd_step`` by default) and ``Backend.forward`` (evaluation); batches come from
:mod:`resnet_multi.data` as NumPy arrays, so the same seed gives every backend
bit-identical batches and, through the spec's initial weights, the same start. (On CUDA
the torch backend builds the same batches on the device and keeps the epoch's metrics
there, read at the progress marks: see ``resnet_multi.torch``.)

    from resnet_multi import data, train
    from resnet_multi.backend import load_backend
    backend = load_backend("torch")
    model = backend.build("d2l-resnet18", device="cpu", seed=0)
    history = train.fit(backend, model, data.load_fashion_mnist(subset=True),
                        epochs=2, lr=0.05, batch_size=256, resize=32, seed=0, out="runs/demo")

Metrics follow the chapter: train loss and accuracy are averaged over the epoch's
training-mode forward passes (the weights move during the epoch), test accuracy
is measured after the epoch in inference mode, and examples/sec counts only the
time spent in training steps, as the chapter's timer does.

A run directory (``out``) holds ``checkpoint.json`` (epoch, steps, seed, recipe,
spec, data fingerprint, history; the commit point), the weights it names
(``epoch-NNN.safetensors``, canonical), ``history.json``, ``plot.png`` and, once the
run is complete, ``weights.safetensors``. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import files, optim, shapes, validate
from . import weights as canonical
from .backend import Backend, Model, optimizer_settings
from .data import Dataset, canonical_augment, iterate_batches, num_batches, preprocessing
from .errors import InputError, NonFiniteError
from .files import atomic_write_bytes, is_temporary

try:
    import fcntl  # POSIX: a lock on the run directory
except ImportError:  # Windows: no lock, and so no cleaning of stale temporary files
    fcntl = None

CHECKPOINT = "checkpoint.json"
HISTORY = "history.json"
PLOT = "plot.png"
FINAL_WEIGHTS = "weights.safetensors"
FORMAT = "resnet_multi.run.v1"

# The chapter's recipe (d2l, "Residual Networks (ResNet)"): ResNet-18 on Fashion-MNIST
# resized to 96x96, plain SGD at 0.05, batch 256, 10 epochs, Xavier-uniform init
# (the d2l-resnet18 spec's own).
PRESETS = {
    "chapter": dict(arch="d2l-resnet18", epochs=10, lr=0.05, batch_size=256, resize=96, subset=False),
    # Same network and recipe on the bundled 2,000/500 subset at 32x32 (96 steps): short
    # enough for a CPU, long enough to land well above chance (0.1).
    "quick": dict(arch="d2l-resnet18", epochs=12, lr=0.05, batch_size=256, resize=32, subset=True),
    # Issue #27's recipe: at least 0.92 test accuracy on the full test set within 5 minutes of
    # training with torch on a quiet 2-core CPU. The chapter's ResNet-18 at width 32 (1/4 of
    # the MACs of width 64) and 40x40 (at 28x28 the last stage sees one pixel, at 40x40 a 2x2
    # grid, for 0.86 of 48x48's MACs), 5 epochs of a one-cycle schedule peaking at 0.2 with Nesterov
    # momentum 0.9 and weight decay 5e-4 (the usual ResNet settings, which let a short
    # schedule take large steps early and settle at the end), label smoothing 0.1 against
    # over-confidence, and random horizontal flips (clothes look the same mirrored; random
    # crops slow a 5-epoch run's convergence more than they regularise it).
    "fast": dict(
        arch="d2l-resnet18",
        width=32,
        epochs=5,
        lr=0.2,
        batch_size=256,
        resize=40,
        subset=False,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        label_smoothing=0.1,
        schedule="one-cycle",
        augment="flip",
    ),
}

# What a preset leaves out, it takes from here: the chapter's plain SGD at a constant rate.
RECIPE_DEFAULTS = dict(
    width=None, momentum=0.0, nesterov=False, weight_decay=0.0, label_smoothing=0.0, schedule="constant", augment=None
)


def recipe(preset: str = "chapter", *, data_dir=None, **overrides) -> dict:
    """A preset's settings with the user's overrides (None keeps the preset's value).
    A data folder means the full data set, unless ``subset`` says otherwise."""
    settings = {**RECIPE_DEFAULTS, **PRESETS[preset]}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if data_dir is not None and overrides.get("subset") is None:
        settings["subset"] = False
    return settings


def check_start(out: Path, resume: bool) -> None:
    """Before any work: ``out`` is a directory (or nothing yet) whose files are the run's
    own regular files (:func:`check_run_files`); ``resume`` needs a checkpoint in it, a
    new run needs none."""
    check_run_files(out)
    state = read_checkpoint(out)
    if resume and state is None:
        raise RunError(f"nothing to resume: {out / CHECKPOINT} does not exist")
    if not resume and state is not None:
        raise RunError(
            f"{out} already holds a run (at epoch {state['epoch']}); pass --resume "
            f"to continue it or choose another --out"
        )


def trained_resize(preprocess: dict | None, run: dict) -> tuple[bool, int | None]:
    """(known, resize) of weights: the resolution recorded in the file's preprocessing,
    else in the checkpoint of the run that wrote them; (False, None) when neither says."""
    if preprocess is not None:
        return True, preprocess["resize"]
    if "recipe" in run:
        return True, run["recipe"]["resize"]
    return False, None


def standing(out: Path) -> str:
    """Where a stopped run stands: another run holds the directory, or the checkpoint to
    resume from, or none."""
    if _locked_by_another(Path(out)):
        return (
            f"another run is writing to {out} (it holds the run directory's lock), so this one did not "
            f"start there: wait for it to finish, or choose another --out"
        )
    try:
        state = read_checkpoint(out)
    except RunError as e:
        return str(e)
    if state is None:
        return f"no epoch had finished, so {out} holds no checkpoint; run the same command again, without --resume"
    return f"{out} holds the checkpoint of epoch {state['epoch']}: the same command with --resume continues from there"


class RunError(ValueError):
    """A run directory that cannot be started, resumed or read."""


class TrainingDiverged(RunError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class History:
    """Per-epoch metrics, plus d2l Animator's in-epoch points for the plot."""

    epoch: list = field(default_factory=list)  # 1-based
    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    examples: list = field(default_factory=list)  # training examples seen per epoch
    train_seconds: list = field(default_factory=list)  # time inside training steps per epoch
    curve: list = field(default_factory=list)  # [fractional epoch, running loss, running acc]

    @property
    def examples_per_sec(self) -> float:
        """Over all epochs' training steps, as the chapter's ``timer.sum()``."""
        seconds = sum(self.train_seconds)
        return sum(self.examples) / seconds if seconds > 0 else math.nan

    def summary(self, device: str) -> str:
        """The chapter's two closing lines."""
        return (
            f"loss {self.train_loss[-1]:.3f}, train acc {self.train_acc[-1]:.3f}, "
            f"test acc {self.test_acc[-1]:.3f}\n"
            f"{self.examples_per_sec:.1f} examples/sec on {device}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{f.name: list(d[f.name]) for f in dataclasses.fields(cls)})


# ---- evaluation ----------------------------------------------------------------------
def predict(
    backend: Backend,
    model: Model,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    resize: int | None = None,
    normalize: dict | None = None,
    check_layers: bool = False,
) -> np.ndarray:
    """Predicted classes for uint8 images (N, 28, 28), in inference mode.

    ``normalize`` (a weights file's recorded ``preprocess``: scale, mean, std) maps
    pixels to inputs as x = (pixel * scale - mean) / std; by default, as training
    does (:func:`resnet_multi.data.preprocessing`). ``check_layers``: the first batch
    also goes through ``named_outputs``, which checks every layer's output, so that
    weights that overflow are refused even where a framework's later layers turn Inf
    into finite numbers (oneDNN's ReLU maps NaN to 0) and the logits alone look fine."""
    labels = np.zeros(len(images), np.int64)  # iterate_batches wants labels; unused
    transform = _normalizer(normalize)
    out = []
    for x, _ in iterate_batches(images, labels, batch_size, shuffle=False, resize=resize):
        x = transform(x)
        if check_layers and not out:
            backend.named_outputs(model, x, training=False)
        out.append(backend.forward(model, x, training=False).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _normalizer(normalize: dict | None):
    default = preprocessing(None)
    if normalize is None or all(normalize[k] == default[k] for k in ("scale", "mean", "std")):
        return lambda x: x  # iterate_batches already gives pixel * scale
    # iterate_batches gives pixel * default scale; undo it, then apply the recorded transform
    gain = np.float32(normalize["scale"] / default["scale"] / normalize["std"])
    shift = np.float32(normalize["mean"] / normalize["std"])
    return lambda x: x * gain - shift


def evaluate_accuracy(
    backend: Backend,
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 256,
    resize: int | None = None,
    normalize: dict | None = None,
    check_layers: bool = False,
) -> float:
    """Test accuracy, as the chapter's ``evaluate_accuracy_gpu`` (``check_layers``: see :func:`predict`)."""
    if len(images) == 0:
        raise InputError("cannot evaluate on an empty set of images")
    predicted = predict(
        backend, model, images, batch_size=batch_size, resize=resize, normalize=normalize, check_layers=check_layers
    )
    return float((predicted == labels).mean())


# ---- run directory -------------------------------------------------------------------
def _fingerprint(dataset: Dataset) -> dict:
    """Enough to notice a resume on different data (counts and a digest of the arrays)."""
    h = hashlib.sha256()
    for a in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"train": int(len(dataset.train_images)), "test": int(len(dataset.test_images)), "sha256": h.hexdigest()}


def _write_json(path: Path, obj) -> None:
    # allow_nan=False: a NaN or Inf would be written as JSON that no parser accepts
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def read_checkpoint(out) -> dict | None:
    """The run state in ``out``, or None if there is none; RunError if it is unreadable
    or does not fit the checkpoint schema (:data:`resnet_multi.validate.CHECKPOINT`)."""
    path = Path(out) / CHECKPOINT
    if not os.path.lexists(path):
        return None
    problem = files.input_problem(path)
    if problem is not None:
        raise RunError(
            f"{path} {problem}: a run directory's checkpoint is a regular file; remove it or choose another --out"
        )
    try:
        state = validate.parse_json(validate.read_limited(path), "the file")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise validate.SchemaError("format", f"is not {FORMAT!r}")
        validate.check_checkpoint(state)
    except (validate.SchemaError, OSError) as e:
        raise RunError(
            f"{path} is not a usable checkpoint ({e}), so the run cannot be resumed; {_still_usable(Path(out))}"
        ) from None
    return state


def read_history(path) -> History:
    """A run's ``history.json`` (e.g. to plot it again), checked against
    :data:`resnet_multi.validate.HISTORY_FILE`; RunError if it does not fit."""
    path = Path(path)
    try:
        obj = validate.check_history_file(validate.parse_json(validate.read_limited(path), "the file"))
    except (validate.SchemaError, OSError) as e:
        raise RunError(
            f"{path} is not a usable history ({e}); the run's checkpoint.json holds the same history"
        ) from None
    return History.from_dict(obj)


def _still_usable(out: Path) -> str:
    """What a run directory with a broken checkpoint.json still offers."""
    usable = sorted(
        p.name for p in out.glob("*.safetensors") if not p.name.startswith("optimizer-") and canonical.readable(p)
    )
    if not usable:
        return "no readable weights file remains in it: start again with another --out"
    return (
        f"its weights ({', '.join(usable)}) do not depend on it and can still be evaluated "
        f"(resnet-multi evaluate --weights {out / usable[-1]}); to train again, choose another --out"
    )


def save_plot(history: History, path, *, epochs: int | None = None, title: str = "") -> None:
    """The chapter's Animator, drawn once: train loss, train acc and test acc per epoch."""
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history.curve:
        x, loss, acc = np.asarray(history.curve, dtype=float).T
    else:
        x, loss, acc = (np.asarray(v, float) for v in (history.epoch, history.train_loss, history.train_acc))
    ax.plot(x, loss, "-", label="train loss")
    ax.plot(x, acc, "m--", label="train acc")
    ax.plot(history.epoch, history.test_acc, "g-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(epochs or 1, len(history.epoch), 2))
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def run_recipe(
    lr: float,
    batch_size: int,
    resize: int | None,
    seed: int,
    *,
    precision: str = "float32",
    bn_statistics=None,
    optimizer: optim.Optimizer | None = None,
    schedule: str = "constant",
    schedule_steps: int | None = None,
    augment: str | None = None,
) -> dict:
    """What a checkpoint records of the settings, and a resume must match. What is the
    chapter's (plain SGD, constant lr, no augmentation) is left out, so the chapter's
    checkpoints read as before. A schedule records its length in steps: it is part of
    every step's lr, so a resume cannot change the number of epochs under it."""
    recipe = {"lr": float(lr), "batch_size": int(batch_size), "resize": resize, "seed": int(seed)}
    if precision != "float32":  # recorded (and so checked on resume) where it is not the default
        recipe["precision"] = precision
    if bn_statistics is not None:
        recipe["bn_statistics"] = bn_statistics
    if optimizer is not None and not optimizer.plain:
        recipe["optimizer"] = optimizer.to_dict()
    if optim.check_schedule(schedule) != "constant":
        recipe["schedule"], recipe["schedule_steps"] = schedule, int(schedule_steps)
    augment = canonical_augment(augment)
    if augment is not None:
        recipe["augment"] = augment
    return recipe


def recipe_optimizer(recipe: dict) -> optim.Optimizer:
    """The optimizer a recorded recipe names (plain SGD where it names none)."""
    return optim.Optimizer(**recipe["optimizer"]) if "optimizer" in recipe else optim.PLAIN


def bn_statistics(processes: int | None, sync_bn: bool) -> str | None:
    """What BatchNorm normalises over in a run of ``processes`` data-parallel processes,
    where it is not the global batch: without SyncBatchNorm each process's shard, which
    gives another run than one process (and --sync-bn) does, so it is recorded in the
    recipe and a resume cannot change it. None for the global batch."""
    if sync_bn or not processes or processes == 1:
        return None
    return f"each process's shard, {processes} processes"


def check_resume(out, backend: Backend, spec, dataset: Dataset, *, epochs: int, recipe: dict) -> dict:
    """What :func:`fit` checks before it resumes the run in ``out``, for a caller that
    starts processes first: the checkpoint fits this backend, recipe, spec and data."""
    spec_dict = json.loads(json.dumps(dataclasses.asdict(spec)))
    return _resume_state(backend, Path(out), recipe, spec_dict, _fingerprint(dataset), epochs)


def _resume(backend, model, out: Path, recipe: dict, spec_dict: dict, data_print: dict, epochs: int):
    state = _resume_state(backend, out, recipe, spec_dict, data_print, epochs)
    path = out / state["weights"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != state["weights_sha256"]:
        raise RunError(
            f"{path}, named by {out / CHECKPOINT}, is missing or does not match its "
            f"recorded SHA-256; the run cannot be resumed"
        )
    backend.load_weights(model, path)
    saved = state["optimizer"]["state"]
    if saved is not None:
        backend.set_optimizer_state(model, _read_optimizer_state(out, saved))
    return state


def _read_optimizer_state(out: Path, saved: dict) -> dict:
    """The momentum buffers a checkpoint names, checked against their recorded SHA-256."""
    from safetensors.numpy import load

    path = out / saved["file"]
    problem = files.input_problem(path) if os.path.lexists(path) else "does not exist"
    raw = path.read_bytes() if problem is None else b""
    if problem is not None or hashlib.sha256(raw).hexdigest() != saved["sha256"]:
        raise RunError(
            f"{path}, the optimizer state named by {out / CHECKPOINT}, "
            f"{problem or 'does not match its recorded SHA-256'}; the run cannot be resumed"
        )
    return load(raw)


def _write_optimizer_state(path: Path, state: dict) -> str:
    """The momentum buffers as safetensors (canonical names, float32), written atomically; its SHA-256."""
    from safetensors.numpy import save

    raw = save({name: np.ascontiguousarray(state[name]) for name in sorted(state)})
    atomic_write_bytes(files.check_output(path, "in the run directory,", _NOT_OURS), raw)
    return hashlib.sha256(raw).hexdigest()


def _resume_state(backend, out: Path, recipe: dict, spec_dict: dict, data_print: dict, epochs: int) -> dict:
    state = read_checkpoint(out)
    if state is None:
        raise RunError(f"nothing to resume: {out / CHECKPOINT} does not exist")
    if state["backend"] != backend.name:
        raise RunError(
            f"cannot resume {out} on {backend.name}: it was trained on {state['backend']} "
            f"({state['device']}), and one history would then mix two frameworks' numbers; "
            f"resume with --backend {state['backend']}, or train on {backend.name} in another --out"
        )
    recorded = {**state["recipe"], "spec": state["spec"], "data": state["data"]}
    wanted = {**recipe, "spec": spec_dict, "data": data_print}
    diff = [
        f"{k}: checkpoint has {_setting(k, recorded.get(k))}, this run {_setting(k, wanted.get(k))}"
        for k in {**recorded, **wanted}
        if recorded.get(k) != wanted.get(k)
    ]
    if diff:
        raise RunError(
            f"cannot resume {out}: it was started with different settings ("
            + "; ".join(diff)
            + "); pass the same settings or choose another --out"
        )
    if state["epoch"] > epochs:
        raise RunError(f"{out} is already at epoch {state['epoch']}, past the {epochs} asked for")
    return state


def _setting(key: str, value) -> str:
    if key == "bn_statistics":  # absent: one process, or several with --sync-bn
        return repr(value) if value is not None else "'global batch' (one process, or --sync-bn)"
    return repr(value)


def _resumed_meta(recorded: dict, session: dict) -> dict:
    """A resumed run's record: what the run was started with, and each resumed session's own."""
    return {**recorded, "resumed": [*recorded.get("resumed", []), session]}


def _checkpoint(
    backend,
    model,
    weights: dict,
    out: Path,
    *,
    epoch,
    steps,
    recipe,
    spec_dict,
    data_print,
    history: History,
    previous: str | None,
    meta: dict,
) -> str:
    """Weights first (``weights``: the model's, checked by the caller), then the JSON that
    names them (the commit point), then drop the previous epoch's weights: a crash at any
    moment leaves one complete checkpoint."""
    name = f"epoch-{epoch:03d}.safetensors"
    path = canonical.save_weights(out / name, weights, model.spec, preprocess=preprocessing(recipe["resize"]))
    settings = recipe_optimizer(recipe)
    opt_state, saved = None, None
    if settings.stateful:
        opt_state = backend.get_optimizer_state(model)
        opt_name = f"optimizer-{epoch:03d}.safetensors"
        saved = {"file": opt_name, "sha256": _write_optimizer_state(out / opt_name, opt_state)}
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "steps": steps,
        "seed": recipe["seed"],
        "lr": recipe["lr"],
        "recipe": recipe,
        "arch": model.spec.name,
        "spec": spec_dict,
        "data": data_print,
        "backend": backend.name,
        "device": model.device,
        "weights": name,
        "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        # Batch order is default_rng([seed, epoch]) (data.iterate_batches): no RNG state to carry.
        "rng": {"batch_order": "numpy default_rng([seed, epoch])", "state": None},
        # Plain SGD keeps no state; momentum keeps its buffers beside the weights. The lr is
        # the recipe's (a schedule's peak): each step's is a function of the step count.
        "optimizer": {
            "name": "sgd",
            "lr": recipe["lr"],
            "momentum": settings.momentum,
            "weight_decay": settings.weight_decay,
            **(
                {"nesterov": settings.nesterov, "label_smoothing": settings.label_smoothing}
                if not settings.plain
                else {}
            ),
            "state": saved,
        },
        "history": history.to_dict(),
        "meta": meta,
    }
    _write_json(out / CHECKPOINT, state)
    if previous and previous != name:
        (out / previous).unlink(missing_ok=True)
        (out / previous.replace("epoch-", "optimizer-")).unlink(missing_ok=True)
    # Continue from exactly what was saved, as a resumed run does. For float32
    # frameworks this changes nothing; the NumPy reference trains in float64, and
    # this rounds it to the checkpoint's float32 so that resume stays bit-identical.
    backend.set_weights(model, weights)
    if opt_state is not None:
        backend.set_optimizer_state(model, opt_state)
    return name


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _kept(out, weights_file: str | None) -> str:
    """Where a run that stopped on a non-finite loss stands, and what to do."""
    if out is None:
        return "nothing was saved (no run directory); train again with a lower learning rate"
    if weights_file is None:
        return (
            f"no epoch had finished, so {out} holds no checkpoint; train again with a lower --lr "
            f"(the chapter's is 0.05)"
        )
    return (
        f"the last good checkpoint ({Path(out) / weights_file}) is kept; train again with a lower "
        f"--lr (the chapter's is 0.05) in another --out"
    )


def check_run(
    spec, n_train: int, batch_size: int, resize: int | None, out=None, *, backend: Backend | None = None
) -> None:
    """What can be known before any training: every batch fits the network, BatchNorm and
    the backend, and the run directory can be written. :func:`fit` calls it; the CLI calls
    it before it prints anything."""
    _check_batches(
        spec,
        n_train,
        batch_size,
        resize,
        min_batch=backend.min_training_batch if backend else 1,
        why=backend.min_training_batch_why if backend else "",
    )
    if out is not None:
        check_run_files(Path(out))
        os.close(_open_lock_file(Path(out)))


def _check_batches(
    spec, n_train: int, batch_size: int, resize: int | None, *, min_batch: int = 1, why: str = ""
) -> None:
    """Before any training: every batch of the epoch, the last partial one included,
    must give BatchNorm more than one value per channel, and hold at least the
    backend's ``min_batch`` images (``why`` says what fails below that)."""
    side = resize or 28
    sizes = {min(batch_size, n_train)} | ({n_train % batch_size} - {0})
    for n in sorted(sizes):
        shapes.check_input_shape(spec, (n, 1, side, side))  # channels and emptiness
    gh, gw = shapes.final_grid(spec, side, side)
    need_bn = shapes.bn_min_batch(gh, gw)
    need = max(need_bn, min_batch)
    if n_train < need:  # no batch size helps: every batch holds at most n_train images
        reason = (
            f"BatchNorm needs batches of at least {need_bn} ({spec.name}'s last stage sees {gh}x{gw} at {side}x{side})"
            if n_train < need_bn
            else f"{why}: batches of at least {need}"
        )
        raise InputError(
            f"the data holds {n_train:,} training image(s), and {reason}; train on more images "
            f"(raise --limit, or leave it out)"
        )
    last = n_train % batch_size
    if 0 < last < need:
        # a smaller batch size that leaves no partial batch or a large enough one; else one batch of all
        better = next(
            (b for b in range(batch_size - 1, need - 1, -1) if n_train % b == 0 or n_train % b >= need), n_train
        )
        reason = (
            f"BatchNorm cannot train on it ({spec.name}'s last stage sees {gh}x{gw} at {side}x{side}, "
            f"so it would have one value per channel)"
            if last < need_bn
            else f"{why}"
        )
        raise InputError(
            f"batch size {batch_size} leaves a last batch of {last} of the {n_train:,} training images, and "
            f"{reason}; choose a batch size that leaves none or at least {need}"
            + (f", e.g. {better}" if better else "")
        )
    if min(batch_size, n_train) < need_bn:
        raise InputError(
            f"batch size {min(batch_size, n_train)} is too small to train {spec.name} at "
            f"{side}x{side}: its last stage sees {gh}x{gw}, so BatchNorm needs batches of at "
            f"least {need_bn}"
        )
    if min(batch_size, n_train) < min_batch:
        raise InputError(
            f"batch size {min(batch_size, n_train)} is too small: {why}; use batches of at least {min_batch}"
        )


@contextlib.contextmanager
def _run_directory(out: Path):
    """Create ``out`` (checking it is writable before any work), hold a lock on it so that
    no second run writes there meanwhile, and remove temporary files that an earlier,
    killed run left behind (with the lock held, none can be in use)."""
    fd = _open_lock_file(out)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunError(f"another run is writing to {out}; wait for it or choose another --out") from None
            for path in out.iterdir():
                if any(is_temporary(path.name, target) for target in _OWN_FILES) or _is_epoch_temp(path.name):
                    path.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_run_files(out) -> Path:
    """A run directory resnet-multi may write in: a directory or nothing yet, whose own
    files (checkpoint, history, plot, weights, lock) are regular files where they exist,
    so that no write replaces a link, a device or a directory: OutputError otherwise."""
    out = files.check_output_dir(out, "the run directory (--out)")
    if out.is_dir():
        files.check_lock(out / ".lock")
        for name in _OWN_FILES:
            files.check_output(out / name, "in the run directory,", _NOT_OURS)
        for path in sorted([*out.glob("epoch-*.safetensors"), *out.glob("optimizer-*.safetensors")]):
            files.check_output(path, "in the run directory,", _NOT_OURS)
    return out


_NOT_OURS = "a run directory holds only the files a run writes: remove it, or choose another --out"


def _locked_by_another(out: Path) -> bool:
    """Whether a process holds ``out``'s lock now (this one holds none once fit returns)."""
    if fcntl is None:
        return False
    try:
        fd = files.open_lock(out / ".lock") if (out / ".lock").is_file() else None
    except (OSError, files.OutputError):
        return False
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases it, if this probe took it
    return False


def _open_lock_file(out: Path) -> int:
    """Create ``out`` and its lock file: the first write a run makes, so a directory that
    cannot be written is found before any training. The lock is a regular file opened
    without following links (:func:`resnet_multi.files.open_lock`)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return files.open_lock(out / ".lock")
    except OSError as e:
        raise RunError(
            f"cannot write the run directory {out}: {e.strerror or e}; choose another --out or make it writable"
        ) from None


_OWN_FILES = (CHECKPOINT, HISTORY, PLOT, FINAL_WEIGHTS)


def _is_epoch_temp(name: str) -> bool:
    return name.startswith((".epoch-", ".optimizer-")) and ".safetensors." in name and name.endswith(".tmp")


def _link_final(out: Path, weights_file: str) -> None:
    """``weights.safetensors``: the last checkpoint's file under the name users look for,
    as a hard link (no second copy on disk), replaced atomically; a copy where the file
    system has no hard links."""
    src, dst = out / weights_file, files.check_output(out / FINAL_WEIGHTS, "in the run directory,", _NOT_OURS)
    tmp = out / f".{FINAL_WEIGHTS}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        try:
            files.check_output(dst, "in the run directory,", _NOT_OURS)  # nothing else appeared there meanwhile
        except files.OutputError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(dst, src.read_bytes())


# ---- the loop ------------------------------------------------------------------------
class OneProcess:
    """How :func:`fit` runs by default: this process reads and writes the run directory.
    A data-parallel run passes :class:`resnet_multi.distributed.ProcessGroup` instead,
    where only rank 0 does, and shares what it read with the other ranks."""

    writes = True

    @staticmethod
    def share(make):
        """``make()``'s result, as rank 0 computed it (here: this process)."""
        return make()


def fit(
    backend: Backend,
    model: Model,
    dataset: Dataset,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 256,
    resize: int | None = None,
    seed: int = 0,
    out=None,
    resume: bool = False,
    progress: bool = False,
    plot: bool = True,
    meta: dict | None = None,
    precision: str = "float32",
    channels_last: bool | None = None,
    device_batches: bool | None = None,
    processes=OneProcess,
    optimizer: optim.Optimizer | None = None,
    schedule: str = "constant",
    augment: str | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs (d2l's ``train_ch6``), evaluating after each.

    With ``out``, a checkpoint is written after every epoch and ``resume=True``
    continues from the last complete one: the same settings give the same final
    weights and metrics, bit for bit, as an uninterrupted run (timings aside).
    ``meta`` (e.g. where the data came from) is recorded in the checkpoint as is.
    ``precision`` ("float32", or "bf16" with torch: mixed precision under autocast),
    ``channels_last`` and ``device_batches`` (torch only; None: on for CUDA) are
    :meth:`resnet_multi.backend.Backend.configure_training`'s.
    ``processes`` is the data-parallel run this process is part of (see :class:`OneProcess`).
    ``optimizer`` (:class:`resnet_multi.optim.Optimizer`; None: plain SGD), ``schedule``
    (:data:`resnet_multi.optim.SCHEDULES`: each step's lr from ``lr`` as the peak) and
    ``augment`` (:func:`resnet_multi.data.parse_augment`) are the recipe beyond the chapter's;
    the momentum buffers are checkpointed with the weights.
    """
    epochs = validate.check_epochs(epochs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    lr = validate.check_learning_rate(lr)
    if resume and out is None:
        raise InputError("resume needs the run directory (out) to resume from")
    if out is not None and processes.writes:
        out = check_run_files(out)  # before Path("") turns an empty path into the current directory
    optimizer = optim.PLAIN if optimizer is None else optimizer
    if not isinstance(optimizer, optim.Optimizer):
        raise InputError(f"optimizer must be a resnet_multi.optim.Optimizer, got {type(optimizer).__name__}")
    recipe = run_recipe(
        lr,
        batch_size,
        resize,
        seed,
        precision=precision,
        bn_statistics=getattr(processes, "bn_statistics", None),
        optimizer=optimizer,
        schedule=schedule,
        schedule_steps=num_batches(len(dataset.train_images), int(batch_size)) * epochs,
        augment=augment,
    )
    backend.configure_training(model, precision=precision, channels_last=channels_last, device_batches=device_batches)
    if not optimizer.plain or not optimizer_settings(model).plain:  # a plain run touches nothing new
        backend.configure_optimizer(model, optimizer)
    check_run(model.spec, len(dataset.train_images), int(batch_size), resize, backend=backend)
    if out is None or not processes.writes:  # only the writer locks the run directory
        return _fit(
            backend,
            model,
            dataset,
            epochs=epochs,
            recipe=recipe,
            out=None if out is None else Path(out),
            resume=resume,
            progress=progress,
            plot=plot,
            meta=meta,
            processes=processes,
        )
    out = Path(out)
    with _run_directory(out):
        return _fit(
            backend,
            model,
            dataset,
            epochs=epochs,
            recipe=recipe,
            out=out,
            resume=resume,
            progress=progress,
            plot=plot,
            meta=meta,
            processes=processes,
        )


# A diverging run is reported once (TrainingDiverged), not as NumPy warnings from every op.
@np.errstate(over="ignore", invalid="ignore")
def _fit(backend, model, dataset, *, epochs, recipe, out, resume, progress, plot, meta, processes) -> History:
    lr, batch_size, resize, seed = recipe["lr"], recipe["batch_size"], recipe["resize"], recipe["seed"]
    schedule, total_steps = recipe.get("schedule", "constant"), recipe.get("schedule_steps", 0)
    spec_dict = json.loads(json.dumps(dataclasses.asdict(model.spec)))  # tuples -> lists, as stored
    data_print = _fingerprint(dataset)
    history, start, steps, weights_file = History(), 0, 0, None
    if out is not None:

        def opening() -> dict:  # plain JSON data: a data-parallel run sends it to every process
            if resume:
                state = _resume(backend, model, out, recipe, spec_dict, data_print, epochs)
                return {
                    "epoch": state["epoch"],
                    "steps": state["steps"],
                    "history": state["history"],
                    "meta": _resumed_meta(state["meta"], meta or {}),
                }
            if (out / CHECKPOINT).exists():
                raise RunError(
                    f"{out} already holds a run (at epoch {read_checkpoint(out)['epoch']}); "
                    f"resume it or choose another output directory"
                )
            return {"epoch": 0, "steps": 0, "history": history.to_dict(), "meta": meta or {}}

        opened = processes.share(opening)
        start, steps, history, meta = (
            opened["epoch"],
            opened["steps"],
            History.from_dict(opened["history"]),
            opened["meta"],
        )
        if resume:
            weights_file = f"epoch-{start:03d}.safetensors"
    per_epoch = num_batches(len(dataset.train_images), batch_size)
    # (seed, epoch) -> the epoch's batches, in the form the backend's train_step takes
    augment = {"augment": recipe["augment"]} if "augment" in recipe else {}  # only backends that take it
    epoch_batches = backend.training_batches(
        model, dataset.train_images, dataset.train_labels, batch_size=batch_size, resize=resize, **augment
    )
    # d2l's Animator adds a point five times an epoch and at its end.
    mark = {per_epoch - 1} | {i for i in range(per_epoch) if (i + 1) % max(per_epoch // 5, 1) == 0}
    bar = tqdm(
        total=epochs * per_epoch,
        initial=start * per_epoch,
        disable=not progress,
        desc=f"{backend.name} {model.device}",
        unit="batch",
        file=sys.stderr,
        leave=False,
    )
    try:
        for epoch in range(start, epochs):
            seconds = 0.0
            metrics = backend.new_metrics(model)
            for i, batch in enumerate(epoch_batches(seed, epoch)):
                step_lr = optim.learning_rate(schedule, steps, total_steps, lr)
                tic = time.perf_counter()
                try:
                    backend.train_step(model, batch, step_lr, metrics)
                except NonFiniteError as e:  # the step's own check (sgd_step): where the run stands
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch + 1}, step {i + 1} (lr {step_lr}): {e.short}; "
                        f"{_kept(out, weights_file)}"
                    ) from None
                # A device backend's metrics stay on the device between progress marks (no host
                # sync a step); reading them waits for the queued steps, so it is timed too.
                reading = metrics.read() if i in mark or not metrics.deferred else None
                seconds += time.perf_counter() - tic
                steps += 1
                if reading is not None:
                    if reading.diverged:
                        bad_step, bad_loss = reading.diverged
                        late = f"; seen at the read after step {i + 1}" if bad_step != i + 1 else ""
                        raise TrainingDiverged(
                            f"training diverged: the loss became {bad_loss} at epoch "
                            f"{epoch + 1}, step {bad_step} (lr {lr}{late}); "
                            f"{_kept(out, weights_file)}"
                        )
                    loss_sum, correct, seen = reading.loss_sum, reading.correct, reading.seen
                    if i in mark:
                        history.curve.append([epoch + (i + 1) / per_epoch, loss_sum / seen, correct / seen])
                bar.update()
            # the weights and BN statistics the epoch produced, before anything is measured on them
            weights = backend.get_weights(model)
            bad = validate.bad_tensors(weights)
            if bad:
                raise TrainingDiverged(
                    f"training diverged: after epoch {epoch + 1} the weights hold {validate.describe(bad)} "
                    f"(lr {lr}); {_kept(out, weights_file)}"
                )
            try:
                test_acc = evaluate_accuracy(
                    backend, model, dataset.test_images, dataset.test_labels, batch_size=batch_size, resize=resize
                )
            except NonFiniteError as e:
                raise TrainingDiverged(
                    f"training diverged: the test pass after epoch {epoch + 1} (lr {lr}) failed: {e.short}; "
                    f"{_kept(out, weights_file)}"
                ) from None
            for key, value in (
                ("epoch", epoch + 1),
                ("train_loss", loss_sum / seen),
                ("train_acc", correct / seen),
                ("test_acc", test_acc),
                ("examples", seen),
                ("train_seconds", seconds),
            ):
                getattr(history, key).append(value)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", train_acc=f"{correct / seen:.3f}", test_acc=f"{test_acc:.3f}"
            )
            if out is not None and not processes.writes:
                weights_file = f"epoch-{epoch + 1:03d}.safetensors"  # as the writer names it
            elif out is not None:
                weights_file = _checkpoint(
                    backend,
                    model,
                    weights,
                    out,
                    epoch=epoch + 1,
                    steps=steps,
                    recipe=recipe,
                    spec_dict=spec_dict,
                    data_print=data_print,
                    history=history,
                    previous=weights_file,
                    meta=meta or {},
                )
                _write_json(
                    out / HISTORY,
                    {
                        **history.to_dict(),
                        "backend": backend.name,
                        "device": model.device,
                        "arch": model.spec.name,
                        # null where no time was measured (a clock too coarse for the steps)
                        "examples_per_sec": _finite_or_none(history.examples_per_sec),
                        **recipe,
                    },
                )
                if plot:
                    save_plot(
                        history,
                        out / PLOT,
                        epochs=epochs,
                        title=f"{model.spec.name} on {backend.name} ({model.device})",
                    )
    finally:
        bar.close()
    if out is not None and weights_file is not None and processes.writes:
        _link_final(out, weights_file)
    return history
