"""Writing files so that a crash or a full disk never leaves half of one.

Every file the package writes (weights, checkpoints, histories, plots, traces,
benchmark results) goes through :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *more: bytes) -> None:
    """Write ``data`` (then ``more``) to a temporary file beside ``path``, flush it to disk,
    then rename over ``path``: a crash leaves the old file or the new one, never half of one. The file
    gets the permissions ``open()`` would give it (0666 less the umask), not the
    temporary file's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows has no umask to honour
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            for chunk in (data, *more):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temporary(name: str, target: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write_bytes`'s temporary files for ``target``."""
    return name.startswith(f".{target}.") and name.endswith(".tmp")
