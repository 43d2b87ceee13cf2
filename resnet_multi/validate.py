"""One validation layer for everything read from disk, checked before it is used.

A weights file, a ``checkpoint.json`` or a history may come from someone else, be
truncated, or be edited by hand. Each is checked here, once, against a small
declarative :class:`Schema` (types, bounds, choices, required and extra keys),
so that the code that uses it can index it without ``try``/``except``: a bad
file gives one line naming the file, the offending key and the fix, never a
``KeyError`` from deep inside.

Every file is parsed with limits first (:func:`parse_json`: size, nesting depth,
duplicate keys, non-standard NaN/Infinity; :func:`safetensors_metadata`: the header's
size; :data:`MAX_IDX_BYTES`: a data file's decompressed size), so that a hostile or
broken file is a message, never a RecursionError or an exhausted memory. One schema per
kind of file: weights metadata (:data:`WEIGHTS_METADATA`, :data:`ARCH`,
:data:`PREPROCESS`), checkpoints (:func:`check_checkpoint`), traces (:func:`check_trace`)
and data (:func:`idx_count`).

Also here: the checks on numbers that a schema cannot see (NaN/Inf in tensors,
negative BN variances), and on the numbers a user passes (learning rate, epochs, timeouts).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError
from .spec import BLOCK_KINDS, INITS, MAX_BLOCKS_PER_STAGE, MAX_BN_EPS, SHORTCUTS, STRIDE_PLACEMENTS, ArchSpec

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


# Bounds on the numbers a user passes (checked by check_learning_rate and the like, below).
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Below this a float32 is zero or a denormal, and accelerators (and XLA on CPUs) flush
# denormals to zero: a learning rate this small changes no weight.
FLOAT32_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
MAX_EPOCHS = 100_000
MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: far beyond any wait for another process
MAX_PERTURB = 1.0  # a relative change of the weights; above 1 it flips their signs


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
    if f.choices == (None,) and value is not None:
        raise SchemaError(path, f"must be null, got {_short(value)}")
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


# ---- parsing with limits -----------------------------------------------------------------
# Far above what the package writes (a checkpoint of 100,000 epochs is a few MB; a spec or a
# preprocessing record is under 1 kB, nested 3 deep), far below what would exhaust a machine.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 16
MAX_HEADER_BYTES = 64 << 20  # a safetensors header: names, shapes, offsets and metadata
_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (stops counting past the limit)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, twice))} (which one counts would be a guess)")
    return dict(pairs)


def parse_json(text, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """JSON text, or SchemaError saying why not: larger than ``max_bytes``, nested deeper
    than :data:`MAX_JSON_DEPTH`, a key given twice, or not JSON at all (and where it
    breaks). NaN and Infinity parse, so that the schema names the key holding one."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise SchemaError(what, f"is {len(data):,} bytes, more than the {max_bytes:,} this kind of file can need")
    if _depth(data) > MAX_JSON_DEPTH:
        raise SchemaError(
            what, f"is nested more than {MAX_JSON_DEPTH} levels deep, which no file resnet-multi writes is"
        )
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except RecursionError:  # the depth scan should have stopped it; never a traceback
        raise SchemaError(what, "is nested too deeply") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError, bytes that are not UTF-8, the hooks above
        raise SchemaError(what, f"is not valid JSON ({e})") from None


def read_limited(path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """At most ``max_bytes + 1`` bytes of a file: enough for :func:`parse_json` to refuse
    one that is too large without reading all of it."""
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def safetensors_metadata(path) -> dict[str, str]:
    """A safetensors file's ``__metadata__``, read from its header with limits (size,
    depth, duplicate keys), before any tensor is: a dict of strings (the format's rule).
    SchemaError naming the problem; OSError if the file cannot be read."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SchemaError("header", f"is missing: the file has {len(head)} bytes")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES or size > os.fstat(f.fileno()).st_size - 8:
            raise SchemaError(
                "header", f"declares {size:,} bytes, more than the file or the {MAX_HEADER_BYTES:,} allowed"
            )
        header = parse_json(f.read(size), "header", max_bytes=MAX_HEADER_BYTES)
    if not isinstance(header, dict):
        raise SchemaError("header", f"must be an object, got {type(header).__name__}")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SchemaError("metadata", "must map names to strings")
    return meta


# ---- the schemas -----------------------------------------------------------------------
# Bounds far above any published ResNet, far below what would exhaust a machine before
# the memory estimate is even reached.
MAX_STAGES = 8
MAX_CHANNELS = 1 << 16
MAX_CLASSES = 1 << 20
MAX_IMAGE_SIDE = 1 << 14

BN = Schema({"eps": Field(float, min=1e-12, max=MAX_BN_EPS), "momentum": Field(float, min=1e-12, max=1.0)})

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
# Imported zoo weights add how their zoo prepares a photo: the shorter side resized to
# ``resize`` with ``interpolation``, a centre ``crop``, the ``channels`` in the network's
# order, and a mean and std per channel (lists; training records single numbers).
PREPROCESS = Schema(
    {
        "resize": Field(int, nullable=True, min=1, max=MAX_IMAGE_SIDE),
        "scale": Field(float, min=1e-12),  # 0 would map every image to the same input
        "mean": Field(float),
        "std": Field(float, min=1e-12),
        "crop": Field(int, required=False, min=1, max=MAX_IMAGE_SIDE),
        "interpolation": Field(str, required=False, choices=("nearest", "bilinear", "bicubic")),
        "channels": Field(str, required=False, choices=("L", "RGB", "BGR")),
    }
)
_PER_CHANNEL = dict(min_len=1, max_len=3)  # L, or RGB / BGR
PREPROCESS_PER_CHANNEL = Schema(
    {
        **PREPROCESS.fields,
        "mean": Field(list, items=Field(float), **_PER_CHANNEL),
        "std": Field(list, items=Field(float, min=1e-12), **_PER_CHANNEL),
    }
)
# The largest |input| a preprocessing may map a pixel (0..255) to: normalised inputs lie
# within a few units of 0; 1e6 is far beyond that, far below float32's overflow.
MAX_INPUT = 1e6


def preprocess_channels(obj: dict) -> int | None:
    """How many channels a (checked) preprocessing record feeds the network, where it says."""
    if "channels" in obj:
        return 1 if obj["channels"] == "L" else 3
    if isinstance(obj["mean"], list):
        return len(obj["mean"])
    return None


def check_preprocess(obj, path: str = "preprocess") -> dict:
    """A preprocessing record: the schema, and pixels 0..255 map to inputs within
    +-:data:`MAX_INPUT` (else float32 arithmetic on them is meaningless or overflows)."""
    per_channel = isinstance(obj, dict) and isinstance(obj.get("mean"), list)
    check_schema(obj, PREPROCESS_PER_CHANNEL if per_channel else PREPROCESS, path)
    means, stds = (obj["mean"], obj["std"]) if per_channel else ([obj["mean"]], [obj["std"]])
    if per_channel and len(means) != len(stds):
        raise SchemaError(path, f"has {len(means)} means and {len(stds)} stds: give one of each per channel")
    channels = preprocess_channels(obj)
    if per_channel and channels != len(means):
        raise SchemaError(path, f"has {len(means)} means for {obj['channels']}'s {channels} channel(s)")
    if "crop" in obj and (obj["resize"] is None or obj["crop"] > obj["resize"]):
        raise SchemaError(path, f"crops {obj['crop']} pixels from an image resized to {obj['resize']}: resize first")
    ends = [abs((pixel * obj["scale"] - m) / s) for pixel in (0, 255) for m, s in zip(means, stds)]
    if not max(ends) <= MAX_INPUT:  # not <=: also a NaN from the arithmetic
        raise SchemaError(
            path,
            f"maps pixels 0..255 to inputs as large as {max(ends):.3g}, beyond +-{MAX_INPUT:g} "
            f"(x = (pixel * scale - mean) / std): no network is trained on such inputs",
        )
    return obj


# A weights file's metadata: strings (safetensors' rule), two of them JSON.
# Extra keys are allowed: other tools add their own (e.g. a license).
WEIGHTS_METADATA = Schema(
    {
        "format": Field(str),
        "arch": Field(str),
        "preprocess": Field(str, required=False),  # absent in files from before it was recorded
        "classes": Field(str, required=False),  # JSON: CLASSES; absent: the classes are not named
        "source": Field(str, required=False),  # JSON: SOURCE, for weights imported from a model zoo
    },
    extra=True,
)

# The name of each class, in the order of the network's outputs.
CLASSES = Field(list, min_len=1, max_len=MAX_CLASSES, items=Field(str, pattern=r"[^\n]{1,200}"))

# Where imported weights come from: the zoo, the file's name and SHA-256.
SOURCE = Schema(
    {
        "zoo": Field(str, pattern=r"[a-z0-9_-]{1,40}"),
        "file": Field(str, pattern=r"[^\n]{1,1000}"),
        "sha256": Field(str, pattern=r"[0-9a-f]{64}"),
    }
)


def check_classes(obj, num_classes: int, path: str = "classes") -> list[str]:
    """Class names: one line each, one for each of the network's ``num_classes`` outputs."""
    _check(obj, CLASSES, path)
    if len(obj) != num_classes:
        raise SchemaError(path, f"names {len(obj)} classes for a network with {num_classes} outputs")
    return obj


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
        "lr": Field(float, min=FLOAT32_SMALLEST_NORMAL, max=FLOAT32_MAX),
        "batch_size": Field(int, min=1),
        "resize": Field(int, nullable=True, min=1, max=MAX_IMAGE_SIDE),
        "seed": Field(int, min=0),
        "precision": Field(str, required=False, choices=("bf16",)),  # only where not float32 (torch)
        # only for a data-parallel run without SyncBatchNorm: each process's statistics
        "bn_statistics": Field(str, required=False, pattern=r"[^\n]{1,200}"),
        # only where not the chapter's plain SGD, constant lr, no augmentation (resnet_multi.optim)
        "optimizer": Field(
            dict,
            required=False,
            schema=Schema(
                {
                    "momentum": Field(float, min=0, max=0.999999),
                    "nesterov": Field(bool),
                    "weight_decay": Field(float, min=0, max=FLOAT32_MAX),
                    "label_smoothing": Field(float, min=0, max=0.999999),
                }
            ),
        ),
        "schedule": Field(str, required=False, choices=("one-cycle", "cosine")),
        "schedule_steps": Field(int, required=False, min=1),
        "augment": Field(str, required=False, pattern=r"(flip|crop[1-8]|flip\+crop[1-8])"),
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

BATCH_ORDER = "numpy default_rng([seed, epoch])"  # resnet_multi.data.iterate_batches's
NULL = Field(dict, nullable=True, choices=(None,))  # a key whose only value is null

CHECKPOINT = Schema(
    {
        "format": Field(str),
        "epoch": Field(int, min=1),
        "steps": Field(int, min=0),
        "seed": Field(int, min=0),
        "lr": Field(float, min=FLOAT32_SMALLEST_NORMAL, max=FLOAT32_MAX),
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
        # what the run's resume relies on, written as is: nothing else would be honoured
        "rng": Field(dict, schema=Schema({"batch_order": Field(str, choices=(BATCH_ORDER,)), "state": NULL})),
        "optimizer": Field(
            dict,
            schema=Schema(
                {
                    "name": Field(str, choices=("sgd",)),
                    "lr": Field(float, min=FLOAT32_SMALLEST_NORMAL, max=FLOAT32_MAX),
                    "momentum": Field(float, min=0, max=0.999999),
                    "weight_decay": Field(float, min=0, max=FLOAT32_MAX),
                    "nesterov": Field(bool, required=False),
                    "label_smoothing": Field(float, required=False, min=0, max=0.999999),
                    # the momentum buffers (resnet_multi.optim), a file beside the weights; null
                    # for plain SGD, which keeps no state
                    "state": Field(
                        dict,
                        nullable=True,
                        schema=Schema(
                            {
                                "file": Field(str, pattern=r"optimizer-[0-9]{3,}\.safetensors"),
                                "sha256": Field(str, pattern=r"[0-9a-f]{64}"),
                            }
                        ),
                    ),
                }
            ),
        ),
        "history": Field(dict, schema=HISTORY),
        "meta": Field(dict, schema=RUN_META),
    }
)


# ---- traces (resnet_multi.trace) ---------------------------------------------------------
HEX64 = r"[0-9a-f]{64}"
_NAME = Field(str, pattern=r"[A-Za-z0-9_.]{1,200}")
_LINE = r"[^\n]{0,200}"  # one line, as printed in compare's report

TRACE_RECIPE = Schema(
    {
        "steps": Field(int, min=1),
        "lr": Field(float, required=False, min=FLOAT32_SMALLEST_NORMAL, max=FLOAT32_MAX),  # training only
        "batch_size": Field(int, required=False, min=1),
        "resize": Field(int, required=False, nullable=True, min=1, max=MAX_IMAGE_SIDE),
        "seed": Field(int, required=False, min=0),
        "data": Field(str, required=False),
        "weights": Field(str, required=False),
        "init_seed": Field(int, required=False, min=0),
    },
    extra=True,
)

TRACE_THREADS = Schema(
    {
        "cpu_count": Field(int, required=False, nullable=True, min=1),
        "env": Field(dict, required=False),
        "affinity": Field(int, required=False, min=0),
        "torch_num_threads": Field(int, required=False, min=0),
        "tf_intra_op": Field(int, required=False, min=0),
        "tf_inter_op": Field(int, required=False, min=0),
    },
    extra=True,
)

# A trace file's metadata (the JSON in its "trace" key); see resnet_multi.trace.
TRACE_MODES = ("training", "inference")

TRACE = Schema(
    {
        "format": Field(str),
        "mode": Field(str, required=False, choices=TRACE_MODES),  # absent: training
        "backend": Field(str, pattern=r"[A-Za-z0-9_.-]{1,40}"),
        "framework_version": Field(str, pattern=_LINE),
        "device": Field(str, pattern=r"[^\n]{1,100}"),
        "eager": Field(bool),
        "default_mode": Field(bool, required=False),  # absent (older traces): eager was never a default
        "threads": Field(dict, schema=TRACE_THREADS),
        "python": Field(str, pattern=_LINE),
        "numpy": Field(str, pattern=_LINE),
        "platform": Field(str, pattern=_LINE),
        "spec": Field(dict),  # checked against ARCH by check_trace
        "recipe": Field(dict, schema=TRACE_RECIPE),
        "initial_weights_sha256": Field(str, pattern=HEX64),
        "batches_sha256": Field(list, min_len=1, items=Field(str, pattern=HEX64)),
        "layers": Field(list, items=_NAME),
        "params": Field(list, min_len=1, items=_NAME),
        "bn_stats": Field(list, items=_NAME),
        "activation_images": Field(int, min=0),
        "full_grads": Field(bool),
        "twin_loss_gap": Field(float, min=0),
        "perturb": Field(float, min=0, max=MAX_PERTURB),
    }
)


def check_trace(meta, tensors: dict, *, tensor_names) -> ArchSpec:
    """A trace's metadata against :data:`TRACE`, and its tensors against the metadata:
    every tensor the steps need, of its shape and kind, and no other. ``tensor_names``
    maps an ArchSpec to its (trainable, statistic) canonical tensor names (from
    resnet_multi.weights, a layer above this one). Non-finite values are allowed: compare
    counts them as differences. Returns the trace's architecture."""
    check_schema(meta, TRACE)
    spec = arch_from_dict(meta["spec"], "spec")
    steps = meta["recipe"]["steps"]
    training = meta.get("mode", "training") == "training"
    if training and "lr" not in meta["recipe"]:
        raise SchemaError("recipe", "has no lr: a training trace records its learning rate")
    if not training and (meta["full_grads"] or meta["perturb"]):
        raise SchemaError("full_grads", "an inference trace records no gradients and no perturbed start")
    if len(meta["batches_sha256"]) != steps:
        raise SchemaError("batches_sha256", f"has {len(meta['batches_sha256'])} entries for {steps} steps")
    params, stats = tensor_names(spec)
    for key, want in (("params", params), ("bn_stats", stats)):
        if meta[key] != want:
            raise SchemaError(key, f"must list {spec.name}'s {len(want)} tensors in canonical order")
    unknown = [name for name in meta["layers"] if name not in spec.layer_names()]
    if unknown:
        raise SchemaError("layers", f"names no layer of {spec.name}: {describe(unknown)}")
    if (meta["activation_images"] == 0) != (not meta["layers"]):
        raise SchemaError("layers", "must list the recorded layers exactly when activation_images is above 0")
    floats = ("f",)
    expected = {"loss": ((steps,), floats)}
    if training:
        expected["grad_norm"] = ((steps, len(params)), floats)
        expected.update({f"bn.{name}": ((steps + 1, None), floats) for name in stats})
    for k in range(steps):
        expected[f"step.{k}.logits"] = ((None, spec.num_classes), floats)
        expected[f"step.{k}.labels"] = ((None,), ("i", "u"))
        expected.update({f"step.{k}.act.{layer}": (None, floats) for layer in meta["layers"]})
    if meta["full_grads"]:
        expected.update({f"grad.{name}": (None, floats) for name in params})
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise SchemaError("tensors", f"missing {describe(missing)}")
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise SchemaError("tensors", f"unexpected {describe(unexpected)}")
    for name, (shape, kinds) in expected.items():
        value = tensors[name]
        if value.dtype.kind not in kinds:
            raise SchemaError(f"tensor {name}", f"has dtype {value.dtype}")
        if shape is not None and (
            len(value.shape) != len(shape) or any(w is not None and d != w for d, w in zip(value.shape, shape))
        ):
            want = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ")"
            raise SchemaError(f"tensor {name}", f"has shape {value.shape}, not {want}")
    for k in range(steps):
        n, labels = len(tensors[f"step.{k}.logits"]), tensors[f"step.{k}.labels"]
        if n < 1 or len(labels) != n:
            raise SchemaError(f"tensor step.{k}.labels", f"has {len(labels)} labels for {n} rows of logits")
        for layer in meta["layers"]:  # the first images' outputs: NCHW maps, or the pooled features
            value = tensors[f"step.{k}.act.{layer}"]
            if value.ndim not in (2, 4) or len(value) != min(meta["activation_images"], n):
                raise SchemaError(
                    f"tensor step.{k}.act.{layer}",
                    f"has shape {value.shape}, not the outputs of the batch's first "
                    f"{min(meta['activation_images'], n)} image(s) (N, C, H, W or N, C)",
                )
    return spec


# ---- data (IDX files, resnet_multi.data) --------------------------------------------------
# The largest IDX file read, decompressed: about 340,000 28x28 images, over five times
# Fashion-MNIST's 60,000 (47 MB); a gzip bomb stops here instead of exhausting memory.
MAX_IDX_BYTES = 256 << 20
IDX_IMAGES = (0x00000803, 16)  # (magic: unsigned bytes, 3 dimensions; header bytes)
IDX_LABELS = (0x00000801, 8)  # unsigned bytes, 1 dimension


def idx_count(data: bytes, kind: str, *, side: int = 28, classes: int = 10) -> int:
    """The number of items in an IDX file's bytes (``kind`` "images" or "labels"), checked:
    magic number, image size, length, label values. SchemaError (path "") on the first problem."""
    magic, header = IDX_IMAGES if kind == "images" else IDX_LABELS
    if len(data) < header:
        raise SchemaError("", f"truncated: {len(data)} bytes is shorter than the {header}-byte IDX {kind[:-1]} header")
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise SchemaError(
            "",
            f"bad magic number 0x{found:08x}, expected 0x{magic:08x} (IDX unsigned-byte {kind}); "
            f"is this a {kind} file?",
        )
    item = 1
    if kind == "images":
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (side, side):
            raise SchemaError("", f"images are {rows}x{cols}, expected {side}x{side}")
        item = rows * cols
    expected = header + count * item
    if len(data) != expected:
        how = "truncated" if len(data) < expected else "too long"
        held = "only " if len(data) < expected else ""
        raise SchemaError(
            "",
            f"{how}: header declares {count} {kind} ({expected} bytes) but the file holds {held}{len(data)} bytes",
        )
    if kind == "labels" and count:
        labels = np.frombuffer(data, np.uint8, offset=header)
        bad = np.flatnonzero(labels >= classes)
        if bad.size:
            raise SchemaError(
                "",
                f"label {labels[bad[0]]} at index {bad[0]} is outside 0..{classes - 1} ({bad.size} bad labels in all)",
            )
    return count


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
    """A run's checkpoint.json, parsed: the schema, the history fits its epoch, and the
    keys that repeat each other agree (a resume would otherwise honour one and not the other)."""
    check_schema(state, CHECKPOINT)
    check_history(state["history"], "history", epochs=state["epoch"])
    recipe = state["recipe"]
    for key, value, want in (
        ("lr", state["lr"], recipe["lr"]),
        ("seed", state["seed"], recipe["seed"]),
        ("optimizer.lr", state["optimizer"]["lr"], recipe["lr"]),
        ("arch", state["arch"], state["spec"]["name"]),
        ("weights", state["weights"], f"epoch-{state['epoch']:03d}.safetensors"),
        ("optimizer.momentum", state["optimizer"]["momentum"], recipe.get("optimizer", {}).get("momentum", 0.0)),
        (
            "optimizer.weight_decay",
            state["optimizer"]["weight_decay"],
            recipe.get("optimizer", {}).get("weight_decay", 0.0),
        ),
        (
            "optimizer.state",
            None if state["optimizer"]["state"] is None else state["optimizer"]["state"]["file"],
            f"optimizer-{state['epoch']:03d}.safetensors" if state["optimizer"]["momentum"] > 0 else None,
        ),
    ):
        if value != want:
            raise SchemaError(key, f"is {_short(value)}, but the checkpoint's recipe (or epoch) says {_short(want)}")
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
