"""One validation layer for everything read from disk, checked before it is used.

A weights file, a ``checkpoint.json`` or a history may come from someone else, be
truncated, or be edited by hand. Each is checked here, once, against a small
declarative :class:`Schema` (types, bounds, choices, required and extra keys),
so that the code that uses it can index it without ``try``/``except``: a bad
file gives one line naming the file, the offending key and the fix, never a
``KeyError`` from deep inside.

Also here: the checks on numbers that a schema cannot see (NaN/Inf in tensors,
negative BN variances).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError
from .spec import BLOCK_KINDS, INITS, MAX_BLOCKS_PER_STAGE, SHORTCUTS, STRIDE_PLACEMENTS, ArchSpec

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


@dataclass(frozen=True)
class Field:
    """One value: its type, and optionally bounds, choices, a pattern, list items or a
    nested schema. ``float`` accepts integers too; neither accepts ``true``/``false``."""

    kind: type
    required: bool = True
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    items: Field | None = None  # each element of a list
    min_len: int | None = None  # of a list
    max_len: int | None = None
    schema: Schema | None = None  # the keys of a dict


@dataclass(frozen=True)
class Schema:
    """The keys of a JSON object; ``extra=False`` refuses keys not listed."""

    fields: dict[str, Field]
    extra: bool = False


class SchemaError(ValueError):
    """A value that does not fit its schema; ``path`` says where (e.g. ``spec.layers[0]``)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path, self.problem = path, problem


def _type_ok(value, kind) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check(value, f: Field, path: str) -> None:
    if value is None:
        if not f.nullable:
            raise SchemaError(path, f"must be {_TYPE_NAMES[f.kind]}, got null")
        return
    if not _type_ok(value, f.kind):
        raise SchemaError(path, f"must be {_TYPE_NAMES[f.kind]}, got {type(value).__name__} {_short(value)}")
    if f.kind is float and not math.isfinite(value):
        raise SchemaError(path, f"must be a finite number, got {value}")
    if f.min is not None and value < f.min:
        raise SchemaError(path, f"must be at least {f.min}, got {_short(value)}")
    if f.max is not None and value > f.max:
        raise SchemaError(path, f"must be at most {f.max}, got {_short(value)}")
    if f.choices is not None and value not in f.choices:
        raise SchemaError(path, f"must be one of {', '.join(map(repr, f.choices))}, got {_short(value)}")
    if f.pattern is not None and not re.fullmatch(f.pattern, value):
        raise SchemaError(path, f"{_short(value)} is not of the form {f.pattern}")
    if f.kind is list:
        if f.min_len is not None and len(value) < f.min_len:
            raise SchemaError(path, f"must have at least {f.min_len} entries, got {len(value)}")
        if f.max_len is not None and len(value) > f.max_len:
            raise SchemaError(path, f"must have at most {f.max_len} entries, got {len(value)}")
        if f.items is not None:
            for i, item in enumerate(value):
                _check(item, f.items, f"{path}[{i}]")
    if f.kind is dict and f.schema is not None:
        check_schema(value, f.schema, path)


def check_schema(obj, schema: Schema, path: str = "") -> dict:
    """Check a parsed JSON object against ``schema``; SchemaError on the first problem."""
    if not isinstance(obj, dict):
        raise SchemaError(path, f"must be an object, got {type(obj).__name__} {_short(obj)}")
    missing = [k for k, f in schema.fields.items() if f.required and k not in obj]
    if missing:
        raise SchemaError(path, f"missing key(s) {', '.join(map(repr, missing))}")
    if not schema.extra:
        extra = [k for k in obj if k not in schema.fields]
        if extra:
            raise SchemaError(path, f"unexpected key(s) {', '.join(map(repr, extra))}")
    for key, f in schema.fields.items():
        if key in obj:
            _check(obj[key], f, f"{path}.{key}" if path else key)
    return obj


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json(text, what: str) -> Any:
    """JSON text, or SchemaError saying it is not JSON (and where it breaks)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError) as e:  # JSONDecodeError and bytes that are not UTF-8
        raise SchemaError(what, f"is not valid JSON ({e})") from None


# ---- the schemas -----------------------------------------------------------------------
# Bounds far above any published ResNet, far below what would exhaust a machine before
# the memory estimate is even reached.
MAX_STAGES = 8
MAX_CHANNELS = 1 << 16
MAX_CLASSES = 1 << 20
MAX_IMAGE_SIDE = 1 << 14

BN = Schema({"eps": Field(float, min=1e-12, max=1.0), "momentum": Field(float, min=1e-12, max=1.0)})

ARCH = Schema(
    {
        "name": Field(str, pattern=r"[^\n]{1,200}"),  # one line, as it is printed in messages
        "layers": Field(list, min_len=1, max_len=MAX_STAGES, items=Field(int, min=1, max=MAX_BLOCKS_PER_STAGE)),
        "block": Field(str, choices=BLOCK_KINDS),
        "in_channels": Field(int, min=1, max=MAX_CHANNELS),
        "num_classes": Field(int, min=1, max=MAX_CLASSES),
        "width": Field(int, min=1, max=MAX_CHANNELS),
        "conv_bias": Field(bool),
        "shortcut": Field(str, choices=SHORTCUTS),
        "stride_on": Field(str, choices=STRIDE_PLACEMENTS),
        "preact": Field(bool),
        "zero_init_last_bn": Field(bool),
        "init": Field(str, choices=INITS),
        "bn": Field(dict, schema=BN),
    }
)

# How images become the network's input: resized to ``resize`` (None: 28, as stored),
# then x = (pixel * scale - mean) / std. Recorded in every weights file saved by training.
PREPROCESS = Schema(
    {
        "resize": Field(int, nullable=True, min=1, max=MAX_IMAGE_SIDE),
        "scale": Field(float, min=0),
        "mean": Field(float),
        "std": Field(float, min=1e-12),
    }
)

# A weights file's metadata: strings (safetensors' rule), two of them JSON.
# Extra keys are allowed: other tools add their own (e.g. a license).
WEIGHTS_METADATA = Schema(
    {
        "format": Field(str),
        "arch": Field(str),
        "preprocess": Field(str, required=False),  # absent in files from before it was recorded
    },
    extra=True,
)

_EPOCH_LISTS = ("epoch", "train_loss", "train_acc", "test_acc", "examples", "train_seconds")

HISTORY = Schema(
    {
        "epoch": Field(list, items=Field(int, min=1)),
        "train_loss": Field(list, items=Field(float, min=0)),
        "train_acc": Field(list, items=Field(float, min=0, max=1)),
        "test_acc": Field(list, items=Field(float, min=0, max=1)),
        "examples": Field(list, items=Field(int, min=0)),
        "train_seconds": Field(list, items=Field(float, min=0)),
        "curve": Field(list, items=Field(list, min_len=3, max_len=3, items=Field(float))),
    }
)

# history.json: the history plus what ran it (and the recipe's keys, listed or not).
HISTORY_FILE = Schema({**HISTORY.fields, "backend": Field(str), "device": Field(str), "arch": Field(str)}, extra=True)

RECIPE = Schema(
    {
        "lr": Field(float, min=0),
        "batch_size": Field(int, min=1),
        "resize": Field(int, nullable=True, min=1, max=MAX_IMAGE_SIDE),
        "seed": Field(int, min=0),
        "precision": Field(str, required=False, choices=("bf16",)),  # only where not float32 (torch)
    }
)

# What the command line records about the data (fit records any ``meta`` as is; these
# keys, where present, are read back by ``evaluate``).
RUN_META = Schema(
    {
        "preset": Field(str, required=False, nullable=True),
        "subset": Field(bool, required=False),
        "data_dir": Field(str, required=False, nullable=True),
        "limit": Field(int, required=False, nullable=True, min=1),
        "source": Field(str, required=False),
    },
    extra=True,
)

CHECKPOINT = Schema(
    {
        "format": Field(str),
        "epoch": Field(int, min=0),
        "steps": Field(int, min=0),
        "seed": Field(int, min=0),
        "lr": Field(float, min=0),
        "recipe": Field(dict, schema=RECIPE),
        "arch": Field(str),
        "spec": Field(dict, schema=ARCH),
        "data": Field(
            dict,
            schema=Schema(
                {"train": Field(int, min=0), "test": Field(int, min=0), "sha256": Field(str, pattern=r"[0-9a-f]{64}")}
            ),
        ),
        "backend": Field(str),
        "device": Field(str),
        # a bare file name in the run directory: never a path that leads out of it
        "weights": Field(str, pattern=r"epoch-[0-9]{3,}\.safetensors"),
        "weights_sha256": Field(str, pattern=r"[0-9a-f]{64}"),
        "rng": Field(dict),
        "optimizer": Field(dict),
        "history": Field(dict, schema=HISTORY),
        "meta": Field(dict, schema=RUN_META),
    }
)


def check_history(history: dict, path: str = "history", epochs: int | None = None, *, schema: Schema = HISTORY) -> dict:
    """A history: the schema, plus one entry per epoch in every per-epoch list."""
    check_schema(history, schema, path)
    lengths = {k: len(history[k]) for k in _EPOCH_LISTS}
    want = epochs if epochs is not None else lengths["epoch"]
    uneven = [f"{k} has {n}" for k, n in lengths.items() if n != want]
    if uneven:
        raise SchemaError(path or "history", f"per-epoch lists must each have {want} entries: {', '.join(uneven)}")
    if history["epoch"] != list(range(1, want + 1)):
        raise SchemaError(f"{path}.epoch" if path else "epoch", f"must be 1..{want}, got {_short(history['epoch'])}")
    return history


def check_history_file(obj) -> dict:
    """A run's history.json, parsed."""
    return check_history(obj, "", schema=HISTORY_FILE)


def check_checkpoint(state) -> dict:
    """A run's checkpoint.json, parsed: the schema, and the history fits its epoch."""
    check_schema(state, CHECKPOINT)
    check_history(state["history"], "history", epochs=state["epoch"])
    return state


def arch_from_dict(fields: dict, path: str = "arch") -> ArchSpec:
    """An ArchSpec from its JSON form, checked against :data:`ARCH` first, so that a
    file can only describe a network within the schema's bounds."""
    from .spec import BatchNormSpec

    check_schema(fields, ARCH, path)
    try:
        return ArchSpec(**{**fields, "layers": tuple(fields["layers"]), "bn": BatchNormSpec(**fields["bn"])})
    except ValueError as e:  # a combination the schema cannot see (e.g. preact with zero-init)
        raise SchemaError(path, str(e)) from None


# ---- numbers ---------------------------------------------------------------------------
def nonfinite_tensors(weights: dict) -> list[str]:
    """Names of the tensors holding NaN or Inf."""
    return [name for name, value in weights.items() if not np.isfinite(value).all()]


def bad_tensors(weights: dict) -> list[str]:
    """Tensors no trained network has: NaN/Inf anywhere, a negative BN running variance."""
    bad = [f"{name} (NaN/Inf)" for name in nonfinite_tensors(weights)]
    bad += [
        f"{name} (negative variance)"
        for name, value in weights.items()
        if name.endswith(".running_var") and np.isfinite(value).all() and (value < 0).any()
    ]
    return bad


def describe(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def nonfinite_summary(value) -> str | None:
    """None if every value is finite, else how many are NaN and how many infinite."""
    a = np.asarray(value)
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    nan = int(np.isnan(a).sum())
    inf = int(a.size - finite.sum()) - nan
    parts = [f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n]
    return f"{' and '.join(parts)} among {a.size:,} value{'s' if a.size != 1 else ''}"


# ---- numbers the user passes: one check each, for the Python API and the command line ----
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Below this a float32 is zero or a denormal, and accelerators (and XLA on CPUs) flush
# denormals to zero: a learning rate this small changes no weight.
FLOAT32_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
MAX_EPOCHS = 100_000
MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: far beyond any wait for another process
MAX_PERTURB = 1.0  # a relative change of the weights; above 1 it flips their signs


def _number(value, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{what} must be a number, got {type(value).__name__} {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InputError(f"{what} must be a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return number


def check_learning_rate(lr, what: str = "learning rate") -> float:
    """A learning rate SGD can use in float32: positive, finite, at least float32's
    smallest normal number (below it no weight changes) and at most its largest."""
    value = _number(lr, what)
    if value <= 0:
        raise InputError(f"{what} must be a positive number, got {lr!r}")
    if value < FLOAT32_SMALLEST_NORMAL:
        raise InputError(
            f"{what} {value:g} is below {FLOAT32_SMALLEST_NORMAL:.4g}, float32's smallest normal "
            f"number: in float32 it is zero or a denormal that devices flush to zero, so no weight "
            f"would change; the chapter's is 0.05"
        )
    if value > FLOAT32_MAX:
        raise InputError(f"{what} {value:g} is above {FLOAT32_MAX:.4g}, the largest float32: it would be infinite")
    return value


def check_epochs(epochs, what: str = "epochs") -> int:
    """A number of epochs: an integer from 1 to :data:`MAX_EPOCHS`."""
    if isinstance(epochs, (bool, np.bool_)) or not isinstance(epochs, (int, np.integer)):
        raise InputTypeError(f"{what} must be a positive integer, got {type(epochs).__name__} {_short(epochs)}")
    if not 1 <= epochs <= MAX_EPOCHS:
        raise InputError(f"{what} must be from 1 to {MAX_EPOCHS:,}, got {_short(epochs)}")
    return int(epochs)


def check_timeout(seconds, what: str = "timeout") -> float:
    """How long to wait for another process, in seconds: positive, at most a week."""
    value = _number(seconds, what)
    if not 0 < value <= MAX_TIMEOUT_S:
        raise InputError(f"{what} must be more than 0 and at most {MAX_TIMEOUT_S:,} seconds (a week), got {seconds!r}")
    return value


def check_perturb(scale, what: str = "perturb") -> float:
    """The control run's relative noise on the weights: from 0 to :data:`MAX_PERTURB`."""
    value = _number(scale, what)
    if not 0 <= value <= MAX_PERTURB:
        raise InputError(
            f"{what} must be from 0 to {MAX_PERTURB:g} (a relative change of each weight; "
            f"float32's rounding is about 1e-7), got {scale!r}"
        )
    return value
