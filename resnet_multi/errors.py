"""The package's one distinction between errors: a mistake in what the user asked for,
which the command line reports as a usage error, and everything else.

Every check of an argument, an option or a spec raises :class:`InputError` or one of its
subclasses, so that ``resnet-multi`` answers a mistake with its message and exit status 2,
and reports any other exception as the bug it is. Both subclass the built-in exception a
Python caller expects (``ValueError``, ``TypeError``), so ``except ValueError`` still works.
"""

from __future__ import annotations


class InputError(ValueError):
    """A value the user passed that cannot work: the message names it and the fix."""


class InputTypeError(InputError, TypeError):
    """A value of the wrong type (a NumPy array where a tensor belongs, float64 for float32)."""
