"""The declarative architecture table every backend builds from.

Framework-free: only the standard library. A network is described by frozen
dataclasses, from the bottom up:

* :class:`BatchNormSpec` -- epsilon and momentum in one stated convention;
* :class:`BlockSpec` -- one residual block (the chapter's ``Residual``);
* :class:`StageSpec` -- a stage of blocks (the chapter's ``resnet_block``);
* :class:`ArchSpec` -- a whole network (stem, stages, head) with its knobs.

``ARCHS`` names the architectures; :func:`get_arch` looks one up and applies
overrides. Every constructor validates its arguments and raises ``ValueError``
saying what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InputError

BLOCK_KINDS = ("basic", "bottleneck")
SHORTCUTS = ("conv", "conv_bn")  # 1x1 conv alone (the chapter) or 1x1 conv + BN (torchvision)
STRIDE_PLACEMENTS = ("3x3", "1x1")  # bottleneck stride on its 3x3 conv (v1.5) or first 1x1 (v1)
INITS = ("xavier_uniform", "kaiming_normal")
EXPANSION = {"basic": 1, "bottleneck": 4}
# Far above any published ResNet (ResNet-1001 has 111 blocks a stage); a spec is built
# block by block, so an unbounded count would hang before any check on memory could run.
MAX_BLOCKS_PER_STAGE = 1000


def _positive_int(value, what: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{what} must be a positive integer, got {value!r}; {fix}")


def _one_of(value, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, allowed))}")


# BatchNorm divides by sqrt(variance + eps); for the unit-variance features it makes, an
# eps of 0.01 already changes that by half a percent.
MAX_BN_EPS = 0.01


@dataclass(frozen=True)
class BatchNormSpec:
    """Batch normalisation in PyTorch's convention, which every backend translates.

    ``running = (1 - momentum) * running + momentum * batch_statistic``, where the
    batch variance fed into the running variance is the *unbiased* one
    (divided by n - 1), while the batch itself is normalised with the biased
    variance (divided by n). Frameworks that store ``1 - momentum`` or use the
    biased variance must convert; see each backend module.
    """

    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self):
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0 < self.eps <= MAX_BN_EPS):
            raise InputError(
                f"BatchNorm eps must be a positive number up to {MAX_BN_EPS:g}, got {self.eps!r}: it only keeps "
                f"sqrt(variance + eps) away from zero (frameworks use 1e-5 to 1e-3); a larger one changes "
                f"the normalisation itself"
            )
        if isinstance(self.momentum, bool) or not (isinstance(self.momentum, (int, float)) and 0 < self.momentum <= 1):
            raise InputError(
                f"BatchNorm momentum must be in (0, 1] in the convention "
                f"running = (1 - m) * running + m * batch, got {self.momentum!r}; "
                f"a framework default such as 0.9 or 0.99 is the other convention: use 1 - that"
            )


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: ``out = relu(F(x) + shortcut(x))``.

    * ``basic``: 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN.
    * ``bottleneck``: 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1
      conv -> BN, narrowing to ``out_channels // 4`` inside; the stride sits on
      the 3x3 conv (``stride_on="3x3"``, torchvision's "v1.5") or on the first 1x1
      conv (``"1x1"``, the paper's original).
    * ``preact=True``: He et al. 2016's pre-activation order BN -> ReLU -> conv,
      no ReLU after the addition; a projection shortcut then reads the
      pre-activated input.

    The shortcut is the identity unless ``projection`` is set, in which case it
    is a 1x1 conv with the block's stride (plus BN if ``shortcut="conv_bn"``).
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    projection: bool = False
    kind: str = "basic"
    preact: bool = False
    conv_bias: bool = True
    shortcut: str = "conv"
    stride_on: str = "3x3"
    bn: BatchNormSpec = BatchNormSpec()

    def __post_init__(self):
        _positive_int(self.in_channels, "input_channels", "pass the number of channels the block receives")
        _positive_int(self.out_channels, "num_channels", "pass the number of channels the block produces")
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise InputError(f"strides must be 1 or 2, got {self.stride!r}")
        _one_of(self.kind, BLOCK_KINDS, "block type")
        _one_of(self.shortcut, SHORTCUTS, "shortcut type")
        _one_of(self.stride_on, STRIDE_PLACEMENTS, "stride placement")
        if self.kind == "bottleneck" and self.out_channels % EXPANSION["bottleneck"]:
            raise InputError(
                f"a bottleneck block's num_channels must be a multiple of 4 (it narrows to "
                f"num_channels // 4 inside), got {self.out_channels}"
            )
        if not self.projection and (self.stride != 1 or self.in_channels != self.out_channels):
            raise InputError(
                f"Residual({self.in_channels}, {self.out_channels}, strides={self.stride}) cannot add "
                f"its input (shape N x {self.in_channels} x H x W) to its output (N x "
                f"{self.out_channels} x H/{self.stride} x W/{self.stride}) without a projection; "
                f"pass use_1x1conv=True"
            )

    @property
    def mid_channels(self) -> int:
        """Channels inside the block: the bottleneck narrows by its expansion."""
        return self.out_channels // EXPANSION[self.kind]

    def convs(self) -> list[tuple[str, int, int, int, int, int]]:
        """The block's convolutions in order: (name, in, out, kernel, stride, padding)."""
        mid, s = self.mid_channels, self.stride
        if self.kind == "basic":
            convs = [("conv1", self.in_channels, mid, 3, s, 1), ("conv2", mid, self.out_channels, 3, 1, 1)]
        else:
            s1, s3 = (s, 1) if self.stride_on == "1x1" else (1, s)
            convs = [
                ("conv1", self.in_channels, mid, 1, s1, 0),
                ("conv2", mid, mid, 3, s3, 1),
                ("conv3", mid, self.out_channels, 1, 1, 0),
            ]
        return convs

    def bn_names(self) -> list[tuple[str, int]]:
        """The block's BatchNorm layers and their channel counts.

        Post-activation: ``bnK`` follows ``convK``. Pre-activation: ``bnK``
        precedes ``convK``, so it normalises that conv's input.
        """
        if self.preact:
            return [(bn_for(name), cin) for name, cin, _, _, _, _ in self.convs()]
        return [(bn_for(name), cout) for name, _, cout, _, _, _ in self.convs()]

    def attribute_names(self) -> dict[str, str]:
        """Canonical layer name -> the attribute that holds it in the book's block classes.

        Weights files name a projection ``shortcut.conv`` (and torchvision's BN after it
        ``shortcut.bn``) in every kind of block. The chapter's basic block calls that
        projection ``conv3``, so the basic classes hold it as ``conv3`` (and ``bn3``); a
        bottleneck has a ``conv3`` of its own and keeps ``shortcut.conv`` / ``shortcut.bn``.
        """
        names = {name: name for name, *_ in self.convs()}
        names.update({bn: bn for bn, _ in self.bn_names()})
        if self.projection:
            book = self.kind == "basic"
            names["shortcut.conv"] = "conv3" if book else "shortcut.conv"
            if self.shortcut == "conv_bn":
                names["shortcut.bn"] = "bn3" if book else "shortcut.bn"
        return names


def bn_for(conv_name: str) -> str:
    """The BatchNorm that goes with a block's conv: ``bn2`` with ``conv2``."""
    return "bn" + conv_name.removeprefix("conv")


def block_spec(
    input_channels, num_channels: int | None = None, use_1x1conv: bool = False, strides: int = 1, **options
) -> BlockSpec:
    """The chapter's ``Residual(input_channels, num_channels, use_1x1conv, strides)`` arguments
    as a :class:`BlockSpec`; ``options`` are BlockSpec's other fields. A BlockSpec
    passes through, so every backend's ``Residual`` also takes one."""
    if isinstance(input_channels, BlockSpec):
        return input_channels
    unknown = set(options) - BLOCK_OPTIONS
    if unknown:
        raise InputError(f"unknown Residual option(s) {sorted(unknown)}; valid: {sorted(BLOCK_OPTIONS)}")
    return BlockSpec(input_channels, num_channels, strides, bool(use_1x1conv), **options)


BLOCK_OPTIONS = {"kind", "preact", "conv_bias", "shortcut", "stride_on", "bn"}

# Each framework module writes one small class per kind of block, named alike everywhere.
BLOCK_CLASSES = {
    ("basic", False): "Residual",  # the chapter's block
    ("bottleneck", False): "Bottleneck",  # exercise 3
    ("basic", True): "PreActResidual",  # exercise 4
    ("bottleneck", True): "PreActBottleneck",
}


def block_class(spec: BlockSpec) -> str:
    """The name of the class that builds ``spec``'s kind of block."""
    return BLOCK_CLASSES[spec.kind, spec.preact]


def block_spec_for(
    class_name: str, input_channels, num_channels=None, use_1x1conv=False, strides=1, **options
) -> BlockSpec:
    """:func:`block_spec` for one of :data:`BLOCK_CLASSES`: the class fixes the block's kind
    (``Bottleneck(8, 16, True, 2)`` is a bottleneck), and a spec of another kind is refused
    with the class that builds it."""
    ((kind, preact),) = (key for key, name in BLOCK_CLASSES.items() if name == class_name)
    if isinstance(input_channels, BlockSpec):
        spec = input_channels
    else:
        spec = block_spec(
            input_channels, num_channels, use_1x1conv, strides, **{"kind": kind, "preact": preact, **options}
        )
    if (spec.kind, spec.preact) != (kind, preact):
        raise InputError(
            f"{class_name} builds {'pre-activation ' if preact else ''}{kind} blocks, and this "
            f"one is a {'pre-activation ' if spec.preact else ''}{spec.kind} block: use "
            f"{block_class(spec)}, or the module's block(spec), which picks the class"
        )
    return spec


@dataclass(frozen=True)
class StageSpec:
    """A stage: blocks applied one after another."""

    blocks: tuple[BlockSpec, ...]

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


def stage_spec(
    input_channels,
    num_channels: int | None = None,
    num_residuals: int | None = None,
    first_block: bool = False,
    **options,
) -> StageSpec:
    """The chapter's ``resnet_block``: the first block halves the resolution with a
    projection unless it is the network's first stage; the rest keep the shape.

    The first stage's first block also gets a projection when it changes the
    channel count (a bottleneck stage 0 goes from 64 to 256 channels at stride 1),
    which the chapter's basic-block network never needs. A StageSpec passes through.
    """
    if isinstance(input_channels, StageSpec):
        return input_channels
    _positive_int(num_residuals, "num_residuals", "a stage needs at least one block")
    if num_residuals > MAX_BLOCKS_PER_STAGE:
        raise InputError(f"num_residuals must be at most {MAX_BLOCKS_PER_STAGE}, got {num_residuals}")
    first = block_spec(
        input_channels,
        num_channels,
        use_1x1conv=not first_block or input_channels != num_channels,
        strides=1 if first_block else 2,
        **options,
    )
    rest = [block_spec(num_channels, num_channels, **options) for _ in range(num_residuals - 1)]
    return StageSpec((first, *rest))


@dataclass(frozen=True)
class ArchSpec:
    """A whole ResNet: stem, stages, head.

    Stem: 7x7/2 conv (padding 3) -> BN -> ReLU -> 3x3/2 max pool (padding 1);
    pre-activation nets drop the stem's BN and ReLU (the first block's
    pre-activation does that job) and add a final BN -> ReLU to the head.
    Stage i has ``layers[i]`` blocks producing ``width * 2**i * expansion``
    channels. Head: global average pool -> flatten -> dense.
    """

    name: str
    layers: tuple[int, ...]
    block: str = "basic"
    in_channels: int = 3
    num_classes: int = 1000
    width: int = 64
    conv_bias: bool = False
    shortcut: str = "conv_bn"
    stride_on: str = "3x3"
    preact: bool = False
    zero_init_last_bn: bool = False
    init: str = "kaiming_normal"
    bn: BatchNormSpec = BatchNormSpec()

    def __post_init__(self):
        _positive_int(self.in_channels, "in_channels", "images have 1 (grey) or 3 (colour) channels")
        _positive_int(self.num_classes, "num_classes", "pass the number of output classes")
        _positive_int(self.width, "width", "the stem's channel count; the chapter uses 64")
        if not isinstance(self.layers, tuple) or not self.layers:
            raise InputError(f"layers must be a non-empty tuple of blocks per stage, got {self.layers!r}")
        for n in self.layers:
            _positive_int(n, "every entry of layers", "each stage needs at least one block")
            if n > MAX_BLOCKS_PER_STAGE:
                raise InputError(
                    f"layers has a stage of {n} blocks, more than {MAX_BLOCKS_PER_STAGE}; pass fewer blocks per stage"
                )
        _one_of(self.block, BLOCK_KINDS, "block type")
        _one_of(self.shortcut, SHORTCUTS, "shortcut type")
        _one_of(self.stride_on, STRIDE_PLACEMENTS, "stride placement")
        _one_of(self.init, INITS, "initialiser")
        if not isinstance(self.bn, BatchNormSpec):
            raise InputError(f"bn must be a BatchNormSpec, got {self.bn!r}")
        if self.preact and self.zero_init_last_bn:
            raise InputError(
                "zero_init_last_bn applies to post-activation blocks, whose last layer is a BN; "
                "a pre-activation block ends in a conv: pass zero_init_last_bn=False"
            )
        _ = self.stages  # builds every block, so a bad combination fails here, at construction

    @property
    def expansion(self) -> int:
        return EXPANSION[self.block]

    @property
    def block_options(self) -> dict:
        return dict(
            kind=self.block,
            preact=self.preact,
            conv_bias=self.conv_bias,
            shortcut=self.shortcut,
            stride_on=self.stride_on,
            bn=self.bn,
        )

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        stages, channels = [], self.width
        for i, n in enumerate(self.layers):
            out = self.width * 2**i * self.expansion
            stages.append(stage_spec(channels, out, n, first_block=(i == 0), **self.block_options))
            channels = out
        return tuple(stages)

    @property
    def features(self) -> int:
        """Channels entering the head."""
        return self.width * 2 ** (len(self.layers) - 1) * self.expansion

    def layer_names(self) -> list[str]:
        """Names of the layers whose outputs the per-layer shape table lists."""
        head = ["head.bn", "head.relu"] if self.preact else []
        return [
            "stem",
            *(f"stages.{i}" for i in range(len(self.layers))),
            *head,
            "head.pool",
            "head.flatten",
            "head.fc",
        ]


ARCH_FIELDS = {f.name for f in dataclasses.fields(ArchSpec)} - {"name"}

_TORCHVISION = dict(in_channels=3, num_classes=1000, conv_bias=False, shortcut="conv_bn", init="kaiming_normal")

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        # The chapter's network: biases on every conv, a bare 1x1 conv as projection,
        # Xavier-uniform init, Fashion-MNIST's 1 channel and 10 classes.
        ArchSpec(
            "d2l-resnet18",
            (2, 2, 2, 2),
            "basic",
            in_channels=1,
            num_classes=10,
            conv_bias=True,
            shortcut="conv",
            init="xavier_uniform",
        ),
        # The ResNet paper's Table 1, as torchvision builds it.
        ArchSpec("resnet18", (2, 2, 2, 2), "basic", **_TORCHVISION),
        ArchSpec("resnet34", (3, 4, 6, 3), "basic", **_TORCHVISION),
        ArchSpec("resnet50", (3, 4, 6, 3), "bottleneck", **_TORCHVISION),
        ArchSpec("resnet101", (3, 4, 23, 3), "bottleneck", **_TORCHVISION),
        ArchSpec("resnet152", (3, 8, 36, 3), "bottleneck", **_TORCHVISION),
        # "Identity Mappings in Deep Residual Networks": projection is a bare 1x1 conv.
        ArchSpec("preact-resnet18", (2, 2, 2, 2), "basic", preact=True, **{**_TORCHVISION, "shortcut": "conv"}),
        ArchSpec("preact-resnet50", (3, 4, 6, 3), "bottleneck", preact=True, **{**_TORCHVISION, "shortcut": "conv"}),
        # keras.applications.ResNet50: the paper's v1 (stride on a bottleneck's first 1x1), a bias
        # on every conv, Glorot-uniform init, and Keras' BatchNorm epsilon (its momentum 0.99
        # is 0.01 in this convention). Its ZeroPadding2D + valid conv/pool equal the stem's padding.
        ArchSpec(
            "keras-resnet50",
            (3, 4, 6, 3),
            "bottleneck",
            conv_bias=True,
            shortcut="conv_bn",
            stride_on="1x1",
            init="xavier_uniform",
            bn=BatchNormSpec(eps=1.001e-5, momentum=0.01),
        ),
    )
}


def get_arch(arch: str | ArchSpec = "d2l-resnet18", **overrides) -> ArchSpec:
    """Look up a named architecture (or take an ArchSpec) and apply overrides,
    e.g. ``get_arch("resnet50", in_channels=1, num_classes=10, stride_on="1x1")``."""
    if isinstance(arch, ArchSpec):
        spec = arch
    elif arch in ARCHS:
        spec = ARCHS[arch]
    else:
        raise InputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    unknown = set(overrides) - ARCH_FIELDS
    if unknown:
        raise InputError(f"unknown override(s) {sorted(unknown)}; valid: {sorted(ARCH_FIELDS)}")
    if isinstance(overrides.get("layers"), list):  # anything else is left for ArchSpec to refuse
        overrides["layers"] = tuple(overrides["layers"])
    return dataclasses.replace(spec, **overrides) if overrides else spec
