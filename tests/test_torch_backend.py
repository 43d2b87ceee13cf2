"""Checks specific to the torch backend: the chapter's block classes, written out by hand,
against the spec; and the training-loop step (TorchBackend.train_step), written for a GPU
and tested here on whatever devices torch reports (on a machine without one, the CPU only):
metrics kept on the device give the per-step path's history exactly, a non-finite loss
is still caught (at the next read) and named by its step, batches built on the device
equal the host pipeline's, channels-last changes nothing beyond rounding, and bf16
mixed precision trains close to float32. The parity suite (tests/test_parity.py,
tests/test_train.py) runs sgd_step in float32 and is not touched by the step's options.
"""

import json

import numpy as np
import pytest
from helpers import first, kink_free_batch, random_weights, rel_err

from resnet_multi import data, train
from resnet_multi.backend import Backend, StepMetrics, load_backend
from resnet_multi.spec import block_class, block_spec
from resnet_multi.weights import init_weights

torch = pytest.importorskip("torch", reason="the torch backend is not installed")
rt = pytest.importorskip("resnet_multi.torch")
F = torch.nn.functional

BACKEND = load_backend("torch")
DEVICES = BACKEND.devices()
TINY = dict(width=8)
SIZE = 32


# ---- the chapter's block classes --------------------------------------------------------------
BLOCK_OPTIONS = [
    {},
    {"shortcut": "conv_bn", "conv_bias": False},
    {"kind": "bottleneck"},
    {"kind": "bottleneck", "stride_on": "1x1", "shortcut": "conv_bn"},
    {"preact": True},
    {"preact": True, "shortcut": "conv_bn"},
    {"kind": "bottleneck", "preact": True},
    {"kind": "bottleneck", "preact": True, "shortcut": "conv_bn", "stride_on": "1x1"},
]


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
@pytest.mark.parametrize("options", BLOCK_OPTIONS, ids=lambda o: "-".join(f"{v}" for v in o.values()) or "chapter")
def test_block_classes_hold_the_specs_layers(options, projection):
    """Each block class writes its layers out as the book does: they must be the spec's
    convolutions (channels, kernel, stride, padding, bias) and BatchNorms, under the
    attribute names weights.module_paths maps the canonical names to, and nothing else."""
    spec = block_spec(8, 16, True, 2, **options) if projection else block_spec(16, 16, **options)
    blk = rt.block(spec)
    assert type(blk).__name__ == block_class(spec) and blk.spec == spec
    paths = spec.attribute_names()
    convs = list(spec.convs())
    if projection:
        convs.append(("shortcut.conv", spec.in_channels, spec.out_channels, 1, spec.stride, 0))
    for name, cin, cout, k, s, p in convs:
        conv = blk.get_submodule(paths[name])
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
            cin,
            cout,
            (k, k),
            (s, s),
            (p, p),
        ), name
        assert (conv.bias is not None) == spec.conv_bias, name
    bns = dict(spec.bn_names())
    if projection and spec.shortcut == "conv_bn":
        bns["shortcut.bn"] = spec.out_channels
    for name, channels in bns.items():
        assert blk.get_submodule(paths[name]).num_features == channels, name
    with_weights = {name for name, m in blk.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert with_weights == {paths[name] for name, *_ in convs} | {paths[name] for name in bns}
    x = torch.rand(2, spec.in_channels, 6, 6)
    assert blk(x).shape == (2, spec.out_channels, 6 // spec.stride, 6 // spec.stride)


def test_block_classes_refuse_another_kind():
    with pytest.raises(ValueError, match="Residual builds basic blocks.*use Bottleneck"):
        rt.Residual(8, 16, True, 2, kind="bottleneck")
    with pytest.raises(ValueError, match="Bottleneck builds bottleneck blocks.*use PreActBottleneck"):
        rt.Bottleneck(block_spec(8, 16, True, 2, kind="bottleneck", preact=True))
    assert isinstance(rt.Bottleneck(8, 16, True, 2), rt.Bottleneck)


def test_the_chapters_projection_is_conv3():
    """The book calls a basic block's projection conv3; weights files keep the canonical
    stages.i.j.shortcut.conv, in both directions."""
    model = rt.net("d2l-resnet18", **TINY)
    projection = model.stages[1][0].conv3
    assert model.stages[1][0].bn3 is None and model.stages[1][1].conv3 is None
    weights = rt.get_weights(model)
    np.testing.assert_array_equal(weights["stages.1.0.shortcut.conv.weight"], projection.weight.detach().numpy())
    assert not any(".conv3." in name for name in weights)
    weights["stages.1.0.shortcut.conv.weight"] = weights["stages.1.0.shortcut.conv.weight"] + 1
    rt.set_weights(model, weights)
    np.testing.assert_array_equal(projection.weight.detach().numpy(), weights["stages.1.0.shortcut.conv.weight"])


def _without_timings(h):
    d = h.to_dict()
    del d["train_seconds"]
    return d


# ---- batches built on the device ------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [20, 32, 96, 224])
def test_device_resize_equals_host_resize(device, size):
    """The same two matrices as data.resize_bilinear. Each output is two nonzero products
    summed, twice, so FMA and summation order can move it by a rounding or two (2^-23 on
    pixels in [0, 1]); 2.5e-7 allows two such roundings. A different interpolation
    (align_corners=True, or another matrix) moves pixels far more."""
    pixels = np.random.default_rng(size).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    x = pixels.astype(np.float32) / np.float32(255)
    want = data.resize_bilinear(x, size)
    got = rt.resize_bilinear(torch.from_numpy(x).to(device), size).cpu().numpy()
    assert got.shape == want.shape == (16, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)
    aligned = torch.nn.functional.interpolate(
        torch.from_numpy(x)[:, None], size=(size, size), mode="bilinear", align_corners=True
    )[:, 0].numpy()
    assert np.abs(aligned - want).max() > 1e-3  # the check above can tell interpolations apart


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resize", [None, 32, 96])
def test_device_batches_are_the_host_batches(device, resize, subset):
    images, labels = subset.train_images[:70], subset.train_labels[:70]  # a last batch of 6
    batches = rt.DeviceBatches(images, labels, batch_size=16, resize=resize, device=device)
    for epoch in (0, 1):
        host = list(data.iterate_batches(images, labels, 16, shuffle=True, seed=3, epoch=epoch, resize=resize))
        ours = list(batches(3, epoch))
        assert [len(y) for _, y in ours] == [len(y) for _, y in host] == [16, 16, 16, 16, 6]
        for (x, y), (hx, hy) in zip(ours, host):
            assert x.device == torch.device(device) and x.dtype == torch.float32
            np.testing.assert_array_equal(y.cpu().numpy(), hy)
            np.testing.assert_allclose(x.cpu().numpy(), hx, rtol=0, atol=0 if resize is None else 2.5e-7)


def test_device_batches_train(subset):
    """fit(device_batches=True) on the CPU: the CUDA data path, run where it can be here."""
    ds = first(subset, 64, 32)
    model = BACKEND.build("d2l-resnet18", device="cpu", **TINY)
    history = train.fit(BACKEND, model, ds, epochs=2, lr=0.05, batch_size=32, resize=SIZE, device_batches=True)
    assert history.examples == [64, 64] and all(np.isfinite(history.train_loss))


# ---- metrics on the device --------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_deferred_metrics_give_the_per_step_history(device, subset, monkeypatch):
    """Ten steps an epoch, read five times: the same history and weights, bit for bit, as
    the seam's default step (sgd_step, float loss and NumPy logits summed on the host
    after every step), on the same host batches."""
    ds = first(subset, 160, 64)
    reads = []
    real_read = rt.DeviceMetrics.read

    def counting_read(self):
        reads.append(self.steps)
        return real_read(self)

    monkeypatch.setattr(rt.DeviceMetrics, "read", counting_read)
    new = BACKEND.build("d2l-resnet18", device=device, **TINY)
    deferred = train.fit(BACKEND, new, ds, epochs=2, lr=0.05, batch_size=16, resize=SIZE, seed=0, device_batches=False)
    assert reads == [2, 4, 6, 8, 10] * 2  # d2l's five points an epoch, the last at its end
    monkeypatch.setattr(BACKEND, "train_step", Backend.train_step.__get__(BACKEND))
    monkeypatch.setattr(BACKEND, "new_metrics", Backend.new_metrics.__get__(BACKEND))
    old = BACKEND.build("d2l-resnet18", device=device, **TINY)
    per_step = train.fit(BACKEND, old, ds, epochs=2, lr=0.05, batch_size=16, resize=SIZE, seed=0, device_batches=False)
    assert reads == [2, 4, 6, 8, 10] * 2  # the default path read nothing from the device
    assert _without_timings(deferred) == _without_timings(per_step)
    assert len(deferred.curve) == 10
    got, want = BACKEND.get_weights(new), BACKEND.get_weights(old)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_read_still_catches_a_non_finite_loss(device, subset, tmp_path, monkeypatch):
    """A NaN batch at epoch 2, step 3 is seen at the read after step 4, named by its own
    step, and the checkpoint of epoch 1 is the one kept."""
    ds = first(subset, 160, 32)
    real_step, calls = BACKEND.train_step, []

    def step(model, batch, lr, metrics):
        calls.append(1)
        x, y = batch
        return real_step(model, (x * float("nan") if len(calls) == 13 else x, y), lr, metrics)

    monkeypatch.setattr(BACKEND, "train_step", step)
    model = BACKEND.build("d2l-resnet18", device=device, **TINY)
    out = tmp_path / "run"
    with pytest.raises(
        train.TrainingDiverged,
        match=r"loss became nan at epoch 2, step 3 \(lr 0\.05; seen at the read after step 4\); "
        r"the last good checkpoint \(.*epoch-001\.safetensors\) is kept",
    ):
        train.fit(BACKEND, model, ds, epochs=3, lr=0.05, batch_size=16, resize=SIZE, out=out)
    assert len(calls) == 14
    state = json.loads((out / train.CHECKPOINT).read_text())
    assert state["epoch"] == 1 and state["weights"] == "epoch-001.safetensors"
    assert not (out / train.FINAL_WEIGHTS).exists()


def test_device_metrics_sum_as_the_host_does():
    """The same sums and the same first bad step from the same losses and logits."""
    rng = np.random.default_rng(0)
    host, device = StepMetrics(), rt.DeviceMetrics("cpu")
    for k, loss in enumerate([2.3, 1.7, float("inf"), float("nan"), 0.9]):
        logits, y = rng.normal(size=(5 + k, 10)).astype(np.float32), rng.integers(0, 10, 5 + k)
        host.add(np.float32(loss), logits, y)
        device.add(torch.tensor(loss, dtype=torch.float32), torch.from_numpy(logits), torch.from_numpy(y))
    a, b = host.read(), device.read()
    assert b.diverged == a.diverged == (3, float("inf"))
    assert (
        (b.correct, b.seen, b.steps) == (a.correct, a.seen, a.steps) and np.isnan(a.loss_sum) and np.isnan(b.loss_sum)
    )


# ---- memory format and precision --------------------------------------------------------------
def _pass(model, x, y, *, channels_last):
    module = model.module.train(True)
    module.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x).to(model.device)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    logits = module(xt)
    loss = F.cross_entropy(logits, torch.from_numpy(y).to(model.device))
    loss.backward()
    return loss.item(), logits.detach().cpu().numpy(), {k: p.grad.cpu().numpy() for k, p in module.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_channels_last_gives_the_same_logits_and_grads(device, seed, oracle):
    """One training pass, channels-last against contiguous, from the same weights on the same
    batch: loss, logits and every gradient within the parity suite's 1e-5 (relative to
    each tensor's largest value), on the parity suite's kind of batch and weights
    (tests/test_train.py: damped residual branches, a batch clear of every ReLU and
    max-pool decision). On a plain real batch at the spec's initial weights the two
    layouts' logits can differ by more: rounding amplified by BatchNorm over a 1x1 last
    stage, as the parity suite describes."""
    model_spec = BACKEND.build("d2l-resnet18", **TINY).spec
    ref = oracle.build("d2l-resnet18", **TINY)
    weights = random_weights(model_spec, seed=seed, damp_residuals=True)
    oracle.set_weights(ref, weights)
    x = kink_free_batch(oracle, ref, model_spec, n=16, first_seed=1000 * seed)
    y = np.random.default_rng(seed).integers(0, 10, 16)
    plain, nhwc = (BACKEND.build("d2l-resnet18", device=device, **TINY) for _ in range(2))
    for model, channels_last in ((plain, False), (nhwc, True)):
        BACKEND.set_weights(model, weights)
        BACKEND.configure_training(model, channels_last=channels_last)
    conv = nhwc.module.stages[0][0].conv1.weight  # (the stem's one input channel is both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    read_back = BACKEND.get_weights(nhwc)  # canonical (contiguous) arrays, the same values
    for name, w in weights.items():
        np.testing.assert_array_equal(read_back[name], w, err_msg=name)
        assert read_back[name].flags.c_contiguous, name
    want_loss, want_logits, want_grads = _pass(plain, x, y, channels_last=False)
    loss, logits, grads = _pass(nhwc, x, y, channels_last=True)
    assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
    assert rel_err(logits, want_logits) <= 1e-5
    scale = max(np.abs(g).max() for g in want_grads.values())
    for name, g in want_grads.items():
        if np.abs(g).max() <= 1e-6 * scale:
            # A conv bias feeding a training-mode BN: exactly zero in exact arithmetic, so both
            # layouts give rounding noise; compared on the scale of the same conv's weight
            # gradient, as tests/test_parity.py does.
            weight_grad = want_grads[name.replace(".bias", ".weight")]
            assert np.abs(grads[name] - g).max() <= 1e-5 * np.abs(weight_grad).max(), name
        else:
            assert rel_err(grads[name], g) <= 1e-5, name


def _step_losses(device, precision, weights, batches):
    model = BACKEND.build("d2l-resnet18", device=device, **TINY)
    BACKEND.set_weights(model, weights)
    BACKEND.configure_training(model, precision=precision)
    losses = []
    for batch in batches:
        metrics = BACKEND.new_metrics(model)
        BACKEND.train_step(model, batch, 0.05, metrics)
        reading = metrics.read()
        losses.append(reading.loss_sum / reading.seen)
    return np.array(losses)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_trains_close_to_float32(device, seed, subset):
    """Ten steps of train_step under bf16 autocast against float32 on the same real batches
    (32 at 32x32, lr 0.05), from the same weights with damped residual branches (the
    parity suite's well-conditioned start): every step's loss within 3% of float32's,
    and not equal to it.

    bfloat16 keeps 8 significant bits (relative rounding 2^-9, 0.2%). From damped weights
    the gap stays well inside 3% over the ten steps; from the spec's own (undamped)
    initial weights it is small at the first step but grows by tens of percent within a
    few, the float32 dynamics amplifying any rounding (tests/test_train.py's parity
    docstring says the same of float32 against float64), so only the first step is
    checked there. A bf16 option that did nothing gives a gap of exactly 0."""
    spec = BACKEND.build("d2l-resnet18", **TINY).spec
    batches = list(
        data.iterate_batches(
            subset.train_images[:320], subset.train_labels[:320], 32, shuffle=True, seed=seed, resize=SIZE
        )
    )
    weights = random_weights(spec, seed=seed, damp_residuals=True)
    f32, bf16 = (_step_losses(device, p, weights, batches) for p in ("float32", "bf16"))
    rel = np.abs(bf16 - f32) / f32
    assert f32[-1] < f32[0] and bf16[-1] < bf16[0]  # both train
    assert rel.max() <= 0.03, rel
    assert rel.min() > 0, rel
    init = init_weights(spec, seed)
    f32, bf16 = (_step_losses(device, p, init, batches[:1]) for p in ("float32", "bf16"))
    assert 0 < abs(bf16[0] - f32[0]) <= 0.03 * f32[0]


def test_bf16_is_recorded_and_checked_on_resume(subset, tmp_path):
    ds = first(subset, 32, 16)
    model = BACKEND.build("d2l-resnet18", **TINY)
    train.fit(BACKEND, model, ds, epochs=1, batch_size=16, resize=SIZE, out=tmp_path, precision="bf16")
    assert train.read_checkpoint(tmp_path)["recipe"]["precision"] == "bf16"
    with pytest.raises(train.RunError, match=r"precision: checkpoint has 'bf16', this run None"):
        train.fit(
            BACKEND,
            BACKEND.build("d2l-resnet18", **TINY),
            ds,
            epochs=2,
            batch_size=16,
            resize=SIZE,
            out=tmp_path,
            resume=True,
        )
    train.fit(
        BACKEND,
        BACKEND.build("d2l-resnet18", **TINY),
        ds,
        epochs=2,
        batch_size=16,
        resize=SIZE,
        out=tmp_path,
        resume=True,
        precision="bf16",
    )


def test_unknown_precision_is_refused():
    model = BACKEND.build("d2l-resnet18", **TINY)
    with pytest.raises(ValueError, match=r"precision 'fp16' is not available with torch: choose float32 or bf16"):
        BACKEND.configure_training(model, precision="fp16")


def test_other_backends_refuse_the_torch_options():
    numpy = load_backend("numpy")
    model = numpy.build("d2l-resnet18", **TINY)
    with pytest.raises(
        ValueError,
        match=r"precision 'bf16' is not available with numpy, which trains in float32; "
        r".*--precision bf16.*--backend torch",
    ):
        numpy.configure_training(model, precision="bf16")
    with pytest.raises(ValueError, match=r"--channels-last .* only with --backend torch"):
        numpy.configure_training(model, channels_last=True)
    numpy.configure_training(model, channels_last=False)  # asking for the default is fine


# ---- the command line -------------------------------------------------------------------------
CLI_TINY = [
    "--preset",
    "quick",
    "--width",
    "4",
    "--resize",
    "32",
    "--limit",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--no-progress",
]


def test_cli_trains_in_bf16_channels_last(tmp_path, capsys):
    from resnet_multi.cli import main

    code = main(
        [
            "train",
            "--backend",
            "torch",
            "--device",
            "cpu",
            *CLI_TINY,
            "--precision",
            "bf16",
            "--channels-last",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("loss "), err
    assert "precision bf16" in err
    assert train.read_checkpoint(tmp_path / "run")["recipe"]["precision"] == "bf16"


def test_cli_refuses_bf16_elsewhere_before_any_work(tmp_path, capsys):
    from resnet_multi.cli import main

    code = main(["train", "--backend", "numpy", *CLI_TINY, "--precision", "bf16", "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 2 and "precision 'bf16' is not available with numpy" in err and "--backend torch" in err, err
    assert "training " not in err and not (tmp_path / "run").exists()
