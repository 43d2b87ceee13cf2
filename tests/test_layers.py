"""The package's modules form layers: each imports only from its own layer or those below,
so there are no import cycles, and the framework-free layers import no framework.

Read from the source with ``ast`` (function-level imports included), so it runs in any
environment and starts no framework.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resnet_multi"

# Lowest first. A module may import from its own layer only where the graph stays acyclic
# (checked separately).
LAYERS = [
    {"errors", "frameworks", "machine"},
    {"spec"},
    {"shapes", "files", "conventions", "optim"},
    {"validate"},
    {"weights"},
    {"memory", "data", "images"},
    {"backend"},
    {
        "numpy",
        "torch",
        "tf",
        "mxnet",
        "paddle",
        "mindspore",
        "jax",
        "nhwc",
        "jax_cpu",
        "torch_device",
        "textbook",
        "onnx_export",
        "onnxruntime",
    },
    {"train", "lab", "zoo"},
    {"trace", "bench", "distributed"},
    {"run", "compare"},
    {"cli"},
]
FRAMEWORK_FREE = set().union(*LAYERS[:7])
FRAMEWORK_MODULES = {"torch", "tensorflow", "keras", "mxnet", "paddle", "mindspore", "jax", "jaxlib", "flax", "optax"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, outside top-level modules) that ``path`` imports, anywhere in it."""
    inside, outside = set(), set()
    package_parts = (
        _module_name(path).split(".")[:-1]
        if path.name != "__init__.py"
        else _module_name(path).split(".")
        if _module_name(path) != "__init__"
        else []
    )
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                outside.add(node.module.split(".")[0])
                continue
            base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module:
                inside.add(target)
            for alias in node.names:  # `from . import shapes` names modules
                candidate = ".".join(filter(None, [target, alias.name]))
                if (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").exists():
                    inside.add(candidate)
        elif isinstance(node, ast.Import):
            outside.update(a.name.split(".")[0] for a in node.names)
    return {m for m in inside if m}, outside


def _top(module: str) -> str:
    return module.split(".")[0]


GRAPH = {}
OUTSIDE = {}
for _path in sorted(PACKAGE.rglob("*.py")):
    _name = _module_name(_path)
    GRAPH[_name], OUTSIDE[_name] = _imports(_path)


def _layer(module: str) -> int:
    top = _top(module)
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"resnet_multi.{module} is in no layer: add it to LAYERS in {__file__}")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "__init__"))
def test_imports_go_down_the_layers(module):
    upward = [m for m in GRAPH[module] if _layer(m) > _layer(module)]
    assert not upward, f"resnet_multi.{module} imports from a higher layer: {sorted(upward)}"


def test_no_import_cycles():
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in GRAPH.get(node, ()):
            nxt = nxt if nxt in GRAPH else _top(nxt)
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt in GRAPH and nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _top(m) in FRAMEWORK_FREE))
def test_framework_free_modules_import_no_framework(module):
    assert not OUTSIDE[module] & FRAMEWORK_MODULES, (
        f"resnet_multi.{module} imports {OUTSIDE[module] & FRAMEWORK_MODULES}"
    )
