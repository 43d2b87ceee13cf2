"""Checks specific to the Paddle backend: the conventions it translates at the seam and
the Paddle defaults that would otherwise differ silently. The parity suite covers the
numbers end to end; these pin down each translation on its own."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from resnet_multi.spec import BatchNormSpec, block_class, block_spec
from resnet_multi.weights import WeightsError, count, init_weights


def test_missing_paddle_names_its_environment():
    """Runs without Paddle too: a blocked import must say which environment has it."""
    code = (
        "import sys; sys.modules['paddle'] = None\n"
        "try:\n    import resnet_multi.paddle\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tox -e paddle" in out and "not installed in this environment" in out, out


paddle = pytest.importorskip("paddle", reason="paddlepaddle not installed")
rn = pytest.importorskip("resnet_multi.paddle")
BACKEND = rn.BACKEND


def grey_batch(n=4, size=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32) * 2 + 1


def test_batchnorm_translates_momentum_and_unbiased_variance():
    x = grey_batch()
    spec = BatchNormSpec(eps=1e-3, momentum=0.25)
    bn = rn.BatchNorm2D(3, spec)
    assert bn._momentum == pytest.approx(0.75) and bn._epsilon == pytest.approx(1e-3)
    y = bn(paddle.to_tensor(x)).numpy()
    mean, biased = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn._mean.numpy(), 0.25 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), 0.75 + 0.25 * unbiased, rtol=1e-5)
    # the batch itself is normalised with the biased variance
    want = (x - mean[None, :, None, None]) / np.sqrt(biased[None, :, None, None] + 1e-3)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_paddle_default_batchnorm_is_the_other_convention():
    """Why BatchNorm2D exists: Paddle's own layer, given the spec's 0.1, keeps 10% of the
    old statistic, and feeds the biased variance."""
    x = grey_batch()
    bn = paddle.nn.BatchNorm2D(3)
    assert bn._momentum == pytest.approx(0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bn(paddle.to_tensor(x))
    np.testing.assert_allclose(bn._variance.numpy(), 0.9 + 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-5)


def test_batchnorm_inference_leaves_statistics_and_training_does_not_warn():
    bn = rn.BatchNorm2D(3)
    bn.eval()
    before = bn._variance.numpy().copy()
    bn(paddle.to_tensor(grey_batch()))
    np.testing.assert_array_equal(bn._variance.numpy(), before)
    bn.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Paddle's BatchNorm2D.forward warns on every training call
        bn(paddle.to_tensor(grey_batch()))


def test_batchnorm_refuses_a_single_value_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        rn.BatchNorm2D(3)(paddle.to_tensor(grey_batch(n=1, size=1)))


def test_dense_weight_is_transposed_at_the_seam():
    model = rn.net("d2l-resnet18", seed=1)
    assert list(model.head.fc.weight.shape) == [512, 10]  # Paddle: (in, out)
    weights = rn.get_weights(model)
    assert weights["head.fc.weight"].shape == (10, 512)
    np.testing.assert_array_equal(weights["head.fc.weight"], model.head.fc.weight.numpy().T)
    np.testing.assert_array_equal(weights["head.fc.weight"], init_weights(model.spec, 1)["head.fc.weight"])
    # and the logits use it that way round
    x = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    got = model.head.fc(paddle.to_tensor(x)).numpy()
    want = x @ weights["head.fc.weight"].T + weights["head.fc.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bn_statistics_get_canonical_names():
    model = rn.net("d2l-resnet18")
    assert "stem.bn._mean" in model.state_dict() and "stem.bn._variance" in model.state_dict()
    names = set(rn.get_weights(model))
    assert {"stem.bn.running_mean", "stem.bn.running_var"} <= names
    assert not any(n.endswith(("._mean", "._variance")) for n in names)


def test_set_state_dict_would_keep_a_misshaped_tensor_but_set_weights_refuses():
    model = rn.net("d2l-resnet18")
    before = rn.get_weights(model)
    # Paddle's own loader: a warning, and the old tensor stays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.set_state_dict({"head.fc.weight": np.zeros((10, 512), np.float32)})
    np.testing.assert_array_equal(model.head.fc.weight.numpy().T, before["head.fc.weight"])
    # the seam: refused, and nothing at all is written
    bad = {
        **before,
        "stem.conv.weight": np.ones_like(before["stem.conv.weight"]),
        "head.fc.weight": before["head.fc.weight"].T.copy(),
    }
    with pytest.raises(WeightsError, match="mis-shaped: head.fc.weight"):
        rn.set_weights(model, bad)
    after = rn.get_weights(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_set_weights_refuses_a_native_shape_mismatch_behind_check_weights():
    """If the layer and the spec ever disagreed, the seam must say so rather than warn."""
    model = rn.net("d2l-resnet18")
    weights = rn.get_weights(model)
    model.head.fc = paddle.nn.Linear(512, 7)  # the layer no longer matches its spec
    with pytest.raises(WeightsError, match=r"head.fc.weight: the Paddle tensor has shape \[512, 7\]"):
        rn.set_weights(model, weights)


def test_spec_initialiser_is_applied_not_paddles_default():
    model = rn.net("d2l-resnet18", seed=5)
    want = init_weights(model.spec, 5)
    got = rn.get_weights(model)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # Paddle's defaults would differ: Normal(0, sqrt(2 / fan_in)) for conv, XavierUniform dense
    fresh = paddle.nn.Conv2D(1, 64, 7)
    assert not np.array_equal(fresh.weight.numpy(), want["stem.conv.weight"])
    # the textbook's init_weights builds an initializer object and never calls it
    layer = paddle.nn.Linear(512, 10)
    before = layer.weight.numpy().copy()
    paddle.nn.initializer.XavierUniform(layer.weight)
    np.testing.assert_array_equal(layer.weight.numpy(), before)


def test_device_names():
    assert BACKEND.devices()[0] == "cpu"
    assert rn.paddle_device("cpu") == "cpu"
    assert rn.paddle_device("cuda:1") == rn.paddle_device("gpu:1") == "gpu:1"
    with pytest.raises(ValueError, match="unknown device"):
        rn.paddle_device("tpu:0")


def test_global_device_is_restored(monkeypatch):
    """Paddle's device is process-wide: each seam call sets it and puts the caller's back,
    also after an error. The caller's device is faked ('gpu:7'), so that a missing restore
    shows on a CPU-only machine too; the stubbed set_device only records."""
    calls = []
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:7")
    monkeypatch.setattr(paddle, "set_device", calls.append)
    model = BACKEND.build("d2l-resnet18", device="cpu", width=8)
    x = np.zeros((2, 1, 32, 32), np.float32)
    BACKEND.forward(model, x, training=True)
    BACKEND.loss_and_grads(model, x, np.array([0, 1]))
    BACKEND.sgd_step(model, x, np.array([0, 1]), 0.1)
    BACKEND.layer_shapes(model, (1, 1, 32, 32))
    with pytest.raises(RuntimeError):
        with rn.on_device("cpu"):
            raise RuntimeError("inside")
    assert len(calls) >= 12 and calls == ["cpu", "gpu:7"] * (len(calls) // 2)


def test_counts_read_from_paddle_objects():
    model = BACKEND.build("d2l-resnet18")
    assert BACKEND.count_parameters(model) == count(model.spec) == (11_178_378, 7_808)
    # BN statistics are Paddle parameters that must stay out of the optimizer
    stats = [p for p in model.module.parameters() if not p.trainable]
    assert sum(int(p.size) for p in stats) == 7_808


def test_sgd_step_leaves_bn_statistics_to_the_forward_pass():
    """The optimizer sees trainable parameters only; the statistics change once, by BN."""
    model = BACKEND.build("d2l-resnet18", width=8)
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    ref = BACKEND.build("d2l-resnet18", width=8)
    BACKEND.forward(ref, x, training=True)
    BACKEND.sgd_step(model, x, np.arange(4), 0.05)
    got, want = BACKEND.get_weights(model), BACKEND.get_weights(ref)
    np.testing.assert_allclose(got["stem.bn.running_var"], want["stem.bn.running_var"], rtol=1e-6)


def test_chapter_api():
    blocks = rn.resnet_block(64, 128, 2)
    assert len(blocks) == 2 and all(isinstance(b, rn.Residual) for b in blocks)
    assert blocks[0].conv3 is not None and blocks[1].conv3 is None
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    assert list(blk(paddle.rand([4, 3, 6, 6])).shape) == [4, 6, 3, 3]
    assert blk.conv1.bias is not None
    assert rn.Residual(3, 3, conv_bias=False).conv1.bias is None
    model = rn.net("d2l-resnet18")
    model.eval()
    assert list(model(paddle.zeros([1, 1, 96, 96])).shape) == [1, 10]
    with pytest.raises(ValueError, match="input channel"):
        model(paddle.zeros([1, 3, 96, 96]))


BLOCK_OPTIONS = [
    {},
    {"shortcut": "conv_bn", "conv_bias": False},
    {"kind": "bottleneck"},
    {"kind": "bottleneck", "stride_on": "1x1", "shortcut": "conv_bn"},
    {"preact": True},
    {"preact": True, "shortcut": "conv_bn"},
    {"kind": "bottleneck", "preact": True, "shortcut": "conv_bn", "stride_on": "1x1"},
]


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
@pytest.mark.parametrize("options", BLOCK_OPTIONS, ids=lambda o: "-".join(f"{v}" for v in o.values()) or "chapter")
def test_block_classes_hold_the_specs_layers(options, projection):
    """Each block class writes its layers out as the book does: they must be the spec's
    convolutions (shape, stride, padding, bias) and BatchNorms, under the attribute names
    weights.module_paths maps the canonical names to, and nothing else."""
    spec = block_spec(8, 16, True, 2, **options) if projection else block_spec(16, 16, **options)
    blk = rn.block(spec)
    assert type(blk).__name__ == block_class(spec) and blk.spec == spec
    paths = spec.attribute_names()
    convs = list(spec.convs())
    if projection:
        convs.append(("shortcut.conv", spec.in_channels, spec.out_channels, 1, spec.stride, 0))
    layers = dict(blk.named_sublayers())
    for name, cin, cout, k, s, p in convs:
        conv = layers[paths[name]]
        assert (list(conv.weight.shape), conv._stride, conv._updated_padding) == ([cout, cin, k, k], [s, s], [p, p])
        assert (conv.bias is not None) == spec.conv_bias, name
    bns = dict(spec.bn_names())
    if projection and spec.shortcut == "conv_bn":
        bns["shortcut.bn"] = spec.out_channels
    for name, channels in bns.items():
        assert list(layers[paths[name]].weight.shape) == [channels], name
    with_weights = {path for path, layer in layers.items() if layer.parameters(include_sublayers=False)}
    assert with_weights == {paths[name] for name, *_ in convs} | {paths[name] for name in bns}
    out = blk(paddle.rand([2, spec.in_channels, 6, 6]))
    assert list(out.shape) == [2, spec.out_channels, 6 // spec.stride, 6 // spec.stride]


def test_block_classes_refuse_another_kind():
    with pytest.raises(ValueError, match="Residual builds basic blocks.*use Bottleneck"):
        rn.Residual(8, 16, True, 2, kind="bottleneck")
    assert isinstance(rn.PreActResidual(8, 16, True, 2), rn.PreActResidual)


def test_the_chapters_projection_is_conv3():
    """The book calls a basic block's projection conv3; canonical names keep shortcut.conv."""
    model = rn.net("d2l-resnet18", width=8)
    weights = rn.get_weights(model)
    np.testing.assert_array_equal(weights["stages.1.0.shortcut.conv.weight"], model.stages[1][0].conv3.weight.numpy())
    assert not any(".conv3." in name for name in weights)


def test_net_converts_with_to_static():
    """The backend runs dygraph (to_static did not pay here, see resnet_multi.paddle), but
    the net converts: same logits and BN statistics as dygraph, in training and inference."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 32, 32)).astype(np.float32), np.arange(4)
    dygraph, static = BACKEND.build("d2l-resnet18", width=8), BACKEND.build("d2l-resnet18", width=8)
    static.module = paddle.jit.to_static(static.module, full_graph=True)
    loss_dygraph, loss_static = (BACKEND.sgd_step(model, x, y, 0.05)[0] for model in (dygraph, static))
    assert loss_static == pytest.approx(loss_dygraph, rel=1e-5)
    got, want = BACKEND.get_weights(static), BACKEND.get_weights(dygraph)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(BACKEND.forward(static, x), BACKEND.forward(dygraph, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("omp", [None, "1"])
def test_cpu_threads_are_the_cores_unless_the_user_chose(omp):
    """Paddle's import sets OMP_NUM_THREADS=1 where it is unset; the backend then gives its
    CPU kernels every core, but keeps a count the user set, even 1."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    code = (
        "import json, os\nfrom resnet_multi.paddle import BACKEND, CPU_THREADS\n"
        "print(json.dumps([CPU_THREADS, BACKEND.cpu_threads(), len(os.sched_getaffinity(0))]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    threads, reported, cores = json.loads(done.stdout.strip().splitlines()[-1])
    if omp is None:
        assert threads == cores and reported == {"cpu_math_threads": cores}
    else:
        assert threads is None and reported == {"cpu_math_threads": 1}
