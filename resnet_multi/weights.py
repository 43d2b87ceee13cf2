"""Canonical weights: one framework-free naming and layout for every architecture.

Names follow the network's structure::

    stem.conv.weight / .bias                 stem.bn.{weight,bias,running_mean,running_var}
    stages.{i}.{j}.conv{k}.weight / .bias    stages.{i}.{j}.bn{k}.{...}
    stages.{i}.{j}.shortcut.conv.weight / .bias   stages.{i}.{j}.shortcut.bn.{...}
    head.bn.{...} (pre-activation nets)      head.fc.weight / .bias

(stage i, block j, both from 0). Layouts: conv kernels OIHW, dense weights
(out, in), BN ``weight`` is gamma and ``bias`` is beta. BN running statistics
are buffers; everything else is a trainable parameter. Arrays are float32.

Initial weights are drawn here, in NumPy, from a seed, so every backend
starts from bit-identical weights whatever its framework's own defaults are.
Files are safetensors (never pickle), written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import validate
from .files import atomic_write_bytes, input_problem
from .spec import ArchSpec, bn_for

FORMAT = "resnet_multi.canonical.v1"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    trainable: bool  # False for BN running statistics
    role: str  # conv, conv_bias, bn_gamma, bn_beta, bn_mean, bn_var, fc, fc_bias


def _conv(prefix, cin, cout, k, bias):
    out = [TensorSpec(f"{prefix}.weight", (cout, cin, k, k), True, "conv")]
    if bias:
        out.append(TensorSpec(f"{prefix}.bias", (cout,), True, "conv_bias"))
    return out


def _bn(prefix, c):
    return [
        TensorSpec(f"{prefix}.weight", (c,), True, "bn_gamma"),
        TensorSpec(f"{prefix}.bias", (c,), True, "bn_beta"),
        TensorSpec(f"{prefix}.running_mean", (c,), False, "bn_mean"),
        TensorSpec(f"{prefix}.running_var", (c,), False, "bn_var"),
    ]


def tensor_specs(spec: ArchSpec) -> list[TensorSpec]:
    """Every parameter and buffer of the network, in a fixed order."""
    out = _conv("stem.conv", spec.in_channels, spec.width, 7, spec.conv_bias)
    if not spec.preact:
        out += _bn("stem.bn", spec.width)
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage.blocks):
            prefix = f"stages.{i}.{j}"
            bns = dict(block.bn_names())
            for name, cin, cout, k, _, _ in block.convs():
                bn_name = bn_for(name)
                if block.preact:
                    out += _bn(f"{prefix}.{bn_name}", bns[bn_name])
                out += _conv(f"{prefix}.{name}", cin, cout, k, block.conv_bias)
                if not block.preact:
                    out += _bn(f"{prefix}.{bn_name}", bns[bn_name])
            if block.projection:
                out += _conv(f"{prefix}.shortcut.conv", block.in_channels, block.out_channels, 1, block.conv_bias)
                if block.shortcut == "conv_bn":
                    out += _bn(f"{prefix}.shortcut.bn", block.out_channels)
    if spec.preact:
        out += _bn("head.bn", spec.features)
    out += [
        TensorSpec("head.fc.weight", (spec.num_classes, spec.features), True, "fc"),
        TensorSpec("head.fc.bias", (spec.num_classes,), True, "fc_bias"),
    ]
    return out


def module_paths(spec: ArchSpec) -> dict[str, str]:
    """Canonical layer name -> the attribute path of that layer in the book's classes,
    for every layer with weights (``stages.1.0.shortcut.conv`` -> ``stages.1.0.conv3`` in a
    basic block; every other name is its own path). See :meth:`BlockSpec.attribute_names`."""
    paths = {}
    for t in tensor_specs(spec):
        layer = t.name.rsplit(".", 1)[0]
        paths[layer] = layer
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage.blocks):
            prefix = f"stages.{i}.{j}."
            for canonical, attribute in block.attribute_names().items():
                paths[prefix + canonical] = prefix + attribute
    return paths


def rename_layers(tensors: dict, paths: dict[str, str]) -> dict:
    """``tensors`` with each name's layer part (all but the last dot-separated part) looked up
    in ``paths``: :func:`module_paths` turns canonical names into attribute paths, its inverse
    attribute paths into canonical names. A layer not in ``paths`` keeps its name."""
    out = {}
    for name, value in tensors.items():
        layer, _, leaf = name.rpartition(".")
        out[f"{paths.get(layer, layer)}.{leaf}" if layer else name] = value
    return out


def count(spec: ArchSpec) -> tuple[int, int]:
    """(trainable parameters, BN buffer elements)."""
    params = buffers = 0
    for t in tensor_specs(spec):
        n = int(np.prod(t.shape))
        if t.trainable:
            params += n
        else:
            buffers += n
    return params, buffers


def _last_bn_names(spec: ArchSpec) -> set[str]:
    """The BN closing each block's residual branch (bn2 basic, bn3 bottleneck)."""
    names = set()
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage.blocks):
            names.add(f"stages.{i}.{j}.bn{len(block.convs())}.weight")
    return names


def init_weights(spec: ArchSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial canonical weights, drawn in NumPy from ``seed``.

    * ``xavier_uniform`` (the chapter's recipe): conv and dense weights
      U(+-sqrt(6 / (fan_in + fan_out))), every bias 0.
    * ``kaiming_normal`` (torchvision): conv weights N(0, 2 / fan_out); the dense
      layer keeps PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias, as
      torchvision does.
    * BN: gamma 1 (0 for each block's last BN with ``zero_init_last_bn``), beta 0,
      running mean 0, running variance 1.
    """
    rng = np.random.default_rng(seed)
    zero_gamma = _last_bn_names(spec) if spec.zero_init_last_bn else set()
    weights = {}
    for t in tensor_specs(spec):
        if t.role in ("conv", "fc"):
            fan_in = int(np.prod(t.shape[1:]))
            fan_out = t.shape[0] * int(np.prod(t.shape[2:]))
            if spec.init == "xavier_uniform":
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                value = rng.uniform(-bound, bound, t.shape)
            elif t.role == "conv":
                value = rng.normal(0.0, np.sqrt(2.0 / fan_out), t.shape)
            else:
                value = rng.uniform(-1, 1, t.shape) / np.sqrt(fan_in)
        elif t.role == "fc_bias" and spec.init == "kaiming_normal":
            value = rng.uniform(-1, 1, t.shape) / np.sqrt(spec.features)
        elif t.role in ("bn_gamma", "bn_var"):
            value = np.zeros(t.shape) if t.name in zero_gamma else np.ones(t.shape)
        else:
            value = np.zeros(t.shape)
        weights[t.name] = value.astype(np.float32)
    return weights


class WeightsError(ValueError):
    """Canonical weights that do not fit the network, or a file that cannot be read."""


def check_weights(spec: ArchSpec, weights: dict, *, source: str = "weights") -> None:
    """Refuse weights whose names, shapes or dtypes do not match the spec, naming every
    missing, unexpected and mis-shaped entry; nothing is silently skipped."""
    expected = {t.name: t.shape for t in tensor_specs(spec)}
    missing = [n for n in expected if n not in weights]
    unexpected = [n for n in weights if n not in expected]
    misshaped = [
        f"{n}: expected {expected[n]}, got {tuple(np.shape(weights[n]))}"
        for n in expected
        if n in weights and tuple(np.shape(weights[n])) != expected[n]
    ]
    wrong_dtype = [
        f"{n}: {np.asarray(weights[n]).dtype}"
        for n in expected
        if n in weights and np.asarray(weights[n]).dtype != np.float32
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
        ("not float32", wrong_dtype),
    ):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(
            f"{source} do not fit {spec.name} ({len(expected)} tensors expected): "
            + "; ".join(problems)
            + ". Load weights saved from the same architecture and overrides."
        )


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def save_weights(
    path,
    weights: dict[str, np.ndarray],
    spec: ArchSpec,
    *,
    preprocess: dict | None = None,
    classes: list[str] | None = None,
    source: dict | None = None,
) -> Path:
    """Write canonical weights to a safetensors file atomically (temp file + rename).

    The metadata records the architecture and, when given, ``preprocess``: how images
    become the input the weights were trained on (resize, scale, mean, std), so that
    evaluation needs nothing but the file; ``classes``: the name of each output; ``source``:
    where imported weights come from (:data:`resnet_multi.validate.SOURCE`). The same tensors
    and metadata always give the same bytes. Weights holding NaN/Inf or negative variances
    are refused.
    """
    from safetensors.numpy import save

    check_weights(spec, weights)
    bad = validate.bad_tensors(weights)
    if bad:
        raise WeightsError(f"refusing to save weights that no trained network has: {validate.describe(bad)}")
    metadata = {"format": FORMAT, "arch": _json(asdict(spec))}
    try:
        if preprocess is not None:
            _check_preprocess(preprocess, spec, "preprocess")
            metadata["preprocess"] = _json(preprocess)
        if classes is not None:
            metadata["classes"] = _json(validate.check_classes(list(classes), spec.num_classes))
        if source is not None:
            metadata["source"] = _json(validate.check_schema(source, validate.SOURCE, "source"))
    except validate.SchemaError as e:
        raise WeightsError(f"refusing to save weights with this metadata: {e}") from None
    data = save({k: np.ascontiguousarray(v) for k, v in weights.items()}, metadata=metadata)
    atomic_write_bytes(Path(path), *_sorted_header(data))
    return Path(path)


def _sorted_header(data: bytes) -> tuple[bytes, memoryview]:
    """safetensors' bytes with the header's metadata keys sorted.

    safetensors writes the metadata from a hash map, so its order (and the file's
    SHA-256) changes from process to process; the tensors themselves are already in
    a fixed order. Re-serialising the header as safetensors does (compact JSON,
    space-padded to 8 bytes) makes identical content give identical files.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, memoryview(data)[8 + n :]  # the tensors: not copied


@dataclass(frozen=True)
class Metadata:
    """A weights file's metadata, validated."""

    arch: ArchSpec
    preprocess: dict | None  # None in files saved before it was recorded
    classes: tuple[str, ...] | None = None  # None where the file names no classes
    source: dict | None = None  # where imported weights come from


def _damaged(path, problem: str) -> WeightsError:
    return WeightsError(
        f"{path}: {problem}; the file was not saved by resnet-multi or has been edited: "
        f"use the original file, or load the tensors yourself and save them with "
        f"resnet_multi.weights.save_weights"
    )


def read_metadata(path) -> Metadata:
    """The architecture and preprocessing recorded in a weights file, checked against the
    schemas in :mod:`resnet_multi.validate` before anything is built from them. Reads
    only the header, so an oversized network is refused before any tensor is loaded."""
    path = _existing(path)
    meta = _metadata(path)
    try:
        validate.check_schema(meta, validate.WEIGHTS_METADATA, "metadata")
        if meta["format"] != FORMAT:
            raise validate.SchemaError("metadata.format", f"is {meta['format']!r}, not {FORMAT!r}")
        spec = validate.arch_from_dict(validate.parse_json(meta["arch"], "metadata.arch"), "metadata.arch")
        preprocess = classes = source = None
        if "preprocess" in meta:
            preprocess = _check_preprocess(
                validate.parse_json(meta["preprocess"], "metadata.preprocess"), spec, "metadata.preprocess"
            )
        if "classes" in meta:
            names = validate.parse_json(meta["classes"], "metadata.classes")
            classes = tuple(validate.check_classes(names, spec.num_classes, "metadata.classes"))
        if "source" in meta:
            source = validate.parse_json(meta["source"], "metadata.source")
            validate.check_schema(source, validate.SOURCE, "metadata.source")
    except validate.SchemaError as e:
        raise _damaged(path, str(e)) from None
    return Metadata(spec, preprocess, classes, source)


def _check_preprocess(preprocess, spec: ArchSpec, path: str) -> dict:
    """The preprocessing record's checks, and that it feeds the network its channel count."""
    validate.check_preprocess(preprocess, path)
    channels = validate.preprocess_channels(preprocess)
    if channels is not None and channels != spec.in_channels:
        raise validate.SchemaError(
            path, f"prepares {channels}-channel images for a network of {spec.in_channels} input channel(s)"
        )
    return preprocess


def readable(path) -> bool:
    """Whether ``path`` is a weights file whose metadata passes :func:`read_metadata`
    (the header only: a quick probe, e.g. to say which files of a broken run remain usable)."""
    try:
        read_metadata(path)
    except WeightsError:
        return False
    return True


def read_arch(path) -> ArchSpec:
    """The architecture recorded in a weights file's metadata, validated."""
    return read_metadata(path).arch


def _existing(path) -> Path:
    path = Path(path)
    problem = input_problem(path)
    if problem is not None:
        raise WeightsError(f"weights file {path} {problem}; pass a .safetensors file saved by resnet-multi")
    return path


def _unreadable(path, e) -> WeightsError:
    return WeightsError(
        f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); "
        f"it may be truncated or corrupt: save it again"
    )


def _metadata(path: Path) -> dict[str, str]:
    """The header's metadata, parsed with limits (validate.safetensors_metadata)."""
    try:
        return validate.safetensors_metadata(path)
    except validate.SchemaError as e:
        raise _unreadable(path, e) from None
    except OSError as e:
        raise _unreadable(path, e) from e


def _read(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    path = _existing(path)
    meta = _metadata(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError and OSError subclasses
        raise _unreadable(path, e) from e
    return tensors, meta


def load_weights(path, spec: ArchSpec) -> dict[str, np.ndarray]:
    """Read canonical weights from a safetensors file and check them against ``spec``:
    names, shapes, dtypes, and values (no NaN/Inf, no negative BN variance)."""
    weights, meta = _read(path)
    if meta.get("format", FORMAT) != FORMAT:
        raise WeightsError(f"{path} holds format {meta['format']!r}, not {FORMAT!r}")
    check_weights(spec, weights, source=f"weights in {path}")
    bad = validate.bad_tensors(weights)
    if bad:
        raise WeightsError(
            f"{path} holds values no trained network has, in {len(bad)} tensor(s): {validate.describe(bad)}; "
            f"the file is damaged or comes from a run that diverged: use an earlier checkpoint, "
            f"or train again with a lower learning rate"
        )
    return weights
