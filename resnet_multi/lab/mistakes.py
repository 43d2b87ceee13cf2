"""The known mistakes: what each plants in the reference, and the one-line hint that names
it. Framework-free: a framework's conventions are read from its module's ``CONVENTIONS``
literal (:mod:`resnet_multi.conventions`), without importing the framework.

A mistake is a key that :mod:`resnet_multi.lab.reference` understands. Keys of one
``group`` exclude each other (a block has one stride placement). ``accepted`` variants are
not mistakes: MXNet's, Paddle's, Keras' and Flax's own BatchNorm layers feed the running
variance with the biased batch variance, which the student cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import conventions, frameworks


@dataclass(frozen=True)
class Mistake:
    key: str
    group: str
    targets: tuple[str, ...]  # block kinds it applies to: basic, bottleneck, preact; stage, net
    accepted: bool = False


# alternatives to the spec's BatchNorm numbers (momentum: the new batch's share, 0.1)
MOMENTA = (0.9, 0.01, 0.99)
EPSILONS = (1e-3, 1e-2)  # 1e-4 changes the outputs by less than the tolerance

_ALL = ("basic", "bottleneck", "preact")
_POST = ("basic", "bottleneck")
CATALOGUE: tuple[Mistake, ...] = (
    Mistake("stride_on_conv2", "stride", ("basic", "preact")),
    Mistake("stride_on_conv1", "stride", ("bottleneck",)),
    Mistake("no_stride", "stride", _ALL),
    Mistake("projection_no_stride", "projection", _ALL),
    Mistake("projection_ignored", "projection", _ALL),
    Mistake("projection_reads_input", "projection", ("preact",)),
    Mistake("relu_before_add", "relu", _POST),
    Mistake("no_relu_after_add", "relu", _POST),
    Mistake("relu_after_add", "relu", ("preact",)),
    Mistake("bn_after_relu", "order", _ALL),
    Mistake("skip_bn1", "skip_bn1", _ALL),
    Mistake("skip_bn2", "skip_bn2", _ALL),
    Mistake("skip_bn3", "skip_bn3", ("bottleneck",)),
    Mistake("padding_same", "padding", _ALL),
    Mistake("padding_zero", "padding", _ALL),
    *(Mistake(f"bn_momentum={m:g}", "momentum", _ALL) for m in MOMENTA),
    *(Mistake(f"bn_eps={e:g}", "eps", _ALL) for e in EPSILONS),
    Mistake("stage_no_downsample", "stage", ("stage", "net")),
    Mistake("stage_first_block_strided", "stage", ("stage", "net")),
    Mistake("biased_running_var", "variance", _ALL, accepted=True),
)
# planted from the student's structure, never searched for: see structure_mistakes
STRUCTURAL = ("conv_bias", "no_conv_bias", "projection_bn", "no_projection_bn")
BY_KEY = {m.key: m for m in CATALOGUE}
GROUPS = {**{m.key: m.group for m in CATALOGUE}, "conv_bias": "bias", "no_conv_bias": "bias"}
GROUPS.update(projection_bn="projection_bn", no_projection_bn="projection_bn")


def candidates(kind: str, target: str) -> list[Mistake]:
    """The mistakes worth trying for a block ``kind`` (basic, bottleneck, preact) checked as
    a block, a stage or a net (``target``)."""
    return [m for m in CATALOGUE if kind in m.targets or target in m.targets]


def compatible(keys, key: str) -> bool:
    return all(GROUPS[k] != GROUPS[key] for k in keys)


# ---- what each framework calls things, for the hints' fixes -------------------------------------
_BIAS_OFF = {
    "torch": "bias=False",
    "tf": "use_bias=False",
    "mxnet": "use_bias=False",
    "paddle": "bias_attr=False",
    "mindspore": "has_bias=False (MindSpore's default)",
    "jax": "use_bias=False",
    "numpy": "bias=False",
}
_BIAS_ON = {
    "torch": "bias=True (PyTorch's default)",
    "tf": "use_bias=True (Keras' default)",
    "mxnet": "use_bias=True (Gluon's default)",
    "paddle": "bias_attr=None (Paddle's default)",
    "mindspore": "has_bias=True: MindSpore's Conv2d has no bias unless told",
    "jax": "use_bias=True (Flax's default)",
    "numpy": "bias=True",
}
_PAD = {
    "torch": "padding=1",
    "tf": "pad explicitly (tf.keras.layers.ZeroPadding2D(1), then padding='valid')",
    "mxnet": "padding=1",
    "paddle": "padding=1",
    "mindspore": "pad_mode='pad', padding=1",
    "jax": "padding=((1, 1), (1, 1))",
    "numpy": "padding=1",
}


def _title(framework: str) -> str:
    return frameworks.FRAMEWORKS[framework].title if framework in frameworks.FRAMEWORKS else framework


def _bn_convention(framework: str) -> dict:
    try:
        declared = conventions.declared(framework)
    except (OSError, conventions.ConventionsError):
        declared = conventions.declared("numpy")
    return {"momentum": declared["bn_momentum"], "eps": declared["bn_eps"]}


def _momentum_text(new_share: float, framework: str) -> str:
    info = _bn_convention(framework)["momentum"]
    title = _title(framework)
    if info.get("keeps") == "old":
        value = round(1 - new_share, 6)
        text = (
            f"BatchNorm momentum={value:g}: in {title} momentum is the old running value's share, so "
            f"the spec's running statistics (90% old, 10% the batch's) need momentum=0.9"
        )
        if value == info.get("momentum"):
            text += f"; {value:g} is {title}'s default, which must be overridden"
        elif value == 0.1:
            text += " (0.1 is PyTorch's convention, where momentum is the new batch's share)"
        return text
    text = (
        f"BatchNorm momentum={new_share:g}: in {title} momentum is the new batch's share of the running "
        f"statistics, and the spec's is 0.1"
    )
    if new_share == 0.9:
        text += " (0.9 is MXNet's, Paddle's, MindSpore's and Keras' convention: the old value's share)"
    return text


def _eps_text(eps: float, framework: str) -> str:
    text = f"BatchNorm epsilon {eps:g} where the spec has 1e-5"
    if eps == _bn_convention(framework)["eps"].get("eps"):
        text += f" ({eps:g} is {_title(framework)}'s default: pass epsilon=1e-5)"
    return text


def describe(key: str, framework: str, block_class: str = "Residual") -> str:
    """The hint for one mistake, in the framework's own terms."""
    if key.startswith("bn_momentum="):
        return _momentum_text(float(key.partition("=")[2]), framework)
    if key.startswith("bn_eps="):
        return _eps_text(float(key.partition("=")[2]), framework)
    proj = "the 1x1 projection (shortcut)" if "Bottleneck" in block_class else "the 1x1 projection (conv3)"
    texts = {
        "stride_on_conv2": "the stride is on conv2 instead of conv1: the block halves the resolution in its "
        "first 3x3 conv (conv1 with strides, conv2 with stride 1)",
        "stride_on_conv1": "the stride is on the first 1x1 conv (the original paper's placement) instead of "
        "the 3x3 conv2 (the spec's, torchvision's 'v1.5')",
        "no_stride": "the branch's convs have no stride: with strides=2 the branch keeps the input's size "
        "while the projection halves it; pass strides to " + ("conv2" if "Bottleneck" in block_class else "conv1"),
        "projection_no_stride": f"{proj} has no stride: with strides=2 it keeps the input's size while the "
        "branch halves it; pass strides to it too",
        "projection_ignored": f"use_1x1conv is ignored: {proj} is never applied, so the input cannot be "
        "added where the channels or the size change",
        "projection_reads_input": f"{proj} reads the block's input X instead of the pre-activated relu(bn1(X))",
        "relu_before_add": "the last ReLU comes before the addition: the block returns relu(Y) + X, "
        "the chapter's relu(Y + X)",
        "no_relu_after_add": "no ReLU after the addition: the block returns Y + X, the chapter's relu(Y + X)",
        "relu_after_add": "a ReLU after the addition: a pre-activation block returns Y + X as it is",
        "bn_after_relu": "BatchNorm after the ReLU: the block computes bn(relu(conv(X))), the chapter's "
        "relu(bn(conv(X)))",
        "skip_bn1": "bn1 is missing or never applied",
        "skip_bn2": "bn2 is missing or never applied",
        "skip_bn3": "bn3 is missing or never applied",
        "padding_same": "padding='same' at stride 2 pads asymmetrically (nothing before, one pixel after, on "
        "even sizes), so every window is shifted by one pixel against the spec's symmetric padding; "
        + _PAD.get(framework, "padding=1"),
        "padding_zero": "the 3x3 convs have no padding: each shrinks the image by two pixels; "
        + _PAD.get(framework, "padding=1"),
        "stage_no_downsample": "the stage's first block does not halve the resolution: unless first_block, "
        "it is built with use_1x1conv=True, strides=2",
        "stage_first_block_strided": "the first stage's first block halves the resolution too: with "
        "first_block=True every block keeps the shape",
        "biased_running_var": "the running variance is fed by the biased batch variance, as "
        f"{_title(framework)}'s BatchNorm does (the spec's is the unbiased one): accepted",
        "conv_bias": "the convolutions have a bias where the spec has none: " + _BIAS_OFF.get(framework, ""),
        "no_conv_bias": "the convolutions have no bias where the spec has one: " + _BIAS_ON.get(framework, ""),
        "projection_bn": "a BatchNorm after the 1x1 projection (torchvision's shortcut); the chapter's "
        "projection is the 1x1 conv alone",
        "no_projection_bn": "no BatchNorm after the 1x1 projection; the spec's shortcut is conv + BatchNorm",
    }
    return texts[key]
