"""One small adapter per framework: build the student's module with the framework's chapter
signature, describe its layers for :mod:`resnet_multi.lab.structure`, load canonical
weights into them (the framework module's layout converters), and run a forward pass, a
backward pass and one SGD step, returning NumPy in the canonical layout.

Each adapter imports its framework; nothing else in :mod:`resnet_multi.lab` does. Every
adapter module offers the same names:

* ``BLOCK_STYLE`` -- ``"explicit"`` (``Residual(input_channels, num_channels, ...)``) or
  ``"inferred"`` (``Residual(num_channels, ...)``, the input channels found on the first call);
* ``is_module(obj)``, ``instantiate(obj, args, kwargs)``, ``sequential(items)``;
* ``wrap(module)`` -- a model whose ``forward(x, training)`` gives NCHW NumPy;
* ``tree(model)``, ``count(model)``, ``load(model, assignments)``;
* ``train_step(model, x, cotangent, lr, probes)`` -- ``out_train``, ``dx``, and per probe
  key the gradient, the BatchNorm statistic after the step and the value after one SGD step.
"""

from __future__ import annotations

import importlib


def load(framework: str):
    """The adapter module for ``framework``; ImportError if the framework is not installed."""
    return importlib.import_module(f"{__name__}.{framework}")
