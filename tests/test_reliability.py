"""No silent wrong results: one section per rule.

1. Every number the package reports or writes is finite where it is produced; a non-finite
   one stops with an error naming what and where. Numeric options are checked for range.
2. The package writes only regular files, inside directories it owns.
3. Every file read is parsed with limits and checked against its kind's schema; every
   message names the file, the key and the fix.
4. Data-parallel ranks die with their launcher, bind to loopback, exchange no pickles
   (tests/test_distributed.py, in the torch environment).
5. Messages that lead somewhere.

Tiny settings throughout, as in tests/test_validation.py: ResNet-18 at width 4, 16x16 images.
"""

import dataclasses
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cases import BACKEND_CASES

from resnet_multi import data, files, trace, train, validate
from resnet_multi import weights as canonical
from resnet_multi.backend import load_backend
from resnet_multi.cli import main
from resnet_multi.errors import InputError, NonFiniteError
from resnet_multi.spec import get_arch

SIZE = 16
TINY = dict(width=4)
SPEC = get_arch("d2l-resnet18", **TINY)
CASES = [c for c in BACKEND_CASES if not c.id.endswith("-eager")]
ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    lines = [
        line
        for line in err.strip().splitlines()
        if not line.startswith(("training d2l-resnet18 (preset ", "tracing ", "resnet-multi train: no --preset"))
    ]
    return len(lines) == 1 and lines[0].startswith("resnet-multi") and "Traceback" not in err, lines


@pytest.fixture(scope="module")
def tiny_data():
    ds = data.load_fashion_mnist(subset=True)
    return data.Dataset(ds.train_images[:32], ds.train_labels[:32], ds.test_images[:32], ds.test_labels[:32], ds.source)


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, SIZE, SIZE), dtype=np.float32), rng.integers(0, 10, n)


def overflowing_weights(spec=SPEC):
    """Finite weights (every value a float32) that overflow float32 in the first layer."""
    w = canonical.init_weights(spec)
    w["stem.conv.weight"] = np.full_like(w["stem.conv.weight"], 3e38)
    return w


# ---- 1. numbers: finite where produced, named where not --------------------------------------
@pytest.mark.parametrize("backend, device", CASES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_is_refused_before_the_framework_sees_it(backend, device, bad):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    before = backend.get_weights(model)
    x, y = batch()
    x[1, 0, 2, 3] = bad
    for call in (
        lambda: backend.forward(model, x),
        lambda: backend.forward(model, x, training=True),
        lambda: backend.named_outputs(model, x),
        lambda: backend.loss_and_grads(model, x, y),
        lambda: backend.sgd_step(model, x, y, 0.05),
    ):
        with pytest.raises(
            InputError, match=r"NaN or Inf value\(s\), the first .* at image 1, channel 0, row 2, column 3"
        ):
            call()
    after = backend.get_weights(model)  # nothing was stepped or normalised with it
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.parametrize(
    "lr, message",
    [
        (float("inf"), "finite number"),
        (float("nan"), "finite number"),
        (True, "must be a number"),
        ("0.1", "must be a number"),
        (0, "positive"),
        (-0.1, "positive"),
        (1e-320, "float32's smallest normal number"),
        (1e-39, "float32's smallest normal number"),
        (1e39, "the largest float32"),
        (10**400, "finite number"),
    ],
)
def test_learning_rate_is_checked_once_for_every_caller(lr, message, oracle, tiny_data):
    model = oracle.build("d2l-resnet18", **TINY)
    x, y = batch()
    for call in (
        lambda: oracle.sgd_step(model, x, y, lr),
        lambda: train.fit(oracle, model, tiny_data, epochs=1, lr=lr, batch_size=16, resize=SIZE),
        lambda: trace.record(oracle, model, [(x, y)], lr=lr),
        lambda: validate.check_learning_rate(lr),
    ):
        with pytest.raises(InputError, match=message):
            call()
    assert validate.check_learning_rate(validate.FLOAT32_SMALLEST_NORMAL) > 0  # the boundary itself is accepted


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr", "1e-320"], "--lr: 9.99989e-321 is below 1.175e-38"),
        (["train", "--lr", "inf"], "--lr: must be a finite number"),
        (["train", "--epochs", "99999999999999999999999"], "--epochs: must be from 1 to 100,000"),
        (["train", "--epochs", "2.5"], "--epochs: must be an integer"),
        (["train", "--dist-timeout", "1e300"], "--dist-timeout: must be more than 0 and at most 604,800 seconds"),
        (["trace", "--perturb", "1e300"], "--perturb: must be from 0 to 1"),
        (["trace", "--lr", "1e-40"], "--lr: 1e-40 is below"),
    ],
)
def test_numeric_options_are_refused_out_of_range(capsys, tmp_path, argv, message):
    code, out, err = run(capsys, *argv[:1], "--backend", "numpy", *argv[1:], "--out", tmp_path / "out")
    assert code == 2 and message in err and one_line(err)[0], err
    assert not (tmp_path / "out").exists()


def test_epochs_and_timeouts_through_the_python_api(oracle, tiny_data):
    model = oracle.build("d2l-resnet18", **TINY)
    with pytest.raises(InputError, match="epochs must be from 1 to 100,000"):
        train.fit(oracle, model, tiny_data, epochs=10**20, batch_size=16, resize=SIZE)
    for seconds in (1e300, float("inf"), 0, -1):
        with pytest.raises(InputError, match="timeout"):
            validate.check_timeout(seconds)


@pytest.mark.parametrize("backend, device", CASES)
def test_set_weights_checks_values_as_load_weights_does(backend, device):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    good = backend.get_weights(model)
    for name, value in (("stages.1.0.conv1.weight", np.nan), ("head.fc.bias", np.inf), ("stem.bn.running_var", -1)):
        w = dict(good)
        w[name] = w[name].copy()
        w[name].flat[0] = value
        with pytest.raises(canonical.WeightsError, match=rf"{name} \((NaN/Inf|negative variance)\)"):
            backend.set_weights(model, w)
    after = backend.get_weights(model)
    for name in good:
        np.testing.assert_array_equal(after[name], good[name], err_msg=name)


@pytest.mark.parametrize("backend, device", CASES)
def test_overflowing_weights_name_the_first_non_finite_layer(backend, device):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    backend.set_weights(model, overflowing_weights())
    x, _ = batch()
    with pytest.raises(NonFiniteError, match=r"the output of layer stem is not finite"):
        backend.named_outputs(model, x)
    try:
        logits = backend.forward(model, x)
    except NonFiniteError as e:
        assert "non-finite logits" in str(e) and "the first layer whose output is not finite is stem" in str(e)
    else:  # the framework's later layers turned the Inf into finite numbers (oneDNN's ReLU maps NaN to 0)
        assert np.isfinite(logits).all()
    images, labels = np.full((4, 28, 28), 200, np.uint8), np.arange(4)
    with pytest.raises(NonFiniteError, match=r"layer stem is not finite"):  # what evaluate runs
        train.evaluate_accuracy(backend, model, images, labels, resize=SIZE, check_layers=True)


@pytest.mark.parametrize("backend, device", CASES)
def test_training_forward_on_huge_input_names_the_running_statistic(backend, device):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    x, _ = batch()
    with pytest.raises(NonFiniteError, match=r"running statistics no network can use: stem\.bn\.running_"):
        backend.forward(model, x * np.float32(1e30), training=True)


@pytest.mark.parametrize("backend, device", CASES)
def test_fit_from_overflowing_weights_stops_with_where(backend, device, tiny_data, tmp_path):
    model = backend.build("d2l-resnet18", device=device, **TINY)
    backend.set_weights(model, overflowing_weights())
    with pytest.raises(train.TrainingDiverged, match=r"training diverged.*epoch 1.*no epoch had finished"):
        train.fit(backend, model, tiny_data, epochs=2, lr=0.05, batch_size=16, resize=SIZE, out=tmp_path / "run")
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


def _weights_file(tmp_path, weights, name="w.safetensors"):
    return canonical.save_weights(tmp_path / name, weights, SPEC, preprocess=data.preprocessing(SIZE))


def test_evaluate_and_trace_refuse_overflowing_weights(tmp_path, capsys):
    path = _weights_file(tmp_path, overflowing_weights())
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "32")
    assert code == 1 and out == "" and f"no accuracy for {path}" in err and "layer" in err, err
    assert one_line(err)[0], err
    trace_file = tmp_path / "t.safetensors"
    code, out, err = run(
        capsys, "trace", "--backend", "numpy", "--weights", path, "--steps", "2", "--batch-size", "8",
        "--resize", SIZE, "--out", trace_file,
    )  # fmt: skip
    assert code == 1 and "nothing traced" in err and "at step 0" in err and one_line(err)[0], err
    assert not trace_file.exists()


@pytest.fixture(scope="module")
def numpy_trace(tmp_path_factory, tiny_data):
    """A two-step NumPy trace (tensors, metadata) and its file."""
    oracle = load_backend("numpy")
    model = oracle.build("d2l-resnet18", **TINY)
    batches = trace.training_batches(tiny_data, steps=2, batch_size=8, seed=0, resize=SIZE)
    tensors, meta = trace.record(oracle, model, batches, lr=0.05, activation_images=2)
    path = trace.save(tmp_path_factory.mktemp("trace") / "numpy.safetensors", tensors, meta)
    return tensors, meta, path


def _variant(tmp_path, numpy_trace, name, change_tensors=None, change_meta=None):
    """The NumPy trace relabelled as another backend's, with changes."""
    tensors, meta, _ = numpy_trace
    tensors = {k: v.copy() for k, v in tensors.items()}
    meta = json.loads(json.dumps({**meta, "backend": name}))
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    return trace.save(tmp_path / f"{name}.safetensors", tensors, meta)


def _nan(key, index=(0,)):
    def change(tensors):
        tensors[key][index] = np.nan

    return change


@pytest.mark.parametrize(
    "change, quantity",
    [
        (_nan("loss"), "loss"),
        (_nan("step.1.logits", (0, 3)), "logits"),
        (_nan("grad_norm", (0, 5)), "grad norms"),
        (_nan("bn.stem.bn.running_var", (1, 0)), "bn stats"),
        (_nan("step.0.act.stages.1", (0, 0, 0, 0)), "stages.1"),
    ],
    ids=["loss", "logits", "grad-norm", "bn", "stage"],
)
@pytest.mark.parametrize("side", ["trace", "reference"])
def test_compare_counts_a_non_finite_value_as_a_difference(tmp_path, numpy_trace, capsys, change, quantity, side):
    clean = _variant(tmp_path, numpy_trace, "torch")
    broken = _variant(tmp_path, numpy_trace, "tf", change)
    paths = [clean, broken] if side == "trace" else [broken, clean]
    code, out, err = run(capsys, "compare", *paths, "--tolerance", "1e-3", "--no-plot")
    assert code == 1 and "non-finite value (NaN or Inf)" in err, (out, err)
    assert f"{quantity} (non-finite on one side (NaN or Inf))" in out, out
    assert "none in" not in out.split("first difference above")[1].splitlines()[0], out


def test_compare_says_which_stage_outputs_it_could_not_compare(tmp_path, numpy_trace, capsys):
    def no_layers(meta):
        meta["layers"], meta["activation_images"] = [], 0

    def drop_acts(tensors):
        for key in [k for k in tensors if ".act." in k]:
            del tensors[key]

    a = _variant(tmp_path, numpy_trace, "torch")
    b = _variant(tmp_path, numpy_trace, "tf", drop_acts, no_layers)
    code, out, err = run(capsys, "compare", a, b, "--no-plot")
    assert code == 0 and f"stage outputs not compared for tf: {b} records no stage outputs" in out, out
    assert "--activation-images N" in out


# ---- 2. only regular files, inside directories the package owns ------------------------------
def _not_regular(tmp_path, kind):
    """A path holding something other than a regular file, and a way to see it is unchanged."""
    path = tmp_path / f"target-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
        return path, lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "dir":
        path.mkdir()
        return path, lambda: path.is_dir() and not any(path.iterdir())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path.symlink_to(victim)
    return path, lambda: path.is_symlink() and victim.read_text() == "keep me"


KINDS = ["fifo", "dir", "symlink"] if hasattr(os, "mkfifo") else ["dir", "symlink"]


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    path, unchanged = _not_regular(tmp_path, kind)
    with pytest.raises(files.OutputError, match=rf"{path} is a (FIFO|directory|symbolic link).*regular files"):
        files.atomic_write_bytes(path, b"data")
    assert unchanged()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "command",
    [
        ["bench", "--backend", "numpy", "--width", "4", "--size", "16", "--batch-size", "4", "--steps", "1", "--json"],
        ["trace", "--backend", "numpy", "--width", "4", "--steps", "1", "--batch-size", "8", "--out"],
        ["compare", "--plot"],
    ],
    ids=["bench-json", "trace-out", "compare-plot"],
)
def test_commands_refuse_an_output_that_is_not_a_regular_file_before_any_work(
    tmp_path, capsys, monkeypatch, kind, command
):
    path, unchanged = _not_regular(tmp_path, kind)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: pytest.fail("the data was read"))
    argv = [*command, path]
    if command[0] == "compare":
        argv = ["compare", tmp_path / "missing-a.safetensors", tmp_path / "missing-b.safetensors", "--plot", path]
    code, out, err = run(capsys, *argv)
    assert code == 2 and f"{path} is a" in err and "writes only regular files" in err, err
    assert one_line(err)[0] and "tracing" not in err, err
    assert unchanged()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--backend", "numpy", "--out", ""],
        ["trace", "--backend", "numpy", "--out", ""],
        ["bench", "--backend", "numpy", "--json", ""],
        ["compare", "a", "b", "--plot", ""],
        ["evaluate", "--backend", "numpy", "--weights", ""],
    ],
    ids=["train", "trace", "bench", "compare", "evaluate"],
)
def test_an_empty_path_is_refused(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and "must be a path, got an empty string" in err, err
    assert not list(tmp_path.iterdir())


def test_fit_refuses_an_empty_run_directory(oracle, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = oracle.build("d2l-resnet18", **TINY)
    with pytest.raises(files.OutputError, match="empty path"):
        train.fit(oracle, model, tiny_data, epochs=1, batch_size=16, resize=SIZE, out="")
    assert not list(tmp_path.iterdir())


CLI_TRAIN = ["train", "--backend", "numpy", "--preset", "quick", "--width", "4", "--resize", SIZE, "--limit", "32",
             "--batch-size", "16", "--epochs", "1", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("kind", ["symlink", "fifo"] if hasattr(os, "mkfifo") else ["symlink"])
def test_the_run_directory_lock_cannot_be_redirected(tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    outside = tmp_path / "outside"
    if kind == "symlink":
        (out / ".lock").symlink_to(outside)
    else:
        os.mkfifo(out / ".lock")
    code, stdout, err = run(capsys, *CLI_TRAIN, "--out", out)
    assert code == 2 and f"{out / '.lock'} is a" in err and "remove it" in err and one_line(err)[0], err
    assert not outside.exists() and sorted(p.name for p in out.iterdir()) == [".lock"]
    with pytest.raises(files.OutputError, match="lock the run directory"):
        files.open_lock(out / ".lock")


@pytest.mark.parametrize(
    "name", [train.CHECKPOINT, train.HISTORY, train.PLOT, train.FINAL_WEIGHTS, "epoch-001.safetensors"]
)
def test_run_files_that_are_links_are_refused_before_training(tmp_path, capsys, monkeypatch, name):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (out / name).symlink_to(victim)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: pytest.fail("the data was read"))
    code, stdout, err = run(capsys, *CLI_TRAIN, "--out", out)
    assert code in (1, 2) and str(out / name) in err and one_line(err)[0], err
    assert (out / name).is_symlink() and victim.read_text() == "keep me"


def test_a_checkpoint_that_is_a_directory_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    (out / train.CHECKPOINT).mkdir(parents=True)
    with pytest.raises(train.RunError, match=r"checkpoint.json is a directory, not a file"):
        train.read_checkpoint(out)
    code, stdout, err = run(capsys, *CLI_TRAIN, "--out", out, "--resume")
    assert code == 2 and "checkpoint.json is a directory" in err and one_line(err)[0], err


def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "bench.json"
    with pytest.raises(files.WriteError, match=rf"cannot write {target}: No space left on device \(the disk is full\)"):
        files.atomic_write_bytes(target, b"{}")
    assert list(tmp_path.iterdir()) == []
    code, out, err = run(
        capsys, "bench", "--backend", "numpy", "--width", "4", "--size", "16", "--batch-size", "4", "--steps", "1",
        "--warmup", "0", "--quiet", "--json", target,
    )  # fmt: skip
    assert code == 1 and f"cannot write {target}: No space left on device" in err and "[Errno" not in err, err


# ---- 3. every file parsed with limits, against its kind's schema -----------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def write_raw(path, tensors, metadata):
    """A safetensors file exactly as given: one someone else could send."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


def good_metadata(**changes):
    meta = {
        "format": canonical.FORMAT,
        "arch": json.dumps(dataclasses.asdict(SPEC)),
        "preprocess": json.dumps(data.preprocessing(SIZE)),
    }
    meta.update(changes)
    return meta


def _arch_with(**fields):
    return json.dumps({**json.loads(json.dumps(dataclasses.asdict(SPEC))), **fields})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": DEEP}, "metadata.arch: is nested more than 16 levels deep"),
        ({"preprocess": DEEP}, "metadata.preprocess: is nested more than 16 levels deep"),
        ({"arch": _arch_with()[:-1] + ', "width": 8}'}, "metadata.arch: is not valid JSON (duplicate key(s) 'width'"),
        ({"arch": _arch_with(bn={"eps": 1.0, "momentum": 0.1})}, "metadata.arch.bn.eps: must be at most 0.01"),
        ({"preprocess": json.dumps({**data.preprocessing(SIZE), "scale": 0})}, "metadata.preprocess.scale"),
        ({"preprocess": json.dumps({**data.preprocessing(SIZE), "mean": 1e300})}, "inputs as large as 1e+300"),
        ({"preprocess": json.dumps({**data.preprocessing(SIZE), "scale": 1e300})}, "inputs as large as"),
    ],
    ids=["deep-arch", "deep-preprocess", "duplicate-key", "bn-eps-1", "scale-0", "mean-1e300", "scale-1e300"],
)
def test_weights_metadata_is_parsed_with_limits(tmp_path, capsys, changes, message):
    path = write_raw(tmp_path / "w.safetensors", canonical.init_weights(SPEC), good_metadata(**changes))
    with pytest.raises(canonical.WeightsError) as info:
        canonical.read_metadata(path)
    assert message in str(info.value) and str(path) in str(info.value) and "save_weights" in str(info.value)
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8")
    assert code == 1 and message in err and one_line(err)[0], err


def test_a_safetensors_header_larger_than_its_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(canonical.WeightsError, match=r"header: declares 1,099,511,627,776 bytes"):
        canonical.read_metadata(path)


def test_batch_norm_eps_has_a_ceiling():
    from resnet_multi.spec import BatchNormSpec

    with pytest.raises(InputError, match=r"eps must be a positive number up to 0.01, got 1.0"):
        get_arch("d2l-resnet18", bn=BatchNormSpec(eps=1.0))
    get_arch("d2l-resnet18", bn=BatchNormSpec(eps=1e-3))  # TensorFlow's default stays valid


@pytest.fixture
def run_dir(tmp_path, oracle, tiny_data):
    """A one-epoch run directory and its checkpoint, parsed."""
    out = tmp_path / "run"
    model = oracle.build("d2l-resnet18", **TINY)
    train.fit(oracle, model, tiny_data, epochs=1, lr=0.05, batch_size=16, resize=SIZE, out=out, plot=False)
    return out, json.loads((out / train.CHECKPOINT).read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: DEEP, "the file: is nested more than 16 levels deep"),
        (lambda s: {**s, "optimizer": {**s["optimizer"], "name": "adam"}}, "optimizer.name: must be one of 'sgd'"),
        (lambda s: {**s, "optimizer": {**s["optimizer"], "momentum": 0.9}}, "optimizer.momentum: is 0.9, but the"),
        (lambda s: {**s, "rng": {**s["rng"], "state": [1, 2]}}, "rng.state: must be null, got [1, 2]"),
        (lambda s: {**s, "lr": 0.5}, "lr: is 0.5, but the checkpoint's recipe"),
        (lambda s: {**s, "weights": "epoch-007.safetensors"}, "weights: is 'epoch-007.safetensors'"),
        (lambda s: {**s, "recipe": {**s["recipe"], "lr": 1e-320}}, "recipe.lr: must be at least"),
        (lambda s: json.dumps(s)[:-40], "the file: is not valid JSON"),
        (lambda s: json.dumps(s)[:-1] + ', "epoch": 1}', "duplicate key(s) 'epoch'"),
    ],
    ids=["deep", "adam", "momentum", "rng-state", "lr", "weights", "tiny-lr", "cut-off", "duplicate"],
)
def test_checkpoints_are_parsed_with_limits(run_dir, capsys, edit, message):
    out, state = run_dir
    changed = edit(state)
    (out / train.CHECKPOINT).write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(train.RunError) as info:
        train.read_checkpoint(out)
    assert message in str(info.value) and str(out / train.CHECKPOINT) in str(info.value), str(info.value)
    assert "resnet-multi evaluate --weights" in str(info.value)  # the fix: what remains usable


def _trace_file(tmp_path, numpy_trace, change_tensors=None, meta_text=None):
    tensors, meta, _ = numpy_trace
    tensors = {k: v.copy() for k, v in tensors.items()}
    if change_tensors:
        change_tensors(tensors)
    path = tmp_path / "bad.safetensors"
    write_raw(path, tensors, {"trace": meta_text if meta_text is not None else json.dumps(meta)})
    return path


def _meta_text(numpy_trace, change):
    meta = json.loads(json.dumps(numpy_trace[1]))
    result = change(meta)
    return result if isinstance(result, str) else json.dumps(meta)


def _drop(key):
    def change(tensors):
        del tensors[key]

    return change


@pytest.mark.parametrize(
    "tensors, meta, message",
    [
        (None, lambda m: "[1, 2]", "format: is 'list'"),
        (None, lambda m: DEEP, "metadata: is nested more than 16 levels deep"),
        (None, lambda m: json.dumps(m)[:-30], "metadata: is not valid JSON"),
        (None, lambda m: m.pop("spec"), "missing key(s) 'spec'"),
        (None, lambda m: m.update(params=5), "params: must be a list, got int 5"),
        (None, lambda m: m.update(layers="stem"), "layers: must be a list"),
        (None, lambda m: m["recipe"].update(steps=3), "batches_sha256: has 2 entries for 3 steps"),
        (None, lambda m: m.update(threads={"env": [1]}), "threads.env: must be an object"),
        (_drop("step.0.logits"), None, "tensors: missing step.0.logits"),
        (_drop("loss"), None, "tensors: missing loss"),
        (lambda t: t.update(grad_norm=t["grad_norm"][:1]), None, "tensor grad_norm: has shape (1, "),
        (lambda t: t.update(extra=np.zeros(1, np.float32)), None, "tensors: unexpected extra"),
    ],
    ids=[
        "a-list", "deep", "cut-off", "no-spec", "int-for-list", "str-for-list", "steps", "threads",
        "no-logits", "no-loss", "short-grad-norm", "extra-tensor",
    ],
)  # fmt: skip
def test_malformed_traces_name_the_file_and_the_key(tmp_path, numpy_trace, capsys, tensors, meta, message):
    path = _trace_file(tmp_path, numpy_trace, tensors, None if meta is None else _meta_text(numpy_trace, meta))
    with pytest.raises(trace.TraceError) as info:
        trace.load(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "trace again with resnet-multi trace" in text, text
    code, out, err = run(capsys, "compare", numpy_trace[2], path, "--no-plot")
    assert code == 1 and message in err and one_line(err)[0], err


def test_an_empty_trace_is_refused(tmp_path, numpy_trace):
    def empty(meta):
        meta["recipe"]["steps"], meta["batches_sha256"] = 0, []

    def no_steps(tensors):
        for key in [k for k in tensors if k.startswith("step.")]:
            del tensors[key]
        tensors["loss"], tensors["grad_norm"] = tensors["loss"][:0], tensors["grad_norm"][:0]

    path = _trace_file(tmp_path, numpy_trace, no_steps, _meta_text(numpy_trace, empty))
    with pytest.raises(trace.TraceError, match=r"recipe.steps: must be at least 1"):
        trace.load(path)


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip-bomb", "raw"])
def test_data_files_are_read_with_a_size_limit(tmp_path, monkeypatch, compressed):
    import gzip

    monkeypatch.setattr(validate, "MAX_IDX_BYTES", 1 << 20)  # the same check, on a small file
    zeros = bytes(3 << 20)
    path = tmp_path / ("train-images-idx3-ubyte.gz" if compressed else "train-images-idx3-ubyte")
    path.write_bytes(gzip.compress(zeros, compresslevel=1) if compressed else zeros)
    what = "decompresses to more than 1,048,576 bytes" if compressed else "larger than 1,048,576 bytes"
    with pytest.raises(data.DataError, match=rf"{path}: {what}"):
        data.read_idx_images(path)


# ---- 5. messages that lead somewhere ----------------------------------------------------------
@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No Fashion-MNIST anywhere the package looks, and no network (the download fails)."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "no-system-data")

    def offline(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)


def test_missing_data_tells_a_command_line_user_the_flags(no_data, capsys, tmp_path):
    code, out, err = run(capsys, "train", "--backend", "numpy", "--out", tmp_path / "run")
    assert code == 1, err
    assert err.count("To get Fashion-MNIST") == 1, err  # the how-to block once, after the download's failure
    assert "pass --data-dir FOLDER" in err and "data_dir=" not in err, err
    assert "The automatic download failed: could not download" in err
    assert "--preset quick (or --subset)" in err  # the bundled subset needs no download
    with pytest.raises(data.DataError) as info:  # the Python API keeps its own words
        data.load_fashion_mnist()
    assert "pass data_dir=FOLDER" in str(info.value) and str(info.value).count("To get Fashion-MNIST") == 1


def test_data_errors_name_no_option_the_command_line_lacks(tmp_path, capsys):
    from test_data import write_set  # hand-built IDX files: not the official data

    folder = tmp_path / "mine"
    write_set(folder, n_train=32, n_test=8)
    weights = _weights_file(tmp_path, canonical.init_weights(SPEC))
    code, out, err = run(capsys, "evaluate", "--backend", "numpy", "--weights", weights, "--data-dir", folder)
    assert code == 1 and "SHA-256" in err and "verify=False)" in err, err
    assert "pass verify=False" not in err and "load yours in Python with" in err, err
    with pytest.raises(data.DataError, match="pass verify=False"):
        data.load_fashion_mnist(folder)


def test_install_hints_name_the_frameworks_own_environment():
    import configparser

    from resnet_multi import frameworks

    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    deps = [line.split(":", 1) for line in tox["testenv"]["deps"].splitlines() if ":" in line and "#" not in line]
    for fw in frameworks.FRAMEWORKS.values():
        hint = fw.install_hint()
        if fw.install is None:
            assert "pip install -e ." in hint
            continue
        assert f"tox -e {fw.name}" in hint and "resnet-multi[" not in hint, hint
        pins = [req.strip() for env, req in deps if env.strip() == fw.name]
        assert pins, f"tox.ini names no pins for {fw.name}"
        for pin in pins:  # the same versions as the framework's tox environment
            assert pin in fw.install.replace("'", ""), (fw.name, pin, fw.install)


@pytest.mark.parametrize("name, module", [("tf", "tensorflow"), ("torch", "torch"), ("jax", "jax")])
def test_a_missing_framework_says_which_environment_installs_it(name, module):
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        f"try:\n    import resnet_multi.{name}\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=_env()
    ).stdout
    assert f"tox -e {name}" in out and "not installed in this environment" in out and "resnet-multi[" not in out, out
    if name == "tf":
        assert "pip install tensorflow-cpu==2.21.0 -e ." in out, out


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize(
    "limit, batch, message",
    [
        ("1", "256", "the data holds 1 training image(s), and BatchNorm needs batches of at least 2"),
        ("3", "2", "choose a batch size that leaves none or at least 2, e.g. 3"),
    ],
)
def test_a_tiny_data_set_gets_a_batch_size_that_exists(capsys, tmp_path, limit, batch, message):
    argv = ["train", "--backend", "numpy", "--preset", "quick", "--width", "4", "--resize", SIZE, "--limit", limit,
            "--batch-size", batch, "--out", tmp_path / "run"]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and one_line(err)[0], err


def _train_process(out, epochs):
    argv = [sys.executable, "-m", "resnet_multi.cli", *map(str, CLI_TRAIN), "--epochs", str(epochs), "--out", str(out)]
    return subprocess.Popen(argv, cwd=ROOT, env={**_env(), "MPLBACKEND": "Agg"}, stderr=subprocess.PIPE, text=True)


def test_sigterm_says_where_the_run_stands(tmp_path):
    out = tmp_path / "run"
    process = _train_process(out, epochs=200)
    deadline = time.monotonic() + 120
    while not (out / train.CHECKPOINT).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "resnet-multi: terminated by SIGTERM; " in err and "the same command with --resume continues" in err, err
    assert "Traceback" not in err


def test_the_loser_of_a_race_for_a_run_directory_is_told_so(tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    fd = files.open_lock(out / ".lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the winner's lock
        assert train.standing(out).startswith(f"another run is writing to {out}")
    finally:
        os.close(fd)
    assert train.standing(out).startswith("no epoch had finished")  # once the winner is gone
