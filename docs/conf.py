"""Sphinx configuration of the resnet_multi documentation.

Build it with ``tox -e docs``, which first writes the generated pages
(``docs/tools/pages.py generate``) and then runs
``sphinx-build -W --keep-going -n -b html docs docs/_build/html``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # autodoc and the CLI page read the working tree's resnet_multi

import resnet_multi  # noqa: E402

project = "resnet_multi"
author = "the resnet_multi authors"
copyright = "the resnet_multi authors, MIT licence"
release = version = getattr(resnet_multi, "__version__", "0.1.0")

extensions = [
    "myst_parser",
    "sphinx_design",
    "sphinx.ext.autodoc",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
# Only these are pages: docs/book/ is the chapter's source (docs/tools/book.py turns it into
# _generated/chapter.md), and _generated/fragments/ are included into the pages, not pages.
include_patterns = ["*.md", "_generated/chapter.md"]
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"resnet_multi {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_copy_source = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True  # defaults as written in the source, not their repr
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}

# The site is built offline, so there is no intersphinx inventory for the standard library,
# NumPy or the other libraries the API names; nitpicky mode checks every reference to this
# package's own objects, and these patterns exempt only the names defined elsewhere.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(np|numpy|pathlib|argparse|collections|typing|dataclasses|io|os|json)\..*"),
    (r"py:.*", r"(Path|ArgumentParser|Namespace|Callable|Iterator|Iterable|Sequence|Mapping|Any)"),
    (r"py:class", r"(ValueError|TypeError|RuntimeError|Exception|KeyError)"),
    (r"py:class", r"(optional|default|callable|array-like)"),
]


# ---- the package's docstrings are plain text with reST roles -------------------------------------
# They show code as indented blocks (not always after "::") and write |x| for absolute values.
# Indented blocks become literal blocks, and a | outside ``literals`` is taken literally.
_LITERAL_SPAN = re.compile(r"(``.*?``)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def plain_text_docstring(app, what, name, obj, options, lines) -> None:
    out: list[str] = []
    literal_indent = None  # inside a literal block: the indent of the text around it
    paragraph_indent = 0
    for i, line in enumerate(lines):
        if literal_indent is not None:
            if line.strip() and _indent(line) <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                continue
        previous = lines[i - 1] if i else ""
        if line.strip() and not previous.strip() and i and _indent(line) >= paragraph_indent + 4:
            before = next((text for text in reversed(out) if text.strip()), "")
            if not before.rstrip().endswith("::"):
                out[-1:] = ["", "::", ""]  # a paragraph of "::" alone: the block below is literal
            literal_indent = paragraph_indent
            out.append(line)
            continue
        if line.strip():
            if not previous.strip():
                paragraph_indent = _indent(line)
            if line.rstrip().endswith("::"):
                literal_indent = paragraph_indent
            parts = _LITERAL_SPAN.split(line)
            line = "".join(p if p.startswith("``") else p.replace("|", r"\|") for p in parts)
        out.append(line)
    lines[:] = out


def _top_level_names(body) -> dict:
    names = {}
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _defines(module: str, attrs: list[str]) -> bool:
    """Whether this package's ``module`` defines ``attrs`` (a name, or a class and its member),
    read from the source with ast: the framework modules cannot be imported here."""
    base = DOCS.parent / module.replace(".", "/")
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if not module.startswith("resnet_multi") or not path.is_file():
        return False
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for attr in attrs:
        names = _top_level_names(body)
        if attr not in names:
            return False
        body = getattr(names[attr], "body", [])
    return True


def resolve_reference(app, env, node, contnode):
    """A Python reference that Sphinx did not resolve. A short name (``Backend``,
    ``BlockSpec.attribute_names``) for exactly one object documented here links to it; a name
    that this package's source defines but the reference does not document (module data, the
    framework modules) is shown as code without a link. Anything else stays a warning, which
    ``-W`` makes an error."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    domain = env.get_domain("py")
    matches = [name for name in domain.objects if name == target or name.endswith("." + target)]
    if len(matches) == 1:
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, matches[0], node, contnode)
        if found:
            return found[0][1]
    parts = target.split(".")
    candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts), 0, -1)]
    if node.get("py:module"):
        candidates.append((node["py:module"], parts))
    if any(_defines(module, attrs) for module, attrs in candidates):
        return contnode
    return None


def unquote_annotations(app, what, name, obj, options, signature, return_annotation):
    """Dataclass signatures come with their annotations as quoted strings (the modules use
    ``from __future__ import annotations``); unquoted, Sphinx links them like any other."""
    if signature:
        signature = re.sub(r"(:\s*)'([^']*)'", r"\1\2", signature)
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-docstring", plain_text_docstring)
    app.connect("autodoc-process-signature", unquote_annotations)
    app.connect("missing-reference", resolve_reference)
