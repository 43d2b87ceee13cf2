"""ONNX export (resnet_multi.onnx_export) and the onnxruntime backend, against the NumPy
reference (float64). Narrow nets (width 8) on 32x32 images keep each test quick on 2 cores;
the parity suite runs the onnxruntime backend at full width where it is selected
(tests/cases.py INFERENCE_CASES). The second path, PyTorch's own exporter, runs where torch is.
"""

import io
import json
import warnings
from dataclasses import asdict

import numpy as np
import pytest
from helpers import random_weights, rel_err

from resnet_multi import cli, get_arch
from resnet_multi import numpy as rn
from resnet_multi.errors import InputError
from resnet_multi.weights import WeightsError, save_weights, tensor_specs

onnx = pytest.importorskip("onnx", reason="onnx is not installed here: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed here: pip install -e '.[onnx]'")

from resnet_multi import onnx_export  # noqa: E402  (after the skips: it needs onnx)
from resnet_multi.backend import load_backend  # noqa: E402

SMALL = dict(width=8, in_channels=1, num_classes=10)
ARCHS = ["d2l-resnet18", "resnet18", "resnet50", "preact-resnet18", "preact-resnet50"]
# the spec's other knobs, on the variants that use them
VARIANTS = {
    "plain": {},
    "bias-convbn-v1": dict(conv_bias=True, shortcut="conv_bn", stride_on="1x1", bn=get_arch("resnet18").bn),
}
TOLERANCE = 1e-5  # max |a - r| / max |r|; float32 through these nets: ~1e-6


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(spec, weights, x):
    net = rn.Net(spec)
    net.load_state(weights)
    return net.eval().forward(x.astype(np.float64))


def _batch(spec, n, size=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, spec.in_channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fold_bn", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_reference(arch, fold_bn, variant):
    spec = get_arch(arch, **SMALL, **VARIANTS[variant])
    weights = random_weights(spec, seed=3)
    x = _batch(spec, 3)
    (got,) = _session(onnx_export.build_model(spec, weights, fold_bn=fold_bn)).run(None, {"images": x})
    want = _reference(spec, weights, x)
    assert got.dtype == np.float32 and got.shape == want.shape == (3, 10)
    assert rel_err(got, want) <= TOLERANCE


def test_bn_eps_comes_from_the_spec():
    """A wide eps changes the output visibly; the graph must use the spec's, folded or not."""
    spec = get_arch("resnet18", **SMALL, bn=get_arch("resnet18").bn.__class__(eps=1e-2))
    weights = random_weights(spec, seed=4)
    x = _batch(spec, 2)
    want = _reference(spec, weights, x)
    for fold in (False, True):
        model = onnx_export.build_model(spec, weights, fold_bn=fold)
        assert rel_err(_session(model).run(None, {"images": x})[0], want) <= TOLERANCE
    default = _reference(get_arch("resnet18", **SMALL), weights, x)
    assert rel_err(default, want) > 1e-3  # the eps matters at this size, so the check above can fail


def test_dynamic_batch_and_image_size():
    spec = get_arch("resnet18", **SMALL)
    weights = random_weights(spec, seed=5)
    model = onnx_export.build_model(spec, weights)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    session = _session(model)
    for n, size in ((1, 32), (5, 32), (2, 48)):
        x = _batch(spec, n, size, seed=n)
        (got,) = session.run(None, {"images": x})
        assert got.shape == (n, 10)
        assert rel_err(got, _reference(spec, weights, x)) <= TOLERANCE


def _ops(model):
    return [node.op_type for node in model.graph.node]


@pytest.mark.parametrize("arch", ["resnet50", "preact-resnet18"])
def test_folding_removes_the_batchnorms_that_follow_a_conv(arch):
    spec = get_arch(arch, **SMALL)
    weights = random_weights(spec, seed=6)
    n_bn = sum(t.name.endswith(".running_var") for t in tensor_specs(spec))
    plain, folded = (onnx_export.build_model(spec, weights, fold_bn=f) for f in (False, True))
    assert _ops(plain).count("BatchNormalization") == n_bn
    # post-activation: every BN follows a conv; pre-activation: each block's bn1 reads the
    # block's input and head.bn the last block's sum, so those stay
    blocks = sum(len(s.blocks) for s in spec.stages)
    assert _ops(folded).count("BatchNormalization") == (blocks + 1 if spec.preact else 0)
    assert _ops(folded).count("Conv") == _ops(plain).count("Conv")
    props = {p.key: p.value for p in folded.metadata_props}
    assert props["batchnorm"].startswith("folded") and "folded" in folded.doc_string
    assert {p.key: p.value for p in plain.metadata_props}["batchnorm"].startswith("unfolded")
    assert "unfolded" in plain.doc_string
    x = _batch(spec, 2)
    a, b = (_session(m).run(None, {"images": x})[0] for m in (plain, folded))
    assert rel_err(b, a) <= TOLERANCE


def test_checker_opset_and_metadata():
    spec = get_arch("preact-resnet50", **SMALL)
    preprocess = {"resize": 32, "scale": 1 / 255, "mean": 0.5, "std": 0.25}
    model = onnx_export.build_model(spec, random_weights(spec), preprocess=preprocess)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.OPSET)]
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["opset"] == str(onnx_export.OPSET)
    assert json.loads(props["architecture"]) == json.loads(json.dumps(asdict(spec)))
    assert onnx_export.read_architecture(model) == spec
    assert json.loads(props["preprocessing"]) == preprocess
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    assert set(_ops(model)) == {
        "Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "Add",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    }
    # the canonical tensors are the initializers, by name
    assert {t.name for t in model.graph.initializer} == {t.name for t in tensor_specs(spec)}
    older = onnx_export.build_model(spec, random_weights(spec), opset=onnx_export.MIN_OPSET)
    assert older.opset_import[0].version == onnx_export.MIN_OPSET
    for bad in (onnx_export.MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1, "18", True):
        with pytest.raises(InputError, match="opset must be an integer"):
            onnx_export.build_model(spec, random_weights(spec), opset=bad)


def test_bad_weights_are_refused():
    spec = get_arch("resnet18", **SMALL)
    weights = random_weights(spec)
    with pytest.raises(WeightsError, match=r"mis-shaped: head\.fc\.weight"):
        onnx_export.build_model(spec, {**weights, "head.fc.weight": weights["head.fc.weight"].T.copy()})
    with pytest.raises(WeightsError, match=r"missing: .*stem\.bn\.running_var"):
        onnx_export.build_model(spec, {k: v for k, v in weights.items() if k != "stem.bn.running_var"})
    nan = weights["stem.conv.weight"].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(WeightsError, match="no trained network has"):
        onnx_export.build_model(spec, {**weights, "stem.conv.weight": nan})


# ---- the command --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    spec = get_arch("resnet18", **SMALL)
    path = tmp_path_factory.mktemp("onnx") / "w.safetensors"
    preprocess = {"resize": None, "scale": 1 / 255, "mean": 0.0, "std": 1.0}
    return save_weights(path, random_weights(spec, seed=8), spec, preprocess=preprocess), spec


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_export_command(weights_file, tmp_path, capsys, fold):
    path, spec = weights_file
    out = tmp_path / "model.onnx"
    argv = ["export", "--weights", str(path), "--format", "onnx", "--output", str(out)]
    code, stdout, err = _run(capsys, *argv, *(["--fold-bn"] if fold else []))
    assert code == 0, err
    assert f"opset {onnx_export.OPSET}" in stdout and str(out) in stdout
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert onnx_export.read_architecture(model) == spec and "preprocessing" in props
    assert props["batchnorm"].startswith("folded" if fold else "unfolded")
    backend = load_backend("numpy")
    ref = backend.build(spec)
    backend.load_weights(ref, path)
    x = _batch(spec, 4)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert rel_err(got, backend.forward64(ref, x)) <= TOLERANCE
    code, _, err = _run(capsys, *argv[:-1], str(tmp_path / "opset13.onnx"), "--opset", "13")
    assert code == 0, err
    assert onnx.load(str(tmp_path / "opset13.onnx")).opset_import[0].version == 13


def test_export_command_errors(weights_file, tmp_path, capsys):
    path, _ = weights_file
    base = ["export", "--format", "onnx"]
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = _run(capsys, *base, "--weights", str(corrupt), "--output", str(tmp_path / "a.onnx"))
    assert code == 1 and "truncated or corrupt" in err
    assert not (tmp_path / "a.onnx").exists()
    code, _, err = _run(capsys, *base, "--weights", str(tmp_path / "none.safetensors"), "--output", "a.onnx")
    assert code == 1 and "does not exist" in err
    code, _, err = _run(capsys, *base, "--weights", str(path), "--output", str(tmp_path), "--opset", "13")
    assert code == 2 and "is a directory" in err
    code, _, err = _run(capsys, *base, "--weights", str(path), "--output", str(tmp_path / "b.onnx"), "--opset", "9")
    assert code == 2 and "opset must be an integer from 13" in err
    code, _, err = _run(capsys, "export", "--format", "tflite", "--weights", str(path), "--output", "c")
    assert code == 2 and "invalid choice: 'tflite'" in err


# ---- the onnxruntime backend --------------------------------------------------------------
@pytest.fixture(scope="module")
def backend():
    return load_backend("onnxruntime")


def test_backend_bad_input_gets_a_clear_error(backend):
    model = backend.build("d2l-resnet18", width=8)
    x = np.zeros((2, 1, 32, 32), np.float32)
    with pytest.raises(InputError, match="4-d NCHW batch"):
        backend.forward(model, x[0])
    with pytest.raises(InputError, match=r"expects 1 input channel\(s\), got 3"):
        backend.forward(model, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="expected float32 input, got float64; convert with x.astype"):
        backend.forward(model, x.astype(np.float64))
    with pytest.raises(InputError, match="NaN or Inf"):
        backend.forward(model, np.full_like(x, np.nan))
    with pytest.raises(InputError, match="not available"):
        backend.build("d2l-resnet18", device="cuda:0")
    assert backend.forward(model, x).shape == (2, 10)


def test_backend_refuses_training_and_names_another_backend(backend, capsys, tmp_path):
    model = backend.build("d2l-resnet18", width=8)
    x, y = np.zeros((2, 1, 32, 32), np.float32), np.array([0, 1])
    calls = [
        lambda: backend.forward(model, x, training=True),
        lambda: backend.named_outputs(model, x, training=True),
        lambda: backend.loss_and_grads(model, x, y),
        lambda: backend.sgd_step(model, x, y, 0.1),
        lambda: backend.configure_training(model),
    ]
    for call in calls:
        with pytest.raises(InputError, match="onnxruntime is inference-only.*--backend torch"):
            call()
    code, _, err = _run(capsys, "train", "--backend", "onnxruntime", "--preset", "quick", "--out", str(tmp_path / "r"))
    assert code == 2 and "inference-only" in err


def test_backend_follows_set_weights(backend):
    """A session is built from the weights set last: setting others changes the logits."""
    spec = get_arch("preact-resnet18", **SMALL)
    model = backend.build(spec)
    x = _batch(spec, 2)
    for seed in (1, 2):
        weights = random_weights(spec, seed=seed)
        backend.set_weights(model, weights)
        assert rel_err(backend.forward(model, x), _reference(spec, weights, x)) <= TOLERANCE
    assert backend.count_parameters(model) == rn.BACKEND.count_parameters(rn.BACKEND.build(spec))


def test_evaluate_and_bench_commands(backend, weights_file, capsys):
    path, _ = weights_file
    common = ["--weights", str(path), "--subset", "--limit", "64", "--resize", "0"]
    code, numpy_out, err = _run(capsys, "evaluate", "--backend", "numpy", *common)
    assert code == 0, err
    code, ort_out, err = _run(capsys, "evaluate", "--backend", "onnxruntime", *common)
    assert code == 0, err
    assert ort_out.split(",")[0] == numpy_out.split(",")[0]  # "test acc X on 64 images (..."
    assert ort_out.rstrip().endswith("on onnxruntime (cpu)")
    from resnet_multi import bench

    result = bench.run(backend, size=32, batch_size=4, steps=2, warmup=0, width=8)
    bench.check_result(result)
    assert set(result["models"]["package"]) == {"idiom", "inference"}
    assert "inference-only" in result["train_na"] and result["ratio"] is None
    table = bench.format_table(result)
    assert "training n/a: onnxruntime is inference-only" in table and "\ntrain " not in table
    with pytest.raises(InputError, match="must be absent with train_na"):
        bench.check_result({**result, "models": {"package": {**result["models"]["package"], "train": {}}}})


# ---- its column of the conventions table, against the installed onnx and onnxruntime ------
X = np.arange(1, 9, dtype=np.float32).reshape(2, 1, 2, 2)  # mean 4.5, biased variance 5.25, unbiased 6
IMAGE = (1 + np.arange(8)[:, None] * 8 + np.arange(8)[None, :]).astype(np.float32)  # value = 1 + 8r + c


def _one_node_model(node, inputs, outputs, initializers):
    helper = onnx.helper
    opsets = [helper.make_opsetid("", onnx_export.OPSET)]
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[onnx.numpy_helper.from_array(v, n) for n, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def test_conventions_are_onnxruntimes_real_defaults():
    import ast
    from pathlib import Path

    from resnet_multi import conventions
    from resnet_multi import onnxruntime as module

    declared = conventions.declared("onnxruntime")
    assert declared == module.CONVENTIONS
    bn = onnx.defs.get_schema("BatchNormalization")
    defaults = {k: a.default_value for k, a in bn.attributes.items()}
    assert declared["bn_eps"]["eps"] == pytest.approx(defaults["epsilon"].f)
    assert declared["bn_momentum"]["momentum"] == pytest.approx(defaults["momentum"].f)
    assert declared["mode_switch"]["starts"] == ("training" if defaults["training_mode"].i else "inference")
    assert declared["param_names"]["bn"] == [i.name for i in bn.inputs][1:]
    conv_inputs = {i.name: i.option for i in onnx.defs.get_schema("Conv").inputs}
    assert declared["init"]["conv_bias"] == (conv_inputs["B"] != onnx.defs.OpSchema.FormalParameterOption.Optional)
    assert declared["init"]["conv_weight"] is None  # a graph carries its weights
    # one training-mode BatchNormalization step in onnxruntime, from running mean 0, variance 1
    node = onnx.helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    stats = {"g": np.ones(1, np.float32), "b": np.zeros(1, np.float32), "m": np.zeros(1, np.float32)}
    model = _one_node_model(
        node, [("x", X.shape)], [("y", X.shape), ("rm", [1]), ("rv", [1])], {**stats, "v": np.ones(1, np.float32)}
    )
    _, mean, var = _session(model).run(None, {"x": X})
    weight = float(mean[0]) / 4.5  # the batch's share
    keeps = "new" if np.isclose(weight, defaults["momentum"].f) else "old"
    fed = (float(var[0]) - (1 - weight)) / weight
    assert (declared["bn_momentum"]["keeps"], declared["bn_running_var"]["variance"]) == (
        keeps,
        "biased" if np.isclose(fed, 5.25) else "unbiased" if np.isclose(fed, 6.0) else f"neither ({fed})",
    )
    # SAME_UPPER at stride 2: the kernel's bottom-right tap reads IMAGE[6 - p, 6 - p] at output (0, 0)
    kernel = np.zeros((1, 1, 7, 7), np.float32)
    kernel[0, 0, 6, 6] = 1
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")
    model = _one_node_model(node, [("x", [1, 1, 8, 8])], [("y", [1, 1, 4, 4])], {"w": kernel})
    corner = float(_session(model).run(None, {"x": IMAGE[None, None]})[0][0, 0, 0, 0])
    before = 6 - int(round((corner - 1) / 9))
    assert declared["padding"]["pads"] == [before, 5 - before]
    # NCHW data, OIHW kernels: a 2 -> 3 channel 5x5 conv on 8x8 gives 4x4; Gemm(transB) takes (out, in)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"])
    model = _one_node_model(
        node, [("x", [1, 2, 8, 8])], [("y", [1, 3, 4, 4])], {"w": np.ones((3, 2, 5, 5), np.float32)}
    )
    assert _session(model).run(None, {"x": np.ones((1, 2, 8, 8), np.float32)})[0].shape == (1, 3, 4, 4)
    assert (declared["data_layout"]["layout"], declared["kernel_layout"]["layout"]) == ("NCHW", "OIHW")
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    model = _one_node_model(node, [("x", [1, 2])], [("y", [1, 3])], {"w": np.ones((3, 2), np.float32)})
    assert _session(model).run(None, {"x": np.ones((1, 2), np.float32)})[0].shape == (1, 3)
    assert declared["dense_layout"]["layout"] == "(out, in)"
    # the literal is read without importing onnxruntime
    assert "CONVENTIONS" in {
        t.id for n in ast.parse(Path(module.__file__).read_text()).body if isinstance(n, ast.Assign) for t in n.targets
    }


# ---- the second path: PyTorch's own exporter ------------------------------------------------
@pytest.mark.parametrize("arch", ["d2l-resnet18", "preact-resnet50"])
def test_torch_export_matches_this_export(arch):
    """torch.onnx.export of the torch backend's model (the TorchScript exporter, dynamo=False:
    the dynamo one needs onnxscript) and this module's graph, both run by onnxruntime."""
    torch = pytest.importorskip("torch", reason="torch is not installed here: tox -e torch runs this")
    tb = load_backend("torch")
    model = tb.build(arch, **SMALL)
    weights = random_weights(model.spec, seed=9)
    tb.set_weights(model, weights)
    buffer = io.BytesIO()
    module = model.module.eval()
    with warnings.catch_warnings():  # the tracer's note on the forward pass's shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 1, 32, 32),),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=onnx_export.OPSET,
        )
    theirs = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    ours = _session(onnx_export.build_model(model.spec, weights))
    for n in (1, 3):  # another batch size than the traced one
        x = _batch(model.spec, n, seed=n)
        a, b = theirs.run(None, {"images": x})[0], ours.run(None, {"images": x})[0]
        assert rel_err(a, b) <= TOLERANCE
        assert rel_err(b, _reference(model.spec, weights, x)) <= TOLERANCE
