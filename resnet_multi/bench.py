"""``resnet-multi bench``: training and inference speed of a backend's model, next to
the chapter's own code in the same framework.

    from resnet_multi import bench
    result = bench.run("torch", size=32, batch_size=256, steps=10, warmup=2)
    print(bench.format_table(result))

Two models run in one process: the package's (``Backend.sgd_step``, what ``train``
uses, and ``Backend.forward``) and, for d2l-resnet18, the textbook's
(:mod:`resnet_multi.textbook`), the same architecture built from the framework's
plain default layers and trained in that framework's own idiom. Both get the same
NumPy batches (random images and labels), each in its own layout. Their steps are
interleaved one by one, the order swapping every step, so that whatever else
the machine is doing hits both alike; the ratio of the two is the figure to read
on a shared machine, more than either speed alone.

Each model's first training step and first inference step (where compiled
frameworks trace and compile) are timed apart; then ``warmup`` untimed steps; then
``steps`` timed ones. A step is timed from the NumPy batch in to the loss and the
NumPy logits out, so every framework has finished its work (a GPU included).
Examples/s is the batch size over the median step time. An inference-only backend
(onnxruntime) has no training phase: the result says why (``train_na``).

FLOP convention: ``shapes.analyse`` counts multiply-accumulates (convolutions and
the dense layer) per image; 1 MAC = 2 FLOP; a training step counts 3x the forward
pass (forward, gradient with respect to activations, gradient with respect to
weights). BN, ReLU, pooling and the optimizer update are not counted.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import machine, shapes, textbook
from .backend import Backend, load_backend
from .errors import InputError
from .files import atomic_write_bytes
from .spec import get_arch

FORMAT = "resnet_multi.bench.v1"
FLOP_PER_MAC = 2
TRAIN_FORWARD_MULTIPLE = 3
PHASES = ("train", "inference")


def _stats(first: float, times: list[float], batch: int, flop_per_image: float) -> dict:
    median = statistics.median(times)
    return {
        "first_step_s": first,
        "step_s": {"median": median, "min": min(times), "max": max(times)},
        "step_times_s": times,
        "examples_per_s": batch / median,
        "flop_per_s": flop_per_image * batch / median,
    }


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _package_idiom(backend: Backend, eager: bool) -> str:
    if not backend.compiles:
        return "Backend.sgd_step, eager (no compiled mode)"
    return "Backend.sgd_step, eager" if eager else "Backend.sgd_step, compiled"


def textbook_reason(backend_name: str, arch: str, device: str) -> str | None:
    """Why there is no textbook baseline for this run, or None if there is one."""
    if arch != textbook.ARCH:
        return f"the chapter builds only {textbook.ARCH}"
    if backend_name not in textbook.MODULES:
        why = "it is the package's own reference" if backend_name == "numpy" else "the chapter has none"
        return f"no textbook code for {backend_name} ({why})"
    if device != "cpu" and backend_name != "torch":
        return f"the textbook baseline for {backend_name} runs on cpu only"
    return None


def _time_phase(phase, runners, names, results, warmup, steps, batch_size, flop, say) -> None:
    """Time ``phase`` of each runner: the first step apart, ``warmup`` untimed steps, then
    ``steps`` timed ones interleaved, the order swapping every step."""
    say(f"{phase}: first step of {' and '.join(names)}")
    first = {name: _timed(runners[name][phase]) for name in names}
    say(
        f"{phase}: first step "
        + ", ".join(f"{name} {t:.2f} s" for name, t in first.items())
        + f"; now {warmup} warm-up and {steps} timed steps each, interleaved"
    )
    for _ in range(warmup):
        for name in names:
            runners[name][phase]()
    times = {name: [] for name in names}
    for i in range(steps):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(_timed(runners[name][phase]))
    for name in names:
        results[name][phase] = _stats(first[name], times[name], batch_size, flop[phase])


def run(
    backend: str | Backend,
    *,
    arch: str = "d2l-resnet18",
    size: int = 32,
    batch_size: int = 256,
    steps: int = 10,
    warmup: int = 2,
    eager: bool | None = None,
    width: int | None = None,
    device: str = "cpu",
    lr: float = 0.05,
    seed: int = 0,
    with_textbook: bool = True,
    log=None,
) -> dict:
    """Benchmark one backend; returns the figures as a JSON-ready dict (see ``FORMAT``).

    ``log`` (e.g. ``print``) receives a line as each phase starts.
    """
    backend = load_backend(backend) if isinstance(backend, str) else backend
    for value, what in ((size, "size"), (batch_size, "batch size"), (steps, "steps")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} must be a positive integer, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warm-up steps must be a non-negative integer, got {warmup!r}")
    overrides = {} if width is None else {"width": width}
    spec = get_arch(arch, **overrides)
    input_shape = (batch_size, spec.in_channels, size, size)
    shapes.check_input_shape(spec, input_shape, training=True)  # fails before any work
    say = log or (lambda *_: None)

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape, dtype=np.float32)
    y = rng.integers(0, spec.num_classes, batch_size).astype(np.int64)
    macs = shapes.analyse(spec, input_shape)[1]
    flop = {"train": TRAIN_FORWARD_MULTIPLE * FLOP_PER_MAC * macs, "inference": FLOP_PER_MAC * macs}

    model = backend.build(spec, device=backend.check_device(device), seed=seed, eager=eager)
    eager = model.eager  # None resolved: the backend's faster mode here, which the textbook's code then runs too
    train_na = None
    if getattr(backend, "inference_only", False):
        train_na = f"{backend.name} is inference-only: it cannot train"
    phases = tuple(p for p in PHASES if not (p == "train" and train_na))
    runners = {
        "package": {
            "idiom": _package_idiom(backend, eager) if train_na is None else "inference only",
            "train": lambda: backend.sgd_step(model, x, y, lr),
            "inference": lambda: backend.forward(model, x, training=False),
        }
    }
    reason = textbook_reason(backend.name, spec.name, device) if with_textbook else "not requested"
    if reason is None:
        book = textbook.load(backend.name)
        net = book.net(width=spec.width, device=device, seed=seed)
        xb = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if book.LAYOUT == "NHWC" else x
        train_step, predict = book.trainer(net, lr, eager=eager), book.predictor(net, eager=eager)
        runners["textbook"] = {
            "idiom": book.idiom(eager),
            "train": lambda: train_step(xb, y),
            "inference": lambda: predict(xb),
        }

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = {name: {"idiom": r["idiom"]} for name, r in runners.items()}
    names = list(runners)
    with machine.LoadSampler(every=2.0) as load:
        for phase in phases:
            _time_phase(phase, runners, names, results, warmup, steps, batch_size, flop, say)

    ratio = None
    if "textbook" in results:
        ratio = {
            phase: results["package"][phase]["examples_per_s"] / results["textbook"][phase]["examples_per_s"]
            for phase in PHASES
        }
    return {
        "format": FORMAT,
        "started_utc": started,
        "backend": backend.name,
        "framework_version": backend.framework_version(),
        "device": device,
        "arch": spec.name,
        "width": spec.width,
        "input_shape": list(input_shape),
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "eager": eager,
        "lr": lr,
        "macs_per_image": macs,
        "flop_per_image": flop,
        "flop_convention": f"1 MAC = {FLOP_PER_MAC} FLOP; a training step = {TRAIN_FORWARD_MULTIPLE}x "
        f"the forward FLOPs; convolutions and the dense layer only",
        "machine": {**machine.record(backend.cpu_threads()), "load_average_1min": load.summary()},
        "models": results,
        "textbook_na": reason,
        "ratio": ratio,
        **({"train_na": train_na} if train_na else {}),
    }


def write_json(path, result: dict) -> Path:
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())
    return path


def check_result(result: dict) -> None:
    """Raise ValueError unless ``result`` has the fields and sane values of ``FORMAT``."""

    def positive(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{where} must be a positive finite number, got {value!r}")

    if result.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} result: format {result.get('format')!r}")
    for key in ("backend", "framework_version", "device", "arch", "flop_convention", "started_utc"):
        if not isinstance(result.get(key), str) or not result[key]:
            raise InputError(f"{key} must be a non-empty string, got {result.get(key)!r}")
    for key in ("batch_size", "steps", "macs_per_image", "width"):
        positive(result.get(key), key)
    if not isinstance(result.get("warmup"), int) or result["warmup"] < 0:
        raise InputError(f"warmup must be a non-negative integer, got {result.get('warmup')!r}")
    models = result.get("models", {})
    if "package" not in models or set(models) - {"package", "textbook"}:
        raise InputError(f"models must be 'package' and optionally 'textbook', got {sorted(models)}")
    if ("textbook" in models) == (result.get("textbook_na") is not None):
        raise InputError("exactly one of models.textbook and textbook_na must be given")
    train_na = result.get("train_na")
    if train_na is not None and (not isinstance(train_na, str) or not train_na or "textbook" in models):
        raise InputError(f"train_na must say why an inference-only backend has no training phase, got {train_na!r}")
    for name, model in models.items():
        for phase in PHASES:
            where = f"models.{name}.{phase}"
            if phase == "train" and train_na is not None:
                if phase in model:
                    raise InputError(f"{where} must be absent with train_na")
                continue
            stats = model[phase]
            for key in ("first_step_s", "examples_per_s", "flop_per_s"):
                positive(stats[key], f"{where}.{key}")
            step = stats["step_s"]
            for key in ("median", "min", "max"):
                positive(step[key], f"{where}.step_s.{key}")
            if not step["min"] <= step["median"] <= step["max"]:
                raise InputError(f"{where}.step_s must have min <= median <= max, got {step}")
            if len(stats["step_times_s"]) != result["steps"]:
                raise InputError(f"{where}.step_times_s must hold {result['steps']} times")
    if "textbook" in models:
        if not isinstance(result.get("ratio"), dict):
            raise InputError(f"ratio must give package / textbook per phase, got {result.get('ratio')!r}")
        for phase in PHASES:
            positive(result["ratio"].get(phase), f"ratio.{phase}")
    elif result.get("ratio") is not None:
        raise InputError("ratio must be null without a textbook baseline")


def describe_machine(record: dict) -> str:
    """One line: the CPU, its vector flags, the thread settings and the load while timing."""
    load = record.get("load_average_1min")
    load_text = (
        "load not measured"
        if not load
        else f"1-min load {load['start']:.2f} -> {load['end']:.2f}"
        + (f" (mean {load['mean']:.2f}, max {load['max']:.2f})" if "mean" in load else "")
    )
    threads = ", ".join(f"{k} {v}" for k, v in record.get("threads", {}).items())
    env = ", ".join(f"{k}={v}" for k, v in record.get("thread_env", {}).items())
    flags = " ".join(record.get("cpu_flags", []))
    return (
        f"machine: {record['processor']}, {record['cpus']} CPUs"
        + (f" ({flags})" if flags else "")
        + f"; threads: {threads or 'framework default'}"
        + (f"; {env}" if env else "")
        + f"; {load_text}"
    )


def format_table(result: dict) -> str:
    """The figures as a plain-text table."""
    n, c, h, w = result["input_shape"]
    lines = [
        f"{result['arch']} (width {result['width']}) on {result['backend']} {result['framework_version']} "
        f"({result['device']}), batch {n} of {c}x{h}x{w}{', --eager' if result['eager'] else ''}",
        f"{result['steps']} timed steps per model after {result['warmup']} warm-up, interleaved; "
        f"{result['macs_per_image'] / 1e9:.4g} GMAC per image ({result['flop_convention']})",
        describe_machine(result["machine"]),
    ]
    header = (
        "phase",
        "model",
        "training idiom",
        "first step s",
        "step s median",
        "min",
        "max",
        "examples/s",
        "GFLOP/s",
    )
    rows = []
    for phase in PHASES:
        for name, model in result["models"].items():
            if phase not in model:  # an inference-only backend's training (train_na)
                continue
            s = model[phase]
            idiom = model["idiom"] if phase == "train" else ""
            rows.append(
                (
                    phase,
                    name,
                    idiom,
                    f"{s['first_step_s']:.3f}",
                    f"{s['step_s']['median']:.4f}",
                    f"{s['step_s']['min']:.4f}",
                    f"{s['step_s']['max']:.4f}",
                    f"{s['examples_per_s']:.1f}",
                    f"{s['flop_per_s'] / 1e9:.3g}",
                )
            )
        if result["ratio"]:
            rows.append((phase, "ratio", "package / textbook", "", "", "", "", f"{result['ratio'][phase]:.2f}", ""))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5, 6, 7, 8}
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                cell.rjust(wd) if i in right else cell.ljust(wd) for i, (cell, wd) in enumerate(zip(row, widths))
            ).rstrip()
        )
    if result.get("train_na"):
        lines.append(f"training n/a: {result['train_na']}")
    if result["textbook_na"]:
        lines.append(f"textbook baseline n/a: {result['textbook_na']}")
    return "\n".join(lines)
