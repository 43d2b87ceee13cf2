"""Writing files: only regular files, whole, and errors that name the file.

Every file the package writes (weights, checkpoints, histories, plots, traces, benchmark
results, downloads) goes through :func:`atomic_write_bytes`: a temporary file beside the
target, flushed to disk, then renamed over it, so a crash or a full disk never leaves
half of one. Renaming replaces whatever is at the path, so the path is checked first
(:func:`check_output`): an existing output that is not a regular file (a device such as
``/dev/null``, a FIFO, a directory, a symbolic link) is refused, never replaced. The
commands call the same check on every output path before any work.

Reading: :func:`input_problem` says why a path is not a regular file to read (missing,
a directory, a link that loops), for each reader's own error.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError


class OutputError(InputError):
    """An output path that the package will not write: empty, or something other than a
    regular file (the message names it and says what to pass instead)."""


class WriteError(OSError):
    """Writing a file failed (a full disk, no permission): the message names the file."""

    def __init__(self, path, error: OSError):
        super().__init__(error.errno, error.strerror or str(error))
        self.filename = str(path)
        self.message = f"cannot write {path}: {error.strerror or error}{_WRITE_HINTS.get(error.errno, '')}"

    def __str__(self) -> str:
        return self.message


_WRITE_HINTS = {
    errno.ENOSPC: " (the disk is full): free space on it, or write elsewhere",
    errno.EDQUOT: " (the disk quota is used up): free space, or write elsewhere",
    errno.EROFS: " (a read-only file system): write elsewhere",
    errno.EACCES: ": make the directory writable, or write elsewhere",
    errno.EPERM: ": make the directory writable, or write elsewhere",
}


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _not_empty(path, what: str) -> Path:
    if path is None or os.fspath(path) == "":
        raise OutputError(f"{what} is an empty path; name a file (or leave the option out for its default)")
    return Path(path)


def check_output(path, what: str = "output file", fix: str | None = None) -> Path:
    """``path`` as a Path if the package may write a regular file there: nothing is there
    yet, or a regular file is (which will be replaced). Anything else raises OutputError,
    ending with ``fix`` (by default: what to pass instead)."""
    path = _not_empty(path, what)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:  # a parent that is a file (ENOTDIR), a loop of links (ELOOP)
        raise OutputError(f"{what} {path} cannot be written: {e.strerror}; choose another path") from None
    if stat.S_ISREG(mode):
        return path
    kind = _kind(mode)
    if fix is not None:
        pass
    elif stat.S_ISLNK(mode):
        fix = f"pass the path it points to ({os.readlink(path)}) or another path"
    elif stat.S_ISDIR(mode):
        fix = f"name a file inside it, e.g. {path / 'NAME'}"
    else:
        fix = "choose a regular file's path"
    raise OutputError(
        f"{what} {path} is {kind}: resnet-multi writes only regular files, replacing one whole "
        f"(a new file renamed over it), so it would replace {kind}; {fix}"
    )


def check_output_dir(path, what: str = "output directory") -> Path:
    """``path`` as a Path if the package may create it or write inside it: nothing is there
    yet, or a directory is (a symbolic link to one included). Anything else: OutputError."""
    path = _not_empty(path, what)
    try:
        mode = os.stat(path).st_mode  # a link to a directory is a directory to write in
    except FileNotFoundError:
        if os.path.lexists(path):
            raise OutputError(f"{what} {path} is a symbolic link to nothing; remove it or choose another") from None
        return path
    except OSError:  # a parent that is a file, no permission: creating it says so, with its own message
        return path
    if not stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else _kind(mode)
        raise OutputError(f"{what} {path} is {kind}, not a directory; choose a directory's path")
    return path


def check_lock(path) -> Path:
    """A lock file's path: nothing there yet, or a regular file (not a link): OutputError otherwise."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        raise _lock_error(path, _kind(mode))
    return path


def open_lock(path) -> int:
    """Open (creating it) the lock file ``path``: a regular file, never followed through a
    symbolic link (O_NOFOLLOW), not inherited by child processes. OutputError for anything else."""
    path = check_lock(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:  # it became a link since the check
            raise _lock_error(path, "a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        kind = _kind(os.fstat(fd).st_mode)
        os.close(fd)
        raise _lock_error(path, kind)
    return fd


def _lock_error(path: Path, kind: str) -> OutputError:
    return OutputError(
        f"{path} is {kind}; it must be the regular file resnet-multi creates to lock the run "
        f"directory (a link or anything else there could redirect writes out of it): remove it"
    )


def input_problem(path) -> str | None:
    """None if ``path`` is a regular file to read (through a symbolic link or not), else why
    not: "does not exist", "is a directory", "is a symbolic link that loops"..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a symbolic link to nothing" if os.path.lexists(path) else "does not exist"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops (it leads back to itself)"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    return f"is {_kind(mode)}, not a file"


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, *more: bytes) -> None:
    """Write ``data`` (then ``more``) to a temporary file beside ``path``, flush it to disk,
    then rename over ``path``: a crash leaves the old file or the new one, never half of one.
    ``path`` must be free or a regular file (:func:`check_output`, checked again just
    before the rename). The file gets the permissions ``open()`` would give it (0666 less
    the umask), not the temporary file's 0600. An OSError becomes a WriteError naming it."""
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(path, e) from e
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows has no umask to honour
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            for chunk in (data, *more):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        check_output(path)  # nothing else appeared there meanwhile
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temporary(name: str, target: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write_bytes`'s temporary files for ``target``."""
    return name.startswith(f".{target}.") and name.endswith(".tmp")
