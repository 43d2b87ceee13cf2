"""What each framework does differently from the spec, and how its module translates it.

Each backend module declares its framework's defaults next to the code that
translates them, as a literal ``CONVENTIONS = {...}`` at the end of
``resnet_multi/<framework>.py`` (the NumPy reference declares the spec's own): per topic,
``default`` (what the framework does unless told otherwise) and ``here`` (what the module does about it), plus a few
machine-checked fields (``eps``, ``momentum``, ``keeps``, ``pads``, ``shape``...) that
the tests compare with the installed framework's real defaults, so the table
cannot drift from the frameworks or the code.

The frameworks cannot share one environment (MXNet needs numpy<1.24, TensorFlow
numpy>=1.26), so the declarations are read from each module's source with
``ast.literal_eval`` instead of importing it: ``resnet-multi conventions`` shows all
every framework from any environment, and starts no framework. The declaration
must therefore be a plain literal (``literal_eval`` refuses anything else, loudly);
a test checks, for every installed backend, that the parsed value equals the
imported module's ``CONVENTIONS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from . import frameworks
from .errors import InputError

# every backend's column, the inference-only runtimes' (onnxruntime) after the frameworks'
FRAMEWORKS = frameworks.BACKEND_NAMES

# topic -> row title, in the order a reader meets them in the chapter
TOPICS = {
    "padding": "conv padding at stride 2",
    "bn_eps": "BN epsilon",
    "bn_momentum": "BN momentum",
    "bn_running_var": "BN running variance fed by",
    "data_layout": "data layout",
    "kernel_layout": "conv kernel layout",
    "dense_layout": "dense weight layout",
    "param_names": "parameter names",
    "init": "default initialisers",
    "mode_switch": "train / inference switch",
}
# Topics only the training frameworks declare (an inference-only runtime has no optimizer).
TRAINING_TOPICS = {
    "optimizer": "SGD with momentum (the fast preset's)",
    "execution": "eager or compiled (the package's choice on a CPU)",
}


class ConventionsError(ValueError):
    """A backend module whose CONVENTIONS declaration is missing or not a literal."""


def module_path(framework: str) -> Path:
    return Path(__file__).with_name(f"{framework}.py")


def declared(framework: str) -> dict:
    """The ``CONVENTIONS`` literal of ``resnet_multi/<framework>.py``, read without importing it."""
    path = module_path(framework)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CONVENTIONS" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as e:
                raise ConventionsError(
                    f"{path}:{node.lineno}: CONVENTIONS must be a plain literal "
                    f"(dicts, lists, strings, numbers), so that it can be read "
                    f"without importing the framework: {e}"
                ) from e
            missing = [t for t in TOPICS if t not in value]
            if missing:
                raise ConventionsError(f"{path}: CONVENTIONS lacks the topic(s) {missing}")
            return value
    raise ConventionsError(f"{path} declares no CONVENTIONS")


def collect(frameworks=None) -> dict[str, dict]:
    """{'numpy': ..., 'torch': ..., ...}: the table's columns, the spec's (the NumPy
    reference's) first; ``frameworks`` narrows them to those named, still after the spec's,
    as a notebook or the README shows one framework against the spec."""
    chosen = list(FRAMEWORKS) if frameworks is None else list(frameworks)
    unknown = [f for f in chosen if f not in FRAMEWORKS]
    if unknown:
        raise InputError(f"no conventions for {unknown}: choose among {', '.join(FRAMEWORKS)}")
    return {f: declared(f) for f in FRAMEWORKS if f == "numpy" or f in chosen}


def _cell(entry: dict) -> str:
    return str(entry.get("default", ""))


def _topics(columns: dict[str, dict]) -> dict[str, str]:
    """The topics to show: every one, and the training topics where a column declares them."""
    extra = {t: title for t, title in TRAINING_TOPICS.items() if any(t in c for c in columns.values())}
    return {**TOPICS, **extra}


def format_table(columns: dict[str, dict], *, markdown: bool = False) -> str:
    """Per topic, each framework's default and, under it, what its module does about it."""
    names = list(columns)
    if markdown:
        lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for topic, title in _topics(columns).items():
            cells = []
            for name in names:
                entry = columns[name].get(topic, {})
                text = _cell(entry)
                if entry.get("here"):
                    text += f"<br>*here:* {entry['here']}"
                cells.append(text.replace("|", "\\|"))
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    width = max(map(len, names))
    lines = []
    for topic, title in _topics(columns).items():
        lines.append(title)
        for name in names:
            entry = columns[name].get(topic, {})
            lines.append(f"  {name:<{width}}  {_cell(entry)}")
            if entry.get("here"):
                lines.append(f"  {'':<{width}}    here: {entry['here']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
