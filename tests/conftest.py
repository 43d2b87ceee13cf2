"""Fixtures shared by the test files. The backend x device parametrization they use at
collection time is a plain module, tests/cases.py."""

import pytest

from resnet_multi.backend import load_backend


@pytest.fixture(scope="session")
def oracle():
    return load_backend("numpy")


@pytest.fixture(scope="session")
def subset():
    """The Fashion-MNIST subset bundled with the package."""
    from resnet_multi import data

    return data.load_fashion_mnist(subset=True)
