"""Parametrization of the parity suite over backends x devices.

Every backend importable here is tested on every device it reports; the NumPy
reference counts as a backend. ``RESNET_MULTI_TEST_BACKENDS`` (comma-separated)
narrows the set: each tox environment tests its own backend. A backend whose
framework is not installed appears as a skipped case that says so.
"""
import os

import pytest

from resnet_multi.backend import BACKENDS, load_backend


def _selected():
    names = os.environ.get("RESNET_MULTI_TEST_BACKENDS")
    if not names:
        return list(BACKENDS)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"RESNET_MULTI_TEST_BACKENDS names unknown backends {sorted(unknown)}")
    return chosen


def backend_cases():
    """pytest params (backend, device), ids like 'torch-cpu'."""
    cases = []
    for name in _selected():
        try:
            backend = load_backend(name)
        except ImportError as e:
            cases.append(pytest.param(None, None, id=f"{name}-absent",
                                      marks=pytest.mark.skip(reason=f"backend {name} not installed: {e}")))
            continue
        for device in backend.devices():
            cases.append(pytest.param(backend, device, id=f"{name}-{device.replace(':', '')}"))
    return cases


BACKEND_CASES = backend_cases()


def arch_cases(archs):
    """(backend, device, arch) params, ids like 'torch-cpu-resnet50'."""
    out = []
    for case in BACKEND_CASES:
        for arch in archs:
            out.append(pytest.param(*case.values, arch, id=f"{case.id}-{arch}", marks=case.marks))
    return out


@pytest.fixture(scope="session")
def oracle():
    return load_backend("numpy")
