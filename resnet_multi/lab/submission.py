"""Loading a student's submission, and running its code under a time limit. Framework-free.

Everything here executes the student's code with the caller's rights: a grader runs it
inside the lab's sandbox (a container, Gradescope's autograder), never on a machine whose
files matter. The time limit stops a pure-Python loop or a ``sleep``; code stuck inside a
framework's compiled kernels returns only when they do, so the sandbox's own limit is the
last resort.

Whatever the student's code raises becomes a :class:`StudentError` whose message is one
line: the exception and the line of the student's code it came from.
"""

from __future__ import annotations

import contextlib
import io
import json
import linecache
import signal
import sys
import threading
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TIME_LIMIT = 60.0  # seconds for each call into the student's code


class TimeLimitExceeded(BaseException):
    """Raised inside the student's code when its time is up. A BaseException, so that the
    student's own ``except Exception`` does not swallow it."""


class StudentError(Exception):
    """The student's code failed: ``message`` is one line saying how and where."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.message, self.kind = message, kind  # kind: error, timeout, type, import, syntax


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise :class:`TimeLimitExceeded` in the code run inside if it takes longer than
    ``seconds`` (SIGALRM: the main thread of a Unix process; elsewhere no limit)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise TimeLimitExceeded(what)

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_OWN = str(Path(__file__).resolve().parent.parent)  # resnet_multi/


def _is_framework_file(filename: str) -> bool:
    # code compiled from a string ("<string>": a framework's generated dataclass methods)
    generated = filename.startswith("<") and not filename.startswith("<ipython-input")
    return "site-packages" in filename or "dist-packages" in filename or generated


def where(tb) -> str:
    """' (file, line N: code)' for the innermost frame of the student's code in a traceback:
    not the package's, not an installed library's."""
    frames = traceback.extract_tb(tb)
    student = [f for f in frames if not f.filename.startswith(_OWN) and not _is_framework_file(f.filename)]
    if not student:
        return ""
    f = student[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    name = Path(f.filename).name
    return f" ({name}, line {f.lineno}{', in ' + f.name if f.name != '<module>' else ''}: {line})"


def describe_exception(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@contextlib.contextmanager
def student_code(what: str, seconds: float | None):
    """Run the student's code: any exception becomes a one-line :class:`StudentError`
    (``what`` says what was being done), and so does running past ``seconds``."""
    try:
        with time_limit(seconds, what):
            yield
    except StudentError:
        raise
    except TimeLimitExceeded:
        raise StudentError(f"{what} did not finish within {seconds:g} s (the time limit per call)", "timeout") from None
    except RecursionError as e:
        raise StudentError(f"{what} raised {describe_exception(e)}", "error") from e
    except Exception as e:  # the student's code may raise anything
        raise StudentError(f"{what} raised {describe_exception(e)}{where(e.__traceback__)}", "error") from e


@dataclass
class Submission:
    """The objects a submission defines, and what its import printed."""

    source: str  # a path, or "objects" for a notebook's namespace
    namespace: dict
    output: str = ""
    problem: StudentError | None = None  # why it did not load (then namespace is empty)
    modules: set = field(default_factory=set)  # top-level modules it imports

    def find(self, names) -> tuple[str, object] | None:
        for name in names:
            if name in self.namespace:
                return name, self.namespace[name]
        return None


def notebook_source(path: Path) -> str:
    """The code cells of a notebook, joined; IPython magics and shell lines commented out."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise StudentError(f"{path.name} is not a readable notebook ({describe_exception(e)})", "syntax") from None
    cells = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        lines = [("# " + line) if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
        cells.append("\n".join(lines))
    return "\n\n".join(cells) + "\n"


def load_file(path, seconds: float | None = DEFAULT_TIME_LIMIT) -> Submission:
    """Execute a submitted ``.py`` file (or a notebook's code cells) as a module of its own,
    under a time limit, with what it prints captured. A file that cannot be read, does not
    compile, imports something not installed, raises or runs too long gives a Submission
    whose ``problem`` says so in one line."""
    path = Path(path)
    try:
        source = notebook_source(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    except StudentError as e:
        return Submission(str(path), {}, problem=e)
    except (OSError, UnicodeDecodeError) as e:
        return Submission(str(path), {}, problem=StudentError(f"cannot read {path}: {describe_exception(e)}", "import"))
    filename = str(path.resolve())
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as e:
        line = (e.text or "").strip()
        message = f"{path.name} does not compile: {e.msg} (line {e.lineno}{': ' + line if line else ''})"
        return Submission(str(path), {}, problem=StudentError(message, "syntax"))
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"_resnet_multi_submission_{abs(hash(filename))}")
    module.__file__ = filename
    captured = io.StringIO()
    before = set(sys.modules)
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            with student_code(f"importing {path.name}", seconds):
                exec(code, module.__dict__)  # noqa: S102  (the point: run the student's file)
    except StudentError as e:
        cause = e.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            e = StudentError(
                f"{path.name} imports {cause.name}, which is not installed here{where(cause.__traceback__)}", "import"
            )
        return Submission(str(path), {}, output=captured.getvalue(), problem=e)
    imported = {name.split(".")[0] for name in set(sys.modules) - before}
    imported |= {v.__name__.split(".")[0] for v in module.__dict__.values() if isinstance(v, types.ModuleType)}
    return Submission(str(path), dict(module.__dict__), output=captured.getvalue(), modules=imported)


def from_namespace(namespace: dict) -> Submission:
    """A notebook's objects (``globals()``) as a submission."""
    modules = {v.__name__.split(".")[0] for v in namespace.values() if isinstance(v, types.ModuleType)}
    return Submission("objects", dict(namespace), modules=modules)
