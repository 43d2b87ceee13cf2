"""Traces, the compare command, and the conventions table.

Tiny nets (width 8) on a few bundled images keep this quick on 2 cores. The
framework-specific probes at the bottom read each installed framework's real
defaults, so that the conventions every backend module declares cannot drift.
"""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cases import BACKEND_CASES, INFERENCE_CASES
from helpers import random_weights, rel_err

from resnet_multi import cli, compare, conventions, frameworks, trace
from resnet_multi.data import Dataset, load_fashion_mnist

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "mxnet", "paddle", "mindspore", "jax", "flax")
STEPS, BATCH = 3, 8


@pytest.fixture(scope="module")
def tiny_data():
    d = load_fashion_mnist(subset=True)
    return Dataset(
        d.train_images[:20], d.train_labels[:20], d.test_images[:8], d.test_labels[:8], "bundled subset, first 20"
    )


def _trace(backend, device, data, path, *, seed=0, steps=STEPS, full_grads=False):
    model = backend.build("d2l-resnet18", device=device, width=8, seed=seed)
    batches = trace.training_batches(data, steps=steps, batch_size=BATCH, seed=seed, resize=32)
    tensors, meta = trace.record(
        backend,
        model,
        batches,
        lr=0.05,
        activation_images=4,
        full_grads=full_grads,
        recipe={"batch_size": BATCH, "resize": 32, "seed": seed},
    )
    return trace.save(path, tensors, meta)


@pytest.fixture(scope="module")
def numpy_trace(tiny_data, tmp_path_factory, oracle):
    return _trace(oracle, "cpu", tiny_data, tmp_path_factory.mktemp("traces") / "numpy.safetensors")


def _relabelled(path, out, backend, *, perturb=0.0):
    """A copy of a trace that claims another backend, its logits scaled by 1 + perturb."""
    t = trace.load(path)
    tensors = dict(t.tensors)
    if perturb:
        tensors["step.0.logits"] = (tensors["step.0.logits"] * (1 + perturb)).astype(np.float32)
    return trace.save(out, tensors, {**t.meta, "backend": backend})


# ---- the seam hook -------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_named_outputs_match_reference(backend, device, training, oracle):
    model, ref = backend.build("d2l-resnet18", device=device, width=8), oracle.build("d2l-resnet18", width=8)
    weights = random_weights(model.spec, seed=5)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    x = np.random.default_rng(2).standard_normal((4, 1, 32, 32)).astype(np.float32)
    got = backend.named_outputs(model, x, training=training)
    want = dict(ref.module.train(training).layer_outputs(x.astype(np.float64)))
    assert list(got) == model.spec.layer_names()
    for name, value in got.items():
        assert value.dtype == np.float32 and value.shape == want[name].shape, name
        # the parity suite's tolerances: 1e-4 in inference, 1e-3 in training mode
        assert rel_err(value, want[name]) <= (1e-3 if training else 1e-4), name


# ---- trace -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_trace_step_is_the_training_loop_step(backend, device, tiny_data, tmp_path):
    """The traced model moves only by sgd_step: the same losses, logits and final weights,
    bit for bit, as sgd_step alone on the same batches from the same start."""
    path = _trace(backend, device, tiny_data, tmp_path / "t.safetensors", full_grads=True)
    t = trace.load(path)
    model = backend.build("d2l-resnet18", device=device, width=8, seed=0)
    first = backend.build("d2l-resnet18", device=device, width=8, seed=0)
    batches = list(trace.training_batches(tiny_data, steps=STEPS, batch_size=BATCH, seed=0, resize=32))
    # 20 images in batches of 8: the third step is the first epoch's last, partial batch
    assert [len(y) for _, y in batches] == [8, 8, 4]
    grads0 = backend.loss_and_grads(first, *batches[0]).grads
    for k, (x, y) in enumerate(batches):
        loss, logits = backend.sgd_step(model, x, y, 0.05)
        assert t.tensors["loss"][k] == loss, k
        np.testing.assert_array_equal(t.logits(k), logits)
        np.testing.assert_array_equal(t.tensors[f"step.{k}.labels"], y)
    final = backend.get_weights(model)
    for name in t.meta["bn_stats"]:
        np.testing.assert_array_equal(t.tensors[f"bn.{name}"][-1], final[name], err_msg=name)
    for name in t.meta["params"]:
        np.testing.assert_array_equal(t.tensors[f"grad.{name}"], grads0[name].astype(np.float32), err_msg=name)
    np.testing.assert_allclose(
        t.tensors["grad_norm"][0], [np.linalg.norm(grads0[p]) for p in t.meta["params"]], rtol=1e-6
    )
    assert t.meta["twin_loss_gap"] <= 1e-6 * abs(t.tensors["loss"][0])
    assert t.meta["threads"]["env"].keys() == set(trace.THREAD_VARS)
    assert t.meta["backend"] == backend.name and t.meta["recipe"]["steps"] == STEPS
    assert t.activation(0, "stem").shape == (4, 8, 8, 8)


def _without_the_reference(cases):
    """The cases other than the NumPy reference's, or one that skips saying why there are none."""
    return [c for c in cases if not c.id.startswith("numpy-")] or [
        pytest.param(
            None,
            None,
            id="no-framework",
            marks=pytest.mark.skip(
                reason="only the numpy reference is selected here; each framework's environment runs this against it"
            ),
        )
    ]


FRAMEWORK_CASES = _without_the_reference(BACKEND_CASES)


@pytest.mark.parametrize("backend, device", FRAMEWORK_CASES)
def test_trace_agrees_with_numpy_on_step_0(backend, device, tiny_data, numpy_trace, tmp_path):
    path = _trace(backend, device, tiny_data, tmp_path / "t.safetensors")
    result = compare.compare([numpy_trace, path])
    (diffs,) = result.diffs.values()
    step0 = diffs[0].values
    assert set(step0) >= {"stem", "stages.3", "head.pool", "logits", "loss", "grad norms", "bn stats"}
    for quantity, value in step0.items():
        assert value <= 1e-3, quantity  # the parity suite's training-mode tolerance


# ---- inference traces ------------------------------------------------------------------------
def _inference_trace(backend, device, data, path, weights=None):
    model = backend.build("d2l-resnet18", device=device, width=8)
    backend.set_weights(model, weights if weights is not None else random_weights(model.spec, seed=5))
    batches = trace.training_batches(data, steps=2, batch_size=BATCH, seed=0, resize=32)
    tensors, meta = trace.record_inference(
        backend, model, batches, activation_images=4, recipe={"batch_size": BATCH, "resize": 32, "seed": 0}
    )
    return trace.save(path, tensors, meta)


@pytest.fixture(scope="module")
def numpy_inference_trace(tiny_data, tmp_path_factory, oracle):
    return _inference_trace(oracle, "cpu", tiny_data, tmp_path_factory.mktemp("traces") / "numpy-inference.safetensors")


INFERENCE_RUNTIME_CASES = _without_the_reference(INFERENCE_CASES)


@pytest.mark.parametrize("backend, device", INFERENCE_RUNTIME_CASES)
def test_inference_traces_agree_with_numpy(backend, device, tiny_data, numpy_inference_trace, tmp_path):
    """Every backend, inference-only ones (onnxruntime) included, through the same batches in
    inference mode from weights with random BN statistics: the parity suite's inference
    tolerance on logits and stage outputs, and nothing else recorded."""
    path = _inference_trace(backend, device, tiny_data, tmp_path / "t.safetensors")
    result = compare.compare([numpy_inference_trace, path])
    (diffs,) = result.diffs.values()
    assert len(diffs) == 2
    for d in diffs:
        assert set(d.values) == {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.pool", "logits", "loss"}
        for quantity, value in d.values.items():
            assert value <= 1e-4, (d.step, quantity, value)
    t = trace.load(path)
    assert t.mode == "inference" and "grad_norm" not in t.tensors and "lr" not in t.meta["recipe"]
    assert not any(k.startswith("bn.") for k in t.tensors)


def test_inference_traces_tell_weights_apart(tiny_data, numpy_inference_trace, oracle, tmp_path, capsys):
    """A wrong running variance changes every inference output: the comparison shows it."""
    model = oracle.build("d2l-resnet18", width=8)
    weights = random_weights(model.spec, seed=5)
    weights["stem.bn.running_var"] = weights["stem.bn.running_var"] * np.float32(1.5)
    off = _inference_trace(oracle, "cpu", tiny_data, tmp_path / "off.safetensors", weights)
    off = _relabelled(off, tmp_path / "off2.safetensors", "off")
    with pytest.raises(trace.TraceError, match="different initial weights"):
        compare.compare([numpy_inference_trace, off])


def test_compare_refuses_a_mix_of_training_and_inference_traces(numpy_trace, numpy_inference_trace, tmp_path):
    copy = _relabelled(numpy_inference_trace, tmp_path / "copy.safetensors", "copy")
    with pytest.raises(trace.TraceError, match="is an inference trace and .* a training one"):
        compare.compare([numpy_trace, copy])
    # an inference trace carries no gradients: one that claims to be a training trace is refused
    t = trace.load(numpy_inference_trace)
    bad = trace.save(
        tmp_path / "bad.safetensors",
        t.tensors,
        {**t.meta, "mode": "training", "recipe": {**t.meta["recipe"], "lr": 0.05}},
    )
    with pytest.raises(trace.TraceError, match="missing"):
        trace.load(bad)


def test_trace_command_inference(tmp_path, capsys):
    out = tmp_path / "inf.safetensors"
    argv = ["trace", "--backend", "numpy", "--inference", "--steps", "1", "--width", "4", "--batch-size", "4"]
    assert cli.main([*argv, "--limit", "8", "--out", str(out)]) == 0
    assert "batches in inference mode" in capsys.readouterr().err
    assert trace.load(out).mode == "inference"
    assert cli.main([*argv, "--lr", "0.1", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "takes no training step" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# ---- compare ---------------------------------------------------------------------------------
def test_compare_identical_and_perturbed(numpy_trace, tmp_path, capsys):
    same = _relabelled(numpy_trace, tmp_path / "same.safetensors", "copy")
    off = _relabelled(numpy_trace, tmp_path / "off.safetensors", "off", perturb=0.01)
    result = compare.compare([numpy_trace, same])
    assert result.worst() == 0.0 and result.reference.name == "numpy"
    assert cli.main(["compare", str(numpy_trace), str(same), "--tolerance", "1e-12", "--no-plot"]) == 0
    capsys.readouterr()
    plot = tmp_path / "c.png"
    assert cli.main(["compare", str(numpy_trace), str(off), "--tolerance", "1e-3", "--plot", str(plot)]) == 1
    out, err = capsys.readouterr()
    assert "first difference above 0.001: step 0, logits (1.00e-02)" in out
    assert "exceeds --tolerance" in err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without --tolerance a difference is reported, not an error
    assert cli.main(["compare", str(numpy_trace), str(off), "--no-plot"]) == 0


def test_compare_refuses_traces_of_different_runs(tiny_data, numpy_trace, oracle, tmp_path, capsys):
    other = _trace(oracle, "cpu", tiny_data, tmp_path / "seed1.safetensors", seed=1, steps=1)
    other = _relabelled(other, tmp_path / "other.safetensors", "other")
    assert cli.main(["compare", str(numpy_trace), str(other), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "do not trace the same run" in err and "different initial weights" in err and "different batches" in err
    assert cli.main(["compare", str(numpy_trace), "--no-plot"]) == 1
    assert "at least two traces" in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    oracle.save_weights(oracle.build("d2l-resnet18", width=8), weights)
    assert cli.main(["compare", str(numpy_trace), str(weights), "--no-plot"]) == 1
    assert "not a trace" in capsys.readouterr().err


def test_compare_and_conventions_import_no_framework(numpy_trace, tmp_path):
    copy = _relabelled(numpy_trace, tmp_path / "copy.safetensors", "copy")
    code = (
        "import sys; from resnet_multi import cli; "
        f"assert cli.main(['compare', {str(numpy_trace)!r}, {str(copy)!r}, "
        f"'--plot', {str(tmp_path / 'p.png')!r}]) == 0; "
        "assert cli.main(['conventions']) == 0; "
        f"print('LOADED', [m for m in {FRAMEWORK_MODULES!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED []"


# ---- conventions --------------------------------------------------------------------------
def test_conventions_table_has_every_framework_and_topic():
    columns = conventions.collect()
    assert list(columns) == list(conventions.FRAMEWORKS)
    text = conventions.format_table(columns)
    for title in {**conventions.TOPICS, **conventions.TRAINING_TOPICS}.values():
        assert title in text
    for name in frameworks.NAMES:  # every framework that trains declares how
        assert set(conventions.TRAINING_TOPICS) <= set(columns[name]), name
    markdown = conventions.format_table(columns, markdown=True).splitlines()
    assert len(markdown) == 2 + len(conventions.TOPICS) + len(conventions.TRAINING_TOPICS)
    assert all(line.count("|") - line.count("\\|") == len(columns) + 2 for line in markdown)


def test_conventions_for_some_frameworks_keep_the_spec_first(capsys):
    assert list(conventions.collect(["mxnet", "tf"])) == ["numpy", "tf", "mxnet"]
    assert list(conventions.collect(["numpy"])) == ["numpy"]
    with pytest.raises(ValueError, match="no conventions for \\['caffe'\\]"):
        conventions.collect(["caffe"])
    assert cli.main(["conventions", "paddle", "--markdown"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| | numpy | paddle |"
    assert cli.main(["conventions", "caffe"]) == 2
    assert "no conventions for 'caffe'" in capsys.readouterr().err


def test_conventions_must_be_a_literal(tmp_path, monkeypatch):
    module = tmp_path / "fake.py"
    module.write_text("import os\nCONVENTIONS = {'padding': os.sep}\n")
    monkeypatch.setattr(conventions, "module_path", lambda framework: module)
    with pytest.raises(conventions.ConventionsError, match="must be a plain literal"):
        conventions.declared("fake")
    module.write_text("X = 1\n")
    with pytest.raises(conventions.ConventionsError, match="declares no CONVENTIONS"):
        conventions.declared("fake")


def _bn_update(mean: float, var: float, momentum: float) -> tuple[str, str]:
    """From one training step on x = 1..8 (mean 4.5, biased variance 5.25, unbiased 6)
    starting at running mean 0 and variance 1: which value the momentum weights, and
    which batch variance fed the running one."""
    weight = mean / 4.5  # the batch's share of the new running mean
    keeps = (
        "new"
        if np.isclose(weight, momentum, rtol=1e-4)
        else "old"
        if np.isclose(weight, 1 - momentum, rtol=1e-4)
        else f"neither ({weight})"
    )
    fed = (var - (1 - weight)) / weight
    variance = (
        "biased"
        if np.isclose(fed, 5.25, rtol=1e-4)
        else "unbiased"
        if np.isclose(fed, 6.0, rtol=1e-4)
        else f"neither ({fed})"
    )
    return keeps, variance


X = np.arange(1, 9, dtype=np.float32).reshape(2, 1, 2, 2)  # N, C, H, W
IMAGE = (1 + np.arange(8)[:, None] * 8 + np.arange(8)[None, :]).astype(np.float32)  # 8x8, value = 1 + 8r + c


def _pads_before(corner_value: float) -> int:
    """A 7x7/2 conv on IMAGE with a kernel that is 1 at its bottom-right tap reads
    IMAGE[6 - p, 6 - p] at output (0, 0), where p is the padding before."""
    return 6 - int(round((corner_value - 1) / 9))


def _after(before: int) -> list[int]:  # 'same' at stride 2 on 8: 4 outputs, 5 padded in all
    return [before, 5 - before]


def _default(cls, name):
    return inspect.signature(cls.__init__).parameters[name].default


def probe_numpy():
    from resnet_multi import numpy as rn

    bn = rn.BatchNorm2d(1)
    bn.forward(X.astype(np.float64))
    net = rn.net("d2l-resnet18", width=8)
    return dict(
        eps=bn.eps,
        momentum=bn.momentum,
        update=_bn_update(bn.buffers["running_mean"][0], bn.buffers["running_var"][0], bn.momentum),
        pads=[net.layers["stem"].layers["conv"].padding] * 2,
        layout="NCHW",
        kernel=rn.Conv2d(2, 3, 5).params["weight"].shape,
        dense=rn.Linear(2, 3).params["weight"].shape,
        bn_names=[*rn.BatchNorm2d(1).params, *rn.BatchNorm2d(1).buffers],
        conv_bias="bias" in rn.Conv2d(1, 1, 3).params,
        starts=rn.Layer().training,
        conv_weight=None,
    )


def probe_torch():
    import torch

    nn = torch.nn
    bn = nn.BatchNorm2d(1).train()
    bn(torch.from_numpy(X))
    try:
        nn.Conv2d(1, 1, 7, stride=2, padding="same")
        pads = "accepted"
    except ValueError:
        pads = None  # refused at stride 2
    conv = nn.Conv2d(2, 3, 5)
    return dict(
        eps=_default(nn.BatchNorm2d, "eps"),
        momentum=_default(nn.BatchNorm2d, "momentum"),
        update=_bn_update(bn.running_mean.item(), bn.running_var.item(), bn.momentum),
        pads=pads,
        layout="NCHW" if conv(torch.zeros(1, 2, 8, 8)).shape == (1, 3, 4, 4) else "?",
        kernel=tuple(conv.weight.shape),
        dense=tuple(nn.Linear(2, 3).weight.shape),
        bn_names=[n for n, _ in bn.named_parameters()]
        + [n for n, _ in bn.named_buffers() if n != "num_batches_tracked"],
        conv_bias=conv.bias is not None,
        starts=nn.Module().training,
        conv_weight=nn.Conv2d(2, 64, 5).weight.detach().numpy(),
    )


def probe_tf():
    import keras

    layers = keras.layers
    bn = layers.BatchNormalization()
    bn(X.transpose(0, 2, 3, 1), training=True)
    fresh = layers.BatchNormalization()
    inference = np.allclose(fresh(X.transpose(0, 2, 3, 1)), X.transpose(0, 2, 3, 1) / np.sqrt(1 + fresh.epsilon))
    same = layers.Conv2D(1, 7, strides=2, padding="same", use_bias=False)
    same.build((None, 8, 8, 1))
    kernel = np.zeros((7, 7, 1, 1), np.float32)
    kernel[6, 6] = 1
    same.kernel.assign(kernel)
    corner = float(same(IMAGE[None, :, :, None])[0, 0, 0, 0])
    conv = layers.Conv2D(3, 5)
    conv.build((None, 8, 8, 2))
    dense = layers.Dense(3)
    dense.build((None, 2))
    wide = layers.Conv2D(64, 5)
    wide.build((None, 8, 8, 2))
    return dict(
        conv_weight=wide.kernel.numpy(),
        eps=_default(layers.BatchNormalization, "epsilon"),
        momentum=_default(layers.BatchNormalization, "momentum"),
        update=_bn_update(float(bn.moving_mean[0]), float(bn.moving_variance[0]), bn.momentum),
        pads=_after(_pads_before(corner)),
        layout="NHWC" if conv.data_format == "channels_last" else "NCHW",
        kernel=tuple(conv.kernel.shape),
        dense=tuple(dense.kernel.shape),
        bn_names=[w.name for w in bn.weights],
        conv_bias=conv.use_bias,
        starts="inference" if inference else "training",
    )


def probe_mxnet():
    from mxnet import autograd
    from mxnet import np as mnp
    from mxnet.gluon import nn

    bn = nn.BatchNorm(in_channels=1)
    bn.initialize()
    with autograd.record():
        y = bn(mnp.array(X))
    y.backward()  # Gluon updates its statistics here
    conv = nn.Conv2D(3, 5, in_channels=2)
    conv.initialize()
    dense = nn.Dense(3, in_units=2)
    dense.initialize()
    wide = nn.Conv2D(64, 5, in_channels=2)
    wide.initialize()  # Gluon's default initialiser
    names = [k.rpartition(".")[2] for k in bn._collect_params_with_prefix()]
    return dict(
        conv_weight=wide.weight.data().asnumpy(),
        eps=_default(nn.BatchNorm, "epsilon"),
        momentum=_default(nn.BatchNorm, "momentum"),
        update=_bn_update(
            float(bn.running_mean.data()[0]), float(bn.running_var.data()[0]), _default(nn.BatchNorm, "momentum")
        ),
        pads=None,
        layout=_default(nn.Conv2D, "layout"),
        kernel=tuple(conv.weight.shape),
        dense=tuple(dense.weight.shape),
        bn_names=names,
        conv_bias=conv.bias is not None,
        starts="training" if autograd.is_training() else "inference",
    )


def probe_paddle():
    import paddle

    nn = paddle.nn
    bn = nn.BatchNorm2D(1)
    bn.train()
    bn(paddle.to_tensor(X))
    same = nn.Conv2D(1, 1, 7, stride=2, padding="SAME", bias_attr=False)
    kernel = np.zeros((1, 1, 7, 7), np.float32)
    kernel[0, 0, 6, 6] = 1
    same.weight.set_value(kernel)
    corner = float(same(paddle.to_tensor(IMAGE[None, None]))[0, 0, 0, 0])
    conv = nn.Conv2D(2, 3, 5)
    return dict(
        conv_weight=nn.Conv2D(2, 64, 5).weight.numpy(),
        eps=_default(nn.BatchNorm2D, "epsilon"),
        momentum=_default(nn.BatchNorm2D, "momentum"),
        update=_bn_update(
            float(bn._mean.numpy()[0]), float(bn._variance.numpy()[0]), _default(nn.BatchNorm2D, "momentum")
        ),
        pads=_after(_pads_before(corner)),
        layout=_default(nn.Conv2D, "data_format"),
        kernel=tuple(conv.weight.shape),
        dense=tuple(nn.Linear(2, 3).weight.shape),
        bn_names=[n for n, _ in bn.named_parameters()],
        conv_bias=conv.bias is not None,
        starts="training" if nn.Layer().training else "inference",
    )


def probe_mindspore():
    import mindspore as ms

    nn = ms.nn
    bn = nn.BatchNorm2d(1)
    bn.set_train(True)
    bn(ms.Tensor(X))
    same = nn.Conv2d(1, 1, 7, stride=2)  # the default pad_mode
    kernel = np.zeros((1, 1, 7, 7), np.float32)
    kernel[0, 0, 6, 6] = 1
    same.weight.set_data(ms.Tensor(kernel))
    corner = float(same(ms.Tensor(IMAGE[None, None])).asnumpy()[0, 0, 0, 0])
    conv = nn.Conv2d(2, 3, 5)
    momentum = _default(nn.BatchNorm2d, "momentum")
    return dict(
        conv_weight=nn.Conv2d(2, 64, 5).weight.asnumpy(),
        eps=_default(nn.BatchNorm2d, "eps"),
        momentum=momentum,
        update=_bn_update(float(bn.moving_mean.asnumpy()[0]), float(bn.moving_variance.asnumpy()[0]), momentum),
        pads=_after(_pads_before(corner)),
        layout=_default(nn.Conv2d, "data_format"),
        kernel=tuple(conv.weight.shape),
        dense=tuple(nn.Dense(2, 3).weight.shape),
        bn_names=[n for n, _ in bn.parameters_and_names()],  # attribute names (Parameter.name is 'mean')
        conv_bias=conv.bias is not None,
        starts="training" if nn.Cell().training else "inference",
    )


def probe_jax():
    from flax import nnx

    bn = nnx.BatchNorm(1, rngs=nnx.Rngs(0))
    bn(X.transpose(0, 2, 3, 1))  # a fresh BatchNorm: training mode, statistics update
    same = nnx.Conv(1, 1, (7, 7), strides=(2, 2), use_bias=False, rngs=nnx.Rngs(0))  # the default padding
    kernel = np.zeros((7, 7, 1, 1), np.float32)
    kernel[6, 6] = 1
    same.kernel[...] = kernel
    corner = float(same(IMAGE[None, :, :, None])[0, 0, 0, 0])
    conv = nnx.Conv(2, 3, (5, 5), padding="VALID", rngs=nnx.Rngs(0))
    nhwc = conv(np.zeros((1, 8, 8, 2), np.float32)).shape == (1, 4, 4, 3)
    momentum = _default(nnx.BatchNorm, "momentum")
    return dict(
        conv_weight=np.asarray(nnx.Conv(2, 64, (5, 5), rngs=nnx.Rngs(1)).kernel[...]),
        eps=_default(nnx.BatchNorm, "epsilon"),
        momentum=momentum,
        update=_bn_update(float(bn.mean[0]), float(bn.var[0]), momentum),
        pads=_after(_pads_before(corner)),
        layout="NHWC" if nhwc else "?",
        kernel=tuple(conv.kernel[...].shape),
        dense=tuple(nnx.Linear(2, 3, rngs=nnx.Rngs(0)).kernel[...].shape),
        bn_names=sorted(str(path[-1]) for path, _ in nnx.to_flat_state(nnx.state(bn))),
        conv_bias=conv.bias is not None,
        starts="inference" if _default(nnx.BatchNorm, "use_running_average") else "training",
    )


PROBES = {
    "numpy": probe_numpy,
    "torch": probe_torch,
    "tf": probe_tf,
    "mxnet": probe_mxnet,
    "paddle": probe_paddle,
    "mindspore": probe_mindspore,
    "jax": probe_jax,
}
LAYOUTS = {"OIHW": (3, 2, 5, 5), "HWIO": (5, 5, 2, 3), "(out, in)": (3, 2), "(in, out)": (2, 3)}


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_conventions_are_the_frameworks_real_defaults(backend, device):
    """Each machine-readable field a backend module declares, against what its installed
    framework really does; the literal read without importing is the imported module's."""
    import importlib

    name = backend.name
    module = importlib.import_module(f"resnet_multi.{name}")
    declared = conventions.declared(name)
    assert declared == module.CONVENTIONS
    real = PROBES[name]()
    assert declared["bn_eps"]["eps"] == pytest.approx(real["eps"])
    assert declared["bn_momentum"]["momentum"] == pytest.approx(real["momentum"])
    assert (declared["bn_momentum"]["keeps"], declared["bn_running_var"]["variance"]) == real["update"]
    assert declared["padding"]["pads"] == real["pads"]
    assert declared["data_layout"]["layout"] == real["layout"]
    assert LAYOUTS[declared["kernel_layout"]["layout"]] == real["kernel"]
    assert LAYOUTS[declared["dense_layout"]["layout"]] == real["dense"]
    assert sorted(declared["param_names"]["bn"]) == sorted(real["bn_names"])
    assert declared["init"]["conv_bias"] == real["conv_bias"]
    assert declared["mode_switch"]["starts"] == (
        "training" if real["starts"] is True else "inference" if real["starts"] is False else real["starts"]
    )
    _check_init(declared["init"]["conv_weight"], real["conv_weight"])
    json.dumps(declared)  # plain data all the way down


# the default conv weight's distribution for a conv with 2 inputs, 64 outputs, 5x5 kernel
FAN_IN, FAN_OUT = 2 * 5 * 5, 64 * 5 * 5
SCALES = {
    "1/sqrt(fan_in)": 1 / np.sqrt(FAN_IN),
    "sqrt(6/(fan_in+fan_out))": np.sqrt(6 / (FAN_IN + FAN_OUT)),
    "0.07": 0.07,
    "sqrt(2/fan_in)": np.sqrt(2 / FAN_IN),
}


def _check_init(declared, weight):
    if declared is None:
        assert weight is None
        return
    kind, scale = declared[0], SCALES[declared[1]]
    w = np.asarray(weight, np.float64)
    assert w.size == FAN_IN * 64
    if kind == "uniform":  # 3,200 draws: the largest lies within 5% of the bound
        assert 0.95 * scale <= np.abs(w).max() <= scale * (1 + 1e-6)
    else:  # normal: the sample deviation within 5% (its standard error is 1.3%), mean near 0
        assert abs(w.std() / scale - 1) < 0.05 and abs(w.mean()) < 0.1 * scale


@pytest.mark.parametrize("arch", ["d2l-resnet18", "preact-resnet18", "resnet50"])
def test_zero_gradients_are_zero_in_the_reference(arch, oracle):
    """The conv biases compare treats as exactly-zero gradients are those the float64
    reference computes as zero, and no others."""
    model = oracle.build(arch, width=8, in_channels=1, num_classes=10, conv_bias=True)
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    grads = oracle.loss_and_grads(model, x, np.arange(4)).grads
    norms = {k: float(np.linalg.norm(g)) for k, g in grads.items()}
    largest = max(norms.values())
    spec = json.loads(json.dumps(__import__("dataclasses").asdict(model.spec)))
    zero = compare.zero_gradients(spec)
    assert zero and zero <= set(norms)
    assert {k for k, n in norms.items() if n <= 1e-12 * largest} == zero


def test_trace_command_from_weights_and_seed(tmp_path, oracle, capsys):
    weights = oracle.save_weights(oracle.build("d2l-resnet18", width=8, seed=3), tmp_path / "w.safetensors")
    common = ["--backend", "numpy", "--steps", "2", "--batch-size", "8", "--limit", "16", "--activation-images", "2"]
    assert cli.main(["trace", *common, "--weights", str(weights), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert cli.main(["trace", *common, "--width", "8", "--seed", "3", "--out", str(tmp_path / "b.safetensors")]) == 0
    a, b = trace.load(tmp_path / "a.safetensors"), trace.load(tmp_path / "b.safetensors")
    assert a.meta["initial_weights_sha256"] == b.meta["initial_weights_sha256"]
    assert a.meta["recipe"]["weights"] == str(weights) and b.meta["recipe"]["init_seed"] == 3
    # --weights with seed 0 batches, the seed-3 trace with seed-3 batches: same start, other batches
    assert a.meta["batches_sha256"] != b.meta["batches_sha256"]
    assert a.steps == 2 and a.activation(1, "stages.3").shape == (2, 64, 1, 1)
    capsys.readouterr()
    assert cli.main(["trace", *common, "--weights", str(weights), "--width", "8"]) == 2
    assert "--weights records its architecture" in capsys.readouterr().err


def test_perturbed_control_trace(tiny_data, numpy_trace, oracle, tmp_path):
    """The control run: the reference from weights perturbed at float32's rounding level
    is compared as the same run, and differs at step 0 by about that much, not 0."""
    model = oracle.build("d2l-resnet18", width=8, seed=0)
    batches = trace.training_batches(tiny_data, steps=1, batch_size=BATCH, seed=0, resize=32)
    tensors, meta = trace.record(
        oracle,
        model,
        batches,
        lr=0.05,
        activation_images=4,
        perturb=1e-7,
        recipe={"batch_size": BATCH, "resize": 32, "seed": 0},
    )
    path = trace.save(tmp_path / "p.safetensors", tensors, meta)
    result = compare.compare([numpy_trace, path])
    assert list(result.diffs) == ["numpy-perturbed"]
    logits = result.diffs["numpy-perturbed"][0].values["logits"]
    assert 1e-9 < logits < 1e-5
    with pytest.raises(ValueError, match="perturb must be from 0 to 1"):
        trace.record(oracle, model, [], lr=0.05, perturb=-1.0)


def test_docs_show_the_generated_conventions_table():
    """The documentation's differences page includes the table that docs/tools/pages.py writes
    from `conventions.format_table(conventions.collect(None), markdown=True)` at build time, not
    a pasted copy, so the table a reader sees cannot drift from what the backend modules declare."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "differences.md").read_text(encoding="utf-8")
    assert "```{include} _generated/fragments/conventions.md" in page, "differences.md no longer includes the table"


@pytest.mark.parametrize(
    "meta, name",
    [
        ({"backend": "tf", "eager": False, "default_mode": True}, "tf"),
        ({"backend": "tf", "eager": True, "default_mode": False}, "tf-eager"),
        ({"backend": "mindspore", "eager": True, "default_mode": True}, "mindspore"),  # PyNative on a CPU
        ({"backend": "mindspore", "eager": False, "default_mode": False}, "mindspore-compiled"),
        ({"backend": "jax", "eager": True, "device": "cuda:0", "default_mode": False}, "jax-cuda:0-eager"),
        ({"backend": "mxnet", "eager": True}, "mxnet-eager"),  # a trace from before default_mode
        ({"backend": "mxnet", "eager": False}, "mxnet"),
    ],
)
def test_a_traces_label_names_its_mode_only_when_not_the_default(meta, name):
    assert trace.Trace(Path("t.safetensors"), meta, {}).name == name
