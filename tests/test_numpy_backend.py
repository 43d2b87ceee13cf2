"""The NumPy reference checked on its own: backward against finite differences,
BatchNorm against numbers worked out by hand, and the chapter's classes."""

import numpy as np
import pytest

from resnet_multi import BatchNormSpec
from resnet_multi import numpy as rn
from resnet_multi.spec import block_spec

TINY = dict(in_channels=2, num_classes=3, width=4, layers=(1, 1))


def loss_of(net, x, y):
    return rn.softmax_cross_entropy(net.forward(x), y)[0]


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("d2l-resnet18", {}),
        ("resnet50", {}),
        ("resnet50", {"stride_on": "1x1"}),
        ("preact-resnet18", {}),
        ("preact-resnet50", {"shortcut": "conv_bn"}),
    ],
    ids=["basic-bias-conv-shortcut", "bottleneck-v1.5", "bottleneck-v1", "preact-basic", "preact-bottleneck"],
)
def test_backward_matches_finite_differences(arch, overrides):
    """Central differences (step 1e-6) on every parameter tensor (12 random entries
    each) and on the input, in training mode, so BN's batch statistics are part of
    the function. The batch is chosen so no ReLU or max-pool decision lies within
    1e-4 of flipping, far more than the step can move anything."""
    net = rn.net(arch, seed=1, **TINY, **overrides)
    rng = np.random.default_rng(0)
    for name, value in net.state().items():  # non-trivial BN scales and biases too
        if name.endswith((".bias", "bn1.weight", "bn2.weight")):
            value[...] = rng.normal(0.3, 0.3, value.shape)
    net.train(True)
    for seed in range(100):
        x = np.random.default_rng(seed).standard_normal((3, 2, 16, 16))
        net.forward(x)
        if net.kink_margin() > 1e-4:
            break
    else:
        pytest.fail("no kink-free batch found")
    y = np.array([0, 1, 2])
    logits = net.forward(x)
    _, dlogits = rn.softmax_cross_entropy(logits, y)
    dx = net.backward(dlogits)
    grads = net.named_grads()
    state = net.state()  # the live arrays: perturbing them perturbs the net

    def numeric(array, index, h=1e-6):
        old = array[index]
        array[index] = old + h
        up = loss_of(net, x, y)
        array[index] = old - h
        down = loss_of(net, x, y)
        array[index] = old
        return (up - down) / (2 * h)

    checked = 0
    for name, grad in grads.items():
        flat = rng.choice(grad.size, size=min(12, grad.size), replace=False)
        for i in flat:
            index = np.unravel_index(i, grad.shape)
            want = numeric(state[name], index)
            assert abs(grad[index] - want) <= 1e-5 * max(1.0, abs(want)), (name, index, grad[index], want)
            checked += 1
    for i in rng.choice(x.size, size=20, replace=False):
        index = np.unravel_index(i, x.shape)
        assert abs(dx[index] - numeric(x, index)) <= 1e-5 * max(1.0, abs(dx[index])), index
    assert checked >= 12 * len(grads) // 2


def test_batchnorm_training_statistics_by_hand():
    """Data 1..8 in one channel: mean 4.5, biased variance 5.25, unbiased 6.0."""
    bn = rn.BatchNorm2d(1, BatchNormSpec(eps=1e-5, momentum=0.1))
    x = np.arange(1.0, 9.0).reshape(2, 1, 2, 2)
    out = bn.forward(x)
    np.testing.assert_allclose(out.ravel(), (np.arange(1.0, 9.0) - 4.5) / np.sqrt(5.25 + 1e-5))
    np.testing.assert_allclose(bn.buffers["running_mean"], [0.9 * 0 + 0.1 * 4.5])
    np.testing.assert_allclose(bn.buffers["running_var"], [0.9 * 1 + 0.1 * 6.0])
    bn.training = False
    np.testing.assert_allclose(bn.forward(x).ravel(), (np.arange(1.0, 9.0) - 0.45) / np.sqrt(1.5 + 1e-5))


def test_maxpool_pads_with_minus_infinity():
    pool = rn.MaxPool2d(3, 2, 1)
    x = -np.ones((1, 1, 4, 4))  # all negative: zero padding would win, -inf never does
    assert (pool.forward(x) == -1).all()


def test_conv_is_cross_correlation_with_symmetric_padding():
    conv = rn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    conv.params["weight"][0, 0] = np.arange(9.0).reshape(3, 3)
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out = conv.forward(x)
    xp = np.pad(x[0, 0], 1)
    want = [[(xp[i : i + 3, j : j + 3] * np.arange(9.0).reshape(3, 3)).sum() for j in (0, 2)] for i in (0, 2)]
    np.testing.assert_array_equal(out[0, 0], want)


def test_chapter_api():
    blk = rn.Residual(3, 3)
    assert blk.forward(np.random.rand(4, 3, 6, 6)).shape == (4, 3, 6, 6)
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    assert blk.forward(np.random.rand(4, 3, 6, 6)).shape == (4, 6, 3, 3)
    stage = rn.resnet_block(64, 128, 2)
    assert len(stage) == 2 and stage[0].spec.projection and not stage[1].spec.projection
    assert rn.ResnetBlock(64, 64, 2, first_block=True).spec.blocks[0].stride == 1


def test_exercise_blocks_are_their_own_classes():
    """Each kind of block is its own class with the book's attribute names: a basic block's
    projection is ``conv3`` (``bn3`` after it for torchvision's shortcut), a bottleneck's is
    ``shortcut``; the weights keep their canonical names."""
    X = np.random.default_rng(0).random((2, 8, 6, 6))
    blk = rn.Residual(8, 16, use_1x1conv=True, strides=2, shortcut="conv_bn")
    assert [name for name, _ in blk.named_layers()] == ["conv1", "bn1", "relu1", "conv2", "bn2", "conv3", "bn3", "relu"]
    assert rn.Residual(8, 8).conv3 is None and rn.Residual(8, 8).bn3 is None
    bottleneck = rn.Bottleneck(8, 16, True, 2)
    assert bottleneck(X).shape == (2, 16, 3, 3) and "shortcut.conv" in dict(bottleneck.named_layers())
    assert rn.PreActResidual(8, 8)(X).shape == X.shape
    assert rn.PreActBottleneck(8, 16, True)(X).shape == (2, 16, 6, 6)
    for options, cls in [
        ({}, rn.Residual),
        ({"kind": "bottleneck"}, rn.Bottleneck),
        ({"preact": True}, rn.PreActResidual),
        ({"kind": "bottleneck", "preact": True}, rn.PreActBottleneck),
    ]:
        assert type(rn.block(block_spec(8, 16, True, 2, **options))) is cls
    with pytest.raises(ValueError, match="use Bottleneck"):
        rn.Residual(8, 16, True, kind="bottleneck")
    net = rn.net("resnet18", width=4)
    assert isinstance(net.layers["stages"].layers["1"].layers["0"].bn3, rn.BatchNorm2d)
    assert "stages.1.0.shortcut.bn.weight" in net.state() and "stages.1.0.bn3.weight" not in net.state()
