"""Side-by-side speed of the Paddle backend and the textbook's own Paddle code.

    python -m scripts.bench_paddle [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's Paddle ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Paddle layers), from
  :mod:`resnet_multi.textbook.paddle` (the one ``resnet-multi bench`` runs), trained in
  its own idiom by that module's ``trainer``: ``clear_grad()``, ``l.backward()``,
  ``optimizer.step()``, with the loss and the logits read back every batch for
  ``train_ch6``'s metrics;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs (dygraph);
* ``sgd_step to_static``: the same with the backend's net converted by
  ``paddle.jit.to_static(net, full_graph=True)`` (backward and SGD stay in dygraph),
  the compiled mode that was tried and not adopted (see ``resnet_multi/paddle.py``).

Every contender takes the same NumPy batch each step. Training at 32x32, batch 256;
inference at 96x96, batch 64 (``Backend.forward`` against the textbook module's
``predictor``, the net's forward in eval mode read back to NumPy). Figures are
examples per second.
"""

from __future__ import annotations

import paddle

from resnet_multi.paddle import BACKEND
from resnet_multi.textbook import paddle as book

from .side_by_side import LR, against_textbook, parse_args


def main():
    args = parse_args(__doc__.splitlines()[0])
    paddle.set_device("cpu")
    model, static = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18")
    static.module = paddle.jit.to_static(static.module, full_graph=True)
    against_textbook(
        book,
        args,
        {
            "sgd_step": lambda x, y: BACKEND.sgd_step(model, x, y, LR),
            "sgd_step to_static": lambda x, y: BACKEND.sgd_step(static, x, y, LR),
        },
        {
            "forward": lambda x: BACKEND.forward(model, x),
            "forward to_static": lambda x: BACKEND.forward(static, x),
        },
    )


if __name__ == "__main__":
    main()
