"""The memory a network will need, estimated from its spec before anything is allocated,
so that a network too big for the machine is refused with a message instead of a crash."""

from __future__ import annotations

import os

from . import shapes
from .errors import InputError
from .spec import ArchSpec
from .weights import count


def memory_estimate(spec: ArchSpec, input_shape, *, training: bool, itemsize: int = 4) -> int:
    """Bytes a backend needs at least to run ``spec`` on ``input_shape`` (NCHW).

    From the spec alone, nothing allocated: parameters and BN buffers (training adds
    a gradient and a canonical copy of each parameter), the input, and activations:
    in training every conv, BN and ReLU output is kept for the backward pass; in
    inference the two largest feature maps are alive at once. Frameworks add
    workspace on top, so this is a floor, not a prediction.
    """
    n, c, h, w = shapes.check_input_shape(spec, input_shape)
    image = c * h * w
    params, buffers = count(spec)
    maps = []  # elements per image of each conv output (and the stem's pool)
    k, s, p = shapes.STEM_CONV
    h, w = shapes.conv_out(h, k, s, p), shapes.conv_out(w, k, s, p)
    maps.append(spec.width * h * w)
    k, s, p = shapes.STEM_POOL
    h, w = shapes.conv_out(h, k, s, p), shapes.conv_out(w, k, s, p)
    maps.append(spec.width * h * w)
    for stage in spec.stages:
        for block in stage.blocks:
            for _, _, cout, k, s, p in block.convs():
                h, w = shapes.conv_out(h, k, s, p), shapes.conv_out(w, k, s, p)
                maps.append(cout * h * w)
            if block.projection:
                maps.append(block.out_channels * h * w)
    if training:
        activations = 3 * sum(maps)  # conv, BN and ReLU outputs, kept for backward
        weights = 3 * params + buffers  # value, gradient, the canonical copy
    else:
        activations = 2 * max(maps)
        weights = params + buffers
    return int(itemsize * (weights + n * (image + activations)))


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def itemsize(backend_name: str) -> int:
    """Bytes per number a backend computes in: the NumPy reference works in float64."""
    return 8 if backend_name == "numpy" else 4


class MemoryLimitError(InputError):
    """A network and input whose estimated memory is above the limit."""


def check_memory(
    spec: ArchSpec,
    input_shape,
    *,
    training: bool,
    limit_bytes: int | None,
    itemsize: int = 4,
    flag: str = "--max-memory",
) -> int:
    """Refuse, before anything is allocated, a run whose memory floor is above the limit."""
    need = memory_estimate(spec, input_shape, training=training, itemsize=itemsize)
    if limit_bytes is not None and need > limit_bytes:
        raise MemoryLimitError(
            f"{spec.name} ({'training' if training else 'inference'}, input {tuple(input_shape)}) needs at "
            f"least {need / 2**30:.1f} GiB by its spec's estimate, above the limit of "
            f"{limit_bytes / 2**30:.1f} GiB; use a smaller batch, image or network, or raise the "
            f"limit with {flag} GIB"
        )
    return need
