"""Finding a student's layers by the book's attribute names. Framework-free.

Each adapter describes the student's module as a tree of :class:`Node` (the attribute or
index it sits under, the kind of layer, its tensors in the canonical layout); this module
maps the canonical tensor names of the case (``conv1.weight``, ``shortcut.conv.weight``,
``stages.1.0.bn2.running_var``...) onto it:

* a block's layers by the book's names, ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``
  for the chapter's projection (and ``bn3`` for a BatchNorm after it); a bottleneck's
  projection is ``shortcut`` (the conv itself, or a container of a conv and a BatchNorm);
* a stage's blocks in order (a block is a node with ``conv1`` and ``conv2``);
* a net's blocks in order, the stem's conv and BatchNorm as the first ones outside the
  blocks, the dense layer as the last.

What does not fit (a missing conv, a layer under another name, a shape that differs) is
reported in one line each; what the reference can plant instead (a BatchNorm that is not
there, biases where the spec has none) becomes a structural mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import ArchSpec, BlockSpec, StageSpec
from . import reference

PARAMETRIC = ("conv", "bn", "dense")


@dataclass
class Node:
    name: str
    kind: str  # conv, bn, dense, other
    handle: object  # the framework's layer (or whatever the adapter needs to reach it)
    children: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)  # canonical leaf -> canonical shape
    registered: bool = True  # False: held in a plain list or dict the framework does not see
    info: dict = field(default_factory=dict)  # what the layer says of itself: {"stride": 2}

    def child(self, name: str):
        for c in self.children:
            if c.name == name:
                return c
        return None

    def walk(self, path: str = ""):
        yield path, self
        for c in self.children:
            yield from c.walk(f"{path}.{c.name}" if path else c.name)


@dataclass
class Mapping:
    """Canonical tensor name -> (node, leaf) for everything found; the problems that stop the
    weights from loading; the structural mistakes the student's layers show."""

    tensors: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    forced: set = field(default_factory=set)
    notes: list = field(default_factory=list)
    attributes: list = field(default_factory=list)  # the attribute names found, for the report

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_block(node: Node) -> bool:
    return node.child("conv1") is not None and node.child("conv2") is not None


def find_blocks(node: Node) -> list[Node]:
    """The blocks under ``node``, in order, not looking inside a block."""
    if _is_block(node):
        return [node]
    out = []
    for c in node.children:
        out.extend(find_blocks(c))
    return out


def _resolve(root: Node, path: str, kind: str):
    """The node at an attribute path; a projection ``shortcut`` may be the conv itself or a
    container whose children are the conv and the BatchNorm (by name or by kind)."""
    cur = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        nxt = cur.child(part)
        if nxt is None and i > 0 and part in ("conv", "bn"):
            if cur.kind == kind:
                return cur
            same = [c for c in cur.children if c.kind == kind]
            return same[0] if same else None
        if nxt is None:
            return None
        cur = nxt
    if cur.kind == "other" and kind == "conv" and path.endswith("shortcut.conv"):
        same = [c for c in cur.children if c.kind == kind]
        return same[0] if same else cur
    return cur


def _attribute(spec: BlockSpec, canonical: str) -> str:
    names = spec.attribute_names()
    if canonical in names:
        return names[canonical]
    if canonical == "shortcut.bn":  # not in the spec: torchvision's BN after the projection
        return "bn3" if spec.kind == "basic" else "shortcut.bn"
    return canonical


def _expected_layers(ref_tensors: dict) -> dict[str, dict]:
    """layer -> {leaf: shape} from a reference's tensors."""
    layers: dict[str, dict] = {}
    for name, (shape, _) in ref_tensors.items():
        layer, _, leaf = name.rpartition(".")
        layers.setdefault(layer, {})[leaf] = tuple(shape)
    return layers


def _map_block(node: Node, spec: BlockSpec, prefix: str, label: str, mapping: Mapping) -> None:
    """Map one block's layers (canonical names under ``prefix``)."""
    spec_layers = _expected_layers(reference.tensors(reference.build(spec)))
    union = _expected_layers(
        {
            **reference.tensors(reference.build(spec, {"projection_bn"} if spec.projection else set())),
            **reference.tensors(reference.build(spec)),
        }
    )
    used = set()
    for layer, leaves in union.items():
        kind = "bn" if layer.rpartition(".")[2].startswith("bn") else "conv"
        attribute = _attribute(spec, layer)
        found = _resolve(node, attribute, kind)
        where = f"{label}{attribute}"
        if found is None or found.kind == "other":
            if layer not in spec_layers:
                continue
            if kind == "bn":
                mapping.forced.add(f"skip_{layer}" if layer.startswith("bn") else "no_projection_bn")
                continue
            mapping.problems.append(f"no conv {where}" + ("" if found is None else f" ({where} is not a convolution)"))
            continue
        if found.kind != kind:
            mapping.problems.append(f"{where} is a {found.kind} layer, not a {kind} layer")
            continue
        used.add(id(found))
        if layer not in spec_layers:  # a BatchNorm after the chapter's projection
            mapping.forced.add("projection_bn")
        mapping.attributes.append(attribute)
        for leaf, shape in leaves.items():
            if leaf == "bias" and kind == "conv":
                continue
            got = found.tensors.get(leaf)
            if got is None:
                mapping.problems.append(f"{where} has no {leaf}")
            elif tuple(got) != shape:
                mapping.problems.append(f"{where}.{leaf} has shape {tuple(got)}, the spec's {shape}")
            else:
                mapping.tensors[f"{prefix}{layer}.{leaf}"] = (found, leaf)
        if kind == "conv":
            has_bias = "bias" in found.tensors
            if has_bias != spec.conv_bias:
                mapping.forced.add("conv_bias" if has_bias else "no_conv_bias")
            if has_bias:
                mapping.tensors[f"{prefix}{layer}.bias"] = (found, "bias")
    book = {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "shortcut"}
    for path, other in node.walk():
        if other is node or other.kind not in PARAMETRIC or id(other) in used or _inside_used(node, other, used):
            continue
        if path.split(".")[0] in book:
            # e.g. a conv3 built although this case has no projection: not applied, only counted
            mapping.notes.append(f"{label}{path} exists although this case has no use for it")
            continue
        mapping.problems.append(
            f"{label}{path} is a {other.kind} layer the checker cannot place: it finds a block's layers "
            f"by the book's names ({', '.join(_book_names(spec))})"
        )


def _inside_used(root: Node, target: Node, used: set) -> bool:
    """Whether ``target`` lies inside a node already mapped (a conv inside a mapped container)."""
    for _, n in root.walk():
        if id(n) in used and any(m is target for _, m in n.walk()):
            return True
    return False


def _book_names(spec: BlockSpec) -> list[str]:
    names = [_attribute(spec, layer) for layer in _expected_layers(reference.tensors(reference.build(spec)))]
    return list(dict.fromkeys(names))


def map_module(root: Node, spec) -> Mapping:
    """Map a block's, a stage's or a net's canonical tensors onto the student's tree."""
    mapping = Mapping()
    if isinstance(spec, BlockSpec):
        _map_block(root, spec, "", "", mapping)
    elif isinstance(spec, StageSpec):
        blocks = find_blocks(root)
        if len(blocks) != len(spec.blocks):
            mapping.problems.append(
                f"found {len(blocks)} block(s) (modules with conv1 and conv2), the stage has {len(spec.blocks)}"
            )
        for j, (node, block) in enumerate(zip(blocks, spec.blocks)):
            _map_block(node, block, f"{j}.", f"block {j}: ", mapping)
    else:
        _map_net(root, spec, mapping)
    unregistered = [path for path, n in root.walk() if not n.registered]
    if unregistered:
        mapping.notes.append(
            f"{', '.join(unregistered[:3])} held in a plain list or dict, which the framework does not "
            f"register: its parameters are not the module's"
        )
    return mapping


def _map_net(root: Node, spec: ArchSpec, mapping: Mapping) -> None:
    blocks = find_blocks(root)
    specs = [(i, j, b) for i, stage in enumerate(spec.stages) for j, b in enumerate(stage.blocks)]
    if len(blocks) != len(specs):
        mapping.problems.append(
            f"found {len(blocks)} residual block(s) (modules with conv1 and conv2), {spec.name} has {len(specs)}"
        )
    for node, (i, j, block) in zip(blocks, specs):
        _map_block(node, block, f"stages.{i}.{j}.", f"stage {i} block {j}: ", mapping)
    block_ids = {id(n) for b in blocks for _, n in b.walk()}
    outside = [(p, n) for p, n in root.walk() if n.kind in PARAMETRIC and id(n) not in block_ids]
    convs = [n for _, n in outside if n.kind == "conv"]
    bns = [n for _, n in outside if n.kind == "bn"]
    dense = [n for _, n in outside if n.kind == "dense"]
    want = _expected_layers(reference.tensors(reference.build(spec)))
    for layer, pool, first in (("stem.conv", convs, True), ("stem.bn", bns, True), ("head.fc", dense, False)):
        if layer not in want:
            continue
        if not pool:
            mapping.problems.append(f"no {layer.split('.')[1]} layer for the net's {layer.split('.')[0]}")
            continue
        node = pool[0] if first else pool[-1]
        for leaf, shape in want[layer].items():
            got = node.tensors.get(leaf)
            if got is None and leaf == "bias" and layer == "stem.conv":
                mapping.forced.add("no_conv_bias")
            elif got is None:
                mapping.problems.append(f"the {layer} layer has no {leaf}")
            elif tuple(got) != shape:
                mapping.problems.append(f"the {layer} layer's {leaf} has shape {tuple(got)}, the spec's {shape}")
            else:
                mapping.tensors[f"{layer}.{leaf}"] = (node, leaf)
    extra = len(convs) - 1 + len(bns) - (1 if "stem.bn" in want else 0) + len(dense) - 1
    if extra > 0:
        mapping.problems.append(f"{extra} layer(s) outside the residual blocks besides the stem's and the head's")


def strides_agree(mapping: Mapping, spec, mistakes) -> bool:
    """Whether the student's convolutions declare the strides that ``mistakes`` give the layers
    whose strides they change (True where a layer does not say, or no stride changes)."""
    planted, plain = reference.build(spec, mistakes), reference.build(spec)
    for name, layer in planted.layers.items():
        found = mapping.tensors.get(f"{name}.weight")
        if found is None or not hasattr(layer, "stride"):
            continue
        if name in plain.layers and getattr(plain.layers[name], "stride", None) == layer.stride:
            continue  # a layer the mistakes leave alone
        stride = found[0].info.get("stride")
        if stride is not None and stride != layer.stride:
            return False
    return True
