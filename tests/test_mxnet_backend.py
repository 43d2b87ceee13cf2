"""Checks specific to the MXNet backend: the BatchNorm convention translation, the
Gluon defaults that would silently differ, and the module's own API. The parity
suite covers the rest."""

import subprocess
import sys

import numpy as onp
import pytest
from helpers import random_weights

mx = pytest.importorskip("mxnet", reason="MXNet is not installed in this environment (tox -e mxnet)")
rn = pytest.importorskip("resnet_multi.mxnet")
from mxnet import autograd, np  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from resnet_multi import BatchNormSpec  # noqa: E402
from resnet_multi.backend import Model  # noqa: E402
from resnet_multi.spec import block_spec  # noqa: E402
from resnet_multi.weights import count  # noqa: E402

# The framework facts' example: mean 4.5, biased variance 5.25, unbiased 6.0.
DATA = onp.arange(1, 9, dtype=onp.float32).reshape(8, 1, 1, 1)


def _bn_after_step(bn):
    bn.initialize()
    x = np.array(DATA)
    with autograd.record():
        y = bn(x)
    after_forward = (float(bn.running_mean.data()[0]), float(bn.running_var.data()[0]))
    y.backward()
    return after_forward, (float(bn.running_mean.data()[0]), float(bn.running_var.data()[0]))


def test_gluon_batchnorm_default_is_the_other_convention():
    """Why the translation exists: Gluon updates in backward(), with momentum 0.9 meaning
    'keep 90%', and feeds the biased variance. If a future MXNet changes this, the
    translation in resnet_multi.mxnet.BatchNorm must change too."""
    after_forward, after_backward = _bn_after_step(nn.BatchNorm(in_channels=1))
    assert after_forward == (0.0, 1.0)
    assert after_backward == pytest.approx((0.1 * 4.5, 0.9 + 0.1 * 5.25))


def test_batchnorm_follows_the_spec_in_forward_and_not_again_in_backward():
    after_forward, after_backward = _bn_after_step(rn.BatchNorm(1, BatchNormSpec(momentum=0.1)))
    assert after_forward == pytest.approx((0.1 * 4.5, 0.9 + 0.1 * 6.0))  # unbiased variance
    assert after_backward == after_forward


def test_batchnorm_momentum_and_eps_are_translated():
    bn = rn.BatchNorm(1, BatchNormSpec(eps=1e-3, momentum=0.3))
    (mean, var), _ = _bn_after_step(bn)
    assert (mean, var) == pytest.approx((0.3 * 4.5, 0.7 + 0.3 * 6.0))
    x = np.array(DATA)
    got = bn(x).asnumpy().ravel()  # inference: the running statistics and eps 1e-3
    onp.testing.assert_allclose(got, (DATA.ravel() - mean) / onp.sqrt(var + 1e-3), rtol=1e-5)


def test_batchnorm_refuses_a_single_value_per_channel():
    bn = rn.BatchNorm(1)
    bn.initialize()
    with autograd.record(), pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.ones((1, 1, 1, 1)))
    assert bn(np.ones((1, 1, 1, 1))).shape == (1, 1, 1, 1)  # inference is fine


def test_training_step_and_training_forward_leave_the_same_statistics():
    """forward(training=True) is what the parity suite checks; a full SGD step
    (forward in record(), backward, trainer.step) must do the same to the statistics."""
    backend = rn.BACKEND
    a, b = backend.build("d2l-resnet18", width=8), backend.build("d2l-resnet18", width=8)
    weights = random_weights(a.spec, seed=1)
    backend.set_weights(a, weights)
    backend.set_weights(b, weights)
    x = onp.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(onp.float32)
    backend.forward(a, x, training=True)
    backend.sgd_step(b, x, onp.arange(4), 0.05)
    wa, wb = backend.get_weights(a), backend.get_weights(b)
    for name in wa:
        if name.endswith(("running_mean", "running_var")):
            onp.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)
            assert not onp.array_equal(wa[name], weights[name]), name


def test_weights_exist_before_the_first_call_and_stats_are_not_trainable():
    model = rn.net("d2l-resnet18")
    params = model.collect_params()
    assert all(p.shape and 0 not in p.shape for p in params.values())  # nothing deferred
    stats = {k: p for k, p in rn.canonical_params(model).items() if k.endswith(("running_mean", "running_var"))}
    assert stats and all(p.grad_req == "null" for p in stats.values())
    assert rn.BACKEND.count_parameters(Model(model.spec, model, "cpu")) == count(model.spec) == (11_178_378, 7_808)


def test_module_api_matches_the_chapter():
    model = rn.net("d2l-resnet18", seed=5)
    X = np.array(onp.random.default_rng(0).standard_normal((2, 1, 96, 96)).astype(onp.float32))
    assert model(X).shape == (2, 10)
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    blk.initialize()
    assert blk(np.zeros((4, 3, 6, 6))).shape == (4, 6, 3, 3)
    stage = rn.resnet_block(64, 128, 2)
    assert len(stage) == 2 and all(isinstance(b, rn.Residual) for b in stage)
    names = set(rn.get_weights(model))
    assert {"stem.bn.weight", "stem.bn.running_var", "stages.1.0.shortcut.conv.weight", "head.fc.bias"} <= names
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        rn.Residual(3, 6)


def test_trainer_is_plain_sgd():
    """The textbook's Trainer('sgd') defaults: no momentum, no weight decay, so one
    step is w - lr * mean gradient."""
    backend = rn.BACKEND
    model = backend.build("d2l-resnet18", width=8)
    x = onp.random.default_rng(2).standard_normal((4, 1, 32, 32)).astype(onp.float32)
    y = onp.arange(4)
    before = backend.get_weights(model)
    grads = backend.loss_and_grads(model, x, y).grads
    backend.set_weights(model, before)  # undo the statistics update
    backend.sgd_step(model, x, y, 0.5)
    optimizer = model.cache["trainer"]._optimizer
    assert isinstance(optimizer, mx.optimizer.SGD) and optimizer.momentum == 0 and optimizer.wd == 0
    after = backend.get_weights(model)
    onp.testing.assert_allclose(
        after["head.fc.weight"], before["head.fc.weight"] - 0.5 * grads["head.fc.weight"], rtol=1e-5, atol=1e-6
    )


def test_unknown_device_names_are_refused():
    with pytest.raises(ValueError, match="'cpu' or 'cuda:N'"):
        rn.context("tpu:0")
    assert rn.devices()[0] == "cpu" and len(rn.devices()) == 1 + mx.npx.num_gpus()


def test_missing_framework_names_the_extra():
    code = (
        "import sys; sys.modules['mxnet'] = None\n"
        "try:\n    import resnet_multi.mxnet\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # where to get it: the framework's own environment, or its install line in a new one
    assert "tox -e mxnet" in out and "pip install mxnet==1.9.1" in out


def test_safetensors_works_without_its_numpy_extra(tmp_path):
    """safetensors' [numpy] extra asks for a numpy newer than MXNet's numpy<1.24."""
    from safetensors.numpy import load_file, save_file

    save_file({"a": onp.arange(6, dtype=onp.float32).reshape(2, 3)}, str(tmp_path / "a.safetensors"))
    onp.testing.assert_array_equal(
        load_file(str(tmp_path / "a.safetensors"))["a"], onp.arange(6, dtype=onp.float32).reshape(2, 3)
    )
    assert tuple(int(v) for v in onp.__version__.split(".")[:2]) < (1, 24)


def test_compiled_net_matches_op_by_op():
    """net.hybridize() compiles the whole net, and its graph hands each BatchNorm's batch
    statistics out: the same logits and running statistics as the net run op by op, over
    two steps and two input shapes (values per channel differ, so does the n/(n-1))."""
    a, b = rn.net("d2l-resnet18", width=8), rn.net("d2l-resnet18", width=8)
    b.hybridize()
    rng = onp.random.default_rng(0)
    for shape in ((4, 1, 32, 32), (3, 1, 40, 40)):
        X = np.array(rng.standard_normal(shape).astype(onp.float32))
        with autograd.record():
            ya, yb = a(X), b(X)
        onp.testing.assert_allclose(yb.asnumpy(), ya.asnumpy(), rtol=1e-5, atol=1e-6)
        onp.testing.assert_allclose(b(X).asnumpy(), a(X).asnumpy(), rtol=1e-5, atol=1e-6)  # inference
    assert b._cached_op is not None and a._cached_op is None  # b really ran compiled
    initial, wa, wb = rn.get_weights(rn.net("d2l-resnet18", width=8)), rn.get_weights(a), rn.get_weights(b)
    assert not onp.array_equal(wb["stem.bn.running_var"], initial["stem.bn.running_var"])
    for name in wa:
        onp.testing.assert_allclose(wb[name], wa[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_backend_compiles_unless_eager():
    backend = rn.BACKEND
    x, y = onp.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(onp.float32), onp.arange(4)
    compiled, eager = backend.build("d2l-resnet18", width=8), backend.build("d2l-resnet18", width=8, eager=True)
    for model in (compiled, eager):
        backend.sgd_step(model, x, y, 0.05)
    assert compiled.module._cached_op is not None and eager.module._cached_op is None
    eager.eager = False  # the flag is read at every call
    backend.forward(eager, x)
    assert eager.module._cached_op is not None


def test_blocks_compile_only_as_part_of_the_net():
    """Only the whole net carries BN statistics out of a compiled graph: a block or a
    BatchNorm hybridized on its own, or a net inside a larger graph, is refused
    rather than leaving its statistics silently unchanged."""
    traced = nn.HybridSequential()
    traced.add(rn.BatchNorm(1))
    blk = rn.Residual(3, 3)
    for block, x in ((traced, np.ones((2, 1, 2, 2))), (blk, np.ones((2, 3, 4, 4)))):
        block.initialize()
        block.hybridize()
        with pytest.raises(TypeError, match="only as part of a whole ResNet"):
            block(x)
    outer = nn.HybridSequential()
    outer.add(rn.net("d2l-resnet18", width=8))
    outer.hybridize()
    with pytest.raises(TypeError, match="not as part of a larger graph"):
        outer(np.zeros((2, 1, 32, 32)))
    # a compiled net's blocks stay op by op when called on their own (the shape table)
    net = rn.net("d2l-resnet18", width=8)
    net.hybridize()
    assert [name for name, _ in net.named_outputs(np.zeros((1, 1, 32, 32)))][:2] == ["stem", "stages.0"]


def test_exercise_blocks_are_their_own_classes():
    """Each kind of block is its own class with the book's attribute names: a basic block's
    projection is ``conv3`` (``bn3`` after it for torchvision's shortcut), a bottleneck's is
    ``shortcut``; the weights keep their canonical names."""
    X = np.array(onp.random.default_rng(0).random((2, 8, 6, 6), dtype=onp.float32))
    blk = rn.Residual(8, 16, use_1x1conv=True, strides=2, shortcut="conv_bn")
    assert isinstance(blk.conv3, nn.Conv2D) and isinstance(blk.bn3, rn.BatchNorm)
    assert rn.Residual(8, 8).conv3 is None and rn.Residual(8, 8).bn3 is None
    assert {"shortcut.conv.weight", "shortcut.bn.running_var"} <= set(rn.canonical_params(blk))
    shapes = {}
    for options, cls in [
        ({}, rn.Residual),
        ({"kind": "bottleneck"}, rn.Bottleneck),
        ({"preact": True}, rn.PreActResidual),
        ({"kind": "bottleneck", "preact": True}, rn.PreActBottleneck),
    ]:
        b = rn.block(block_spec(8, 16, True, 2, **options))
        assert type(b) is cls
        b.initialize()
        shapes[cls.__name__] = b(X).shape
    assert set(shapes.values()) == {(2, 16, 3, 3)}
    assert isinstance(rn.Bottleneck(8, 16, True, 2).shortcut.conv, nn.Conv2D)
    with pytest.raises(ValueError, match="use Bottleneck"):
        rn.Residual(8, 16, True, kind="bottleneck")
    model = rn.net("resnet18", width=4)
    assert isinstance(model.stages[1][0].bn3, rn.BatchNorm)
    names = set(rn.get_weights(model))
    assert "stages.1.0.shortcut.bn.weight" in names and "stages.1.0.bn3.weight" not in names
