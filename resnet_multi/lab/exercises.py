"""The lab's exercises and the grid of cases each is checked on. Framework-free.

An exercise names what a student hands in (the chapter's ``Residual``, a stage, the whole
net, or one of the chapter's exercises), the spec it must match, and the cases: each a way
to build the student's module (channels, stride, projection, blocks) and an input batch.
Channels and images are small, so that a whole check takes seconds on a CPU; sizes are odd
and even (``padding='same'`` differs from the spec's padding only on even sizes), batches of
one and four images where BatchNorm can train on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..spec import ArchSpec, BlockSpec, StageSpec, block_spec_for, get_arch, stage_spec


@dataclass(frozen=True)
class Case:
    """One module the student's code builds, and the batch it is run on (NCHW)."""

    args: tuple  # the chapter's arguments: (in, out, use_1x1conv, strides) or (in, out, residuals, first_block)
    spec: BlockSpec | StageSpec | ArchSpec
    input_shape: tuple[int, int, int, int]
    numeric: bool = True  # False: only the output shape is checked (the chapter's 96x96 table)

    def label(self, exercise: Exercise) -> str:
        n, c, h, w = self.input_shape
        return f"{exercise.call(self.args)} on {n}x{c}x{h}x{w}"


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    target: str  # "block", "stage" or "net"
    names: tuple[str, ...]  # what a submission calls it, in the order they are looked up
    block_class: str = "Residual"  # the class the student writes (blocks), from spec.BLOCK_CLASSES
    options: dict = field(default_factory=dict)  # the spec's block options for this exercise
    arch: str | None = None  # nets: the spec's architecture and its overrides
    arch_overrides: dict = field(default_factory=dict)
    grid: tuple = ()  # block and stage exercises: argument tuples and input shapes
    text: str = ""  # the exercise as the lab notebooks state it

    def call(self, args) -> str:
        """How the case's module is built, in the chapter's PyTorch spelling (NCHW)."""
        if self.target == "block":
            cin, cout, proj, s = args
            extra = (", use_1x1conv=True" if proj else "") + (f", strides={s}" if s != 1 else "")
            return f"{self.block_class}({cin}, {cout}{extra})"
        if self.target == "stage":
            cin, cout, n, first = args
            return f"resnet_block({cin}, {cout}, {n}{', first_block=True' if first else ''})"
        return self.names[0]

    def spec(self, options: dict | None = None) -> ArchSpec | None:
        if self.target != "net":
            return None
        return get_arch(self.arch, **{**self.arch_overrides, **(options or {})})

    def cases(self, options: dict | None = None) -> list[Case]:
        """The grid, with the spec's block options (the exercise's, then ``options``)."""
        opts = {**self.options, **(options or {})}
        if self.target == "block":
            return [Case(args, block_spec_for(self.block_class, *args, **opts), shape) for args, shape in self.grid]
        if self.target == "stage":
            return [Case(args, stage_spec(*args, **opts), shape) for args, shape in self.grid]
        spec = self.spec(options)
        return [
            Case((), spec, (4, spec.in_channels, 32, 32)),
            Case((), spec, (1, spec.in_channels, 96, 96), numeric=False),  # the chapter's shape table
        ]


_BLOCK_GRID = (
    ((3, 3, False, 1), (4, 3, 6, 6)),
    ((3, 3, False, 1), (1, 3, 5, 5)),
    ((3, 6, True, 2), (4, 3, 6, 6)),
    ((3, 6, True, 2), (1, 3, 7, 7)),
    ((3, 6, True, 1), (2, 3, 5, 5)),
    ((3, 3, True, 2), (2, 3, 8, 8)),
)
# a bottleneck narrows to num_channels // 4 inside
_BOTTLENECK_GRID = (
    ((8, 8, False, 1), (4, 8, 6, 6)),
    ((8, 8, False, 1), (1, 8, 5, 5)),
    ((8, 16, True, 2), (4, 8, 6, 6)),
    ((8, 16, True, 2), (1, 8, 7, 7)),
    ((4, 8, True, 1), (2, 4, 5, 5)),
)
_STAGE_GRID = (
    ((3, 3, 2, True), (2, 3, 6, 6)),
    ((3, 6, 2, False), (4, 3, 6, 6)),
    ((3, 6, 1, False), (1, 3, 7, 7)),
)
# the chapter's blocks: a bias on every conv, the projection a bare 1x1 conv
CHAPTER = {"conv_bias": True, "shortcut": "conv"}

EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in (
        Exercise(
            "residual",
            "the chapter's residual block",
            "block",
            ("Residual",),
            options=CHAPTER,
            grid=_BLOCK_GRID,
            text="Write the chapter's `Residual` block: two 3x3 convolutions (padding 1, the first with "
            "`strides`), each followed by BatchNorm, a ReLU between them; the input added to the result "
            "(through a 1x1 convolution with `strides` when `use_1x1conv`), and a ReLU after the addition. "
            "Name the layers as the book does: `conv1`, `bn1`, `conv2`, `bn2`, and `conv3` for the 1x1 "
            "convolution. BatchNorm: epsilon 1e-5, running statistics that keep 90% of their old value "
            "at each step.",
        ),
        Exercise(
            "resnet_block",
            "a stage of residual blocks (resnet_block)",
            "stage",
            ("resnet_block", "ResnetBlock"),
            options=CHAPTER,
            grid=_STAGE_GRID,
            text="Write the chapter's `resnet_block(input_channels, num_channels, num_residuals, "
            "first_block=False)`: `num_residuals` blocks, the first of which halves the resolution "
            "with a 1x1 projection unless `first_block`.",
        ),
        Exercise(
            "resnet18",
            "the chapter's ResNet-18 (1 input channel, 10 classes)",
            "net",
            ("net", "ResNet18", "resnet18"),
            arch="d2l-resnet18",
            text="Assemble the chapter's ResNet-18 for Fashion-MNIST (one input channel, ten classes): "
            "the 7x7 stem with BatchNorm, ReLU and 3x3 max pooling, four stages of two blocks (64, 128, "
            "256, 512 channels), global average pooling and a dense layer. It has 11,178,378 parameters.",
        ),
        Exercise(
            "bottleneck",
            "the bottleneck block (the chapter's exercise 3)",
            "block",
            ("Bottleneck",),
            block_class="Bottleneck",
            options={**CHAPTER, "kind": "bottleneck"},
            grid=_BOTTLENECK_GRID,
            text="Write `Bottleneck(input_channels, num_channels, use_1x1conv=False, strides=1)`: a 1x1 "
            "convolution narrowing to `num_channels // 4`, a 3x3 convolution (padding 1, with `strides`), "
            "a 1x1 convolution widening to `num_channels`, each followed by BatchNorm, ReLUs after the "
            "first two; the input added (through a 1x1 convolution with `strides`, named `shortcut`, "
            "when `use_1x1conv`), and a ReLU after the addition. Name them `conv1`..`conv3`, "
            "`bn1`..`bn3`, `shortcut`.",
        ),
        Exercise(
            "preact",
            "the pre-activation block (the chapter's exercise 4)",
            "block",
            ("PreActResidual",),
            block_class="PreActResidual",
            options={**CHAPTER, "preact": True},
            grid=_BLOCK_GRID,
            text="Write `PreActResidual(input_channels, num_channels, use_1x1conv=False, strides=1)` "
            "(He et al. 2016, 'Identity Mappings'): BatchNorm and ReLU before each 3x3 convolution "
            "(`bn1` normalises the block's input, `bn2` conv1's output), no ReLU after the addition; "
            "the 1x1 projection `conv3` reads the pre-activated input relu(bn1(X)).",
        ),
        Exercise(
            "resnet34",
            "ResNet-34 (the chapter's exercise 2, Table 1 of the ResNet paper)",
            "net",
            ("resnet34", "ResNet34", "net34"),
            arch="d2l-resnet18",
            arch_overrides={"layers": (3, 4, 6, 3)},
            text="Build ResNet-34 from the chapter's blocks (Table 1 of the ResNet paper): stages of 3, 4, "
            "6 and 3 blocks, one input channel, ten classes, the chapter's stem and head.",
        ),
    )
}


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise InputError(f"unknown exercise {name!r}; choose one of {', '.join(EXERCISES)}")
    return EXERCISES[name]


# What each framework's chapter code calls a block with: TensorFlow and MXNet infer the
# input channels on the first call; Flax's Linen modules are dataclasses with these fields.
SIGNATURES = {
    "block": {
        "torch": "{cls}(input_channels, num_channels, use_1x1conv=False, strides=1)",
        "numpy": "{cls}(input_channels, num_channels, use_1x1conv=False, strides=1), with forward(X) and backward(dY)",
        "paddle": "{cls}(input_channels, num_channels, use_1x1conv=False, strides=1)",
        "mindspore": "{cls}(input_channels, num_channels, use_1x1conv=False, strides=1)",
        "tf": "{cls}(num_channels, use_1x1conv=False, strides=1)",
        "mxnet": "{cls}(num_channels, use_1x1conv=False, strides=1)",
        "jax": "{cls}(num_channels, use_1x1conv=False, strides=(1, 1), training=True) (Linen), or "
        "{cls}(input_channels, num_channels, use_1x1conv=False, strides=1, rngs=...) (NNX)",
    },
    "stage": {
        "torch": "resnet_block(input_channels, num_channels, num_residuals, first_block=False)",
        "numpy": "resnet_block(input_channels, num_channels, num_residuals, first_block=False)",
        "paddle": "resnet_block(input_channels, num_channels, num_residuals, first_block=False)",
        "mindspore": "resnet_block(input_channels, num_channels, num_residuals, first_block=False)",
        "tf": "ResnetBlock(num_channels, num_residuals, first_block=False)",
        "mxnet": "resnet_block(num_channels, num_residuals, first_block=False)",
        "jax": "resnet_block(num_channels, num_residuals, first_block=False, training=True) (Linen), or "
        "resnet_block(input_channels, num_channels, num_residuals, first_block=False, rngs=...) (NNX)",
    },
    "net": dict.fromkeys(
        ("numpy", "torch", "paddle", "mindspore", "tf", "mxnet", "jax"),
        "a module, or a function or class that builds one when called without arguments",
    ),
}


def signature(exercise: Exercise, framework: str) -> str:
    return SIGNATURES[exercise.target][framework].format(cls=exercise.block_class)
