"""TensorFlow-specific checks: the translations resnet_multi.tf makes from Keras'
defaults to the spec, and the defaults themselves, so that a Keras release that
changes one of them shows up here by name rather than as a parity failure."""
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install 'resnet-multi[tf]')")
rn = pytest.importorskip("resnet_multi.tf")
keras = rn.keras

from resnet_multi import BatchNormSpec, get_arch  # noqa: E402
from resnet_multi.weights import count, init_weights  # noqa: E402


def test_import_without_tensorflow_names_the_extra():
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "try:\n    import resnet_multi.tf\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'resnet-multi[tf]'" in out


def test_keras_same_padding_is_asymmetric_at_stride_2():
    """Why every conv pads explicitly: on an even size Keras 'same' pads (2, 3) for the
    7x7/2 stem, so its windows sit one pixel off the spec's (3, 3)."""
    x = tf.random.stateless_normal((1, 8, 8, 1), seed=(1, 2))
    same = keras.layers.Conv2D(1, 7, strides=2, padding="same", use_bias=False)
    ours = rn.conv2d(1, 1, 7, 2, use_bias=False)
    same.build(x.shape)
    same.kernel.assign(ours.kernel)
    assert same(x).shape == ours(rn.pad(x, 3)).shape  # shapes agree ...
    assert not np.allclose(same(x), ours(rn.pad(x, 3)))  # ... numbers do not
    # (2, 3) padding reproduces Keras 'same'; the spec's is (3, 3)
    np.testing.assert_allclose(same(x), ours(tf.pad(x, [[0, 0], [2, 3], [2, 3], [0, 0]])), atol=1e-6)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - tf.random.stateless_uniform((1, 4, 4, 1), seed=(3, 4))  # all negative
    out = rn.MaxPool2D(3, 2, 1)(x)
    assert out.shape == (1, 2, 2, 1)
    assert float(out[0, 0, 0, 0]) == float(tf.reduce_max(x[0, :2, :2, 0]))  # not the padding's 0


def test_batch_norm_translates_the_spec_convention():
    default = keras.layers.BatchNormalization()
    assert (default.epsilon, default.momentum) == (1e-3, 0.99)  # Keras' own, opposite convention
    bn = rn.BatchNorm(1, BatchNormSpec(eps=1e-5, momentum=0.1))
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)
    # data with mean 4.5, biased variance 5.25, unbiased 6.0 (n = 8)
    x = tf.reshape(tf.range(8, dtype=tf.float32) + 1.0, (2, 2, 2, 1))
    out = bn(x, training=True)
    assert float(bn.moving_mean[0]) == pytest.approx(0.9 * 0 + 0.1 * 4.5)
    assert float(bn.moving_variance[0]) == pytest.approx(0.9 * 1 + 0.1 * 6.0)  # unbiased, as the spec
    # the batch itself is normalised with the biased variance
    np.testing.assert_allclose(out.numpy().ravel(), (np.arange(8) + 1 - 4.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)


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
    """tf.nn.moments' single float32 reduction over N*H*W is 3-6e-7 off float64 on these
    batches (PyTorch: ~1e-7), enough to make ten SGD steps drift by 1e-3 (test_train);
    BatchNorm reduces over H, W and then N and stays within 1.5e-7."""
    for seed in range(4):
        z = (np.random.default_rng(seed).standard_normal((32, 16, 16, 8)) * 0.5 + 1.0).astype(np.float32)
        bn = rn.BatchNorm(8, BatchNormSpec(momentum=1.0))  # running statistics := the batch's
        bn(tf.constant(z), training=True)
        z64 = z.astype(np.float64)
        for got, want in ((bn.moving_mean, z64.mean(axis=(0, 1, 2))),
                          (bn.moving_variance, z64.var(axis=(0, 1, 2), ddof=1))):
            assert np.abs(got.numpy() - want).max() / np.abs(want).max() <= 2.5e-7, seed
