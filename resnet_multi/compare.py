"""Compare traces from any backends, step by step, without importing a framework.

    resnet-multi compare traces/numpy.safetensors traces/torch.safetensors traces/tf.safetensors
    resnet-multi compare traces/*.safetensors --reference torch --tolerance 1e-3 --plot compare.png

For each trace against the reference (the NumPy one, float64, when present) and each
step, the table gives the *relative difference* of the step's loss, logits, each
stage's training-mode output (on the batch's first images), the gradient norms and
the BN running statistics after the step. For tensors it is ``max |a - r| / max |r|``
(the error relative to the tensor's own scale, as the parity suite measures it); for
the loss and each gradient norm ``|a - r| / |r|``, except that the gradient of a conv
bias feeding a training-mode BN (exactly zero in exact arithmetic, rounding noise in
float32; see :func:`zero_gradients`), or any whose reference norm is below ``1e-6`` of the
step's largest, is measured against that largest norm instead. Columns show the worst tensor of a kind.

The first step and quantity where a trace departs from the reference by more than
``--threshold`` are reported, scanning each step in the order the computation runs:
stage outputs, logits, loss, gradients, BN statistics. The plot overlays the loss
curves and shows each trace's divergence per step on a log scale: the picture of
float32 rounding, not a bug, making two frameworks' training part ways.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .trace import Trace, TraceError, load

ZERO_GRAD = 1e-6  # reference gradient norms below this fraction of the step's largest count as zero


def rel_diff(a, ref) -> float:
    """max |a - ref| / max |ref| (0 when both are all zeros, inf when only ref is). A NaN
    or Inf on either side is a difference: inf, above any threshold or tolerance."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise TraceError(f"cannot compare arrays of shapes {a.shape} and {ref.shape}")
    if a.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return math.inf
    scale, err = np.abs(ref).max(), np.abs(a - ref).max()
    if scale == 0:
        return 0.0 if err == 0 else math.inf
    return float(err / scale)


@dataclass
class StepDiff:
    """One step of one trace against the reference: quantity -> relative difference, in
    the order the computation runs, plus the worst tensor of each grouped kind."""

    step: int
    values: dict[str, float] = field(default_factory=dict)
    worst_grad: str = ""
    worst_bn: str = ""

    def first_above(self, threshold: float) -> tuple[str, float] | None:
        for name, value in self.values.items():
            if value > threshold:
                return name, value
        return None


def zero_gradients(spec: dict) -> set[str]:
    """Conv biases whose output feeds a training-mode BN directly: the BN subtracts the
    batch mean, so their gradient is exactly zero, and float32 leaves only rounding noise
    (about 1e-6 of the largest gradient, measured), which is compared on the scale of the
    largest gradient instead of its own."""
    if not spec.get("conv_bias"):
        return set()
    from .spec import BatchNormSpec, get_arch
    from .weights import tensor_specs

    arch = get_arch(
        spec["name"], **{**{k: v for k, v in spec.items() if k != "name"}, "bn": BatchNormSpec(**spec["bn"])}
    )
    if arch.preact:
        # every path from a conv bias reaches a training-mode BN (the next one inside its
        # block, the next block's first, or the head's) with nothing but additions between
        return {t.name for t in tensor_specs(arch) if t.role == "conv_bias"}
    zero = {"stem.conv.bias"}  # feeds stem.bn
    for i, stage in enumerate(arch.stages):
        for j, block in enumerate(stage.blocks):
            zero.update(f"stages.{i}.{j}.{name}.bias" for name, *_ in block.convs())  # convK feeds bnK
            if block.projection and block.shortcut == "conv_bn":
                zero.add(f"stages.{i}.{j}.shortcut.conv.bias")
    return zero


def check_same_mode(traces: list[Trace]) -> None:
    """Refuse a mix of training and inference traces: they record different computations."""
    for t in traces[1:]:
        if t.mode != traces[0].mode:
            raise TraceError(
                f"{t.path} is {_a(t.mode)} trace and {traces[0].path} {_a(traces[0].mode)} one: compare training "
                f"traces with training traces and inference traces (resnet-multi trace --inference) with "
                f"inference ones"
            )


def _a(mode: str) -> str:
    return f"{'an' if mode[0] in 'aeiou' else 'a'} {mode}"


def check_same_run(traces: list[Trace]) -> None:
    """Refuse traces that did not start from the same weights and see the same batches."""
    ref = traces[0]
    check_same_mode(traces)
    for t in traces[1:]:
        problems = []
        if t.meta["spec"] != ref.meta["spec"]:
            problems.append("different architectures")
        if t.meta["initial_weights_sha256"] != ref.meta["initial_weights_sha256"]:
            problems.append("different initial weights")
        for key in ("lr", "batch_size", "resize"):
            if t.meta["recipe"].get(key) != ref.meta["recipe"].get(key):
                problems.append(f"{key} {t.meta['recipe'].get(key)} vs {ref.meta['recipe'].get(key)}")
        steps = min(t.steps, ref.steps)
        if t.meta["batches_sha256"][:steps] != ref.meta["batches_sha256"][:steps]:
            problems.append("different batches")
        if problems:
            raise TraceError(
                f"{t.path} and {ref.path} do not trace the same run ({'; '.join(problems)}): "
                f"trace both with the same --weights or --seed, data and recipe"
            )


def common_layers(trace: Trace, ref: Trace) -> list[str]:
    """The stage outputs both traces recorded, in the reference's order."""
    return [layer for layer in ref.meta["layers"] if layer in trace.meta["layers"]]


def uncompared_layers(traces: list[Trace]) -> list[str]:
    """One line per trace whose stage outputs cannot all be compared with the others'."""
    everyone = set().union(*(t.meta["layers"] for t in traces))
    notes = []
    for t in traces:
        missing = [layer for layer in everyone if layer not in t.meta["layers"]]
        if missing:
            why = "records no stage outputs" if not t.meta["layers"] else f"lacks {', '.join(sorted(missing))}"
            notes.append(
                f"stage outputs not compared for {t.name}: {t.path} {why} (traced with --activation-images "
                f"{t.meta['activation_images']}); trace again with --activation-images N to compare them"
            )
    return notes


def diff_step(trace: Trace, ref: Trace, k: int) -> StepDiff:
    """Step ``k`` of ``trace`` against ``ref``; TraceError naming both files where a
    quantity's shapes differ."""
    try:
        return _diff_step(trace, ref, k)
    except TraceError as e:
        raise TraceError(
            f"{trace.path} and {ref.path} differ in shape at step {k} ({e}): trace both with the "
            f"same settings, or the same version of resnet-multi"
        ) from None


def _diff_step(trace: Trace, ref: Trace, k: int) -> StepDiff:
    out = StepDiff(k)
    for layer in common_layers(trace, ref):
        a, r = trace.activation(k, layer), ref.activation(k, layer)
        n = min(len(a), len(r))
        out.values[layer] = rel_diff(a[:n], r[:n])
    out.values["logits"] = rel_diff(trace.logits(k), ref.logits(k))
    out.values["loss"] = rel_diff(trace.tensors["loss"][k], ref.tensors["loss"][k])
    if ref.mode == "inference":  # no update: nothing else was recorded
        return out
    got, want = trace.grad_norms(k), ref.grad_norms(k)
    finite = [r for r in want.values() if math.isfinite(r)]
    largest = max(finite, default=0.0)
    zero = zero_gradients(ref.meta["spec"])
    worst = ("", -1.0)
    for name, r in want.items():
        scale = r if r > ZERO_GRAD * largest and name not in zero else largest
        if not (math.isfinite(got[name]) and math.isfinite(r)):
            value = math.inf  # a non-finite norm on either side is a difference
        else:
            value = abs(got[name] - r) / scale if scale > 0 else (0.0 if got[name] == r else math.inf)
        if value > worst[1]:
            worst = (name, value)
    out.values["grad norms"], out.worst_grad = worst[1], worst[0]
    worst = ("", -1.0)
    for name in ref.meta["bn_stats"]:
        value = rel_diff(trace.tensors[f"bn.{name}"][k + 1], ref.tensors[f"bn.{name}"][k + 1])
        if value > worst[1]:
            worst = (name, value)
    out.values["bn stats"], out.worst_bn = worst[1], worst[0]
    return out


@dataclass
class Comparison:
    reference: Trace
    traces: list[Trace]
    steps: int
    diffs: dict[str, list[StepDiff]]  # trace name -> per step
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why

    def pairwise_first_divergence(self, threshold: float) -> dict[tuple[str, str], tuple | None]:
        """For every pair of traces (the reference included), where they first differ by
        more than ``threshold``: (step, quantity, value), or None."""
        everyone = [self.reference, *self.traces]
        out = {}
        for i, a in enumerate(everyone):
            for b in everyone[i + 1 :]:
                out[a.name, b.name] = None
                for k in range(self.steps):
                    hit = diff_step(b, a, k).first_above(threshold)
                    if hit:
                        out[a.name, b.name] = (k, *hit)
                        break
        return out

    def worst(self) -> float:
        return max((v for diffs in self.diffs.values() for d in diffs for v in d.values.values()), default=0.0)

    def first_divergence(self, name: str, threshold: float):
        """(step, quantity, value) where trace ``name`` first departs by more than ``threshold``."""
        for d in self.diffs[name]:
            hit = d.first_above(threshold)
            if hit:
                return d.step, *hit
        return None


def compare(paths, *, reference: str | None = None, steps: int | None = None) -> Comparison:
    """Load the traces and measure each against the reference (default: numpy if present,
    else the first)."""
    traces = [load(p) for p in paths]
    if len(traces) < 2:
        raise TraceError("compare needs at least two traces")
    check_same_mode(traces)
    names = [t.name for t in traces]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise TraceError(f"more than one trace from {', '.join(dupes)}: compare one trace per backend")
    if reference is None:
        reference = "numpy" if "numpy" in names else names[0]
    if reference not in names:
        raise TraceError(f"no trace from reference {reference!r}; the traces are from {', '.join(names)}")
    ref = traces[names.index(reference)]
    others = [t for t in traces if t is not ref]
    check_same_run([ref, *others])
    common = min(t.steps for t in traces)
    steps = common if steps is None else min(steps, common)
    diffs = {t.name: [diff_step(t, ref, k) for k in range(steps)] for t in others}
    return Comparison(ref, others, steps, diffs, uncompared_layers([ref, *others]))


# ---- report ------------------------------------------------------------------------------
def _header(t: Trace, width: int = 12) -> str:
    threads = t.meta.get("threads", {})
    env = threads.get("env", {})
    counts = [f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS') or 'unset'}"]
    if "torch_num_threads" in threads:
        counts.append(f"torch threads {threads['torch_num_threads']}")
    counts.append(f"{threads.get('affinity', threads.get('cpu_count'))} CPUs")
    mode = "eager" if t.meta.get("eager") else "default mode"
    return (
        f"{t.name:<{width}} {t.meta['framework_version']} on {t.meta['device']}, {mode}, "
        f"{', '.join(counts)}  ({t.path})"
    )


def format_report(c: Comparison, *, threshold: float) -> str:
    width = max(len(t.name) for t in (c.reference, *c.traces))
    lines = [
        f"reference: {c.reference.name}; {c.steps} steps; relative differences (see resnet-multi compare --help)",
        *(_header(t, width) for t in (c.reference, *c.traces)),
        *c.notes,
        "",
    ]
    for t in c.traces:
        diffs = c.diffs[t.name]
        columns = list(diffs[0].values) if diffs else []
        training = c.reference.mode == "training"
        lines.append(f"{t.name} vs {c.reference.name}" + ("" if training else " (inference mode)"))
        lines.append("step  " + "  ".join(f"{col:>10}" for col in columns) + ("  worst gradient" if training else ""))
        for d in diffs:
            lines.append(
                f"{d.step:>4}  "
                + "  ".join(f"{d.values[col]:>10.2e}" for col in columns)
                + (f"  {d.worst_grad}" if training else "")
            )
        hit = c.first_divergence(t.name, threshold)
        lines.append(f"first difference above {threshold:g}: " + _where(hit, c.steps))
        lines.append("")
    if len(c.traces) > 1:
        lines.append(
            f"first step where each pair differs by more than {threshold:g} (relative to the first of the pair)"
        )
        for (a, b), hit in c.pairwise_first_divergence(threshold).items():
            lines.append(f"  {a:>{width}} / {b:<{width}} {_where(hit, c.steps)}")
        lines.append("")
    return "\n".join(lines)


def _where(hit, steps: int) -> str:
    if not hit:
        return f"none in {steps} steps"
    step, quantity, value = hit
    shown = "non-finite on one side (NaN or Inf)" if math.isinf(value) else f"{value:.2e}"
    return f"step {step}, {quantity} ({shown})"


def save_plot(c: Comparison, path) -> Path:
    """Loss curves overlaid, and each trace's divergence from the reference per step (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .files import atomic_write_bytes

    fig = Figure(figsize=(9, 3.4), dpi=120)
    FigureCanvasAgg(fig)
    losses, divergence = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    steps = np.arange(c.steps)
    colour = {t.name: f"C{i}" for i, t in enumerate((c.reference, *c.traces))}  # one per trace, both panels
    for t in (c.reference, *c.traces):
        losses.plot(steps, t.tensors["loss"][: c.steps], color=colour[t.name], label=t.name)
    losses.set_xlabel("step")
    losses.set_ylabel(f"{c.reference.mode} loss")
    losses.legend(fontsize=7)
    losses.grid(True)
    floor = 1e-12  # bit-identical steps would vanish from a log plot
    for t in c.traces:
        diffs = c.diffs[t.name]
        for key, style in (("logits", "-"), ("grad norms", "--"))[: 2 if c.reference.mode == "training" else 1]:
            values = [max(d.values[key], floor) for d in diffs]
            divergence.semilogy(steps, values, style, color=colour[t.name], label=f"{t.name} {key}")
    divergence.set_xlabel("step")
    divergence.set_ylabel(f"relative difference from {c.reference.name}")
    divergence.legend(fontsize=7)
    divergence.grid(True, which="both", alpha=0.4)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
