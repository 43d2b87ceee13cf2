"""Where XLA's CPU convolutions are slow, layer by layer: the measurements behind
``resnet_multi.jax_cpu.matmul_is_faster_on_cpu``, ``CPU_COMPILER_OPTIONS`` and the CPU max pool.

    python scripts/bench_jax_conv.py                 # the chapter's layers at 32x32 (bench's quick preset)
    python scripts/bench_jax_conv.py --size 96       # at the chapter's 96x96

For each conv of d2l-resnet18 at that input size (batch 256), the median time of one
jitted forward-and-gradient (the gradient of a sum of squares with respect to the kernel,
and to the input for every layer but the stem, as in training), computed three ways:
``lax.conv_general_dilated`` as jaxlib compiles it by default (YNNPACK's convolutions), the same
with ``CPU_COMPILER_OPTIONS`` (Eigen's), and ``patches_matmul_conv`` (one matmul over image
patches); then which one the package uses on the CPU. Then the stem's max pool: ``reduce_window`` (Flax's) against the
package's shifted maximum. Run with the jax environment's python; the repository's
``resnet_multi`` is imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from resnet_multi import jax as rn  # noqa: E402
from resnet_multi import (
    jax_cpu,  # noqa: E402
    shapes,  # noqa: E402
)
from resnet_multi.spec import get_arch  # noqa: E402

jax, jnp, lax, nnx = rn.jax, rn.jnp, rn.lax, rn.nnx


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def chapter_convs(size: int):
    """(layer, input side, in channels, out channels, kernel, stride, padding) of each
    distinct conv of d2l-resnet18 at ``size``, in the network's order."""
    spec = get_arch("d2l-resnet18")
    convs = [("stem", size, spec.in_channels, spec.width, *shapes.STEM_CONV)]
    side = shapes.conv_out(shapes.conv_out(size, *shapes.STEM_CONV), *shapes.STEM_POOL)
    for i, stage in enumerate(spec.stages, 1):
        for block in stage.blocks:
            here = side
            for name, cin, cout, k, s, p in block.convs():
                convs.append((f"stage {i} {name}", here, cin, cout, k, s, p))
                here = shapes.conv_out(here, k, s, p)
            if block.projection:
                convs.append((f"stage {i} 1x1", side, block.in_channels, block.out_channels, 1, block.stride, 0))
            side = here
    distinct = {}
    for layer, *shape in convs:
        distinct.setdefault(tuple(shape), layer)
    return [(layer, *shape) for shape, layer in distinct.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(
        f"jax {jax.__version__}, d2l-resnet18's convs at {args.size}x{args.size}, batch {args.batch_size}; "
        f"median of {args.repeats} jitted forward+gradient calls, ms; {os.cpu_count()} CPUs, "
        f"1-min load {os.getloadavg()[0]:.2f} at start"
    )
    print(
        f"{'layer':15s} {'input':>12s} {'out':>5s} {'YNNPACK conv':>13s} {'Eigen conv':>11s} "
        f"{'patch matmul':>13s}  package uses"
    )
    for name, h, cin, cout, k, s, p in chapter_convs(args.size):
        x = jnp.asarray(rng.standard_normal((args.batch_size, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
        strides, pads = (s, s), ((p, p), (p, p))

        def conv(x, w):
            return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def matmul(x, w):
            return jax_cpu.patches_matmul_conv(x, w, strides, pads)

        # the gradients a training step takes: the kernel's, and the input's but at the stem
        wrt = (1,) if name == "stem" else (0, 1)

        def fwd_grad(f):
            return jax.value_and_grad(lambda x, w: jnp.sum(jnp.square(f(x, w))), argnums=wrt)

        ynn = median_ms(jax.jit(fwd_grad(conv)), x, w, repeats=args.repeats)
        eigen = median_ms(
            jax.jit(fwd_grad(conv), compiler_options=jax_cpu.CPU_COMPILER_OPTIONS), x, w, repeats=args.repeats
        )
        patches = median_ms(
            jax.jit(fwd_grad(matmul), compiler_options=jax_cpu.CPU_COMPILER_OPTIONS), x, w, repeats=args.repeats
        )
        out = shapes.conv_out(h, k, s, p)
        uses = "patch matmul" if jax_cpu.matmul_is_faster_on_cpu((k, k), (out, out)) else "Eigen conv"
        print(
            f"{name:15s} {f'{h}x{h}x{cin}':>12s} {f'{out}x{out}':>5s} {ynn:13.1f} {eigen:11.1f} {patches:13.1f}  {uses}"
        )
    h = shapes.conv_out(args.size, *shapes.STEM_CONV)
    x = jnp.asarray(rng.standard_normal((args.batch_size, h, h, get_arch("d2l-resnet18").width)), jnp.float32)
    window, stride, pad = shapes.STEM_POOL

    def flax_pool(x):
        return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=((pad, pad), (pad, pad)))

    def shifted(x):
        return jax_cpu.shifted_max_pool(x, window, stride, pad)

    def pool_grad(f):
        return jax.value_and_grad(lambda x: jnp.sum(jnp.square(f(x))))

    print(
        f"max pool 3x3/2 on {h}x{h}x{x.shape[-1]}: reduce_window "
        f"{median_ms(jax.jit(pool_grad(flax_pool)), x, repeats=args.repeats):.1f} ms, shifted maximum "
        f"{median_ms(jax.jit(pool_grad(shifted)), x, repeats=args.repeats):.1f} ms (forward+gradient)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
