"""Bad files, bad inputs and faults: each refused before work starts, in one line, or
handled correctly; nothing lost. One test (or a few) per observed case, numbered as
in the issue that listed them.

Tiny settings throughout: the chapter's ResNet-18 at width 4, 16x16 images (its last
stage then sees 1x1), 32 images, so that the NumPy reference trains in seconds.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from cases import BACKEND_CASES

from resnet_multi import data, memory, train
from resnet_multi import weights as canonical
from resnet_multi.backend import load_backend
from resnet_multi.cli import main
from resnet_multi.spec import get_arch

SIZE = 16
TINY = dict(width=4)
SPEC = get_arch("d2l-resnet18", **TINY)
CLI_TINY = [
    "--preset",
    "quick",
    "--width",
    "4",
    "--resize",
    str(SIZE),
    "--limit",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--no-progress",
]
# The CLI names a backend; the eager variants would run the same commands again.
CLI_CASES = [c for c in BACKEND_CASES if not c.id.endswith("-eager")]
SELECTED = {c.values[0].name for c in BACKEND_CASES if c.values[0] is not None}


@pytest.fixture(scope="module")
def tiny_data():
    ds = data.load_fashion_mnist(subset=True)
    return data.Dataset(ds.train_images[:32], ds.train_labels[:32], ds.test_images[:32], ds.test_labels[:32], ds.source)


def fit(backend, device, ds, out=None, *, epochs=1, **kwargs):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    return model, train.fit(
        backend, model, ds, epochs=epochs, lr=0.05, batch_size=16, resize=SIZE, seed=0, out=out, **kwargs
    )


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    """One line on stderr (besides train's opening line, where training had begun)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("training d2l-resnet18 (preset ")]
    return len(lines) == 1 and lines[0].startswith("resnet-multi: ") and "Traceback" not in err


def write_raw(path, tensors, metadata):
    """A safetensors file exactly as given, bypassing save_weights' checks: a file
    someone else could send."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


def good_metadata(spec=SPEC, **changes):
    meta = {
        "format": canonical.FORMAT,
        "arch": json.dumps(dataclasses.asdict(spec)),
        "preprocess": json.dumps(data.preprocessing(SIZE)),
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


# 1. non-finite weights and negative variances are refused on load --------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
@pytest.mark.parametrize("damage", ["one-nan", "all-nan", "inf", "negative-var"])
def test_non_finite_weights_are_refused(backend, device, damage, tmp_path, capsys):
    weights = canonical.init_weights(SPEC)
    name = {"negative-var": "stages.1.0.bn1.running_var"}.get(damage, "stages.2.1.conv1.weight")
    value = weights[name].copy()
    if damage == "one-nan":
        value.flat[3] = np.nan
    elif damage == "all-nan":
        value[...] = np.nan
    elif damage == "inf":
        value.flat[0] = np.inf
    else:
        value.flat[1] = -0.5
    path = write_raw(tmp_path / "w.safetensors", {**weights, name: value}, good_metadata())
    model = backend.build("d2l-resnet18", device=device, **TINY)
    with pytest.raises(canonical.WeightsError, match=rf"{name} \((NaN/Inf|negative variance)\)"):
        backend.load_weights(model, path)
    code, out, err = run(
        capsys,
        "evaluate",
        "--backend",
        backend.name,
        "--device",
        device,
        "--weights",
        path,
        "--subset",
        "--limit",
        "32",
    )
    assert code == 1 and name in err and "earlier checkpoint" in err and one_line(err), err
    assert out == ""
    # and nothing writes such a file
    with pytest.raises(canonical.WeightsError, match="refusing to save"):
        canonical.save_weights(tmp_path / "again.safetensors", {**weights, name: value}, SPEC)


# 2. a non-finite loss stops training, keeps the last good checkpoint, exits non-zero --------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_non_finite_loss_stops_training(backend, device, tiny_data, tmp_path, monkeypatch):
    real_step, calls = backend.train_step, []

    def step(model, batch, lr, metrics):  # the training loop's step; at epoch 2, step 1 its loss is NaN
        calls.append(1)
        if len(calls) != 3:
            return real_step(model, batch, lr, metrics)
        # The loss the step reports, made NaN where it enters the epoch's metrics (a float
        # or a device tensor). A NaN batch would not do: TensorFlow's and MXNet's max pool
        # skip NaNs (PyTorch's propagates them), so their loss stayed finite while the
        # weights turned NaN, which the checkpoint then refuses
        # (test_non_finite_weights_are_not_checkpointed).
        add = metrics.add
        metrics.add = lambda loss, logits, y: add(loss * float("nan"), logits, y)
        try:
            return real_step(model, batch, lr, metrics)
        finally:
            metrics.add = add

    monkeypatch.setattr(backend, "train_step", step)
    out = tmp_path / "run"
    with pytest.raises(train.TrainingDiverged, match=r"loss became nan at epoch 2, step 1 .*epoch-001"):
        fit(backend, device, tiny_data, out, epochs=3)
    assert len(calls) == 3
    state = json.loads((out / train.CHECKPOINT).read_text())
    assert state["epoch"] == 1 and state["weights"] == "epoch-001.safetensors"
    assert not (out / train.FINAL_WEIGHTS).exists()
    canonical.load_weights(out / "epoch-001.safetensors", SPEC)  # the kept checkpoint is good


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_non_finite_weights_are_not_checkpointed(backend, device, tiny_data, tmp_path, monkeypatch):
    """A step can leave NaN weights behind a finite loss: the checkpoint refuses them."""
    real = backend.get_weights

    def poisoned(model):
        w = real(model)
        w["head.fc.bias"] = np.full_like(w["head.fc.bias"], np.inf)
        return w

    monkeypatch.setattr(backend, "get_weights", poisoned)
    with pytest.raises(train.TrainingDiverged, match=r"after epoch 1 the weights hold head\.fc\.bias"):
        fit(backend, device, tiny_data, tmp_path / "run")
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_diverging_lr_exits_non_zero(backend, device, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "train",
        "--backend",
        backend.name,
        "--device",
        device,
        *CLI_TINY,
        "--epochs",
        "3",
        "--lr",
        "1e6",
        "--out",
        tmp_path / "run",
    )
    assert code == 1 and "training diverged" in err and "lower --lr" in err and one_line(err), err
    assert out == ""
    assert not (tmp_path / "run" / train.FINAL_WEIGHTS).exists()


# 3. the training resolution and normalisation travel in the weights file ------------------
@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_weights_carry_their_resolution(backend, device, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--backend", backend.name, "--device", device, *CLI_TINY, "--out", run_dir)
    assert code == 0, err
    test_acc = out.split("test acc ")[1].split()[0]
    recorded = canonical.read_metadata(run_dir / train.FINAL_WEIGHTS)
    assert recorded.preprocess == {"resize": SIZE, "scale": 1 / 255, "mean": 0.0, "std": 1.0}
    assert recorded.arch == SPEC
    # copied out of its run directory: still evaluated at 16x16, with the run's accuracy
    alone = tmp_path / "elsewhere" / "w.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((run_dir / train.FINAL_WEIGHTS).read_bytes())
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", alone, "--subset", "--limit", "32")
    assert code == 0, err
    assert out.startswith(f"test acc {test_acc} on 32 images") and f"{SIZE}x{SIZE}" in out, out
    assert err == ""
    # told otherwise: it does so, and says what the weights were trained at
    code, out, err = run(
        capsys, "evaluate", "--backend", "numpy", "--weights", alone, "--subset", "--limit", "32", "--resize", "24"
    )
    assert code == 0 and "24x24" in out and "trained at 16x16" in err, (out, err)


def test_weights_without_recorded_resolution_say_so(tmp_path, capsys):
    path = write_raw(tmp_path / "old.safetensors", canonical.init_weights(SPEC), good_metadata(preprocess=None))
    assert canonical.read_metadata(path).preprocess is None
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8")
    assert code == 0 and "96x96" in out and "records no training resolution" in err, (out, err)


def test_recorded_normalisation_is_applied(tmp_path):
    backend = load_backend("numpy")
    model = backend.build(SPEC)
    images = data.load_fashion_mnist(subset=True).test_images[:8]
    norm = {"resize": SIZE, "scale": 1 / 255, "mean": 0.5, "std": 0.25}
    got = train.predict(backend, model, images, resize=SIZE, normalize=norm)
    x = np.concatenate(
        [xb for xb, _ in data.iterate_batches(images, np.zeros(8, np.int64), 8, shuffle=False, resize=SIZE)]
    )
    want = backend.forward(model, ((x - 0.5) / 0.25).astype(np.float32)).argmax(axis=1)
    np.testing.assert_array_equal(got, want)
    plain = train.predict(backend, model, images, resize=SIZE)
    np.testing.assert_array_equal(plain, backend.forward(model, x).argmax(axis=1))


# 4. resuming on another backend is refused ------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_resume_on_another_backend_is_refused(backend, device, tiny_data, tmp_path):
    out = tmp_path / "run"
    fit(backend, device, tiny_data, out)
    state = json.loads((out / train.CHECKPOINT).read_text())
    other = "numpy" if backend.name != "numpy" else "torch"
    state["backend"] = other  # as if that backend had trained it
    (out / train.CHECKPOINT).write_text(json.dumps(state))
    with pytest.raises(train.RunError, match=rf"cannot resume .* on {backend.name}: it was trained on {other}"):
        fit(backend, device, tiny_data, out, epochs=2, resume=True)


# 5. and 10. the NumPy reference checks its input ------------------------------------------
def test_numpy_reference_checks_its_input():
    from resnet_multi import numpy as rn

    net = rn.net("d2l-resnet18", **TINY)
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), got 3"):
        net.forward(np.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="empty batch"):
        net.forward(np.zeros((0, 1, 32, 32)))
    before = {k: v.copy() for k, v in net.state().items()}
    with pytest.raises(ValueError, match="too small to train"):
        net.train().forward(np.ones((1, 1, 8, 8)))
    after = net.state()
    for name, value in before.items():  # refused before any running statistic moved
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert np.isfinite(net.eval().forward(np.ones((1, 1, 8, 8)))).all()
    # the chapter's building blocks, used on their own
    with pytest.raises(ValueError, match=r"Residual\(3 -> 3\) expects 3 channel\(s\) on axis 1"):
        rn.Residual(3, 3).forward(np.zeros((1, 1, 6, 6)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        rn.BatchNorm2d(4).forward(np.zeros((1, 4, 1, 1)))


# 6. and 7. weight-file metadata is untrusted input -----------------------------------------
def _arch(**changes):
    fields = json.loads(json.dumps(dataclasses.asdict(SPEC)))
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not None})


BAD_METADATA = {
    "no-arch": (dict(arch=None), "missing key(s) 'arch'"),
    "no-format": (dict(format=None), "missing key(s) 'format'"),
    "other-format": (dict(format="something.else"), "is 'something.else'"),
    "not-json": (dict(arch="{layers: [2, 2]"), "metadata.arch: is not valid JSON"),
    "arch-is-list": (dict(arch="[1, 2]"), "metadata.arch: must be an object"),
    "missing-key": (dict(arch=_arch(layers=None)), "missing key(s) 'layers'"),
    "extra-key": (dict(arch=_arch(dropout=0.5)), "unexpected key(s) 'dropout'"),
    "wrong-type": (dict(arch=_arch(width="64")), "metadata.arch.width: must be an integer, got str"),
    "bool-for-int": (dict(arch=_arch(width=True)), "metadata.arch.width: must be an integer"),
    "bad-choice": (dict(arch=_arch(block="wide")), "metadata.arch.block: must be one of"),
    "huge-depth": (dict(arch=_arch(layers=[100000, 2, 2, 2])), "metadata.arch.layers[0]: must be at most 1000"),
    "zero-width": (dict(arch=_arch(width=0)), "metadata.arch.width: must be at least 1"),
    "bad-bn": (dict(arch=_arch(bn={"eps": 1e-5})), "missing key(s) 'momentum'"),
    "nan-eps": (dict(arch=_arch(bn={"eps": float("nan"), "momentum": 0.1})), "must be a finite number"),
    "combination": (dict(arch=_arch(preact=True, zero_init_last_bn=True)), "zero_init_last_bn"),
    "bad-preprocess": (
        dict(preprocess=json.dumps({"resize": -3, "scale": 1, "mean": 0, "std": 1})),
        "metadata.preprocess.resize: must be at least 1",
    ),
}


@pytest.mark.parametrize("case", BAD_METADATA, ids=list(BAD_METADATA))
def test_bad_metadata_is_one_clear_line(case, tmp_path, capsys):
    changes, message = BAD_METADATA[case]
    path = write_raw(tmp_path / "w.safetensors", canonical.init_weights(SPEC), good_metadata(**changes))
    with pytest.raises(canonical.WeightsError) as info:
        canonical.read_metadata(path)
    assert message in str(info.value) and "save_weights" in str(info.value)
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8")
    assert code == 1 and message in err and one_line(err), err


def test_oversized_network_is_refused_before_allocating(tmp_path, capsys):
    """Within the schema's bounds but far beyond memory: the spec's estimate refuses it
    from the header alone (the file holds the small net's tensors; none is read)."""
    big = _arch(layers=[1000, 1000, 1000, 1000], width=512)
    path = write_raw(tmp_path / "w.safetensors", canonical.init_weights(SPEC), good_metadata(arch=big))
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8")
    assert code == 2 and "GiB by its spec's estimate" in err and "--max-memory" in err and one_line(err), err


def test_memory_limit_is_a_flag(tmp_path, capsys):
    path = canonical.save_weights(
        tmp_path / "w.safetensors", canonical.init_weights(SPEC), SPEC, preprocess=data.preprocessing(SIZE)
    )
    args = ["evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8"]
    code, out, err = run(capsys, *args, "--max-memory", "0.0001")
    assert code == 2 and "above the limit of 0.0 GiB" in err and one_line(err), err
    code, out, err = run(capsys, *args, "--max-memory", "1")
    assert code == 0 and out.startswith("test acc"), err


def test_memory_estimate_grows_with_the_work():
    small = memory.memory_estimate(SPEC, (16, 1, 32, 32), training=False)
    assert memory.memory_estimate(SPEC, (32, 1, 32, 32), training=False) > small
    assert memory.memory_estimate(SPEC, (16, 1, 32, 32), training=True) > small
    assert memory.memory_estimate(SPEC, (16, 1, 32, 32), training=False, itemsize=8) == 2 * small
    params, buffers = canonical.count(SPEC)
    assert small > 4 * (params + buffers) + 4 * 16 * 32 * 32  # at least the weights and the input
    # the chapter's network and batch, training at 96x96: the floor is over a GiB
    assert memory.memory_estimate(get_arch("d2l-resnet18"), (256, 1, 96, 96), training=True) > 2**30


# 8. and 14. checkpoint.json is untrusted input too ------------------------------------------
def _checkpointed_run(backend, device, ds, tmp_path):
    out = tmp_path / "run"
    fit(backend, device, ds, out)
    return out, json.loads((out / train.CHECKPOINT).read_text())


BAD_CHECKPOINTS = {
    "epoch-type": (lambda s: s.update(epoch="three"), "epoch: must be an integer, got str 'three'"),
    "missing": (lambda s: s.pop("weights"), "missing key(s) 'weights'"),
    "path": (lambda s: s.update(weights="../../elsewhere.safetensors"), "weights: '../../elsewhere"),
    "uneven-history": (lambda s: s["history"]["test_acc"].append(0.5), "test_acc has 2"),
    "spec": (lambda s: s["spec"].update(layers=[0]), "spec.layers[0]: must be at least 1"),
    "nan-lr": (lambda s: s.update(lr=float("nan")), "lr: must be a finite number"),
    "meta": (lambda s: s["meta"].update(limit="all"), "meta.limit: must be an integer, got str"),
}


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_bad_checkpoint_fields_are_refused(backend, device, tiny_data, tmp_path):
    out, state = _checkpointed_run(backend, device, tiny_data, tmp_path)
    for case, (damage, message) in BAD_CHECKPOINTS.items():
        broken = json.loads(json.dumps(state))
        damage(broken)
        (out / train.CHECKPOINT).write_text(json.dumps(broken))
        with pytest.raises(train.RunError) as info:
            fit(backend, device, tiny_data, out, epochs=2, resume=True)
        assert message in str(info.value), (case, str(info.value))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_corrupt_checkpoint_says_what_is_still_usable(backend, device, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", backend.name, "--device", device, *CLI_TINY, "--out", out]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    (out / train.CHECKPOINT).write_text('{"format": "resnet_multi.run.v1", "epoch": ')  # cut short
    (out / "a-broken.safetensors").write_bytes(b"\0" * 64)  # not offered as usable
    code, _, err = run(capsys, *argv[:-2], "--epochs", "2", "--out", out, "--resume")
    assert code == 1 and one_line(err), err
    assert "not valid JSON" in err and "delete" not in err
    assert "(epoch-001.safetensors, weights.safetensors)" in err and "can still be evaluated" in err, err
    # as it says: the weights still evaluate
    code, stdout, err = run(
        capsys, "evaluate", "--backend", "numpy", "--weights", out / train.FINAL_WEIGHTS, "--subset", "--limit", "32"
    )
    assert code == 0 and stdout.startswith("test acc") and "ignoring" in err, err


def test_history_file_is_checked(tiny_data, tmp_path):
    out = tmp_path / "run"
    _, history = fit(load_backend("numpy"), "cpu", tiny_data, out)
    assert train.read_history(out / train.HISTORY) == history
    doc = json.loads((out / train.HISTORY).read_text())
    for damage, message in (
        (lambda d: d.update(train_acc=[1.5]), "train_acc[0]: must be at most 1"),
        (lambda d: d.pop("curve"), "missing key(s) 'curve'"),
        (lambda d: d.update(epoch=[1, 2]), "must each have 2 entries: train_loss has 1"),
    ):
        broken = json.loads(json.dumps(doc))
        damage(broken)
        (out / train.HISTORY).write_text(json.dumps(broken))
        with pytest.raises(train.RunError, match=re.escape(message)):
            train.read_history(out / train.HISTORY)
    (out / train.HISTORY).write_text("{")
    with pytest.raises(train.RunError, match="not valid JSON"):
        train.read_history(out / train.HISTORY)


# 9. summary refuses an input that would not fit -----------------------------------------------
def test_summary_of_a_huge_input_is_refused(capsys):
    code, out, err = run(capsys, "summary", "--backend", "numpy", "--input", "1,1,100000,100000")
    assert code == 2 and "needs at least" in err and "--max-memory" in err and one_line(err), err


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "--backend", "numpy", "--size", "50000", "--no-textbook"],
        ["trace", "--backend", "numpy", "--resize", "50000"],
        ["bench", "--backend", "numpy", "--size", "64", "--max-memory", "0.001"],
    ],
    ids=["bench", "trace", "bench-limit"],
)
def test_bench_and_trace_refuse_what_would_not_fit_before_allocating(capsys, command):
    code, out, err = run(capsys, *command)
    assert code == 2 and "needs at least" in err and "--max-memory" in err and one_line(err), err


# 10. the torch module checks what it is given ----------------------------------------------
@pytest.mark.skipif("torch" not in SELECTED, reason="torch is not among the backends under test")
def test_torch_module_checks_dtype_device_and_type():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed in this environment")
    from resnet_multi import torch as rt

    net = rt.net("d2l-resnet18", **TINY).eval()
    with pytest.raises(
        TypeError,
        match=r"expected torch.float32 input .* got torch.float64; convert with "
        r"x.to\(torch.float32\)",
    ):
        net(torch.zeros(2, 1, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="expected a torch.Tensor, got ndarray"):
        net(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        net(torch.zeros(0, 1, 32, 32))
    # in float64 deliberately: the net converted, the input accepted
    assert net.to(torch.float64)(torch.zeros(2, 1, 32, 32, dtype=torch.float64)).dtype == torch.float64
    missing = next((f"cuda:{i}" for i in range(8) if f"cuda:{i}" not in rt.devices()), None)
    with pytest.raises(ValueError, match=rf"device '{missing}' is not available.*available: cpu"):
        rt.net("d2l-resnet18", device=missing, **TINY)


# 10b. every framework's module checks what its own block and net are given -----------------
def _native_tensor(name):
    """(a function NumPy NCHW -> that framework's tensor in its layout, call(module, x))."""
    if name == "tf":
        import tensorflow as tf

        return (lambda a: tf.constant(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a), lambda m, x: m(x, training=False))
    if name == "jax":
        import jax.numpy as jnp

        # jnp.asarray itself turns float64 into float32 (without jax_enable_x64), so a float64
        # batch reaches a module as the NumPy array the caller holds
        nhwc = lambda a: a.transpose(0, 2, 3, 1) if a.ndim == 4 else a  # noqa: E731
        return (lambda a: nhwc(a) if a.dtype == np.float64 else jnp.asarray(nhwc(a))), lambda m, x: m(x)
    convert = {
        "torch": lambda a: __import__("torch").as_tensor(a),
        "mxnet": lambda a: __import__("mxnet").np.array(a, dtype=a.dtype),
        "paddle": lambda a: __import__("paddle").to_tensor(a),
        "mindspore": lambda a: __import__("mindspore").Tensor(a),
    }[name]
    return convert, lambda m, x: m(x)


@pytest.mark.parametrize("backend, device", [c for c in CLI_CASES if c.id.split("-")[0] != "numpy"])
def test_framework_module_refuses_wrong_dtype_channels_and_rank(backend, device):
    """The chapter calls the block on its own (``Residual(3, 3)(X)``): a wrong input gets the
    block's own message, naming the fix, not the convolution operator's; float64 is refused
    rather than cast to float32 behind the caller's back (Keras would cast it)."""
    module = __import__(f"resnet_multi.{backend.name}", fromlist=["Residual"])
    tensor, call = _native_tensor(backend.name)
    block, net = module.Residual(3, 3), module.net("d2l-resnet18", **TINY)
    for m in (block, net):
        if backend.name == "mxnet" and m is block:
            m.initialize()
        if backend.name in ("torch", "paddle"):
            m.eval()
        if backend.name == "mindspore":
            m.set_train(False)
    rng = np.random.default_rng(0)
    good = rng.random((2, 3, 6, 6), dtype=np.float32)
    assert tuple(backend.to_canonical_shape(call(block, tensor(good)).shape)) == good.shape
    with pytest.raises(TypeError, match=r"float32 input.*got (torch\.)?float64; convert with"):
        call(block, tensor(good.astype(np.float64)))
    with pytest.raises(TypeError, match=r"float32 input.*got (torch\.)?float64; convert with"):
        call(net, tensor(rng.random((2, 1, 16, 16))))
    with pytest.raises(ValueError, match=r"Residual\(3 -> 3\) expects 3 channel\(s\) on axis \d .* got 5"):
        call(block, tensor(rng.random((2, 5, 6, 6), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"Residual\(3 -> 3\) expects a 4-d (NCHW|NHWC) batch"):
        call(block, tensor(rng.random((3, 6, 6), dtype=np.float32)))


def test_numpy_block_names_itself_on_wrong_channels():
    from resnet_multi import numpy as rn

    with pytest.raises(ValueError, match=r"Residual\(3 -> 6\) expects 3 channel\(s\) on axis 1 \(NCHW\), got 5"):
        rn.Residual(3, 6, use_1x1conv=True, strides=2)(np.zeros((2, 5, 6, 6)))


# 11. a run directory that cannot be written is found before training -------------------------
def _count_steps(monkeypatch, backend):
    calls, real = [], backend.train_step

    def step(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "train_step", step)
    return calls


@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_unwritable_out_is_refused_before_training(backend, device, tmp_path, capsys, monkeypatch):
    calls = _count_steps(monkeypatch, load_backend(backend.name))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run(
        capsys, "train", "--backend", backend.name, "--device", device, *CLI_TINY, "--out", blocker / "run"
    )
    assert code == 1 and "cannot write the run directory" in err and one_line(err), err
    assert calls == []


def _as_unprivileged_user(check) -> int:
    """``check()``'s exit code, run in a child process that has given up root's rights (root
    ignores a directory's mode bits, and CI and many lab containers run as root)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = check()
        except BaseException:
            traceback.print_exc()  # pytest shows the child's stderr with the failure
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


NOBODY = 65534  # the conventional unprivileged uid and gid


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions are needed to make a read-only directory")
def test_read_only_out_is_refused_before_training(tiny_data, tmp_path, monkeypatch):
    backend = load_backend("numpy")
    calls = _count_steps(monkeypatch, backend)
    parent = Path(tempfile.mkdtemp(prefix="resnet-multi-ro-"))  # not under pytest's root-only 0700 tmp
    parent.chmod(0o755)
    ro = parent / "ro"
    ro.mkdir(mode=0o555)

    model = backend.build("d2l-resnet18", device="cpu", **TINY)  # before the child gives up reading /root

    def check() -> int:
        try:
            train.fit(backend, model, tiny_data, epochs=1, lr=0.05, batch_size=16, resize=SIZE, seed=0, out=ro)
        except train.RunError as e:
            return 0 if "cannot write the run directory" in str(e) and calls == [] else 1
        return 2  # trained into a read-only directory

    try:
        code = _as_unprivileged_user(check) if os.geteuid() == 0 else check()
    finally:
        ro.chmod(0o700)
        shutil.rmtree(parent)
    assert code == 0, {1: "refused with another message, or after training", 2: "not refused"}.get(code, code)
    assert calls == []


# 12. a last batch BatchNorm cannot train on is found before training --------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_last_batch_of_one_is_refused_before_training(backend, device, tiny_data, tmp_path, monkeypatch):
    calls = _count_steps(monkeypatch, backend)
    ds = data.Dataset(
        tiny_data.train_images[:17],
        tiny_data.train_labels[:17],
        tiny_data.test_images,
        tiny_data.test_labels,
        "17 images",
    )
    with pytest.raises(
        ValueError,
        match=r"batch size 16 leaves a last batch of 1 of the 17 training images.*"
        r"e\.g\. 15",
    ):
        fit(backend, device, ds, tmp_path / "run")
    assert calls == [] and not (tmp_path / "run").exists()
    # at 64x64 the last stage sees 2x2: a batch of one has 4 values per channel and trains,
    # except where the framework itself cannot take one image (TensorFlow: see TFBackend)
    model = backend.build("d2l-resnet18", device=device, **TINY)
    if backend.min_training_batch > 1:
        with pytest.raises(ValueError, match=r"leaves a last batch of 1 .*crashes the process"):
            train.fit(backend, model, ds, epochs=1, batch_size=16, resize=64)
        assert calls == []
        with pytest.raises(ValueError, match=r"cannot train on a batch of 1 image"):  # the seam too
            backend.sgd_step(model, np.zeros((1, 1, 64, 64), np.float32), np.zeros(1, np.int64), 0.05)
        return
    train.fit(backend, model, ds, epochs=1, batch_size=16, resize=64)
    assert len(calls) == 2


@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_last_batch_of_one_via_the_cli(backend, device, capsys, tmp_path):
    code, out, err = run(
        capsys,
        "train",
        "--backend",
        backend.name,
        "--device",
        device,
        *CLI_TINY,
        "--limit",
        "17",
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and "leaves a last batch of 1" in err and one_line(err), err


# 13. Ctrl-C: the message says what was saved, and resuming works as it says -------------------
@pytest.mark.parametrize("backend, device", CLI_CASES)
def test_ctrl_c_message_is_true(backend, device, tmp_path, capsys, monkeypatch):
    real = load_backend(backend.name)
    out = tmp_path / "run"
    argv = ["train", "--backend", backend.name, "--device", device, *CLI_TINY, "--epochs", "2", "--out", out]
    calls, step = [], real.train_step

    def interrupt_at(n):
        def crashing(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return step(*args, **kwargs)

        return crashing

    monkeypatch.setattr(real, "train_step", interrupt_at(1))  # in epoch 1
    code, _, err = run(capsys, *argv)
    assert code == 130 and "holds no checkpoint" in err and "without --resume" in err and one_line(err), err
    calls.clear()
    monkeypatch.setattr(real, "train_step", interrupt_at(3))  # the same command again: in epoch 2
    code, _, err = run(capsys, *argv)
    assert code == 130 and "checkpoint of epoch 1" in err and "--resume continues" in err and one_line(err), err
    monkeypatch.setattr(real, "train_step", step)
    code, stdout, err = run(capsys, *argv, "--resume")
    assert code == 0 and stdout.startswith("loss "), err
    assert json.loads((out / train.CHECKPOINT).read_text())["epoch"] == 2


# 15. files: no stale temporaries, no duplicate weights, the user's umask, same bytes ------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_run_files(backend, device, tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [
        out / ".epoch-001.safetensors.k2j3h4.tmp",
        out / f".{train.CHECKPOINT}.x7.tmp",
        out / f".{train.FINAL_WEIGHTS}.123.link.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    not_ours = out / ".notes.txt.tmp"
    not_ours.write_text("the user's")
    old = os.umask(0o027)
    try:
        fit(backend, device, tiny_data, out, epochs=2)
    finally:
        os.umask(old)
    assert not any(p.exists() for p in stale) and not_ours.exists()
    final, last = out / train.FINAL_WEIGHTS, out / "epoch-002.safetensors"
    assert os.path.samefile(final, last) or final.read_bytes() == last.read_bytes()
    if os.path.samefile(final, last):
        assert (
            sum(1 for p in out.iterdir() if p.suffix == ".safetensors" and p.stat().st_ino == last.stat().st_ino) == 2
        )
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["epoch-002.safetensors", train.FINAL_WEIGHTS]
    for name in (train.CHECKPOINT, train.HISTORY, train.PLOT, train.FINAL_WEIGHTS):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name


def test_another_run_in_the_same_directory_is_refused(tiny_data, tmp_path):
    fcntl = pytest.importorskip("fcntl", reason="no POSIX file locks on this system")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(train.RunError, match="another run is writing to"):
            fit(load_backend("numpy"), "cpu", tiny_data, out)


SAVE_SCRIPT = """
import sys, hashlib
from resnet_multi import weights, data
from resnet_multi.spec import get_arch
spec = get_arch("d2l-resnet18", width=4)
path = weights.save_weights(sys.argv[1], weights.init_weights(spec, 3), spec, preprocess=data.preprocessing(16))
print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_same_tensors_give_the_same_bytes(tmp_path):
    """safetensors orders metadata from a hash map seeded per process: four processes,
    one SHA-256."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", SAVE_SCRIPT, str(tmp_path / f"{i}.safetensors")],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[1],
        ).stdout.strip()
        for i in range(4)
    }
    assert len(digests) == 1
    path = tmp_path / "0.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() in digests
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    loaded = canonical.load_weights(path, SPEC)  # still a valid file, with the same tensors
    for name, value in canonical.init_weights(SPEC, 3).items():
        np.testing.assert_array_equal(loaded[name], value)
    assert canonical.read_metadata(path).preprocess == data.preprocessing(16)


# the command line: --debug shows the traceback; a bug still gets one line --------------------
def test_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "none.safetensors"
    code, _, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", missing)
    assert code == 1 and one_line(err)
    with pytest.raises(canonical.WeightsError, match="does not exist"):
        main(["evaluate", "--backend", "numpy", "--weights", str(missing), "--debug"])
    with pytest.raises(canonical.WeightsError, match="does not exist"):
        main(["--debug", "evaluate", "--backend", "numpy", "--weights", str(missing)])


def test_an_internal_error_is_one_line(capsys, monkeypatch):
    from resnet_multi import cli

    def broken(args):
        raise RuntimeError("something the code did not foresee")

    monkeypatch.setattr(cli, "cmd_backends", broken)
    code, _, err = run(capsys, "backends")
    assert code == 1 and "internal error: RuntimeError: something" in err and "--debug" in err and one_line(err)
