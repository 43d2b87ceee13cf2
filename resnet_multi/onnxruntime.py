"""ONNX Runtime as an inference-only backend: the network exported by
:mod:`resnet_multi.onnx_export`, run by ``onnxruntime.InferenceSession``.

    from resnet_multi.backend import load_backend
    ort = load_backend("onnxruntime")
    model = ort.build("resnet18", width=16)          # the spec's initial weights
    ort.load_weights(model, "runs/torch-quick/weights.safetensors")  # or set_weights
    logits = ort.forward(model, x)                    # x: NCHW float32

The ONNX model is built in memory from the spec and whatever weights were set last, with
BatchNorm unfolded (as ``resnet-multi export`` writes it by default); a session is made
on first use and dropped when the weights change. ONNX Runtime runs a trained network and
cannot train one: the training methods raise an InputError that says which backend to
train with. ``forward``, ``named_outputs`` (inference mode), ``layer_shapes``,
``residual_output_shape``, ``evaluate`` and ``bench``'s inference half work as on every
backend.
"""

from __future__ import annotations

import numpy as np

from . import onnx_export
from .backend import Backend, Model, require
from .errors import InputError
from .spec import block_spec

ort = require("onnxruntime", "onnxruntime")
require("onnx", "onnxruntime")

INFERENCE_ONLY = (
    "onnxruntime is inference-only: it runs a trained network (forward, evaluate, the inference "
    "half of bench) and cannot {what}; train with another backend (e.g. --backend torch or "
    "--backend numpy), then load its weights file here"
)


def _refuse(what: str) -> InputError:
    return InputError(INFERENCE_ONLY.format(what=what))


class Runtime:
    """The backend's model object: the spec, the canonical weights set last (float32), and
    the sessions built from them (logits only; every named layer as an output too)."""

    def __init__(self, spec):
        self.spec = spec
        self.weights: dict[str, np.ndarray] = {}
        self.onnx = {}  # named_outputs (bool) -> onnx.ModelProto
        self.sessions = {}  # named_outputs (bool) -> InferenceSession

    def set(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        self.onnx.clear()
        self.sessions.clear()

    def model(self, named: bool = False):
        if named not in self.onnx:
            self.onnx[named] = onnx_export.build_model(self.spec, self.weights, named_outputs=named)
        return self.onnx[named]

    def session(self, named: bool = False):
        if named not in self.sessions:
            self.sessions[named] = _session(self.model(named).SerializeToString())
        return self.sessions[named]


def _session(data: bytes):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the graph's optimisations are not news
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxruntimeBackend(Backend):
    name = "onnxruntime"
    inference_only = True

    def framework_version(self):
        return ort.__version__

    def devices(self):
        # the PyPI wheel is the CPU build; onnxruntime-gpu is another package
        return ["cpu"]

    def _build(self, spec, device):
        return Runtime(spec)

    def _get_weights(self, model):
        return {k: v.copy() for k, v in model.module.weights.items()}

    def _set_weights(self, model, weights):
        model.module.set(weights)

    def _forward(self, model, x, training):
        if training:
            raise _refuse("run a training-mode pass (BatchNorm with batch statistics)")
        (logits,) = model.module.session().run([onnx_export.OUTPUT], {onnx_export.INPUT: x})
        return logits

    def _named_outputs(self, model, x, training):
        if training:
            raise _refuse("run a training-mode pass (BatchNorm with batch statistics)")
        runtime = model.module
        spec = runtime.spec
        names = [onnx_export.OUTPUT if name == "head.fc" else name for name in spec.layer_names()]
        outputs = runtime.session(named=True).run(names, {onnx_export.INPUT: x})
        return list(zip(spec.layer_names(), outputs))

    def _residual_output_shape(self, x, args, options):
        spec = block_spec(*args, **options)
        session = _session(onnx_export.block_model(spec).SerializeToString())
        return session.run(["y"], {"x": x})[0].shape

    def count_parameters(self, model):
        """From the ONNX graph's initializers: BN running statistics are buffers."""
        params = buffers = 0
        for tensor in model.module.model().graph.initializer:
            n = int(np.prod(tensor.dims))
            if tensor.name.endswith((".running_mean", ".running_var")):
                buffers += n
            else:
                params += n
        return params, buffers

    # -- training: refused, before any work ---------------------------------------------------
    def forward(self, model: Model, x: np.ndarray, *, training: bool = False) -> np.ndarray:
        if training:
            raise _refuse("run a training-mode pass (BatchNorm with batch statistics)")
        return super().forward(model, x, training=False)

    def named_outputs(self, model: Model, x: np.ndarray, *, training: bool = False) -> dict[str, np.ndarray]:
        if training:
            raise _refuse("run a training-mode pass (BatchNorm with batch statistics)")
        return super().named_outputs(model, x, training=False)

    def loss_and_grads(self, model, x, y):
        raise _refuse("compute gradients")

    def sgd_step(self, model, x, y, lr):
        raise _refuse("take a training step")

    def configure_training(self, model, **options):
        raise _refuse("train")

    def training_batches(self, model, images, labels, **options):
        raise _refuse("train")

    def train_step(self, model, batch, lr, metrics):
        raise _refuse("take a training step")

    def configure_optimizer(self, model, optimizer=None):
        raise _refuse("train (it has no optimizer)")

    def get_optimizer_state(self, model):
        raise _refuse("train (it has no optimizer state)")

    def set_optimizer_state(self, model, state):
        raise _refuse("train (it has no optimizer state)")


BACKEND = OnnxruntimeBackend()


# ONNX's operators as onnxruntime runs them (resnet-multi conventions reads this literal
# without importing anything); tests/test_onnx.py checks the fields against the installed
# onnx and onnxruntime.
CONVENTIONS = {
    "framework": "ONNX Runtime (inference only)",
    "padding": {
        "default": "Conv pads=0 (auto_pad NOTSET); auto_pad SAME_UPPER puts the odd pixel after: [2, 3] "
        "for the 7x7/2 stem on 8 pixels",
        "pads": [2, 3],
        "here": "the spec's symmetric pads written out in every Conv and MaxPool, never auto_pad",
    },
    "bn_eps": {"default": 1e-05, "eps": 1e-05, "here": "the spec's eps, written as each node's epsilon"},
    "bn_momentum": {
        "default": "0.9: running = m * running + (1 - m) * batch (training_mode=1 only)",
        "momentum": 0.9,
        "keeps": "old",
        "here": "not used: the exported graph is inference-only (training_mode=0)",
    },
    "bn_running_var": {
        "default": "biased batch variance (training_mode=1 only)",
        "variance": "biased",
        "here": "not used: the exported graph normalises with the running statistics",
    },
    "data_layout": {"default": "NCHW", "layout": "NCHW", "here": "nothing to do"},
    "kernel_layout": {"default": "OIHW", "layout": "OIHW", "here": "nothing to do"},
    "dense_layout": {
        "default": "Gemm with transB=1 takes B as (out, in)",
        "layout": "(out, in)",
        "here": "head.fc as Gemm(transB=1): the canonical weight as it is",
    },
    "param_names": {
        "default": "graph initializers; BatchNormalization inputs scale, B, input_mean, input_var",
        "bn": ["scale", "B", "input_mean", "input_var"],
        "here": "initializers named by their canonical names (folded ones: conv+bn)",
    },
    "init": {
        "default": "none: a graph carries its weights; Conv's bias input is optional",
        "conv_bias": False,
        "conv_weight": None,
        "here": "the weights set last, written as initializers",
    },
    "mode_switch": {
        "default": "BatchNormalization training_mode=0: an inference graph",
        "starts": "inference",
        "here": "inference only: training methods raise an InputError",
    },
}
