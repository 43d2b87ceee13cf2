"""TensorFlow-specific checks: the translations resnet_multi.tf makes from Keras'
defaults to the spec, and the defaults themselves, so that a Keras release that
changes one of them shows up here by name rather than as a parity failure."""

import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed in this environment (tox -e tf)")
rn = pytest.importorskip("resnet_multi.tf")
keras = rn.keras

from resnet_multi import BatchNormSpec, get_arch  # noqa: E402
from resnet_multi.weights import count, init_weights  # noqa: E402


def test_import_without_tensorflow_names_the_extra():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "try:\n    import resnet_multi.tf\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # where to get it: the framework's own environment, or its install line in a new one
    assert "tox -e tf" in out and "pip install tensorflow-cpu==2.21.0" in out


def _valid_conv(x, conv, before, after):
    """``conv``'s kernel applied to ``x`` padded (before, after) on H and W, in plain TF."""
    padded = tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])
    return tf.nn.conv2d(padded, conv.kernel, conv.strides, "VALID")


def test_keras_same_padding_is_asymmetric_at_stride_2():
    """Why strided convs pad explicitly: on an even size Keras 'same' pads (2, 3) for the
    7x7/2 stem, so its windows sit one pixel off the spec's (3, 3)."""
    x = tf.random.stateless_normal((1, 8, 8, 1), seed=(1, 2))
    same = keras.layers.Conv2D(1, 7, strides=2, padding="same", use_bias=False)
    ours = rn.conv2d(1, 1, 7, 2, use_bias=False, padding=3)
    same.build(x.shape)
    same.kernel.assign(ours.kernel)
    assert same(x).shape == ours(x).shape  # shapes agree ...
    assert not np.allclose(same(x), ours(x))  # ... numbers do not
    np.testing.assert_allclose(same(x), _valid_conv(x, ours, 2, 3), atol=1e-6)  # 'same' is (2, 3)
    np.testing.assert_allclose(ours(x), _valid_conv(x, ours, 3, 3), atol=1e-6)  # the spec's (3, 3)


@pytest.mark.parametrize(
    "kernel, stride, padding, keras_padding",
    [(3, 1, 1, "same"), (1, 1, 0, "same"), (3, 2, 1, "valid"), (1, 2, 0, "valid"), (7, 2, 3, "valid")],
)
def test_convs_pad_symmetrically(kernel, stride, padding, keras_padding):
    """Stride-1 convs use Keras 'same', which is symmetric there (no separate pad op);
    strided ones pad explicitly and run 'valid'. Either way: the spec's symmetric padding."""
    conv = rn.conv2d(4, 5, kernel, stride, use_bias=True, padding=padding)
    assert conv.padding == keras_padding
    conv.bias.assign(tf.range(5, dtype=tf.float32))
    for size in (8, 7, 1):  # even, odd, and a 1x1 grid smaller than the kernel
        x = tf.random.stateless_normal((2, size, size, 4), seed=(size, 3))
        np.testing.assert_allclose(conv(x), _valid_conv(x, conv, padding, padding) + conv.bias, atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - tf.random.stateless_uniform((1, 4, 4, 1), seed=(3, 4))  # all negative
    out = rn.MaxPool2D(3, 2, 1)(x)
    assert out.shape == (1, 2, 2, 1)
    assert float(out[0, 0, 0, 0]) == float(tf.reduce_max(x[0, :2, :2, 0]))  # not the padding's 0


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_batch_norm_translates_the_spec_convention(compiled):
    default = keras.layers.BatchNormalization()
    assert (default.epsilon, default.momentum) == (1e-3, 0.99)  # Keras' own, opposite convention
    bn = rn.BatchNorm(1, BatchNormSpec(eps=1e-5, momentum=0.1))
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)
    # data with mean 4.5, biased variance 5.25, unbiased 6.0 (n = 8)
    x = tf.reshape(tf.range(8, dtype=tf.float32) + 1.0, (2, 2, 2, 1))
    train = tf.function(lambda t: bn(t, training=True)) if compiled else (lambda t: bn(t, training=True))
    out = train(x)
    assert float(bn.moving_mean[0]) == pytest.approx(0.9 * 0 + 0.1 * 4.5)
    assert float(bn.moving_variance[0]) == pytest.approx(0.9 * 1 + 0.1 * 6.0)  # unbiased, as the spec
    # the batch itself is normalised with the biased variance
    np.testing.assert_allclose(out.numpy().ravel(), (np.arange(8) + 1 - 4.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)
    # a second step averages again, from the updated statistics
    train(x + 1.0)
    assert float(bn.moving_mean[0]) == pytest.approx(0.9 * 0.45 + 0.1 * 5.5)
    assert float(bn.moving_variance[0]) == pytest.approx(0.9 * 1.5 + 0.1 * 6.0)


def test_batch_norm_keeps_the_spec_epsilon():
    """tf.compat.v1.nn.fused_batch_norm raises epsilon to 1.001e-5; BatchNorm calls the
    kernel itself, so a spec epsilon of 1e-5 (or less) is the one used."""
    x = tf.reshape(tf.constant([0.0, 1e-3]), (2, 1, 1, 1))  # biased variance 2.5e-7, next to epsilon
    for eps in (1e-5, 1e-6):
        out = rn.BatchNorm(1, BatchNormSpec(eps=eps))(x, training=True)
        np.testing.assert_allclose(float(out[1, 0, 0, 0]), 5e-4 / np.sqrt(2.5e-7 + eps), rtol=1e-4)


def test_training_must_be_passed_explicitly():
    """Keras layers run in inference mode unless told otherwise: net(x) leaves the
    BN statistics alone, net(x, training=True) updates them."""
    model = rn.net("d2l-resnet18", width=8)
    x = tf.random.stateless_normal((2, 32, 32, 1), seed=(5, 6))
    before = model.stem_bn.moving_mean.numpy().copy()
    model(x)
    np.testing.assert_array_equal(model.stem_bn.moving_mean.numpy(), before)
    model(x, training=True)
    assert not np.array_equal(model.stem_bn.moving_mean.numpy(), before)


def test_weights_exist_before_the_first_call():
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    # conv1 3*6*9+6, bn1 2*6, conv2 6*6*9+6, bn2 2*6, shortcut 3*6+6
    assert sum(int(np.prod(v.shape)) for v in blk.trainable_variables) == 168 + 12 + 330 + 12 + 24
    model = rn.net("d2l-resnet18")
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == count(get_arch("d2l-resnet18"))[0]


def test_resnet_block_runs_on_keras_3():
    stage = rn.ResnetBlock(8, 16, 2)
    assert stage(tf.zeros((1, 6, 6, 8)), training=True).shape == (1, 3, 3, 16)
    assert [b.spec.stride for b in rn.resnet_block(8, 16, 2)] == [2, 1]


def test_native_layouts_are_tensorflows():
    model = rn.net("d2l-resnet18", seed=1)
    w = init_weights(model.spec, 1)
    np.testing.assert_array_equal(model.stem_conv.kernel.numpy(), w["stem.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.head_fc.kernel.numpy(), w["head.fc.weight"].T)
    assert tuple(model.stem_conv.kernel.shape) == (7, 7, 1, 64)  # HWIO
    assert model(tf.zeros((2, 32, 32, 1))).shape == (2, 10)  # NHWC in


def test_nchw_input_to_the_keras_model_is_refused():
    model = rn.net("d2l-resnet18", width=8)
    with pytest.raises(ValueError, match="looks NCHW"):
        model(tf.zeros((2, 1, 32, 32)))


def test_shape_table_shows_both_layouts():
    table = rn.shape_table(rn.net("d2l-resnet18"), (1, 96, 96, 1))
    assert "NHWC" in table and "(1, 64, 24, 24)" in table and "(1, 24, 24, 64)" in table


def test_devices_use_tensorflows_device_list():
    assert rn.devices() == ["cpu"] + [f"cuda:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]


def test_batch_statistics_are_accurate_in_float32():
    """TensorFlow's fused BN kernel sums the N*H*W values of a channel in float32: on
    these batches its statistics are within 1.8e-6 of float64 (the hand-written two-stage
    reduction this replaced: 1.5e-7), which keeps ten SGD steps within the training
    parity tolerance (test_train, 1e-5). A biased running variance would be 1.2e-4 off."""
    for seed in range(4):
        z = (np.random.default_rng(seed).standard_normal((32, 16, 16, 8)) * 0.5 + 1.0).astype(np.float32)
        bn = rn.BatchNorm(8, BatchNormSpec(momentum=1.0))  # running statistics := the batch's
        bn(tf.constant(z), training=True)
        z64 = z.astype(np.float64)
        for got, want in (
            (bn.moving_mean, z64.mean(axis=(0, 1, 2))),
            (bn.moving_variance, z64.var(axis=(0, 1, 2), ddof=1)),
        ):
            assert np.abs(got.numpy() - want).max() / np.abs(want).max() <= 5e-6, seed


def _tiny(eager):
    backend = rn.BACKEND
    return backend, backend.build("d2l-resnet18", width=8, eager=eager)


def test_compiled_steps_trace_once_per_shape_not_per_step():
    """Compiled models run each step in a tf.function. A new learning rate is a variable
    assignment, not a retrace; an epoch's smaller last batch costs one retrace at most."""
    backend, model = _tiny(eager=False)
    assert backend.compiles
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    for lr in (0.05, 0.05, 0.1, 0.01):
        backend.sgd_step(model, x, y, lr)
    step = model.cache[("step", "sgd")]
    assert step.experimental_get_tracing_count() == 1
    for n in (5, 3, 8):
        backend.sgd_step(model, x[:n], y[:n], 0.05)
    assert step.experimental_get_tracing_count() == 2  # reduce_retracing: one trace for any batch size
    assert float(model.cache["sgd"].learning_rate) == pytest.approx(0.05)


def test_eager_models_run_op_by_op(monkeypatch):
    """eager=True (``--eager``): every step is plain Python over TensorFlow ops, so a
    reader can step through it; the compiled step gives the same update."""
    backend, model = _tiny(eager=True)
    _, compiled = _tiny(eager=False)
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.arange(4)
    seen = []
    original = rn.Residual.call

    def spy(self, *args, **kwargs):
        seen.append(tf.executing_eagerly())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rn.Residual, "call", spy)
    loss, _ = backend.sgd_step(model, x, y, 0.05)
    assert seen and all(seen)
    seen.clear()
    compiled_loss, _ = backend.sgd_step(compiled, x, y, 0.05)
    assert seen and not any(seen)  # traced into a graph
    monkeypatch.undo()
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    a, b = backend.get_weights(model), backend.get_weights(compiled)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)
