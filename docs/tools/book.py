"""The chapter's single source, ``docs/book/resnet.md``, made into notebooks and a page.

    python docs/tools/book.py notebooks    # write notebooks/resnet_<framework>.ipynb and cross_framework.ipynb
    python docs/tools/book.py check        # exit 1, naming each notebook that differs from the source
    python docs/tools/book.py page --executed DIR --out docs/_generated/chapter.md

The source is Markdown, written the way d2l writes its book: the prose once, and each
code step as fenced code blocks tagged with the frameworks they belong to.

``# @tab NAMES``
    The first line of every ```` ```python ```` block (d2l's ``#@tab``, spelt as ruff's
    formatter, which formats the Markdown's code blocks too, spells comments; both are
    read). ``NAMES`` are backend names (numpy, torch, tf, mxnet, paddle, mindspore, jax),
    separated by commas, or ``all``. Consecutive code blocks form one *step*: each
    framework's notebook gets one code cell per step, its blocks joined in order (an
    ``all`` block and a ``torch`` block make PyTorch's cell). Code shown but never run
    goes in another language's block (```` ```bash ````, ```` ```text ````).
``:begin_tab:`NAMES``` ... ``:end_tab:``
    Prose for some frameworks only (d2l's syntax); on the page, a tab set.
``# @include PATH NAME [NAME ...]``
    At the start of a code block (after its imports): replaced by the top-level classes,
    functions or assignments ``NAME`` of the repository's file ``PATH``, extracted with
    :mod:`ast`, so that the notebook runs, and the page shows, the package's own code.
    The imports the code needs come first: each global name it reads (found with
    :mod:`symtable`) that the notebook has not bound yet, imported from where the module
    has it (``from torch import nn``, ``from resnet_multi.torch import batch_norm``), in
    one block with the cell's own imports, sorted as ruff's isort sorts them.
``{{framework}}``, ``{{title}}``
    The backend name and the framework's title (``resnet_multi.frameworks``); on the
    page, prose that uses them becomes a tab set.
``<!-- #@notebook cross_framework -->``
    Everything after this line is ``cross_framework.ipynb`` (its code blocks are ``all``);
    everything before it is the chapter, one notebook per framework. The chapter's first
    heading gets "in <title>" in each framework's notebook. Other HTML comments are for
    the source's readers: neither the notebooks nor the page show them.

Cell ids are ``<section>-<n>`` for the n-th step after the heading ``<section>``
(slugged), written into the notebooks; the page matches executed cells by that id and
checks that the executed cell ran the source's code.
"""

from __future__ import annotations

import argparse
import ast
import base64
import builtins
import dataclasses
import os
import re
import shutil
import symtable
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the working tree's resnet_multi, not an installed copy

from resnet_multi.frameworks import FRAMEWORKS  # noqa: E402  (after the path is set)

SOURCE = ROOT / "docs" / "book" / "resnet.md"
NOTEBOOKS = ROOT / "notebooks"
CROSS = "cross_framework"
SOURCE_NAME = "docs/book/resnet.md"

FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*)$")
TAB = re.compile(r"^# ?@tab\s+(.+?)\s*$")
INCLUDE = re.compile(r"^# ?@include\s+(\S+)\s+(.+?)\s*$")
BEGIN_TAB = re.compile(r"^:begin_tab:`([^`]+)`\s*$")
END_TAB = ":end_tab:"
PART = re.compile(r"^<!--\s*#@notebook\s+(\S+)\s*-->\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
PLACEHOLDER = re.compile(r"\{\{(framework|title)\}\}")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINE_LENGTH = 120  # the project's (pyproject.toml, ruff)


class BookError(Exception):
    """The source does not follow the syntax above; the message names the line."""


# ---- reading the source ----------------------------------------------------------------------
@dataclasses.dataclass
class Segment:
    kind: str  # "prose" or "code"
    text: str
    tabs: tuple[str, ...] | None  # None: every framework
    line: int  # where it starts in the source, 1-based
    part: str  # "chapter" or CROSS


def _names(spec: str, line: int) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if names == ("all",):
        return None
    unknown = [n for n in names if n not in FRAMEWORKS]
    if not names or unknown:
        raise BookError(
            f"{SOURCE_NAME}:{line}: unknown tab(s) {unknown or spec!r}; use 'all' or {', '.join(FRAMEWORKS)}"
        )
    return names


def parse(text: str) -> list[Segment]:
    lines = text.splitlines()
    segments: list[Segment] = []
    prose: list[str] = []
    prose_start, prose_tabs, part = 1, None, "chapter"

    def flush(next_line: int) -> None:
        nonlocal prose, prose_start
        body = "\n".join(prose).strip("\n")
        if body.strip():
            segments.append(Segment("prose", body, prose_tabs, prose_start, part))
        prose, prose_start = [], next_line

    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if PART.match(line):
            flush(number + 1)
            if prose_tabs is not None:
                raise BookError(f"{SOURCE_NAME}:{number}: a notebook marker inside :begin_tab:")
            part = PART.match(line).group(1)
            if part != CROSS:
                raise BookError(f"{SOURCE_NAME}:{number}: the only other notebook is {CROSS!r}")
            i += 1
            continue
        if BEGIN_TAB.match(line):
            flush(number + 1)
            if prose_tabs is not None:
                raise BookError(f"{SOURCE_NAME}:{number}: :begin_tab: inside another; close it with {END_TAB}")
            prose_tabs = _names(BEGIN_TAB.match(line).group(1), number) or tuple(FRAMEWORKS)
            i += 1
            continue
        if line.strip() == END_TAB:
            if prose_tabs is None:
                raise BookError(f"{SOURCE_NAME}:{number}: {END_TAB} without :begin_tab:")
            flush(number + 1)
            prose_tabs = None
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            marker, info = fence.groups()
            end = i + 1
            while end < len(lines) and not (
                lines[end].startswith(marker[0] * len(marker)) and not lines[end].strip(marker[0]).strip()
            ):
                end += 1
            if end == len(lines):
                raise BookError(f"{SOURCE_NAME}:{number}: code block never closed")
            body = lines[i + 1 : end]
            if info.split()[:1] == ["python"]:
                tab = TAB.match(body[0]) if body else None
                if not tab:
                    raise BookError(
                        f"{SOURCE_NAME}:{number}: a python block starts with '# @tab NAMES' "
                        f"(or 'all'); show code that does not run as ```text"
                    )
                if prose_tabs is not None:
                    raise BookError(f"{SOURCE_NAME}:{number}: code inside :begin_tab: prose; tag it with # @tab")
                flush(end + 2)
                tabs = _names(tab.group(1), number)
                if part == CROSS and tabs is not None:
                    raise BookError(f"{SOURCE_NAME}:{number}: {CROSS} has one notebook: tag its code 'all'")
                segments.append(Segment("code", "\n".join(body[1:]).strip("\n"), tabs, number, part))
            else:
                prose.extend(lines[i : end + 1])
            i = end + 1
            continue
        if line.lstrip().startswith("<!--"):  # a comment for the source's readers only
            end = i
            while end < len(lines) and "-->" not in lines[end]:
                end += 1
            i = end + 1
            continue
        if HEADING.match(line) and prose_tabs is not None:
            raise BookError(f"{SOURCE_NAME}:{number}: a heading inside :begin_tab: (the page cannot put one in a tab)")
        if HEADING.match(line):
            flush(number)  # a heading is a segment of its own: on the page, never inside a tab
            prose.append(line)
            flush(number + 1)
            i += 1
            continue
        prose.append(line)
        i += 1
    if prose_tabs is not None:
        raise BookError(f"{SOURCE_NAME}: :begin_tab: never closed with {END_TAB}")
    flush(len(lines) + 1)
    return segments


def slug(heading: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
    return (words[:40].rstrip("-")) or "section"


@dataclasses.dataclass
class Step:
    """Consecutive code segments, or one prose segment, with its cell id."""

    kind: str
    segments: list[Segment]
    id: str
    part: str


def steps(segments: list[Segment]) -> list[Step]:
    """Group the segments into steps and give each its id: ``<section>-<n>`` for code,
    ``<section>-text-<n>`` for prose, numbered after each heading of untabbed prose."""
    out: list[Step] = []
    section, counts, seen = "start", {"code": 0, "prose": 0}, {}
    for seg in segments:
        if seg.kind == "prose" and seg.tabs is None:
            heading = next((HEADING.match(x) for x in seg.text.splitlines() if HEADING.match(x)), None)
            if heading:
                base = slug(PLACEHOLDER.sub("", heading.group(2)))
                seen[base] = seen.get(base, 0) + 1
                section = base if seen[base] == 1 else f"{base}-{seen[base]}"
                counts = {"code": 0, "prose": 0}
        if seg.kind == "code" and out and out[-1].kind == "code" and out[-1].part == seg.part:
            out[-1].segments.append(seg)
            continue
        counts[seg.kind] += 1
        ident = f"{section}-{counts['code']}" if seg.kind == "code" else f"{section}-text-{counts['prose']}"
        out.append(Step(seg.kind, [seg], ident, seg.part))
    return out


def substitute(text: str, framework: str | None) -> str:
    if framework is None:
        return text
    values = {"framework": framework, "title": FRAMEWORKS[framework].title}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


# ---- #@include ----------------------------------------------------------------------------------
def _module_bindings(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (imports, defs, classes, assignments)."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def _definition(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return node
    return None


def _free_names(source: str) -> set[str]:
    """The global names ``source`` (top-level definitions) reads, with Python's own scoping."""
    table = symtable.symtable(source, "<include>", "exec")
    found: set[str] = set()

    def walk(t):
        for sym in t.get_symbols():
            if sym.is_referenced() and sym.is_global():
                found.add(sym.get_name())
        for child in t.get_children():
            walk(child)

    walk(table)
    return found


# ---- import statements, sorted as ruff's isort sorts them -------------------------------------
@dataclasses.dataclass(frozen=True)
class Import:
    """``import module [as alias]`` (name None) or ``from module import name [as alias]``."""

    module: str
    name: str | None = None
    alias: str | None = None

    @property
    def bound(self) -> str:
        return self.alias or self.name or self.module.split(".")[0]


def _section(module: str) -> int:
    top = module.split(".")[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    return 3 if top == "resnet_multi" else 2  # the project's known-first-party (pyproject.toml)


def _member_key(imp: Import):
    # inside a from-import: constants, classes, then the rest, each case-insensitively
    name = imp.name
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name.lower(), name, imp.alias or ""


def render_imports(imports) -> str:
    """One import block: sections (standard library, third-party, the project) apart,
    ``import`` lines before ``from`` lines, long lines wrapped one name a line."""
    blocks = []
    for section in sorted({_section(i.module) for i in imports}):
        mine = [i for i in set(imports) if _section(i.module) == section]
        lines = [
            f"import {i.module}" + (f" as {i.alias}" if i.alias else "")
            for i in sorted((i for i in mine if i.name is None), key=lambda i: (i.module.lower(), i.alias or ""))
        ]
        for module in sorted({i.module for i in mine if i.name is not None}, key=str.lower):
            names = [
                f"{i.name} as {i.alias}" if i.alias else i.name
                for i in sorted((i for i in mine if i.module == module and i.name), key=_member_key)
            ]
            line = f"from {module} import {', '.join(names)}"
            if len(line) > LINE_LENGTH:
                line = f"from {module} import (\n" + "".join(f"    {n},\n" for n in names) + ")"
            lines.append(line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def leading_imports(code: str, where: str) -> tuple[list[Import], str]:
    """The import statements at the top of ``code``, and the rest of it."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise BookError(f"{where}: the code does not parse: {e}") from None
    imports, end = [], 0
    for node in tree.body:
        if isinstance(node, ast.Import):
            imports += [Import(a.name, None, a.asname) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imports += [Import(node.module, a.name, a.asname) for a in node.names]
        else:
            break
        end = node.end_lineno
    return imports, "\n".join(code.split("\n")[end:]).strip("\n")


# ---- #@include -----------------------------------------------------------------------------------
def _dotted(node, origins: dict[str, Import]) -> str | None:
    """``torch.nn.functional`` for an attribute chain whose root is a name bound to a module."""
    if isinstance(node, ast.Name):
        imp = origins.get(node.id)
        return None if imp is None else imp.module if imp.name is None else f"{imp.module}.{imp.name}"
    if isinstance(node, ast.Attribute):
        root = _dotted(node.value, origins)
        return f"{root}.{node.attr}" if root else None
    return None


def _from_dotted(dotted: str, name: str, *, module_import: bool) -> Import:
    """The import that binds ``name`` to the object at ``dotted``."""
    parent, _, last = dotted.rpartition(".")
    if not parent:
        return Import(dotted, None, None if name == dotted else name)
    if module_import and name != last:
        return Import(dotted, None, name)  # import jax.numpy as jnp
    return Import(parent, last, None if name == last else name)


def module_imports(tree: ast.Module, package: str = "") -> dict[str, Import]:
    """{name: the import that binds it} for a module's top-level names that are imported
    objects: imports, the package's ``N = require("M", ...)`` and aliases of those
    (``nn = torch.nn``: ``from torch import nn``; not ALL_CAPS constants)."""
    out: dict[str, Import] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(
                {
                    (a.asname or a.name.split(".")[0]): Import(
                        a.name if a.asname else a.name.split(".")[0], None, a.asname
                    )
                    for a in node.names
                }
            )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.update({(a.asname or a.name): Import(base, a.name, a.asname) for a in node.names})
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (
                list(zip(target.elts, value.elts))
                if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                else [(target, value)]
            )
            for t, v in pairs:
                if not isinstance(t, ast.Name) or (len(t.id) > 1 and t.id.isupper()):
                    continue
                if (
                    isinstance(v, ast.Call)
                    and getattr(v.func, "id", None) == "require"
                    and v.args
                    and isinstance(v.args[0], ast.Constant)
                ):
                    out[t.id] = _from_dotted(v.args[0].value, t.id, module_import=True)
                elif _dotted(v, out):
                    out[t.id] = _from_dotted(_dotted(v, out), t.id, module_import=False)
    return out


def _same(a: Import, b: Import) -> bool:
    def target(i):
        return i.module if i.name is None else f"{i.module}.{i.name}"

    return target(a) == target(b)


@dataclasses.dataclass
class Context:
    """What a notebook has bound so far: names an include's imports leave out."""

    defined: set[str] = dataclasses.field(default_factory=set)  # by included code
    imported: dict[str, Import] = dataclasses.field(default_factory=dict)  # by imports
    other: dict[str, str] = dataclasses.field(default_factory=dict)  # bound otherwise: name -> where


def include(rel: str, names: list[str], context: Context, where: str) -> tuple[list[Import], str]:
    """The imports and the source of top-level definitions ``names`` of the file ``rel``."""
    path = ROOT / rel
    if not path.is_file() or path.suffix != ".py":
        raise BookError(f"{where}: #@include {rel}: no such Python file in the repository")
    module = ".".join(Path(rel).with_suffix("").parts)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    lines = text.splitlines()
    pieces = []
    for name in names:
        node = _definition(tree, name)
        if node is None:
            raise BookError(f"{where}: #@include {rel}: it defines no top-level {name!r}")
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        pieces.append("\n".join(lines[first - 1 : node.end_lineno]))
    body = "\n\n\n".join(pieces)
    origins = module_imports(tree, module.rpartition(".")[0])
    needed = (_free_names(body) & _module_bindings(tree)) - set(names) - context.defined - set(dir(builtins))
    imports = []
    for name in sorted(needed):
        imp = origins.get(name, Import(module, name))
        if name in context.imported and _same(context.imported[name], imp):
            continue
        if name in context.imported or name in context.other:
            raise BookError(
                f"{where}: the code included from {rel} reads {name!r} from its module, but an "
                f"earlier cell ({context.other.get(name, 'an import')}) binds that name to something "
                f"else: rename it there"
            )
        imports.append(imp)
    context.defined |= set(names)
    return imports, body


def _bind(code: str, context: Context, where: str) -> None:
    """Record the names a cell binds at its top level, and to what."""
    tree = ast.parse(code)
    imports = module_imports(tree)
    context.imported.update(imports)
    for name in _module_bindings(tree) - set(imports) - context.defined:
        context.other.setdefault(name, where)


def _is_definition(code: str, *, last: bool) -> bool:
    """Whether ``code`` starts (or ends, ``last``) with a top-level def or class: ruff's
    formatter puts two blank lines around those, one elsewhere."""
    body = ast.parse(code).body
    node = (body[-1] if last else body[0]) if body else None
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def join_code(pieces: list[str]) -> str:
    out = ""
    for piece in filter(None, pieces):
        if out:
            two = _is_definition(out, last=True) or _is_definition(piece, last=False)
            out += "\n\n\n" if two else "\n\n"
        out += piece
    return out


def code_cell(segments: list[Segment], framework: str | None, context: Context) -> str:
    """One step's code for ``framework``: its blocks in order, includes expanded. In a step
    with an include, every import comes first, in one sorted block."""
    texts = [(substitute(s.text, framework), f"{SOURCE_NAME}:{s.line}") for s in segments]
    if not any(INCLUDE.match(line) for t, _ in texts for line in t.split("\n")):
        code = join_code([t for t, _ in texts])
        for t, where in texts:
            _bind(t, context, where)
        return code
    imports, bodies = [], []
    for text, where in texts:
        hand, rest = leading_imports(text, where)
        imports += hand
        if hand:
            _bind(render_imports(hand), context, where)
        lines = rest.split("\n")
        while lines and INCLUDE.match(lines[0]):
            match = INCLUDE.match(lines.pop(0))
            extra, body = include(match.group(1), match.group(2).split(), context, where)
            imports += extra
            for imp in extra:
                context.imported[imp.bound] = imp
            bodies.append(body)
        if any(INCLUDE.match(line) for line in lines):
            raise BookError(f"{where}: #@include goes at the start of a block (after any imports)")
        rest = "\n".join(lines).strip("\n")
        if rest:
            _bind(rest, context, where)
            bodies.append(rest)
    return join_code([render_imports(imports) if imports else "", *bodies])


# ---- notebooks ------------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
    id: str
    kind: str  # "markdown" or "code"
    source: str


def _title(text: str, framework: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# "):
            lines[i] = f"{line} in {FRAMEWORKS[framework].title}"
            break
    return "\n".join(lines)


NOTE = (
    "*Generated from [`{source}`](../{source}) by `python docs/tools/book.py notebooks`: "
    "edit the source, not this notebook.*"
)


def cells(all_steps: list[Step], framework: str | None) -> list[Cell]:
    """The notebook of ``framework`` (the chapter), or of the cross-framework part (None)."""
    part = "chapter" if framework is not None else CROSS
    context, out, titled = Context(), [], False
    for step in all_steps:
        if step.part != part:
            continue
        mine = [s for s in step.segments if s.tabs is None or framework in s.tabs]
        if not mine:
            continue
        if step.kind == "prose":
            text = substitute(mine[0].text, framework)
            if not titled:
                if framework is not None:
                    text = _title(text, framework)
                head, _, rest = text.partition("\n")
                text = f"{head}\n\n{NOTE.format(source=SOURCE_NAME)}" + (f"\n\n{rest.strip()}" if rest.strip() else "")
                titled = True
            if out and out[-1].kind == "markdown":  # a step this notebook skips left two in a row
                out[-1].source += "\n\n" + text
            else:
                out.append(Cell(step.id, "markdown", text))
            continue
        out.append(Cell(step.id, "code", code_cell(mine, framework, context)))
    return out


def notebook(cell_list: list[Cell]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in cell_list:
        make = nbformat.v4.new_code_cell if cell.kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(cell.source, id=cell.id))
    nbformat.validate(nb)
    return nb


def read_source(path: Path = SOURCE) -> list[Step]:
    return steps(parse(path.read_text(encoding="utf-8")))


def generate(path: Path = SOURCE) -> dict[str, str]:
    """{file name: notebook text} for every notebook the source makes."""
    all_steps = read_source(path)
    out = {f"resnet_{name}.ipynb": nbformat.writes(notebook(cells(all_steps, name))) + "\n" for name in FRAMEWORKS}
    out[f"{CROSS}.ipynb"] = nbformat.writes(notebook(cells(all_steps, None))) + "\n"
    return out


def write_notebooks(folder: Path = NOTEBOOKS, source: Path = SOURCE) -> list[Path]:
    written = []
    for name, text in generate(source).items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            _atomic_write(path, text.encode("utf-8"))
            written.append(path)
    return written


def stale(folder: Path = NOTEBOOKS, source: Path = SOURCE) -> list[str]:
    """What differs between the notebooks in ``folder`` and those the source generates."""
    problems = []
    expected = generate(source)
    for name, text in expected.items():
        path = folder / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from what {SOURCE_NAME} generates")
    for path in sorted(folder.glob("*.ipynb")):
        if path.name not in expected:
            problems.append(f"{path}: not generated from {SOURCE_NAME}")
    return problems


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the page ---------------------------------------------------------------------------------
def _fence(*texts: str, minimum: int = 3) -> int:
    longest = max((len(m) for t in texts for m in re.findall(r"`+", t)), default=0)
    return max(minimum, longest + 1)


def _block(text: str, lang: str = "") -> str:
    ticks = "`" * _fence(text)
    return f"{ticks}{lang}\n{text}\n{ticks}"


class Outputs:
    """The outputs of an executed notebook, by cell id, rendered as MyST; images are
    written beside the page."""

    def __init__(self, path: Path, images: Path, prefix: str):
        self.path, self.images, self.prefix = path, images, prefix
        self.nb = nbformat.read(path, as_version=4) if path.is_file() else None
        self.by_id = {c.get("id"): c for c in self.nb.cells} if self.nb else {}

    def render(self, cell: Cell) -> str:
        if self.nb is None:
            return f"*Not executed for this build: there is no executed `{self.path.name}`.*"
        executed = self.by_id.get(cell.id)
        if executed is None or executed.cell_type != "code":
            return f"*The executed `{self.path.name}` has no cell `{cell.id}`; its outputs are left out.*"
        if executed.source != cell.source:
            return (
                f"*The executed `{self.path.name}` ran another version of this code (cell `{cell.id}`); "
                f"its outputs are left out.*"
            )
        parts = []
        for k, output in enumerate(executed.get("outputs", [])):
            part = self._one(output, f"{self.prefix}-{cell.id}-{k}")
            if part:
                parts.append(part)
        return "\n\n".join(parts)

    def _one(self, output, stem: str) -> str:
        kind = output.get("output_type")
        if kind == "stream":
            if output.get("name") != "stdout":
                return ""  # warnings and progress bars: the notebook shows them to whoever runs it
            text = ANSI.sub("", output.get("text", "")).rstrip()
            return _block(text, "text") if text else ""
        if kind == "error":
            return _block(ANSI.sub("", "\n".join(output.get("traceback", []))).rstrip(), "text")
        data = output.get("data", {})
        if "image/png" in data:
            self.images.mkdir(parents=True, exist_ok=True)
            png = data["image/png"]
            (self.images / f"{stem}.png").write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
            return f"![output]({self.images.name}/{stem}.png)"
        if "text/markdown" in data:
            return _join(data["text/markdown"]).strip()
        if "text/html" in data:
            html = _join(data["text/html"]).strip()
            return "```{raw} html\n" + html + "\n```"
        if "text/plain" in data:
            return _block(ANSI.sub("", _join(data["text/plain"])).rstrip(), "text")
        return ""


def _join(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _tab_set(tabs: list[tuple[str, str]]) -> str:
    """A sphinx-design tab set synchronised on the framework: [(backend name, MyST body)]."""
    n = _fence(*(body for _, body in tabs))
    outer, inner = "`" * (n + 1), "`" * n
    items = [f"{inner}{{tab-item}} {FRAMEWORKS[name].title}\n:sync: {name}\n\n{body}\n{inner}" for name, body in tabs]
    return f"{outer}{{tab-set}}\n:sync-group: framework\n\n" + "\n\n".join(items) + f"\n{outer}"


def page(executed: Path, out: Path, source: Path = SOURCE) -> str:
    all_steps = read_source(source)
    images = out.parent / f"{out.stem}_files"
    if images.exists():
        shutil.rmtree(images)  # this page's own images, from an earlier build
    outputs = {name: Outputs(executed / f"resnet_{name}.ipynb", images, name) for name in FRAMEWORKS}
    cross = Outputs(executed / f"{CROSS}.ipynb", images, CROSS)
    per_framework = {name: {c.id: c for c in cells(all_steps, name)} for name in FRAMEWORKS}
    cross_cells = {c.id: c for c in cells(all_steps, None)}
    blocks = [f"<!-- Generated from {SOURCE_NAME} by docs/tools/book.py page: edit the source. -->"]
    pending: list[tuple[str, str]] = []  # framework-only prose waiting to become one tab set

    def flush():
        if pending:
            order = [name for name in FRAMEWORKS if any(n == name for n, _ in pending)]
            blocks.append(_tab_set([(name, "\n\n".join(t for n, t in pending if n == name)) for name in order]))
            pending.clear()

    for step in all_steps:
        if step.kind == "prose":
            seg = step.segments[0]
            if seg.tabs is not None:
                pending.extend((name, substitute(seg.text, name)) for name in seg.tabs)
                continue
            flush()
            if step.part == CROSS and HEADING.match(seg.text):
                blocks.append("#" + seg.text)  # a section of the chapter's page, not a second title
            elif step.part == "chapter" and PLACEHOLDER.search(seg.text):
                blocks.append(_tab_set([(name, substitute(seg.text, name)) for name in FRAMEWORKS]))
            else:
                blocks.append(seg.text)
            continue
        flush()
        if step.part == CROSS:
            cell = cross_cells[step.id]
            blocks.append(_block(cell.source, "python"))
            rendered = cross.render(cell)
            if rendered:
                blocks.append(rendered)
            continue
        tabs = []
        for name in FRAMEWORKS:
            cell = per_framework[name].get(step.id)
            if cell is None or cell.kind != "code":
                continue
            body = _block(cell.source, "python")
            rendered = outputs[name].render(cell)
            tabs.append((name, body + ("\n\n" + rendered if rendered else "")))
        if tabs:
            blocks.append(_tab_set(tabs))
    flush()
    text = "\n\n".join(blocks) + "\n"
    _atomic_write(out, text.encode("utf-8"))
    return text


# ---- command line -------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="book.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("notebooks", help=f"write the notebooks in notebooks/ from {SOURCE_NAME}")
    sub.add_parser("check", help=f"exit 1 if a notebook in notebooks/ differs from what {SOURCE_NAME} generates")
    p = sub.add_parser("page", help="write the chapter page: prose once, code in framework tabs with outputs")
    p.add_argument(
        "--executed",
        type=Path,
        required=True,
        help="folder of executed notebooks (resnet_<framework>.ipynb, cross_framework.ipynb)",
    )
    p.add_argument("--out", type=Path, required=True, help="the page to write (MyST Markdown)")
    args = parser.parse_args(argv)
    try:
        if args.command == "notebooks":
            written = write_notebooks()
            print("\n".join(f"wrote {p.relative_to(ROOT)}" for p in written) or "notebooks are up to date")
        elif args.command == "check":
            problems = stale()
            if problems:
                print("\n".join(problems), file=sys.stderr)
                print("regenerate them: python docs/tools/book.py notebooks", file=sys.stderr)
                return 1
            print(f"notebooks match {SOURCE_NAME}")
        else:
            page(args.executed, args.out)
            print(f"wrote {args.out}")
    except BookError as e:
        print(f"book.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
