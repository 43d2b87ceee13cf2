"""Each framework's own ONNX exporter as a second path beside resnet_multi.onnx_export:
tf2onnx (tox -e tf), paddle2onnx (tox -e paddle) and jax2onnx (tox -e jax); torch.onnx is in
tests/test_onnx.py. The backend's model gets the canonical weights, the framework's exporter
writes its graph, and ONNX Runtime runs it beside this package's graph and the NumPy
reference, at batch sizes other than the traced one. Each pinned exporter's default opset and
its batch axis are asserted, as docs/onnx.md states them.
"""

import numpy as np
import pytest
from helpers import random_weights, rel_err

pytest.importorskip("onnx", reason="onnx is not installed here: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed here: pip install -e '.[onnx]'")

from test_onnx import SMALL, TOLERANCE, _batch, _reference, _session  # noqa: E402  (after the skips)

from resnet_multi import onnx_export  # noqa: E402
from resnet_multi.backend import load_backend  # noqa: E402

ARCHS = ["d2l-resnet18", "resnet50"]  # basic blocks with 1x1-conv shortcuts; bottlenecks with projections
TRACED = 2  # the batch size a static export would fix; the comparisons run the others
BATCHES = (1, 3)


def _compare(model, spec, weights, *, nhwc):
    """The exporter's graph, this package's graph and the NumPy reference on batches of
    BATCHES images; NHWC graphs (TensorFlow's, JAX's) get the same images transposed."""
    theirs, ours = _session(model), _session(onnx_export.build_model(spec, weights))
    (name,) = [i.name for i in theirs.get_inputs()]
    for n in BATCHES:
        x = _batch(spec, n, seed=n)
        (a,) = theirs.run(None, {name: np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x})
        (b,) = ours.run(None, {"images": x})
        want = _reference(spec, weights, x)
        assert a.dtype == np.float32 and a.shape == b.shape == (n, spec.num_classes)
        assert rel_err(a, b) <= TOLERANCE
        assert rel_err(a, want) <= TOLERANCE and rel_err(b, want) <= TOLERANCE


def _graph_facts(model, record_property):
    """The opsets the graph imports and its input's dims (a name where the axis is dynamic)."""
    opsets = {o.domain: o.version for o in model.opset_import}
    (images,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    record_property("opsets", opsets)
    record_property("input_dims", dims)
    return opsets, dims


# ---- tf2onnx ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tf2onnx_matches_this_export(arch, record_property):
    """tf2onnx.convert.from_function on the Keras model's inference call (a subclassed
    Keras 3 model: from_keras expects tf.keras' functional attributes)."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed here: tox -e tf runs this")
    tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx is not installed here: tox -e tf installs it")
    backend = load_backend("tf")
    model = backend.build(arch, **SMALL)
    weights = random_weights(model.spec, seed=9)
    backend.set_weights(model, weights)
    signature = [tf.TensorSpec((None, 32, 32, model.spec.in_channels), tf.float32, name="images")]
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda x: model.module(x, training=False)), input_signature=signature
    )
    opsets, dims = _graph_facts(proto, record_property)
    assert opsets[""] == 15  # tf2onnx 1.17's default (not passed here)
    assert isinstance(dims[0], str) and dims[1:] == [32, 32, model.spec.in_channels]
    _compare(proto, model.spec, weights, nhwc=True)


# ---- paddle2onnx -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_paddle2onnx_matches_this_export(arch, tmp_path, monkeypatch, record_property):
    """paddle.onnx.export (paddle2onnx.dygraph2onnx: paddle.jit.save, then the conversion)
    with a dynamic batch."""
    paddle = pytest.importorskip("paddle", reason="paddlepaddle is not installed here: tox -e paddle runs this")
    pytest.importorskip("paddle2onnx", reason="paddle2onnx is not installed here: tox -e paddle installs it")
    # paddle2onnx folds constants with Polygraphy, which pip-installs onnx-graphsurgeon
    # during the export when it is missing; tox installs it beforehand
    pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed here: tox -e paddle has it")
    import onnx

    backend = load_backend("paddle")
    model = backend.build(arch, **SMALL)
    weights = random_weights(model.spec, seed=9)
    backend.set_weights(model, weights)
    # to_static hands the checks a batch of -1 (a block's) or a tensor (the net's input)
    layer = model.module
    layer.eval()
    spec = [paddle.static.InputSpec([None, model.spec.in_channels, 32, 32], "float32", name="images")]
    path = tmp_path / "model"
    paddle.onnx.export(layer, str(path), input_spec=spec)
    # paddle2onnx logs a failed conversion and returns without raising
    assert (tmp_path / "model.onnx").is_file(), "paddle2onnx wrote no model.onnx (its error is in the log above)"
    proto = onnx.load(str(tmp_path / "model.onnx"))
    opsets, dims = _graph_facts(proto, record_property)
    assert opsets == {"": 9}  # paddle.onnx.export's default opset_version (not passed here)
    assert isinstance(dims[0], str) and dims[1:] == [model.spec.in_channels, 32, 32]
    _compare(proto, model.spec, weights, nhwc=False)


# ---- jax2onnx --------------------------------------------------------------------------------
def _pool_jax2onnx_takes(nnx, jnp):
    """The backend's max pool (3x3, stride 2, padded 1 with -inf) written as jax2onnx's
    flax.nnx.max_pool shim takes it: keyword window_shape and padding "VALID" after an
    explicit -inf pad. The backend passes the window positionally and its padding as pairs,
    which the shim refuses; with the shim off, jax2onnx's reduce_window_max gives a MaxPool
    with a 4-d window over NHWC, which ONNX Runtime refuses ("Unsupported pooling size")."""

    def max_pool(x, window=3, strides=2, padding=1):
        pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        return nnx.max_pool(
            jnp.pad(x, pad, constant_values=-jnp.inf),
            window_shape=(window, window),
            strides=(strides, strides),
            padding="VALID",
        )

    return max_pool


# jax2onnx's graph passes left out per architecture. With remove_redundant_transpose_pairs,
# a bottleneck net's graph adds an NCHW tensor to an NHWC one (ONNX Runtime: "Node (node_Add_59)
# Op (Add) [ShapeInferenceError] Incompatible dimensions"), batch static or dynamic; d2l-resnet18
# keeps every pass.
JAX2ONNX_PASSES_LEFT_OUT = {"d2l-resnet18": (), "resnet50": ("remove_redundant_transpose_pairs",)}


@pytest.mark.parametrize("arch", ARCHS)
def test_jax2onnx_matches_this_export(arch, monkeypatch, record_property):
    """jax2onnx.to_onnx on the Flax NNX module's inference call, with a symbolic batch "B"."""
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed here: tox -e jax runs this")
    jax2onnx = pytest.importorskip("jax2onnx", reason="jax2onnx is not installed here: tox -e jax installs it")
    from flax import nnx
    from jax2onnx.converter import ir_optimizations

    from resnet_multi import jax as rj

    passes = ir_optimizations._OPTIMIZER_PASSES
    left_out = JAX2ONNX_PASSES_LEFT_OUT[arch]
    assert set(left_out) <= {p.name for p in passes}
    monkeypatch.setattr(ir_optimizations, "_OPTIMIZER_PASSES", tuple(p for p in passes if p.name not in left_out))

    backend = load_backend("jax")
    model = backend.build(arch, **SMALL)
    weights = random_weights(model.spec, seed=9)
    backend.set_weights(model, weights)
    pool = _pool_jax2onnx_takes(nnx, jnp)
    x = jnp.asarray(_batch(model.spec, 2).transpose(0, 2, 3, 1) * 3)
    assert np.array_equal(np.asarray(pool(x)), np.asarray(rj.max_pool(x, 3, 2, 1)))  # the same function
    monkeypatch.setattr(rj, "max_pool", pool)
    # int() of the symbolic batch raises InconclusiveDimensionOperation in the checks
    proto = jax2onnx.to_onnx(
        model.module, [("B", 32, 32, model.spec.in_channels)], input_names=["images"], output_names=["logits"]
    )
    opsets, dims = _graph_facts(proto, record_property)
    assert opsets[""] == 23  # jax2onnx 0.17's default (not passed here)
    assert dims == ["B", 32, 32, model.spec.in_channels]
    _compare(proto, model.spec, weights, nhwc=True)
