"""The package's one distinction between errors: a mistake in what the user asked for,
which the command line reports as a usage error, and everything else.

Every check of an argument, an option or a spec raises :class:`InputError` or one of its
subclasses, so that ``resnet-multi`` answers a mistake with its message and exit status 2,
and reports any other exception as the bug it is. Both subclass the built-in exception a
Python caller expects (``ValueError``, ``TypeError``), so ``except ValueError`` still works.

:class:`NonFiniteError` is the one error for a number the package computed that is NaN
or infinite (a loss, logits, a layer's output, a gradient, a BatchNorm statistic): the
command line reports it, with what and where, and exits with status 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """A value the user passed that cannot work: the message names it and the fix."""


class InputTypeError(InputError, TypeError):
    """A value of the wrong type (a NumPy array where a tensor belongs, float64 for float32)."""


class NonFiniteError(ValueError):
    """A number the package computed is NaN or infinite; the message says which and where
    (the step, the layer or tensor), so nothing non-finite is reported as a result.
    ``short`` is the finding alone (e.g. "the loss became nan"), for a caller that adds
    where its run stands."""

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): handled where Ctrl-C is, so that the command
    line says where a run stands either way; ``signal`` is the signal's number."""

    def __init__(self, signal: int):
        super().__init__(signal)
        self.signal = signal
