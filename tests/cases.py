"""Parametrization of the parity suite over backends x devices.

Every backend importable here is tested on every device it reports; the NumPy
reference counts as a backend. ``RESNET_MULTI_TEST_BACKENDS`` (comma-separated)
narrows the set: each tox environment tests its own backend. A backend whose
framework is not installed appears as a skipped case that says so.

A backend with a compiled mode (``Backend.compiles``) is tested twice: compiled,
as ``train`` runs it by default (ids like ``tf-cpu``), and eager (``tf-cpu-eager``).
"""

import os

import pytest

from resnet_multi import frameworks
from resnet_multi.backend import load_backend


def selected_backends():
    names = os.environ.get("RESNET_MULTI_TEST_BACKENDS")
    if not names:
        return list(frameworks.NAMES)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = set(chosen) - set(frameworks.NAMES)
    if unknown:
        raise pytest.UsageError(f"RESNET_MULTI_TEST_BACKENDS names unknown backends {sorted(unknown)}")
    return chosen


class EagerBackend:
    """A backend whose every ``build`` passes ``eager=True``; all else is the backend's own."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def build(self, *args, **kwargs):
        kwargs.setdefault("eager", True)
        return self._backend.build(*args, **kwargs)

    def __repr__(self):
        return f"EagerBackend({self._backend.name})"


def backend_cases():
    """pytest params (backend, device), ids like 'torch-cpu' (and 'tf-cpu-eager')."""
    cases = []
    for name in selected_backends():
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
            cases.append(pytest.param(backend, device, id=case_id))
            if backend.compiles:
                cases.append(pytest.param(EagerBackend(backend), device, id=f"{case_id}-eager"))
    return cases


BACKEND_CASES = backend_cases()


def arch_cases(archs):
    """(backend, device, arch) params, ids like 'torch-cpu-resnet50'."""
    out = []
    for case in BACKEND_CASES:
        for arch in archs:
            out.append(pytest.param(*case.values, arch, id=f"{case.id}-{arch}", marks=case.marks))
    return out
