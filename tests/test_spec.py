"""The spec table and what is inferred from it, without any framework."""

import json
import subprocess
import sys

import numpy as np
import pytest

from resnet_multi import ARCHS, BatchNormSpec, get_arch, shapes
from resnet_multi.spec import block_spec, stage_spec
from resnet_multi.weights import count, init_weights, tensor_specs

# torchvision's published figures: parameters, and G multiply-accumulates at 224x224
TORCHVISION = {
    "resnet18": (11_689_512, 1.814),
    "resnet34": (21_797_672, 3.664),
    "resnet50": (25_557_032, 4.089),
    "resnet101": (44_549_160, 7.801),
    "resnet152": (60_192_808, 11.514),
}


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_parameters_and_macs(arch):
    params, gmacs = TORCHVISION[arch]
    assert count(get_arch(arch))[0] == params
    assert round(shapes.macs(get_arch(arch), 224) / 1e9, 3) == gmacs


def test_keras_resnet50_is_keras_applications_resnet50():
    # Keras' model.summary() of keras.applications.ResNet50: 25,636,712 parameters, of which
    # 53,120 are BatchNorm's moving statistics; the paper's v1 moves the stride, not parameters
    spec = get_arch("keras-resnet50")
    assert count(spec) == (25_583_592, 53_120)
    assert (spec.stride_on, spec.conv_bias, spec.shortcut, spec.bn.eps, spec.bn.momentum) == (
        "1x1",
        True,
        "conv_bn",
        1.001e-5,
        0.01,
    )
    assert [r.shape for r in shapes.layer_shapes(spec, (1, 3, 224, 224))][:2] == [(1, 64, 56, 56), (1, 256, 56, 56)]


def test_chapter_network():
    spec = get_arch("d2l-resnet18")
    assert count(spec) == (11_178_378, 7_808)
    assert round(shapes.macs(spec, 96) / 1e9, 3) == 0.319
    assert [r.shape for r in shapes.layer_shapes(spec, (1, 1, 96, 96))] == [
        (1, 64, 24, 24),
        (1, 64, 24, 24),
        (1, 128, 12, 12),
        (1, 256, 6, 6),
        (1, 512, 3, 3),
        (1, 512, 1, 1),
        (1, 512),
        (1, 10),
    ]
    # every conv has a bias; the projections are bare 1x1 convs
    names = {t.name for t in tensor_specs(spec)}
    assert "stages.1.0.shortcut.conv.bias" in names and "stages.1.0.shortcut.bn.weight" not in names
    assert "stages.0.0.shortcut.conv.weight" not in names  # the first stage keeps shape: identity


def test_odd_sizes_use_symmetric_padding():
    # floor((225 + 2*3 - 7) / 2) + 1 = 113, then the pool: floor((113 + 2 - 3) / 2) + 1 = 57
    rows = shapes.layer_shapes(get_arch("resnet18"), (2, 3, 225, 225))
    assert rows[0].shape == (2, 64, 57, 57)
    assert rows[-1].shape == (2, 1000)


def test_stride_placement_moves_macs_not_parameters():
    v15, v1 = get_arch("resnet50"), get_arch("resnet50", stride_on="1x1")
    assert count(v1) == count(v15)
    assert shapes.macs(v1) < shapes.macs(v15)  # the paper's v1 strides earlier, so it computes less
    assert v1.stages[1].blocks[0].convs()[0][4] == 2 and v15.stages[1].blocks[0].convs()[1][4] == 2


def test_preact_structure():
    spec = get_arch("preact-resnet18")
    names = [t.name for t in tensor_specs(spec)]
    assert "stem.bn.weight" not in names and "head.bn.weight" in names
    assert names.index("stages.0.0.bn1.weight") < names.index("stages.0.0.conv1.weight")
    assert spec.layer_names()[-5:] == ["head.bn", "head.relu", "head.pool", "head.flatten", "head.fc"]


def test_overrides():
    spec = get_arch("resnet50", in_channels=1, num_classes=10, width=32, layers=[1, 1, 1, 1])
    assert spec.layers == (1, 1, 1, 1)
    assert tensor_specs(spec)[0].shape == (32, 1, 7, 7)
    assert spec.features == 32 * 8 * 4
    assert get_arch("d2l-resnet18", conv_bias=False).conv_bias is False
    assert get_arch("resnet18", shortcut="conv").stages[1].blocks[0].shortcut == "conv"
    assert count(get_arch("resnet18", shortcut="conv"))[0] < count(get_arch("resnet18"))[0]
    assert get_arch("resnet18", bn=BatchNormSpec(momentum=0.01)).stages[0].blocks[0].bn.momentum == 0.01


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: block_spec(3, 6), r"Residual\(3, 6, strides=1\) cannot add .* pass use_1x1conv=True"),
        (lambda: block_spec(3, 3, strides=2), r"pass use_1x1conv=True"),
        (lambda: block_spec(0, 3), "input_channels must be a positive integer"),
        (lambda: block_spec(3, -1, True), "num_channels must be a positive integer"),
        (lambda: block_spec(3, 3, True, 3), "strides must be 1 or 2"),
        (lambda: block_spec(3, 3, kind="wide"), "unknown block type 'wide'"),
        (lambda: block_spec(8, 6, True, kind="bottleneck"), "multiple of 4"),
        (lambda: block_spec(3, 3, shortcut="pad"), "unknown shortcut type"),
        (lambda: block_spec(3, 3, colour="red"), r"unknown Residual option\(s\) \['colour'\]"),
        (lambda: stage_spec(3, 3, 0), "num_residuals must be a positive integer"),
        (lambda: get_arch("resnet19"), "unknown architecture 'resnet19'; choose one of"),
        (lambda: get_arch("resnet18", depth=19), r"unknown override\(s\) \['depth'\]"),
        (lambda: get_arch("resnet18", in_channels=0), "in_channels must be a positive integer"),
        (lambda: get_arch("resnet18", layers=()), "layers must be a non-empty tuple"),
        (lambda: get_arch("resnet18", block="dense"), "unknown block type"),
        (lambda: get_arch("resnet18", stride_on="7x7"), "unknown stride placement"),
        (lambda: get_arch("resnet18", init="zeros"), "unknown initialiser"),
        (lambda: get_arch("preact-resnet18", zero_init_last_bn=True), "ends in a conv"),
        (lambda: BatchNormSpec(momentum=0.9 + 0.2), "momentum must be in"),
        (lambda: BatchNormSpec(eps=0), "eps must be a positive number"),
    ],
)
def test_invalid_specs_say_what_and_how(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_input_shape_checks():
    spec = get_arch("d2l-resnet18")
    with pytest.raises(ValueError, match="4-d NCHW"):
        shapes.check_input_shape(spec, (1, 96, 96))
    with pytest.raises(ValueError, match="too small to train"):
        shapes.check_input_shape(spec, (1, 1, 32, 32), training=True)  # last stage 1x1, batch 1
    assert shapes.check_input_shape(spec, (2, 1, 32, 32), training=True) == (2, 1, 32, 32)


class _SymbolicDim:
    """What an exporter's tracer hands a shape check for a dynamic axis: not an int."""

    def __int__(self):
        raise TypeError("symbolic dimension")


def test_axes_an_export_leaves_open_are_skipped_only_when_asked():
    """paddle.onnx.export traces a dynamic batch as -1, jax2onnx as a symbolic dimension; the
    forward passes' checks let those through (unknown_ok) and still check every known axis.
    Everywhere else an open axis is an error, as it was."""
    spec = get_arch("d2l-resnet18")
    block = spec.stages[1].blocks[0]
    for open_axis in (-1, None, _SymbolicDim()):
        assert shapes.check_input_shape(spec, (open_axis, 1, 32, 32), unknown_ok=True) == (None, 1, 32, 32)
        assert shapes.check_input_shape(spec, (open_axis, 1, 32, 32), training=True, unknown_ok=True)
        assert shapes.check_block_input_shape(block, (open_axis, 64, 8, 8), unknown_ok=True)[1:] == (64, 8, 8)
        with pytest.raises(ValueError, match="expects 1 input channel"):
            shapes.check_input_shape(spec, (open_axis, 3, 32, 32), unknown_ok=True)
        with pytest.raises(ValueError, match="empty batch or image"):
            shapes.check_input_shape(spec, (open_axis, 1, 0, 32), unknown_ok=True)
        with pytest.raises(ValueError, match="channel"):
            shapes.check_block_input_shape(block, (open_axis, 32, 8, 8), unknown_ok=True)
        with pytest.raises((ValueError, TypeError)):
            shapes.check_input_shape(spec, (open_axis, 1, 32, 32))
    with pytest.raises(ValueError, match="empty batch or image"):
        shapes.check_input_shape(spec, (0, 1, 32, 32), unknown_ok=True)


# initialisation -------------------------------------------------------------------------
def test_init_is_deterministic_and_seeded():
    spec = get_arch("d2l-resnet18")
    a, b, c = init_weights(spec, 0), init_weights(spec, 0), init_weights(spec, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.weight"], c["stem.conv.weight"])
    assert all(v.dtype == np.float32 for v in a.values())


def test_xavier_uniform_for_the_chapter():
    w = init_weights(get_arch("d2l-resnet18"), 0)
    conv = w["stages.3.1.conv2.weight"]  # 512 x 512 x 3 x 3
    bound = np.sqrt(6 / (512 * 9 + 512 * 9))
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.99 * bound
    assert abs(conv.std() - bound / np.sqrt(3)) < 0.01 * bound  # the uniform distribution's std
    assert not w["stem.conv.bias"].any() and not w["head.fc.bias"].any()
    assert (w["stem.bn.weight"] == 1).all() and (w["stem.bn.running_var"] == 1).all()


def test_kaiming_normal_fan_out_for_torchvision():
    w = init_weights(get_arch("resnet50", zero_init_last_bn=True), 0)
    conv = w["stages.2.0.conv2.weight"]  # 256 x 256 x 3 x 3: fan_out 2304
    assert abs(conv.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.01
    assert abs(conv.mean()) < 1e-3
    fc = w["head.fc.weight"]
    assert np.abs(fc).max() <= 1 / np.sqrt(2048)
    assert (w["stages.1.0.bn3.weight"] == 0).all() and (w["stages.1.0.bn2.weight"] == 1).all()


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, resnet_multi, resnet_multi.spec, resnet_multi.shapes, resnet_multi.weights, "
        "resnet_multi.backend, resnet_multi.numpy; "
        "print([m for m in ('torch', 'tensorflow', 'mxnet', 'paddle', 'mindspore', 'jax', 'flax') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_missing_framework_names_the_extra():
    # sys.modules[name] = None makes "import name" fail, as if it were not installed
    code = "import sys; sys.modules['torch'] = None; import resnet_multi.torch"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    # one line that names the framework and where to get it: its own environment or install line
    assert "ImportError: resnet_multi.torch needs torch, which is not installed in this environment; " in result.stderr
    assert "tox -e torch" in result.stderr and "pip install torch==2.13.0 --index-url" in result.stderr


def test_every_arch_builds_its_tensor_table():
    for name, spec in ARCHS.items():
        table = tensor_specs(spec)
        assert len({t.name for t in table}) == len(table), name
