"""Traces: what one backend computes during the first training steps, in a file that
any environment can read (``resnet-multi compare`` reads traces without a framework).

    resnet-multi trace --backend torch --steps 20 --out traces/torch.safetensors
    resnet-multi trace --backend numpy --steps 20 --out traces/numpy.safetensors
    resnet-multi compare traces/numpy.safetensors traces/torch.safetensors

Which step is recorded
----------------------
Step ``k`` of a trace is step ``k`` of ``resnet-multi train`` with the same weights,
seed, batch size, resize and learning rate: the batches are those of
:func:`resnet_multi.train.fit` (``data.iterate_batches`` with ``default_rng([seed,
epoch])``, epochs following each other), and the traced model is advanced only by
``Backend.sgd_step``, the training loop's own call. Everything else is measured on a
*twin*: a second model given the traced model's exact state before the step
(canonical weights through ``set_weights``; the float64 NumPy reference by a deep
copy, since canonical weights are float32). On the twin, ``named_outputs(training=True)``
gives the stage outputs and ``loss_and_grads`` the gradients; both normalise with the
batch's statistics, so the twin's BN running statistics (which they update) do not
affect them, and the traced model's statistics are updated once, by its step. The
loss and logits recorded are those ``sgd_step`` returned; ``twin_loss_gap`` in the
metadata is the largest difference between them and the twin's loss (0 or rounding).

File format (``resnet_multi.trace.v1``)
---------------------------------------
One safetensors file. Its metadata key ``"trace"`` is a JSON object: ``format``,
``backend``, ``framework_version``, ``device``, ``eager``, ``default_mode`` (whether
``eager`` is what the backend picks on that device when not told), ``threads`` (CPU count,
affinity, the thread variables such as ``OMP_NUM_THREADS``, and the framework's own
count where it has one), ``python``, ``numpy``, ``platform``, ``spec`` (the
architecture, as in weights files), ``recipe`` (``steps``, ``lr``, ``batch_size``,
``resize``, ``seed`` (the batch order), ``data`` (where the images came from), and
``weights`` (the file the weights came from) or ``init_seed``), ``initial_weights_sha256``,
``batches_sha256`` (one per step, over the batch's images and labels), ``layers`` (the stage
outputs recorded), ``params`` (trainable tensors, canonical order), ``bn_stats`` (BN statistic tensors),
``activation_images``, ``full_grads``, ``twin_loss_gap`` and ``perturb`` (see :func:`record`).

Tensors (S steps):

* ``loss`` (S,) float64: the training-mode loss of each step (before its update);
* ``grad_norm`` (S, P) float64: the L2 norm of each trainable tensor's gradient, columns
  in ``params`` order;
* ``bn.<name>`` (S + 1, C) float32: each BN running statistic before step 0 and after
  each step (``stem.bn.running_var``...);
* ``step.<k>.logits`` (B, classes) float32 and ``step.<k>.labels`` (B,) int64;
* ``step.<k>.act.<layer>`` (K, ...) float32: the training-mode output of each layer in
  ``layers`` (stem, every stage, the pooled features; canonical NCHW) for the batch's
  first K = ``activation_images`` images;
* ``grad.<param>`` float32: step 0's full gradients, with ``full_grads``.

Inference traces (``"mode": "inference"``, :func:`record_inference`, ``resnet-multi trace
--inference``, and always for an inference-only backend such as onnxruntime) run the same
batches through the network in inference mode (BatchNorm with its running statistics)
without updating it: ``loss`` is the cross-entropy of the inference logits (float64, from
the logits), the logits and the stage outputs are inference-mode, and there are no
``grad_norm``, ``bn.*`` or ``grad.*`` tensors and no ``lr``. Compare compares them with
inference traces only.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import validate
from .data import Dataset, iterate_batches
from .errors import InputError, NonFiniteError
from .files import atomic_write_bytes, input_problem

FORMAT = "resnet_multi.trace.v1"
# Environment variables that set CPU thread counts in the frameworks' runtimes
# (OpenMP: torch, MXNet, Paddle, MindSpore; MKL/OpenBLAS: NumPy and others; TensorFlow's own).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)
# Layers whose outputs are recorded: the flattened features repeat the pooled ones and
# the dense layer's output is the logits, recorded in full.
SKIPPED_LAYERS = ("head.flatten", "head.fc")


class TraceError(ValueError):
    """A trace file that cannot be read, or traces that do not describe the same run."""


# ---- threads ---------------------------------------------------------------------------
def pin_threads(n: int) -> None:
    """Ask every framework for ``n`` CPU threads. Call it before the framework is
    imported: the runtimes read these variables when they start."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:  # already started: torch can still be told
        sys.modules["torch"].set_num_threads(n)


def thread_info() -> dict:
    """The thread settings in effect, as the trace records them."""
    info = {"cpu_count": os.cpu_count(), "env": {v: os.environ.get(v) for v in THREAD_VARS}}
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = len(os.sched_getaffinity(0))
    if "torch" in sys.modules:
        info["torch_num_threads"] = sys.modules["torch"].get_num_threads()
    if "tensorflow" in sys.modules:  # 0: TensorFlow picks (one per core)
        threading = sys.modules["tensorflow"].config.threading
        info["tf_intra_op"] = threading.get_intra_op_parallelism_threads()
        info["tf_inter_op"] = threading.get_inter_op_parallelism_threads()
    return info


# ---- batches, exactly as the training loop draws them -----------------------------------
def training_batches(dataset: Dataset, *, steps: int, batch_size: int, seed: int, resize: int | None):
    """The first ``steps`` batches :func:`resnet_multi.train.fit` trains on, across epochs."""
    if len(dataset.train_images) == 0:
        raise InputError("the dataset has no training images")
    done, epoch = 0, 0
    while done < steps:
        for x, y in iterate_batches(
            dataset.train_images, dataset.train_labels, batch_size, shuffle=True, seed=seed, epoch=epoch, resize=resize
        ):
            yield x, y
            done += 1
            if done == steps:
                return
        epoch += 1


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
    return h.hexdigest()


def _batch_digest(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y, np.int64).tobytes()).hexdigest()


# ---- recording ---------------------------------------------------------------------------
def _twin_of(backend, model, twin):
    """A model in exactly ``model``'s state, to measure on without touching ``model``."""
    if backend.name == "numpy":  # float64 inside; the seam's canonical weights are float32
        return copy.deepcopy(model)
    backend.set_weights(twin, backend.get_weights(model))
    return twin


def perturbed(weights: dict[str, np.ndarray], names, scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    """``weights`` with each tensor in ``names`` multiplied by ``1 + scale * N(0, 1)``
    elementwise (float32 rounds at about 6e-8 relative)."""
    rng = np.random.default_rng([seed, 1])
    return {
        k: (v * (1 + scale * rng.standard_normal(v.shape))).astype(np.float32) if k in names else v
        for k, v in weights.items()
    }


def record(
    backend,
    model,
    batches,
    *,
    lr: float,
    activation_images: int = 8,
    full_grads: bool = False,
    recipe: dict | None = None,
    perturb: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``backend.sgd_step`` on each batch and record the trace (see the module
    docstring); returns (tensors, metadata) as :func:`save` writes them.

    ``perturb`` > 0 is the control experiment: the trainable weights are first
    multiplied by ``1 + perturb * N(0, 1)`` (the trace still names the unperturbed
    start, so compare accepts it). Traced with the float64 reference at float32's
    rounding level (``perturb=1e-7``), it shows how fast rounding-sized differences
    alone grow in this run: a framework that departs no faster is departing by rounding."""
    from .weights import tensor_specs

    lr = validate.check_learning_rate(lr)
    perturb = validate.check_perturb(perturb)
    if activation_images < 0:
        raise InputError(f"activation_images must be >= 0, got {activation_images}")
    spec = model.spec
    specs = tensor_specs(spec)
    params = [t.name for t in specs if t.trainable]
    stats = [t.name for t in specs if not t.trainable]
    layers = [n for n in spec.layer_names() if n not in SKIPPED_LAYERS]
    start = backend.get_weights(model)
    if perturb:
        backend.set_weights(model, perturbed(start, set(params), perturb))
    twin = None if backend.name == "numpy" else backend.build(spec, device=model.device, eager=model.eager)
    tensors: dict[str, np.ndarray] = {}
    losses, norms, digests, gap = [], [], [], 0.0
    bn = {name: [start[name]] for name in stats}
    for k, (x, y) in enumerate(batches):
        digests.append(_batch_digest(x, y))
        try:  # each call checks what it computed: a non-finite number stops the trace here
            probe = _twin_of(backend, model, twin)
            outputs = backend.named_outputs(probe, x, training=True)
            result = backend.loss_and_grads(probe, x, y)
            loss, logits = backend.sgd_step(model, x, y, lr)  # the training loop's step
        except NonFiniteError as e:
            raise NonFiniteError(f"at step {k} of the trace, {e}", short=f"at step {k}, {e.short}") from None
        gap = max(gap, abs(float(result.loss) - float(loss)))
        losses.append(float(loss))
        norms.append([float(np.linalg.norm(np.asarray(result.grads[p], np.float64))) for p in params])
        tensors[f"step.{k}.logits"] = np.ascontiguousarray(logits, np.float32)
        tensors[f"step.{k}.labels"] = np.asarray(y, np.int64)
        if activation_images:
            for name in layers:
                tensors[f"step.{k}.act.{name}"] = np.ascontiguousarray(outputs[name][:activation_images])
        if full_grads and k == 0:
            for p in params:
                tensors[f"grad.{p}"] = np.ascontiguousarray(result.grads[p], np.float32)
        after = backend.get_weights(model)
        bad = validate.bad_tensors(after)
        if bad:
            finding = f"step {k} of the trace left weights no network can use: {validate.describe(bad)} (lr {lr})"
            raise NonFiniteError(f"{finding}; the update overflows float32: trace with a lower lr", short=finding)
        for name in stats:
            bn[name].append(after[name])
    if not losses:
        raise InputError("no batches to trace")
    tensors["loss"] = np.asarray(losses, np.float64)
    tensors["grad_norm"] = np.asarray(norms, np.float64)
    for name, values in bn.items():
        tensors[f"bn.{name}"] = np.stack(values).astype(np.float32)
    meta = {
        **_run_meta(backend, model, start),
        "recipe": {**(recipe or {}), "steps": len(losses), "lr": float(lr)},
        "batches_sha256": digests,
        "layers": layers if activation_images else [],
        "params": params,
        "bn_stats": stats,
        "activation_images": int(activation_images),
        "full_grads": bool(full_grads),
        "twin_loss_gap": gap,
        "perturb": float(perturb),
    }
    return tensors, meta


def _run_meta(backend, model, start: dict) -> dict:
    """What every trace records of where it ran and what it started from."""
    return {
        "format": FORMAT,
        "backend": backend.name,
        "framework_version": backend.framework_version(),
        "device": model.device,
        "eager": bool(model.eager),
        "default_mode": not backend.compiles or bool(model.eager) == backend.default_eager(model.device),
        "threads": thread_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "spec": json.loads(json.dumps(dataclasses.asdict(model.spec))),
        "initial_weights_sha256": weights_digest(start),
    }


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy, in float64 (an inference trace's loss, from its logits)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels)].mean())


def record_inference(
    backend, model, batches, *, activation_images: int = 8, recipe: dict | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """The inference half of a trace: each batch through ``model`` in inference mode, nothing
    updated (see the module docstring); returns (tensors, metadata) as :func:`save` writes them."""
    from .weights import tensor_specs

    if activation_images < 0:
        raise InputError(f"activation_images must be >= 0, got {activation_images}")
    spec = model.spec
    specs = tensor_specs(spec)
    layers = [n for n in spec.layer_names() if n not in SKIPPED_LAYERS]
    start = backend.get_weights(model)
    tensors: dict[str, np.ndarray] = {}
    losses, digests = [], []
    for k, (x, y) in enumerate(batches):
        digests.append(_batch_digest(x, y))
        try:
            logits = backend.forward(model, x, training=False)
            outputs = backend.named_outputs(model, x, training=False) if activation_images else {}
        except NonFiniteError as e:
            raise NonFiniteError(f"at batch {k} of the trace, {e}", short=f"at batch {k}, {e.short}") from None
        losses.append(cross_entropy(logits, y))
        tensors[f"step.{k}.logits"] = np.ascontiguousarray(logits, np.float32)
        tensors[f"step.{k}.labels"] = np.asarray(y, np.int64)
        for name in layers if activation_images else []:
            tensors[f"step.{k}.act.{name}"] = np.ascontiguousarray(outputs[name][:activation_images])
    if not losses:
        raise InputError("no batches to trace")
    tensors["loss"] = np.asarray(losses, np.float64)
    meta = {
        **_run_meta(backend, model, start),
        "mode": "inference",
        "recipe": {k: v for k, v in {**(recipe or {}), "steps": len(losses)}.items() if k != "lr"},
        "batches_sha256": digests,
        "layers": layers if activation_images else [],
        "params": [t.name for t in specs if t.trainable],
        "bn_stats": [t.name for t in specs if not t.trainable],
        "activation_images": int(activation_images),
        "full_grads": False,
        "twin_loss_gap": 0.0,
        "perturb": 0.0,
    }
    return tensors, meta


def save(path, tensors: dict[str, np.ndarray], meta: dict) -> Path:
    """Write a trace atomically (temporary file, then rename)."""
    from safetensors.numpy import save as save_bytes

    path = Path(path)
    atomic_write_bytes(path, save_bytes(tensors, metadata={"trace": json.dumps(meta)}))
    return path


# ---- reading (framework-free: compare uses this) -----------------------------------------
@dataclass
class Trace:
    path: Path
    meta: dict
    tensors: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        """How tables and plots label this trace: the backend, plus the device if not the CPU
        and the mode if not the backend's default there (traces from before ``default_mode``
        was recorded: eager was never a default)."""
        label = self.meta["backend"]
        if self.meta.get("device", "cpu") != "cpu":
            label += f"-{self.meta['device']}"
        eager = bool(self.meta.get("eager"))
        if not self.meta.get("default_mode", not eager):
            label += "-eager" if eager else "-compiled"
        return label + ("-perturbed" if self.meta.get("perturb") else "")

    @property
    def steps(self) -> int:
        return len(self.tensors["loss"])

    @property
    def mode(self) -> str:
        """ "training" (steps of train) or "inference" (batches through the network, no update)."""
        return self.meta.get("mode", "training")

    def logits(self, k: int) -> np.ndarray:
        return self.tensors[f"step.{k}.logits"]

    def activation(self, k: int, layer: str) -> np.ndarray | None:
        return self.tensors.get(f"step.{k}.act.{layer}")

    def grad_norms(self, k: int) -> dict[str, float]:
        return dict(zip(self.meta["params"], self.tensors["grad_norm"][k]))


def load(path) -> Trace:
    """Read a trace file; TraceError, naming the file, the key and the fix, if it is not
    one: its metadata is parsed with limits and checked against
    :data:`resnet_multi.validate.TRACE`, its tensors against the metadata."""
    from safetensors import safe_open

    from .weights import tensor_specs

    path = Path(path)
    problem = input_problem(path)
    if problem is not None:
        raise TraceError(f"trace file {path} {problem}; write one with resnet-multi trace")
    try:
        header = validate.safetensors_metadata(path)
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SchemaError, OSError, and safetensors' own error types
        raise TraceError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if "trace" not in header:
        raise TraceError(
            f"{path} is a safetensors file but not a trace (no 'trace' metadata); "
            f"is it a weights file? Write traces with resnet-multi trace"
        )
    try:
        meta = validate.parse_json(header["trace"], "metadata")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise validate.SchemaError("format", f"is {found!r}, not {FORMAT!r}")
        validate.check_trace(meta, tensors, tensor_names=_tensor_names(tensor_specs))
    except validate.SchemaError as e:
        raise TraceError(
            f"{path}: {e}; the file was not written by this version of resnet-multi trace, or it "
            f"has been edited or cut short: trace again with resnet-multi trace"
        ) from None
    return Trace(path, meta, tensors)


def _tensor_names(tensor_specs):
    def names(spec):
        specs = tensor_specs(spec)
        return [t.name for t in specs if t.trainable], [t.name for t in specs if not t.trainable]

    return names
