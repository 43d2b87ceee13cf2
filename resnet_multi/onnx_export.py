"""ONNX export: an inference graph for any architecture of the spec table, built from the
spec and canonical weights with the ``onnx`` package alone (no deep-learning framework).

    from resnet_multi import onnx_export
    model = onnx_export.build_model(spec, weights)           # an onnx.ModelProto, checked
    onnx_export.export("model.onnx", spec, weights)          # written atomically
    onnx_export.export_weights_file("w.safetensors", "model.onnx", fold_bn=True)

The graph is the spec's network in inference mode, node for node: Conv (explicit
symmetric pads), BatchNormalization (running statistics, the spec's epsilon), Relu,
MaxPool (3x3/2, pads 1), Add, GlobalAveragePool, Flatten, Gemm. Input ``images``
(batch, C, height, width) float32 NCHW, output ``logits`` (batch, classes); the batch and
the image side are symbolic, so one file takes any batch size and resolution.

BatchNorm stays a node of its own by default, with the canonical running statistics as
initializers. ``fold_bn=True`` folds each BN that directly follows a conv into that conv
(w * gamma / sqrt(var + eps), (b - mean) * gamma / sqrt(var + eps) + beta); a
pre-activation net's BNs that read a block's input or the head's input follow an
addition or a pooling, not a conv, and stay. The model's doc_string and its
metadata_props (``batchnorm``) say which was done.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import __version__, validate
from . import weights as canonical
from .errors import InputError
from .files import atomic_write_bytes, check_output
from .spec import ArchSpec, BlockSpec, bn_for

# The opset written by default; onnxruntime has run every opset up to it since release 1.14.
OPSET = 18
# Oldest opset whose operators here have today's semantics (Gemm, Flatten, Relu: opset 13).
MIN_OPSET = 13
INPUT, OUTPUT = "images", "logits"
# A protobuf message cannot exceed 2 GiB; weights beyond that need ONNX's external-data files.
MAX_MODEL_BYTES = 2**31 - 2**24


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the onnx package, which is not installed in this environment: "
            "pip install -e '.[onnx]' (onnx and onnxruntime)"
        ) from e
    return onnx


def check_opset(opset) -> int:
    """``opset`` if this module can write it with the installed onnx, else InputError."""
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise InputError(
            f"opset must be an integer from {MIN_OPSET} to {newest} (the newest the installed onnx "
            f"{onnx.__version__} knows), got {opset!r}; the default is {OPSET}"
        )
    return opset


class _Graph:
    """Nodes and initializers of the network, added in the order the network computes them.

    ``weight(name)`` gives a canonical tensor; each conv remembers its output, so that a BN
    reading exactly that output can be folded into it."""

    def __init__(self, weight, *, fold_bn: bool, eps: float):
        self.onnx = _onnx()
        self.weight, self.fold_bn, self.eps = weight, fold_bn, eps
        self.nodes, self.tensors = [], {}  # tensors: initializer name -> float32 array
        self.convs = {}  # conv output -> (node, layer name)
        self.bns = self.folded = 0
        self.layers = {}  # layer name of spec.layer_names() -> the tensor holding its output

    def _node(self, op, inputs, name, **attrs):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def _init(self, name, value) -> str:
        self.tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    def conv(self, layer, x, kernel, stride, pad, bias: bool) -> str:
        inputs = [x, self._init(f"{layer}.weight", self.weight(f"{layer}.weight"))]
        if bias:
            inputs.append(self._init(f"{layer}.bias", self.weight(f"{layer}.bias")))
        out = self._node(
            "Conv",
            inputs,
            layer,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,  # explicit and symmetric: never auto_pad, whose SAME pads after at stride 2
            dilations=[1, 1],
            group=1,
        )
        self.convs[out] = (self.nodes[-1], layer)
        return out

    def bn(self, layer, x) -> str:
        self.bns += 1
        gamma, beta, mean, var = (
            np.asarray(self.weight(f"{layer}.{k}"), np.float64)
            for k in ("weight", "bias", "running_mean", "running_var")
        )
        if self.fold_bn and x in self.convs:
            node, conv = self.convs.pop(x)
            scale = gamma / np.sqrt(var + self.eps)
            w = np.asarray(self.weight(f"{conv}.weight"), np.float64) * scale[:, None, None, None]
            b = np.asarray(self.weight(f"{conv}.bias"), np.float64) if len(node.input) == 3 else 0.0
            del self.tensors[f"{conv}.weight"]
            self.tensors.pop(f"{conv}.bias", None)
            # new names: these are no longer the canonical tensors
            node.input[:] = [
                node.input[0],
                self._init(f"{conv}.weight+{layer}", w),
                self._init(f"{conv}.bias+{layer}", (b - mean) * scale + beta),
            ]
            self.folded += 1
            return x
        names = [
            self._init(f"{layer}.{k}", v)
            for k, v in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var))
        ]
        return self._node("BatchNormalization", [x, *names], layer, epsilon=float(self.eps))

    def relu(self, layer, x) -> str:
        return self._node("Relu", [x], layer)

    def add(self, layer, a, b) -> str:
        return self._node("Add", [a, b], layer)

    def maxpool(self, layer, x) -> str:
        return self._node("MaxPool", [x], layer, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def block(self, prefix: str, spec: BlockSpec, x: str) -> str:
        """One residual block, as the NumPy reference's classes compute it."""
        convs = spec.convs()
        shortcut = x
        if spec.preact:
            y = p = self.relu(f"{prefix}.relu1", self.bn(f"{prefix}.bn1", x))  # the pre-activated input
            for i, (name, _, _, k, s, pad) in enumerate(convs):
                if i:
                    y = self.relu(f"{prefix}.relu{i + 1}", self.bn(f"{prefix}.{bn_for(name)}", y))
                y = self.conv(f"{prefix}.{name}", y, k, s, pad, spec.conv_bias)
            if spec.projection:
                shortcut = self._projection(prefix, spec, p)
            return self.add(f"{prefix}.add", y, shortcut)
        y = x
        for i, (name, _, _, k, s, pad) in enumerate(convs):
            y = self.bn(f"{prefix}.{bn_for(name)}", self.conv(f"{prefix}.{name}", y, k, s, pad, spec.conv_bias))
            if i < len(convs) - 1:
                y = self.relu(f"{prefix}.relu{i + 1}", y)
        if spec.projection:
            shortcut = self._projection(prefix, spec, x)
        return self.relu(f"{prefix}.relu", self.add(f"{prefix}.add", y, shortcut))

    def _projection(self, prefix, spec: BlockSpec, x) -> str:
        y = self.conv(f"{prefix}.shortcut.conv", x, 1, spec.stride, 0, spec.conv_bias)
        return self.bn(f"{prefix}.shortcut.bn", y) if spec.shortcut == "conv_bn" else y

    def network(self, spec: ArchSpec, x: str) -> str:
        y = self.conv("stem.conv", x, 7, 2, 3, spec.conv_bias)
        if not spec.preact:
            y = self.relu("stem.relu", self.bn("stem.bn", y))
        y = self.layers["stem"] = self.maxpool("stem.pool", y)
        for i, stage in enumerate(spec.stages):
            for j, block in enumerate(stage.blocks):
                y = self.block(f"stages.{i}.{j}", block, y)
            self.layers[f"stages.{i}"] = y
        if spec.preact:
            y = self.layers["head.bn"] = self.bn("head.bn", y)
            y = self.layers["head.relu"] = self.relu("head.relu", y)
        y = self.layers["head.pool"] = self._node("GlobalAveragePool", [y], "head.pool")
        y = self.layers["head.flatten"] = self._node("Flatten", [y], "head.flatten", axis=1)
        fc = [self._init(f"head.fc.{k}", self.weight(f"head.fc.{k}")) for k in ("weight", "bias")]
        y = self.layers["head.fc"] = self._node("Gemm", [y, *fc], OUTPUT, transB=1)  # weight (out, in)
        return y

    def model(self, inputs, outputs, *, opset: int, doc: str, metadata: dict):
        helper = self.onnx.helper
        size = sum(t.nbytes for t in self.tensors.values())
        if size > MAX_MODEL_BYTES:
            raise InputError(
                f"the weights take {size / 2**30:.1f} GiB, more than one ONNX file holds (protobuf's "
                f"2 GiB limit): export a narrower network (a smaller width)"
            )
        initializers = [self.onnx.numpy_helper.from_array(v, name) for name, v in self.tensors.items()]
        graph = helper.make_graph(self.nodes, "resnet_multi", inputs, outputs, initializer=initializers)
        opsets = [helper.make_opsetid("", opset)]
        # the oldest IR version that carries this opset, so that older runtimes read the file too
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            ir_version=helper.find_min_ir_version_for(opsets),
            producer_name="resnet-multi",
            producer_version=__version__,
            doc_string=doc,
        )
        helper.set_model_props(model, metadata)
        self.onnx.checker.check_model(model, full_check=True)
        return model


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _checked_weights(spec: ArchSpec, weights: dict) -> dict:
    canonical.check_weights(spec, weights)
    bad = validate.bad_tensors(weights)
    if bad:
        raise canonical.WeightsError(
            f"refusing to export weights that no trained network has, in {len(bad)} tensor(s): "
            f"{validate.describe(bad)}; export the weights of a run that did not diverge"
        )
    return weights


def build_model(
    spec: ArchSpec,
    weights: dict[str, np.ndarray],
    *,
    fold_bn: bool = False,
    opset: int = OPSET,
    preprocess: dict | None = None,
    named_outputs: bool = False,
):
    """The ONNX inference model of ``spec`` with canonical ``weights`` (checked as
    ``set_weights`` checks them), passed through ``onnx.checker.check_model``.

    ``preprocess`` (a weights file's: how images become the input) is recorded in the
    metadata. ``named_outputs=True`` also makes each layer of ``spec.layer_names()`` an
    output under that name (the shape table's walk; ``head.fc`` is ``logits``)."""
    onnx = _onnx()
    check_opset(opset)
    if not isinstance(spec, ArchSpec):
        raise InputError(f"spec must be an ArchSpec (resnet_multi.get_arch(...)), got {type(spec).__name__}")
    if not isinstance(fold_bn, bool):
        raise InputError(f"fold_bn must be True or False, got {fold_bn!r}")
    weights = _checked_weights(spec, weights)
    if preprocess is not None:
        validate.check_preprocess(preprocess, "preprocess")
    graph = _Graph(weights.__getitem__, fold_bn=fold_bn, eps=spec.bn.eps)
    images = onnx.helper.make_tensor_value_info(
        INPUT, onnx.TensorProto.FLOAT, ["batch", spec.in_channels, "height", "width"]
    )
    graph.network(spec, INPUT)
    outputs = [onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", spec.num_classes])]
    if named_outputs:
        channels = {"stem": spec.width, **{f"stages.{i}": s.out_channels for i, s in enumerate(spec.stages)}}
        for name in spec.layer_names():
            if graph.layers[name] == OUTPUT:
                continue
            if graph.layers[name] != name:  # e.g. stem: the output of stem.pool, under the layer's name
                graph.nodes.append(onnx.helper.make_node("Identity", [graph.layers[name]], [name], name=name))
            c = channels.get(name, spec.features)
            shape = ["batch", c] if name == "head.flatten" else ["batch", c, None, None]
            outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    if fold_bn:
        batchnorm = f"folded: {graph.folded} of {graph.bns} BatchNorm layers folded into the conv before them" + (
            "" if graph.folded == graph.bns else "; the others follow no conv and stay BatchNormalization nodes"
        )
    else:
        batchnorm = f"unfolded: {graph.bns} BatchNormalization nodes (inference mode, running statistics)"
    doc = (
        f"{spec.name} from resnet-multi {__version__}, inference mode. Input {INPUT!r}: "
        f"(batch, {spec.in_channels}, height, width) float32 NCHW; output {OUTPUT!r}: (batch, "
        f"{spec.num_classes}) logits, before softmax. BatchNorm {batchnorm}."
    )
    metadata = {
        "architecture": _json(asdict(spec)),
        "batchnorm": batchnorm,
        "opset": str(opset),
        "input": f"{INPUT}: float32 NCHW (batch, {spec.in_channels}, height, width)",
        "output": f"{OUTPUT}: float32 (batch, {spec.num_classes}), before softmax",
    }
    if preprocess is not None:
        metadata["preprocessing"] = _json(preprocess)
    return graph.model([images], outputs, opset=opset, doc=doc, metadata=metadata)


def block_model(spec: BlockSpec, opset: int = OPSET):
    """One residual block as an ONNX model (input ``x``, output ``y``, NCHW, any batch and
    side), with identity weights: gamma and running variance 1, everything else 0 except
    the conv kernels, which are ones. For shape checks (``Backend.residual_output_shape``)."""
    onnx = _onnx()
    shapes = {}
    for name, cin, cout, k, _, _ in spec.convs():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)
    if spec.projection:
        shapes["shortcut.conv.weight"] = (spec.out_channels, spec.in_channels, 1, 1)
        shapes["shortcut.conv.bias"] = (spec.out_channels,)
    bns = dict(spec.bn_names())
    bns["shortcut.bn"] = spec.out_channels

    def weight(name):
        layer, _, leaf = name.partition(".")[2].rpartition(".")
        if layer in bns:
            return (np.ones if leaf in ("weight", "running_var") else np.zeros)(bns[layer], np.float32)
        return np.ones(shapes[f"{layer}.{leaf}"], np.float32)

    graph = _Graph(weight, fold_bn=False, eps=spec.bn.eps)
    y = graph.block("b", spec, "x")
    graph.nodes.append(onnx.helper.make_node("Identity", [y], ["y"], name="y"))
    value = onnx.helper.make_tensor_value_info
    return graph.model(
        [value("x", onnx.TensorProto.FLOAT, ["batch", spec.in_channels, "height", "width"])],
        [value("y", onnx.TensorProto.FLOAT, ["batch", spec.out_channels, None, None])],
        opset=opset,
        doc="one residual block, identity weights",
        metadata={},
    )


def serialize(model) -> bytes:
    return model.SerializeToString()


def export(
    path,
    spec: ArchSpec,
    weights: dict[str, np.ndarray],
    *,
    fold_bn: bool = False,
    opset: int = OPSET,
    preprocess: dict | None = None,
) -> Path:
    """Write the ONNX model of :func:`build_model` to ``path`` atomically; returns the path."""
    path = check_output(path, "ONNX output file")
    model = build_model(spec, weights, fold_bn=fold_bn, opset=opset, preprocess=preprocess)
    atomic_write_bytes(path, serialize(model))
    return path


def export_weights_file(weights_path, path, *, fold_bn: bool = False, opset: int = OPSET) -> Path:
    """Export a resnet-multi weights file: its architecture and preprocessing from its
    metadata, its tensors checked against them (WeightsError for a damaged file)."""
    path = check_output(path, "ONNX output file")  # before reading anything
    check_opset(opset)
    meta = canonical.read_metadata(weights_path)
    weights = canonical.load_weights(weights_path, meta.arch)
    return export(path, meta.arch, weights, fold_bn=fold_bn, opset=opset, preprocess=meta.preprocess)


def read_architecture(model) -> ArchSpec:
    """The architecture recorded in an exported model's metadata_props."""
    props = {p.key: p.value for p in model.metadata_props}
    if "architecture" not in props:
        raise InputError("this ONNX model records no architecture: it was not exported by resnet-multi")
    return validate.arch_from_dict(validate.parse_json(props["architecture"], "architecture"), "architecture")
