"""The chapter's own code, one small module per framework: the baseline that the
benchmark (``resnet-multi bench``) runs next to the package's models.

Each module holds d2l's ResNet-18 for that framework as the chapter writes it --
``Residual`` (two 3x3 conv + BN + ReLU, an optional 1x1 conv), ``resnet_block``, the
7x7 stem, four stages, global average pooling and a dense layer -- built from the
framework's plain default layers with their defaults, plus a training step in the
framework's own idiom. Where the code had to change to run (or to take a width for
small test runs), a comment says so. These models are for measuring what parity
costs, not for parity tests: their padding, BN and initialisation are each
framework's own, which is exactly what the package's backends translate.

Every module offers the same small interface:

* ``net(width=64, device="cpu")`` -- the chapter's network (1 input channel, 10
  classes; ``width`` is the stem's channel count, the chapter's 64);
* ``trainer(net, lr, eager=False)`` -- ``step(x, y) -> (loss, logits)``: one plain-SGD
  step on a NumPy batch in ``LAYOUT``, returning the loss as a float and the
  logits as NumPy, as d2l's ``train_ch6`` reads both every step for its metrics;
* ``predictor(net, eager=False)`` -- ``predict(x) -> logits`` in inference mode;
* ``LAYOUT`` -- "NCHW" or "NHWC", the layout its data pipeline delivers;
* ``idiom(eager)`` -- a few words naming the training idiom used;
* ``parameter_count(net)`` -- trainable parameters, read from the framework (after one call
  for frameworks that build lazily).

``eager`` only changes frameworks whose own idiom has the two modes (Keras
``fit`` vs ``run_eagerly``; MindSpore jit vs PyNative; JAX jit vs op by op); the others run as the
chapter writes them either way.
"""

from __future__ import annotations

import importlib

from .. import frameworks

MODULES = {f.name: f.textbook_module for f in frameworks.FRAMEWORKS.values() if f.textbook}
# The one architecture the chapter builds.
ARCH = "d2l-resnet18"


def load(backend: str):
    """The textbook module for a backend name; None where there is none (numpy)."""
    if backend not in MODULES:
        return None
    return importlib.import_module(MODULES[backend])
