"""Shape inference from a spec, without any framework.

Every conv and pool pads explicitly and symmetrically (3 for the 7x7 stem, 1
for 3x3 convs and the max pool, 0 for 1x1 convs), so a layer's output size is
``floor((size + 2 * padding - kernel) / stride) + 1`` on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, InputTypeError
from .spec import ArchSpec, BlockSpec

STEM_CONV = (7, 2, 3)  # kernel, stride, padding
STEM_POOL = (3, 2, 1)


def conv_out(size: int, kernel: int, stride: int, padding) -> int:
    """Output size of a conv or pool; ``padding`` on each side, or a ``(before, after)`` pair."""
    before, after = (padding, padding) if isinstance(padding, int) else padding
    return (size + before + after - kernel) // stride + 1


@dataclass(frozen=True)
class LayerShape:
    name: str
    shape: tuple[int, ...]  # NCHW for feature maps, (N, C) after flatten


def _block_macs(block: BlockSpec, h: int, w: int) -> tuple[int, int, int]:
    """Multiply-accumulates of one block per image, and its output size."""
    macs = 0
    for _, cin, cout, k, s, p in block.convs():
        h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
        macs += cin * cout * k * k * h * w
    if block.projection:  # 1x1 conv over the output grid
        macs += block.in_channels * block.out_channels * h * w
    return macs, h, w


def analyse(spec: ArchSpec, input_shape: tuple[int, int, int, int]) -> tuple[list[LayerShape], int]:
    """Per-layer output shapes for an NCHW input, and multiply-accumulates per image.

    MACs count convolutions and the dense layer (as torchvision's published
    figures do), not BN, ReLU, pooling or the residual additions.
    """
    n, c, h, w = check_input_shape(spec, input_shape)
    rows = []
    k, s, p = STEM_CONV
    h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
    macs = c * spec.width * k * k * h * w
    k, s, p = STEM_POOL
    h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
    rows.append(LayerShape("stem", (n, spec.width, h, w)))
    for i, stage in enumerate(spec.stages):
        for block in stage.blocks:
            block_macs, h, w = _block_macs(block, h, w)
            macs += block_macs
        rows.append(LayerShape(f"stages.{i}", (n, stage.out_channels, h, w)))
    f = spec.features
    if spec.preact:
        rows += [LayerShape("head.bn", (n, f, h, w)), LayerShape("head.relu", (n, f, h, w))]
    rows += [
        LayerShape("head.pool", (n, f, 1, 1)),
        LayerShape("head.flatten", (n, f)),
        LayerShape("head.fc", (n, spec.num_classes)),
    ]
    macs += f * spec.num_classes
    return rows, macs


def layer_shapes(spec: ArchSpec, input_shape) -> list[LayerShape]:
    return analyse(spec, tuple(input_shape))[0]


def macs(spec: ArchSpec, height: int = 224, width: int | None = None) -> int:
    """Multiply-accumulates for one image of the given size."""
    return analyse(spec, (1, spec.in_channels, height, width or height))[1]


def final_grid(spec: ArchSpec, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the last stage's output."""
    return layer_shapes(spec, (1, spec.in_channels, height, width))[len(spec.layers)].shape[2:]


def bn_min_batch(grid_h: int, grid_w: int) -> int:
    """Images a training batch needs so that BatchNorm sees more than one value per
    channel on a ``grid_h`` x ``grid_w`` feature map (the last stage's, the smallest)."""
    return -(-2 // (grid_h * grid_w))


def _dim(d) -> int | None:
    """An axis' length, or None where a graph being traced for export leaves it open (-1 in
    Paddle's static graph, a tensor, a symbolic dimension in JAX's export). No try/except:
    Paddle's to_static rewrites the source of what its forward calls, and mangles one."""
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return int(d) if d >= 0 else None
    return None


def _concrete(shape, unknown_ok: bool) -> tuple:
    if not unknown_ok:
        return tuple(int(d) for d in shape)
    return tuple(_dim(d) for d in shape)


def check_input_shape(
    spec: ArchSpec, shape, *, training: bool = False, unknown_ok: bool = False
) -> tuple[int, int, int, int]:
    """Validate an NCHW input shape for this network; return it as a tuple.

    In training mode BN needs more than one value per channel at its smallest
    feature map, or its batch variance is undefined. ``unknown_ok``: an axis a traced graph
    leaves open (an exporter's dynamic batch) is None and not checked; the others are.
    """
    shape = _concrete(shape, unknown_ok)
    if len(shape) != 4:
        raise InputError(
            f"{spec.name} expects a 4-d NCHW batch (N, {spec.in_channels}, H, W), got shape {shape}; "
            f"add a batch axis with x[None] or a channel axis with x[:, None]"
        )
    n, c, h, w = shape
    if c is not None and c != spec.in_channels:
        raise InputError(
            f"{spec.name} expects {spec.in_channels} input channel(s), got {c} (input shape {shape}); "
            f"convert the images or build the net with in_channels={c}"
        )
    if min((d for d in (n, h, w) if d is not None), default=1) < 1:
        raise InputError(f"{spec.name} got an empty batch or image, shape {shape}")
    if training and None not in (n, h, w):
        gh, gw = final_grid(spec, h, w)
        if n < bn_min_batch(gh, gw):
            raise InputError(
                f"input {shape} is too small to train {spec.name}: its last stage sees a "
                f"{gh}x{gw} grid, so with batch size {n} BatchNorm has a single value per channel "
                f"and no variance; use a larger batch or larger images"
            )
    return shape


def float32_input_error(what: str, got: str, convert: str) -> InputTypeError:
    """The error a framework module raises for a batch that is not float32, ``convert``
    being the framework's own conversion (its messages name the operator, not the fix)."""
    return InputTypeError(
        f"{what} expects float32 input, got {got}; convert with {convert} "
        f"(integer images also need scaling, e.g. / 255)"
    )


def check_block_input_shape(
    block: BlockSpec, shape, *, layout: str = "NCHW", unknown_ok: bool = False
) -> tuple[int, ...]:
    """Validate a batch's shape for one residual block (``layout`` is the framework's:
    NCHW, or NHWC for TensorFlow and JAX); return it as a tuple. The frameworks' own messages
    name a weight tensor, not the block, and not the fix. ``unknown_ok``: as for
    :func:`check_input_shape`."""
    shape = _concrete(shape, unknown_ok)
    what = f"Residual({block.in_channels} -> {block.out_channels})"
    if len(shape) != 4:
        raise InputError(f"{what} expects a 4-d {layout} batch, got shape {shape}; add a batch axis with x[None]")
    axis = layout.index("C")
    if shape[axis] is not None and shape[axis] != block.in_channels:
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise InputError(
            f"{what} expects {block.in_channels} channel(s) on axis {axis} ({layout}), got "
            f"{shape[axis]} (shape {shape}); build the block with input_channels="
            f"{shape[axis]}, or transpose the batch if it is {other}"
        )
    if min((d for d in shape if d is not None), default=1) < 1:
        raise InputError(f"{what} got an empty batch or image, shape {shape}")
    return shape


def check_input_array(spec: ArchSpec, x, *, training: bool = False) -> np.ndarray:
    """Validate a NumPy NCHW batch handed to a backend: shape as above, dtype float32."""
    if not isinstance(x, np.ndarray):
        raise InputTypeError(f"expected a NumPy array, got {type(x).__name__}; wrap it with np.asarray(x)")
    if x.dtype != np.float32:
        raise InputTypeError(
            f"expected float32 input, got {x.dtype}; convert with x.astype(np.float32) "
            f"(integer images also need scaling, e.g. x.astype(np.float32) / 255)"
        )
    check_input_shape(spec, x.shape, training=training)
    return x


def check_finite_input(x: np.ndarray) -> np.ndarray:
    """Refuse an NCHW batch holding NaN or Inf, naming the first (the seam's public methods
    call it: whatever a network computes from such a batch is not a number)."""
    finite = np.isfinite(x)
    if not finite.all():
        where = np.argwhere(~finite)[0]
        raise InputError(
            f"the input batch holds {int(x.size - finite.sum()):,} NaN or Inf value(s), the first "
            f"{x[tuple(where)]} at image {where[0]}, channel {where[1]}, row {where[2]}, column {where[3]} "
            f"(NCHW); a network's output on it would be NaN: pass finite values (the training "
            f"batches hold pixels scaled to [0, 1])"
        )
    return x


def format_table(
    rows: list[LayerShape], *, native: list[tuple[int, ...]] | None = None, native_layout: str = "NCHW"
) -> str:
    """The chapter's per-layer table: ``name  output shape`` (plus the backend's
    own layout beside the canonical one when they differ)."""
    width = max(len(r.name) for r in rows) + 2
    header = f"{'layer':<{width}}output shape (NCHW)"
    if native is not None:
        header += f"    {native_layout}"
    lines = [header]
    for i, row in enumerate(rows):
        line = f"{row.name:<{width}}{str(row.shape):<22}"
        if native is not None:
            line += f"  {native[i]}"
        lines.append(line.rstrip())
    return "\n".join(lines)
