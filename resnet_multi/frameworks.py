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

    @property
    def module(self) -> str:
        return f"resnet_multi.{self.name}"

    @property
    def textbook_module(self) -> str | None:
        return f"resnet_multi.textbook.{self.name}" if self.textbook else None


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework("numpy", "NumPy (from scratch)", None, textbook=False),
        Framework("torch", "PyTorch", "torch", textbook=True),
        Framework("tf", "TensorFlow", "tf", textbook=True),
        Framework("mxnet", "MXNet", "mxnet", textbook=True),
        Framework("paddle", "PaddlePaddle", "paddle", textbook=True),
        Framework("mindspore", "MindSpore", "mindspore", textbook=True),
        Framework("jax", "JAX", "jax", textbook=True),
    )
}
NAMES = tuple(FRAMEWORKS)


def get(name: str) -> Framework:
    """The framework called ``name``, or a ValueError listing the ones there are."""
    if name not in FRAMEWORKS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[name]
