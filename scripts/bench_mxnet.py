"""Side-by-side speed of the MXNet backend and the textbook's own MXNet code.

    python -m scripts.bench_mxnet [--rounds 7] [--steps 3]   # from the repository root

Three contenders, timed in interleaved rounds in this one process (so that load from
other processes on a shared machine falls on all of them alike), medians reported:

* ``textbook``: the chapter's MXNet ResNet-18 as *Dive into Deep Learning* writes it
  (``Residual`` and ``resnet_block`` from default Gluon layers), from
  :mod:`resnet_multi.textbook.mxnet` (the one ``resnet-multi bench`` runs), trained in its
  own idiom by that module's ``trainer``: ``autograd.record()``, ``l.backward()``,
  ``trainer.step(batch_size)``, with the loss and the logits read back every batch
  for ``train_ch6``'s metrics;
* ``sgd_step``: ``Backend.sgd_step``, what ``resnet-multi train`` runs, compiled
  (the default) and eager (``--eager``).

Every contender takes the same NumPy batch each step. Training at 32x32, batch 256;
inference at 96x96, batch 64 (``Backend.forward`` against the textbook module's
``predictor``, ``net(X)`` read back to NumPy). Figures are examples per second.
"""

from __future__ import annotations

from resnet_multi.mxnet import BACKEND
from resnet_multi.textbook import mxnet as book

from .side_by_side import LR, against_textbook, parse_args


def main():
    args = parse_args(__doc__.splitlines()[0])
    compiled, eager = BACKEND.build("d2l-resnet18"), BACKEND.build("d2l-resnet18", eager=True)
    against_textbook(
        book,
        args,
        {
            "sgd_step compiled": lambda x, y: BACKEND.sgd_step(compiled, x, y, LR),
            "sgd_step eager": lambda x, y: BACKEND.sgd_step(eager, x, y, LR),
        },
        {
            "forward compiled": lambda x: BACKEND.forward(compiled, x),
            "forward eager": lambda x: BACKEND.forward(eager, x),
        },
    )


if __name__ == "__main__":
    main()
