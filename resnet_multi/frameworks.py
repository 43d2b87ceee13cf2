"""The one list of frameworks: every other list (backends, conventions, textbook
baselines, notebooks) is derived from it.

Framework-free: only the standard library, so any environment can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Framework:
    name: str  # the backend's name on the command line and in module paths
    title: str  # what the framework calls itself
    extra: str | None  # the pip extra that installs it (None: NumPy, always there)
    textbook: bool  # whether resnet_multi.textbook has the chapter's own code for it
    # How to install it, CPU build, in an environment of its own from a clone of the
    # repository: the pins of its tox environment (tox.ini), as the README's table gives them.
    install: str | None = None
    # True for a runtime that runs a trained network and cannot train one (onnxruntime)
    inference_only: bool = False

    @property
    def module(self) -> str:
        return f"resnet_multi.{self.name}"

    def install_hint(self) -> str:
        """Where to get the framework: its own tox environment, or its install line in a
        new virtual environment (the frameworks' dependencies conflict, so never the
        current one's)."""
        if self.install is None:
            return "it comes with resnet-multi itself: pip install -e ."
        if self.inference_only:  # no environment of its own: it runs beside any framework's
            return f"install it into this environment, from the repository: {self.install}"
        return (
            f"each framework has an environment of its own (their dependencies conflict): run the tests "
            f"in it with `tox -e {self.name}`, or make one with `python3 -m venv .venv-{self.name}` and "
            f"install into it, from the repository: {self.install}"
        )

    @property
    def textbook_module(self) -> str | None:
        return f"resnet_multi.textbook.{self.name}" if self.textbook else None


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework("numpy", "NumPy (from scratch)", None, textbook=False),
        Framework(
            "torch",
            "PyTorch",
            "torch",
            textbook=True,
            # the CPU wheel: PyPI's torch is the multi-GB CUDA build
            install="pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
            "&& pip install -e '.[torch]'",
        ),
        # tensorflow-cpu, not the [tf] extra, which names the full tensorflow wheel
        Framework("tf", "TensorFlow", "tf", textbook=True, install="pip install tensorflow-cpu==2.21.0 -e ."),
        Framework(
            "mxnet", "MXNet", "mxnet", textbook=True, install="pip install mxnet==1.9.1 numpy==1.23.5 -e '.[mxnet]'"
        ),
        Framework(
            "paddle", "PaddlePaddle", "paddle", textbook=True, install="pip install paddlepaddle==3.3.1 -e '.[paddle]'"
        ),
        Framework(
            "mindspore",
            "MindSpore",
            "mindspore",
            textbook=True,
            install="pip install mindspore==2.10.0 'numpy<2' -e '.[mindspore]'",
        ),
        Framework(
            "jax",
            "JAX",
            "jax",
            textbook=True,
            install="pip install jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 -e '.[jax]'",
        ),
    )
}
NAMES = tuple(FRAMEWORKS)

# Runtimes that run a trained network and cannot train one. They are kept out of FRAMEWORKS
# on purpose: every list derived from it (the training backends, textbook baselines,
# notebooks, the lab, traces, the install tabs) is of frameworks that train. The inference
# commands (evaluate, bench's inference half, summary, backends) and the conventions table
# take BACKEND_NAMES, which adds these.
INFERENCE_ONLY: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            "onnxruntime",
            "ONNX Runtime",
            "onnx",
            textbook=False,
            install="pip install -e '.[onnx]'",
            inference_only=True,
        ),
    )
}
BACKEND_NAMES = NAMES + tuple(INFERENCE_ONLY)


def get(name: str) -> Framework:
    """The framework called ``name`` (inference-only runtimes included), or an InputError
    listing the ones there are."""
    found = FRAMEWORKS.get(name) or INFERENCE_ONLY.get(name)
    if found is None:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return found
