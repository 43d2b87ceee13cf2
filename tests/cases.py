"""Parametrization of the parity suite over backends x devices.

Every backend importable here is tested on every device it reports; the NumPy
reference counts as a backend. ``RESNET_MULTI_TEST_BACKENDS`` (comma-separated)
narrows the set: each tox environment tests its own backend. A backend whose
framework is not installed appears as a skipped case that says so.

A backend with a compiled mode (``Backend.compiles``) is tested twice: compiled (ids
like ``tf-cpu``) and eager (``tf-cpu-eager``), whichever of the two ``train`` runs by
default there (``Backend.default_eager``: eager only for MindSpore on a CPU).

Inference-only runtimes (``frameworks.INFERENCE_ONLY``: onnxruntime) cannot train, so they
are never in ``BACKEND_CASES`` nor in ``selected_backends()``; ``INFERENCE_CASES`` adds
them, for the tests of inference alone, where they are selected (by name, or with no
selection at all).
"""

import os

import pytest

from resnet_multi import frameworks
from resnet_multi.backend import load_backend


def selected_backends(*, inference_only: bool = False):
    """The selected frameworks that train; ``inference_only=True``: the selected
    inference-only runtimes instead."""
    names = os.environ.get("RESNET_MULTI_TEST_BACKENDS")
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else list(frameworks.BACKEND_NAMES)
    unknown = set(chosen) - set(frameworks.BACKEND_NAMES)
    if unknown:
        raise pytest.UsageError(f"RESNET_MULTI_TEST_BACKENDS names unknown backends {sorted(unknown)}")
    return [n for n in chosen if (n in frameworks.INFERENCE_ONLY) == inference_only]


class ModeBackend:
    """A backend whose every ``build`` passes ``eager`` (unless the caller does); all else
    is the backend's own."""

    def __init__(self, backend, eager: bool):
        self._backend, self.eager = backend, eager

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def build(self, *args, **kwargs):
        kwargs.setdefault("eager", self.eager)
        return self._backend.build(*args, **kwargs)

    def __repr__(self):
        return f"ModeBackend({self._backend.name}, eager={self.eager})"


def backend_cases(*, inference_only: bool = False):
    """pytest params (backend, device), ids like 'torch-cpu' (and 'tf-cpu-eager')."""
    cases = []
    for name in selected_backends(inference_only=inference_only):
        try:
            backend = load_backend(name)
        except ImportError as e:
            cases.append(
                pytest.param(
                    None, None, id=f"{name}-absent", marks=pytest.mark.skip(reason=f"backend {name} not installed: {e}")
                )
            )
            continue
        for device in backend.devices():
            case_id = f"{name}-{device.replace(':', '')}"
            if backend.compiles:
                cases.append(pytest.param(ModeBackend(backend, eager=False), device, id=case_id))
                cases.append(pytest.param(ModeBackend(backend, eager=True), device, id=f"{case_id}-eager"))
            else:
                cases.append(pytest.param(backend, device, id=case_id))
    return cases


BACKEND_CASES = backend_cases()
INFERENCE_CASES = BACKEND_CASES + backend_cases(inference_only=True)


def arch_cases(archs, cases=BACKEND_CASES):
    """(backend, device, arch) params, ids like 'torch-cpu-resnet50'."""
    out = []
    for case in cases:
        for arch in archs:
            out.append(pytest.param(*case.values, arch, id=f"{case.id}-{arch}", marks=case.marks))
    return out
