"""The parity suite: every backend, on every device it reports, against the spec
and the NumPy reference (float64), given the same canonical weights."""

import numpy as np
import pytest
from cases import BACKEND_CASES, INFERENCE_CASES, arch_cases
from helpers import kink_free_batch, random_weights, rel_err

from resnet_multi import ARCHS, shapes
from resnet_multi.weights import WeightsError, count, init_weights, load_weights, tensor_specs

ALL_ARCHS = list(ARCHS)

# Numeric checks run at 32x32 (the deep nets' last stage sees 1x1) to keep the
# suite quick on 2 cores; the chapter's own net also runs at 64x64 so its last
# stage sees a 2x2 grid and max pooling has real windows everywhere.
NUMERIC_CASES = [(arch, 32) for arch in ALL_ARCHS] + [("d2l-resnet18", 64)]


def numeric_cases(cases=BACKEND_CASES):
    """(backend, device, arch, size) params, ids like 'torch-cpu-resnet50-32'."""
    return [
        pytest.param(*case.values, arch, size, id=f"{case.id}-{arch}-{size}", marks=case.marks)
        for case in cases
        for arch, size in NUMERIC_CASES
    ]


def batch(spec, n, size, seed=1):
    return np.random.default_rng(seed).standard_normal((n, spec.in_channels, size, size)).astype(np.float32)


# 1. the chapter's checks ----------------------------------------------------------------
# (INFERENCE_CASES: these and the inference checks run on inference-only runtimes too)
@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
def test_residual_keeps_shape(backend, device):
    assert backend.residual_output_shape((4, 3, 6, 6), 3, 3) == (4, 3, 6, 6)


@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
def test_residual_projection_halves_and_widens(backend, device):
    assert backend.residual_output_shape((4, 3, 6, 6), 3, 6, use_1x1conv=True, strides=2) == (4, 6, 3, 3)


@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
@pytest.mark.parametrize(
    "options",
    [dict(kind="bottleneck"), dict(preact=True), dict(kind="bottleneck", preact=True, stride_on="1x1")],
    ids=["bottleneck", "preact", "preact-bottleneck-v1"],
)
def test_residual_variants(backend, device, options):
    assert backend.residual_output_shape((2, 8, 7, 7), 8, 8, **options) == (2, 8, 7, 7)
    assert backend.residual_output_shape((2, 8, 7, 7), 8, 16, True, 2, **options) == (2, 16, 4, 4)


@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
def test_residual_without_projection_cannot_change_shape(backend, device):
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        backend.residual_output_shape((4, 3, 6, 6), 3, 6)
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        backend.residual_output_shape((4, 3, 6, 6), 3, 3, strides=2)


# 2. and 3. shapes and counts ----------------------------------------------------------------
@pytest.mark.parametrize("backend, device, arch", arch_cases(ALL_ARCHS, INFERENCE_CASES))
def test_layer_shapes_and_counts(backend, device, arch):
    model = backend.build(arch, device=device)
    spec = model.spec
    for size in (224, 96, 225):
        input_shape = (1, spec.in_channels, size, size)
        assert backend.layer_shapes(model, input_shape) == shapes.layer_shapes(spec, input_shape), size
    assert backend.count_parameters(model) == count(spec)


# 4. inference -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device, arch, size", numeric_cases(INFERENCE_CASES))
def test_initial_weights_are_the_spec(backend, device, arch, size):
    model = backend.build(arch, device=device, seed=3)
    got, want = backend.get_weights(model), init_weights(model.spec, 3)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("backend, device, arch, size", numeric_cases(INFERENCE_CASES))
def test_inference_logits_match_reference(backend, device, arch, size, oracle):
    model, ref = backend.build(arch, device=device), oracle.build(arch)
    weights = random_weights(model.spec, seed=7)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    x = batch(model.spec, 2, size)
    got = backend.forward(model, x, training=False)
    want = oracle.forward64(ref, x, training=False)
    assert got.dtype == np.float32 and got.shape == want.shape
    # float32 through dozens of layers: errors of ~1e-6 relative; 1e-4 leaves room for
    # accumulation order, and still catches any wrong padding, layout or BN statistic.
    assert rel_err(got, want) <= 1e-4
    # inference must not touch the running statistics
    after = backend.get_weights(model)
    for t in tensor_specs(model.spec):
        np.testing.assert_array_equal(after[t.name], weights[t.name], err_msg=t.name)


# 5. training mode -----------------------------------------------------------------------
@pytest.mark.parametrize("backend, device, arch, size", numeric_cases())
def test_training_forward_matches_reference(backend, device, arch, size, oracle):
    """One training-mode forward pass at full width: logits normalised with batch
    statistics, and the updated BN running statistics (momentum convention and
    unbiased variance). 1e-3 relative, as for gradients below. Residual branches
    are damped (see the helpers): undamped, resnet101's float32 logits in training
    mode drifted 4e-3 from float64 while PyTorch in float64 matched to 1e-11."""
    model, ref = backend.build(arch, device=device), oracle.build(arch)
    weights = random_weights(model.spec, seed=11, damp_residuals=True)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    x = batch(model.spec, 4, size, seed=5)
    assert rel_err(backend.forward(model, x, training=True), oracle.forward64(ref, x, training=True)) <= 1e-3
    got_w, want_w = backend.get_weights(model), oracle.get_weights(ref)
    for t in tensor_specs(model.spec):
        if t.trainable:
            np.testing.assert_array_equal(got_w[t.name], weights[t.name], err_msg=t.name)
        else:
            assert rel_err(got_w[t.name], want_w[t.name]) <= 1e-3, t.name
            assert not np.array_equal(want_w[t.name], weights[t.name]), f"{t.name} did not update"


@pytest.mark.parametrize("backend, device, arch", arch_cases(ALL_ARCHS))
def test_gradients_match_reference(backend, device, arch, oracle):
    """Loss, logits and the gradient of the cross-entropy for every parameter, and
    the BN statistics after that training pass, against the float64 reference.

    Narrow nets (width 8, 32x32, batch 4) with damped residual branches on a
    kink-free batch (see the helpers): both are needed for float32 gradients of
    a 150-layer BN net to be well defined to three digits at all. Tolerance 1e-3
    relative per tensor; observed at most ~2e-4 (resnet152). A wrong formula,
    convention or layout gives errors of order 1.
    """
    model, ref = backend.build(arch, device=device, width=8), oracle.build(arch, width=8)
    weights = random_weights(model.spec, seed=11, damp_residuals=True)
    oracle.set_weights(ref, weights)
    x = kink_free_batch(oracle, ref, model.spec)
    backend.set_weights(model, weights)
    y = np.arange(4) % model.spec.num_classes
    got, want = backend.loss_and_grads(model, x, y), oracle.loss_and_grads(ref, x, y)
    assert abs(got.loss - want.loss) <= 1e-3 * abs(want.loss)
    assert rel_err(got.logits, want.logits) <= 1e-3
    scale = max(np.abs(g).max() for g in want.grads.values())
    for name, g_want in want.grads.items():
        g_got = got.grads[name]
        assert g_got.shape == g_want.shape, name
        if np.abs(g_want).max() <= 1e-9 * scale:
            # A conv bias feeding a training-mode BN: the BN subtracts the batch mean,
            # so this gradient is exactly zero; float32 leaves only rounding noise,
            # small next to the gradient of the same conv's weight.
            weight_grad = want.grads[name.replace(".bias", ".weight")]
            assert np.abs(g_got).max() <= 1e-3 * np.abs(weight_grad).max(), name
        else:
            assert rel_err(g_got, g_want) <= 1e-3, name
    got_w, want_w = backend.get_weights(model), oracle.get_weights(ref)
    for t in tensor_specs(model.spec):
        if not t.trainable:
            assert rel_err(got_w[t.name], want_w[t.name]) <= 1e-3, t.name


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_training_forward_updates_running_statistics(backend, device, oracle):
    """forward(training=True) alone does what a training step does to BN statistics."""
    model, ref = backend.build("d2l-resnet18", device=device), oracle.build("d2l-resnet18")
    weights = random_weights(model.spec, seed=2)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    x = batch(model.spec, 4, 32)
    assert rel_err(backend.forward(model, x, training=True), oracle.forward64(ref, x, training=True)) <= 1e-3
    got_w, want_w = backend.get_weights(model), oracle.get_weights(ref)
    for name in ("stem.bn.running_mean", "stem.bn.running_var", "stages.3.1.bn2.running_var"):
        assert rel_err(got_w[name], want_w[name]) <= 1e-3, name


# 6. weights files ------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
def test_weights_round_trip_bit_exact(backend, device, tmp_path):
    model = backend.build("resnet50", device=device, in_channels=1, num_classes=10)
    weights = random_weights(model.spec, seed=4)
    backend.set_weights(model, weights)
    path = backend.save_weights(model, tmp_path / "w.safetensors")
    other = backend.build("resnet50", device=device, in_channels=1, num_classes=10, seed=9)
    backend.load_weights(other, path)
    loaded = backend.get_weights(other)
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


@pytest.mark.parametrize("backend, device", INFERENCE_CASES)
def test_corrupt_and_mismatched_weights_are_refused(backend, device, tmp_path):
    model = backend.build("d2l-resnet18", device=device)
    path = backend.save_weights(model, tmp_path / "w.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        backend.load_weights(model, truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        backend.load_weights(model, garbage)
    # weights of another architecture: every problem is named
    wider = backend.build("d2l-resnet18", device=device, num_classes=7)
    with pytest.raises(WeightsError, match=r"head\.fc\.weight: expected \(10, 512\), got \(7, 512\)"):
        backend.load_weights(model, backend.save_weights(wider, tmp_path / "wider.safetensors"))
    with pytest.raises(WeightsError, match=r"missing: .*stages\.0\.0\.conv1\.bias"):
        backend.load_weights(
            model,
            backend.save_weights(
                backend.build("d2l-resnet18", device=device, conv_bias=False), tmp_path / "nobias.safetensors"
            ),
        )
    # a weights dict with an extra entry or a transposed dense weight
    weights = backend.get_weights(model)
    with pytest.raises(WeightsError, match=r"unexpected: extra\.weight"):
        backend.set_weights(model, {**weights, "extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match=r"mis-shaped: head\.fc\.weight"):
        backend.set_weights(model, {**weights, "head.fc.weight": weights["head.fc.weight"].T.copy()})
    with pytest.raises(WeightsError, match="not float32"):
        backend.set_weights(model, {**weights, "head.fc.bias": weights["head.fc.bias"].astype(np.float64)})
    assert load_weights(path, model.spec).keys() == weights.keys()


# 7. bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_bad_input_gets_a_clear_error(backend, device):
    model = backend.build("d2l-resnet18", device=device)
    x = np.zeros((2, 1, 32, 32), np.float32)
    with pytest.raises(ValueError, match="4-d NCHW batch"):
        backend.forward(model, x[0])
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), got 3"):
        backend.forward(model, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="too small to train"):
        backend.forward(model, np.zeros((1, 1, 16, 16), np.float32), training=True)
    with pytest.raises(TypeError, match=r"expected float32 input, got float64; convert with x.astype"):
        backend.forward(model, x.astype(np.float64))
    with pytest.raises(TypeError, match="expected float32 input, got uint8"):
        backend.forward(model, x.astype(np.uint8))
    with pytest.raises(ValueError, match="labels must lie in"):
        backend.loss_and_grads(model, x, np.array([0, 10]))
    with pytest.raises(ValueError, match="not available"):
        backend.build("d2l-resnet18", device="cuda:99")
    # the same batch is fine, and a 1x1 image is still a valid inference input
    assert backend.forward(model, x).shape == (2, 10)
    assert backend.forward(model, np.zeros((1, 1, 1, 1), np.float32)).shape == (1, 10)


# one SGD step --------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_sgd_step_matches_reference(backend, device, oracle):
    """One plain SGD step in the framework's own idiom moves every parameter by
    -lr * gradient, as the reference does (lr 0.05, the chapter's)."""
    model, ref = backend.build("d2l-resnet18", device=device, width=8), oracle.build("d2l-resnet18", width=8)
    weights = random_weights(model.spec, seed=3, damp_residuals=True)
    oracle.set_weights(ref, weights)
    x = kink_free_batch(oracle, ref, model.spec)
    backend.set_weights(model, weights)
    y = np.arange(4) % 10
    loss, logits = backend.sgd_step(model, x, y, 0.05)
    want_loss, want_logits = oracle.sgd_step(ref, x, y, 0.05)
    assert abs(loss - want_loss) <= 1e-3 * abs(want_loss)
    assert rel_err(logits, want_logits) <= 1e-3
    got_w, want_w = backend.get_weights(model), oracle.get_weights(ref)
    for t in tensor_specs(model.spec):
        step = want_w[t.name] - weights[t.name]
        if np.abs(step).max() > 1e-6 * np.abs(weights[t.name]).max():
            assert rel_err(got_w[t.name] - weights[t.name], step) <= 1e-3, t.name
    with pytest.raises(ValueError, match="learning rate must be a positive number"):
        backend.sgd_step(model, x, y, 0.0)
