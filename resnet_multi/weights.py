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
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .spec import ArchSpec

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
    return [TensorSpec(f"{prefix}.weight", (c,), True, "bn_gamma"),
            TensorSpec(f"{prefix}.bias", (c,), True, "bn_beta"),
            TensorSpec(f"{prefix}.running_mean", (c,), False, "bn_mean"),
            TensorSpec(f"{prefix}.running_var", (c,), False, "bn_var")]


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
                bn_name = "bn" + name[-1]
                if block.preact:
                    out += _bn(f"{prefix}.{bn_name}", bns[bn_name])
                out += _conv(f"{prefix}.{name}", cin, cout, k, block.conv_bias)
                if not block.preact:
                    out += _bn(f"{prefix}.{bn_name}", bns[bn_name])
            if block.projection:
                out += _conv(f"{prefix}.shortcut.conv", block.in_channels, block.out_channels, 1,
                             block.conv_bias)
                if block.shortcut == "conv_bn":
                    out += _bn(f"{prefix}.shortcut.bn", block.out_channels)
    if spec.preact:
        out += _bn("head.bn", spec.features)
    out += [TensorSpec("head.fc.weight", (spec.num_classes, spec.features), True, "fc"),
            TensorSpec("head.fc.bias", (spec.num_classes,), True, "fc_bias")]
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
    misshaped = [f"{n}: expected {expected[n]}, got {tuple(np.shape(weights[n]))}"
                 for n in expected if n in weights and tuple(np.shape(weights[n])) != expected[n]]
    wrong_dtype = [f"{n}: {np.asarray(weights[n]).dtype}" for n in expected
                   if n in weights and np.asarray(weights[n]).dtype != np.float32]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("mis-shaped", misshaped), ("not float32", wrong_dtype)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(
            f"{source} do not fit {spec.name} ({len(expected)} tensors expected): " + "; ".join(problems)
            + ". Load weights saved from the same architecture and overrides."
        )


def _spec_metadata(spec: ArchSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def save_weights(path, weights: dict[str, np.ndarray], spec: ArchSpec) -> Path:
    """Write canonical weights to a safetensors file atomically (temp file + rename)."""
    from safetensors.numpy import save

    check_weights(spec, weights)
    path = Path(path)
    data = save({k: np.ascontiguousarray(v) for k, v in weights.items()},
                metadata={"format": FORMAT, "arch": _spec_metadata(spec)})
    atomic_write_bytes(path, data)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over
    ``path``: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_arch(path) -> ArchSpec | None:
    """The architecture recorded in a weights file's metadata (None if absent)."""
    from .spec import ArchSpec, BatchNormSpec

    meta = _read(path)[1]
    if "arch" not in meta:
        return None
    fields = json.loads(meta["arch"])
    fields["layers"] = tuple(fields["layers"])
    fields["bn"] = BatchNormSpec(**fields["bn"])
    return ArchSpec(**fields)


def _read(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError and OSError subclasses
        raise WeightsError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); "
            f"it may be truncated or corrupt: save it again"
        ) from e
    return tensors, meta


def load_weights(path, spec: ArchSpec) -> dict[str, np.ndarray]:
    """Read canonical weights from a safetensors file and check them against ``spec``."""
    weights, meta = _read(path)
    if meta.get("format", FORMAT) != FORMAT:
        raise WeightsError(f"{path} holds format {meta['format']!r}, not {FORMAT!r}")
    check_weights(spec, weights, source=f"weights in {path}")
    return weights
