"""JAX-specific checks: the translations resnet_multi.jax makes from Flax's defaults to the
spec, and the defaults themselves, so that a Flax release that changes one of them shows
up here by name rather than as a parity failure."""

import re
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed in this environment (tox -e jax)")
rn = pytest.importorskip("resnet_multi.jax")
jnp, nnx, lax = rn.jnp, rn.nnx, rn.lax

from helpers import rel_err  # noqa: E402

from resnet_multi import BatchNormSpec, get_arch, jax_cpu  # noqa: E402
from resnet_multi.weights import count, init_weights  # noqa: E402


def test_import_without_jax_names_the_extra():
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "try:\n    import resnet_multi.jax\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # where to get it: the framework's own environment, or its install line in a new one
    assert "tox -e jax" in out and "pip install jax==0.10.2" in out


def test_the_module_named_jax_imports_the_real_jax():
    """resnet_multi/jax.py shadows nothing: its ``jax`` is the installed framework."""
    assert rn.jax is jax and rn.jax.__name__ == "jax" and hasattr(rn.jax, "jit")
    assert rn.__name__ == "resnet_multi.jax"


def _padded_conv(x, kernel, stride, before, after):
    """``kernel`` applied to ``x`` padded (before, after) on H and W, in plain lax."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((before, after), (before, after)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_flax_same_padding_is_asymmetric_at_stride_2():
    """Why every conv pads explicitly: on an even size Flax 'SAME' pads (2, 3) for the 7x7/2
    stem, so its windows sit one pixel off the spec's (3, 3)."""
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 1))
    same = nnx.Conv(1, 1, (7, 7), strides=(2, 2), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    ours = rn.conv2d(1, 1, 7, 2, use_bias=False, padding=3)
    same.kernel[...] = ours.kernel[...]
    assert same(x).shape == ours(x).shape  # shapes agree ...
    assert not np.allclose(same(x), ours(x))  # ... numbers do not
    np.testing.assert_allclose(same(x), _padded_conv(x, ours.kernel[...], 2, 2, 3), atol=1e-6)  # (2, 3)
    np.testing.assert_allclose(ours(x), _padded_conv(x, ours.kernel[...], 2, 3, 3), atol=1e-6)  # (3, 3)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (1, 1, 0), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
def test_convs_pad_symmetrically(kernel, stride, padding):
    conv = rn.conv2d(4, 5, kernel, stride, use_bias=True, padding=padding)
    conv.bias[...] = jnp.arange(5, dtype=jnp.float32)
    for size in (8, 7, 1):  # even, odd, and a 1x1 grid smaller than the kernel
        x = jax.random.normal(jax.random.key(size), (2, size, size, 4))
        want = _padded_conv(x, conv.kernel[...], stride, padding, padding) + conv.bias[...]
        np.testing.assert_allclose(conv(x), want, atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jax.random.uniform(jax.random.key(3), (1, 4, 4, 1))  # all negative
    out = rn.max_pool(x, 3, 2, 1)
    assert out.shape == (1, 2, 2, 1)
    assert float(out[0, 0, 0, 0]) == float(x[0, :2, :2, 0].max())  # not a padded 0


def _bn_data():
    # mean 4.5, biased variance 5.25, unbiased 6.0 (n = 8)
    return (jnp.arange(8, dtype=jnp.float32) + 1.0).reshape(2, 2, 2, 1)


def test_flax_batch_norm_defaults_are_the_other_convention():
    """nnx.BatchNorm: momentum 0.99 weighting the old value, the biased variance fed in."""
    default = nnx.BatchNorm(1, rngs=nnx.Rngs(0))
    assert (default.epsilon, default.momentum, default.use_running_average) == (1e-5, 0.99, False)
    default(_bn_data())
    assert float(default.mean[0]) == pytest.approx(0.01 * 4.5)
    assert float(default.var[0]) == pytest.approx(0.99 * 1 + 0.01 * 5.25)  # biased


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
def test_batch_norm_translates_the_spec_convention(compiled):
    bn = rn.BatchNorm(1, BatchNormSpec(eps=1e-5, momentum=0.1))
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)
    graphdef, state = nnx.split(bn)

    def train(state, x):  # the pure form the backend compiles
        module = nnx.merge(graphdef, state, copy=True)
        out = module(x, train=True)
        return out, nnx.state(module)

    train = jax.jit(train) if compiled else train
    x = _bn_data()
    out, state = train(state, x)
    nnx.update(bn, state)
    assert float(bn.mean[0]) == pytest.approx(0.9 * 0 + 0.1 * 4.5)
    assert float(bn.var[0]) == pytest.approx(0.9 * 1 + 0.1 * 6.0)  # unbiased, as the spec
    # the batch itself is normalised with the biased variance
    np.testing.assert_allclose(np.asarray(out).ravel(), (np.arange(8) + 1 - 4.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)
    out, state = train(state, x + 1.0)  # a second step averages again, from the updated statistics
    nnx.update(bn, state)
    assert float(bn.mean[0]) == pytest.approx(0.9 * 0.45 + 0.1 * 5.5)
    assert float(bn.var[0]) == pytest.approx(0.9 * 1.5 + 0.1 * 6.0)
    # inference uses the running statistics and leaves them alone
    np.testing.assert_allclose(bn(x, train=False), (x - bn.mean[...]) / jnp.sqrt(bn.var[...] + 1e-5), rtol=1e-5)
    assert float(bn.mean[0]) == pytest.approx(0.9 * 0.45 + 0.1 * 5.5)


def test_batch_statistics_are_accurate_in_float32():
    """The two-pass variance keeps the batch statistics within a few float32 roundings of
    float64; Flax's default one-pass E[x^2] - E[x]^2 would not on data far from 0."""
    for seed in range(4):
        z = (np.random.default_rng(seed).standard_normal((32, 16, 16, 8)) * 0.5 + 1.0).astype(np.float32)
        bn = rn.BatchNorm(8, BatchNormSpec(momentum=1.0))  # running statistics := the batch's
        bn(jnp.asarray(z), train=True)
        z64 = z.astype(np.float64)
        for got, want in ((bn.mean, z64.mean(axis=(0, 1, 2))), (bn.var, z64.var(axis=(0, 1, 2), ddof=1))):
            assert np.abs(np.asarray(got[...]) - want).max() / np.abs(want).max() <= 5e-6, seed


def test_train_must_be_passed_explicitly():
    """net(x) is inference and leaves the BN statistics alone; net(x, train=True) updates them."""
    model = rn.net("d2l-resnet18", width=8)
    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 1))
    before = np.asarray(model.stem_bn.mean[...]).copy()
    model(x)
    np.testing.assert_array_equal(model.stem_bn.mean[...], before)
    model(x, train=True)
    assert not np.array_equal(model.stem_bn.mean[...], before)


def test_weights_exist_at_construction():
    blk = rn.Residual(3, 6, use_1x1conv=True, strides=2)
    # conv1 3*6*9+6, bn1 2*6, conv2 6*6*9+6, bn2 2*6, shortcut 3*6+6
    params = jax.tree.leaves(nnx.state(blk, nnx.Param))
    assert sum(p.size for p in params) == 168 + 12 + 330 + 12 + 24
    model = rn.net("d2l-resnet18")
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == count(get_arch("d2l-resnet18"))[0]


def test_resnet_block():
    stage = rn.ResnetBlock(8, 16, 2)
    assert stage(jnp.zeros((1, 6, 6, 8)), train=True).shape == (1, 3, 3, 16)
    assert [b.spec.stride for b in rn.resnet_block(8, 16, 2)] == [2, 1]


def test_native_layouts_are_flaxs():
    model = rn.net("d2l-resnet18", seed=1)
    w = init_weights(model.spec, 1)
    np.testing.assert_array_equal(model.stem_conv.kernel[...], w["stem.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.head_fc.kernel[...], w["head.fc.weight"].T)
    assert model.stem_conv.kernel[...].shape == (7, 7, 1, 64)  # HWIO
    assert model(jnp.zeros((2, 32, 32, 1))).shape == (2, 10)  # NHWC in


def test_nchw_input_is_refused():
    model = rn.net("d2l-resnet18", width=8)
    with pytest.raises(ValueError, match="looks NCHW"):
        model(jnp.zeros((2, 1, 32, 32)))


def test_float64_input_is_refused_not_downcast():
    """Without jax_enable_x64, JAX turns float64 into float32 without a word; the net says so."""
    assert jnp.asarray(np.zeros(2, np.float64)).dtype == jnp.float32  # JAX's own silent downcast
    model = rn.net("d2l-resnet18", width=8)
    with pytest.raises(TypeError, match="float64.*jax_enable_x64"):
        model(np.zeros((2, 32, 32, 1), np.float64))


def test_shape_table_shows_both_layouts():
    table = rn.shape_table(rn.net("d2l-resnet18"), (1, 96, 96, 1))
    assert "NHWC" in table and "(1, 64, 24, 24)" in table and "(1, 24, 24, 64)" in table


def test_devices_use_jaxs_device_list():
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        gpus = []
    assert rn.devices() == ["cpu"] + [f"cuda:{i}" for i in range(len(gpus))]
    with pytest.raises(ValueError, match="not available to jax"):
        rn.net("d2l-resnet18", width=8, device=f"cuda:{len(gpus)}")


def _tiny(eager):
    backend = rn.BACKEND
    return backend, backend.build("d2l-resnet18", width=8, eager=eager)


def test_a_step_returns_new_state_and_leaves_the_old_alone():
    """Immutable parameters: the pure step hands back new params and stats; the arrays it
    was given are unchanged (the backend then writes the new ones into the module)."""
    _, model = _tiny(eager=False)
    graphdef, params, stats, _ = nnx.split(model.module, nnx.Param, nnx.BatchStat, ...)
    before = [np.asarray(a).copy() for a in jax.tree.leaves((params, stats))]
    sgd = jax.jit(rn.steps(model.module)["sgd"])
    opt_state = rn.sgd_optimizer().init(params)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 1)), jnp.float32)
    new_params, new_stats, _, loss, _ = sgd(params, stats, opt_state, x, jnp.arange(4))
    for a, b in zip(jax.tree.leaves((params, stats)), before):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(new_params)[0], jax.tree.leaves(params)[0])
    assert np.isfinite(float(loss))


def test_compiled_steps_compile_once_per_shape_not_per_step():
    """A new learning rate is optimizer-state data, not a recompile; an epoch's smaller
    last batch costs one compile."""
    backend, model = _tiny(eager=False)
    assert backend.compiles
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    for lr in (0.05, 0.05, 0.1, 0.01):
        backend.sgd_step(model, x, y, lr)
    step = model.cache[("step", "sgd")]
    assert step._cache_size() == 1
    backend.sgd_step(model, x[:5], y[:5], 0.05)
    backend.sgd_step(model, x, y, 0.05)
    assert step._cache_size() == 2
    assert float(model.cache["opt_state"].hyperparams["learning_rate"]) == pytest.approx(0.05)


def test_eager_models_run_op_by_op(monkeypatch):
    """eager=True (``--eager``): the same pure step without jax.jit, so its Python runs at
    every step (a reader can step through it); under jit the Python runs once, when the
    step is traced, and later steps run the compiled program. Both give the same update."""
    backend, model = _tiny(eager=True)
    _, compiled = _tiny(eager=False)
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.arange(4)
    calls = []
    original = rn.Residual.__call__

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rn.Residual, "__call__", spy)
    per_step, losses, after_first = {}, {}, {}
    before = backend.get_weights(model)
    for name, m in (("eager", model), ("compiled", compiled)):
        per_step[name] = []
        for step in range(2):
            calls.clear()
            loss = backend.sgd_step(m, x, y, 0.05)[0]
            per_step[name].append(len(calls))
            if step == 0:
                # compared after one step: this random batch is not kink-free (see the parity
                # suite's helpers), so float32 rounding may flip a ReLU or max-pool decision later
                losses[name], after_first[name] = loss, backend.get_weights(m)
    monkeypatch.undo()
    blocks = 8  # d2l-resnet18's residual blocks
    assert per_step["eager"] == [blocks, blocks]
    assert per_step["compiled"] == [blocks, 0]  # traced once, then the compiled program
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    # The updates, on their own scale: the compiled CPU step runs Eigen's convolutions
    # (CPU_COMPILER_OPTIONS) where op-by-op JAX runs YNNPACK's, and XLA fuses and reorders
    # float32 sums, so the two differ by rounding (2e-5 of the stem's update seen); the
    # parity suite checks each mode against the float64 reference with its own tolerance.
    a, b = after_first["eager"], after_first["compiled"]
    for name in a:
        if np.abs(a[name] - before[name]).max() > 1e-3:  # BN cancels a conv bias's gradient: noise
            assert rel_err(b[name] - before[name], a[name] - before[name]) <= 1e-4, name


# ---- what the CPU computes differently, and that it is the same function ------------------
def _conv_case(shape, kernel, stride, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], 6)), jnp.float32)
    return x, w, (stride, stride), ((padding, padding), (padding, padding))


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((3, 8, 8, 4), 3, 1, 1),
        ((3, 7, 9, 4), 3, 2, 1),
        ((3, 8, 8, 4), 1, 2, 0),
        ((2, 9, 8, 1), 7, 2, 3),
        ((3, 2, 2, 5), 3, 1, 1),
        ((3, 1, 1, 5), 3, 1, 1),
        ((3, 2, 2, 5), 3, 2, 1),
        ((2, 3, 3, 2), 3, 1, 0),
    ],
)
def test_patches_matmul_conv_is_the_convolution_and_its_gradient(shape, kernel, stride, padding):
    x, w, strides, pads = _conv_case(shape, kernel, stride, padding)

    def reference(x, w):
        return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def as_matmul(x, w):
        return jax_cpu.patches_matmul_conv(x, w, strides, pads)

    want, pullback = jax.vjp(reference, x, w)
    got, our_pullback = jax.vjp(as_matmul, x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(want.shape), jnp.float32)
    for ours, theirs in zip(our_pullback(cotangent), pullback(cotangent)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_taps_that_read_only_padding_are_left_out():
    """On a 1x1 map a padded 3x3 conv reads real input only at its centre tap: the matmul
    contracts over C, not 9C; on 2x2 at stride 2 (one output), over the 4 taps that land."""

    def contraction(shape, stride):
        x, w, strides, pads = _conv_case(shape, 3, stride, 1)
        jaxpr = jax.make_jaxpr(lambda x, w: jax_cpu.patches_matmul_conv(x, w, strides, pads))(x, w)
        (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
        return dot.invars[0].aval.shape[-1]

    assert contraction((2, 1, 1, 5), 1) == 5
    assert contraction((2, 2, 2, 5), 2) == 4 * 5
    assert contraction((2, 2, 2, 5), 1) == 9 * 5


def _lowered(fn, *args, platform, kernels=True):
    """``fn``'s program lowered for ``platform``, with the CPU kernels traced in or not."""

    def fresh(*args):  # a function of its own: jit would reuse another trace of ``fn``
        return fn(*args)

    jitted = jax_cpu.jit_for_cpu(fresh) if kernels else jax.jit(fresh)
    return jitted.trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, as_matmul",
    [
        ((2, 1, 1, 8), 3, 1, 1, True),  # a 1x1 map out: Eigen's kernel is pathological there
        ((2, 4, 4, 8), 3, 2, 1, True),  # 2x2 out
        ((2, 8, 8, 8), 1, 2, 0, True),  # a 1x1 conv is a matmul
        ((2, 32, 32, 1), 7, 2, 3, False),  # the grayscale stem: faster as Eigen's conv
        ((2, 8, 8, 8), 3, 1, 1, False),  # a 3x3 conv on a larger map stays a convolution
        ((2, 6, 6, 8), 3, 2, 1, False),
    ],
)
def test_which_convs_a_cpu_step_computes_as_a_matmul(shape, kernel, stride, padding, as_matmul):
    x, w, strides, pads = _conv_case(shape, kernel, stride, padding)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def conv(x, w):
        return jax_cpu.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn)

    cpu = _lowered(conv, x, w, platform="cpu")
    assert ("stablehlo.convolution" not in cpu) == as_matmul
    assert "stablehlo.convolution" in _lowered(conv, x, w, platform="cuda")  # a GPU keeps cuDNN's
    assert "stablehlo.convolution" in _lowered(conv, x, w, platform="cpu", kernels=False)  # Flax's, as is


def test_a_conv_flax_configures_otherwise_stays_a_convolution():
    x, w, strides, pads = _conv_case((2, 1, 1, 8), 3, 1, 1)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    dilated = _lowered(
        lambda x, w: jax_cpu.conv_general_dilated(x, w, strides, pads, rhs_dilation=(2, 2), dimension_numbers=dn),
        x,
        w,
        platform="cpu",
    )
    assert "stablehlo.convolution" in dilated


def test_the_networks_convs_on_the_cpu():
    """d2l-resnet18 at 32x32: the three 1x1 projections and the eight 3x3 convs of the last
    two stages (2x2 and 1x1 maps out) are matmuls; the stem and the eight 3x3 convs with
    8x8 and 4x4 maps out stay convolutions."""
    model = rn.net("d2l-resnet18", width=8)
    graphdef, state = nnx.split(model)
    x = jnp.zeros((2, 32, 32, 1))

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    assert _lowered(forward, state, x, platform="cpu").count("stablehlo.convolution") == 9
    assert _lowered(forward, state, x, platform="cpu", kernels=False).count("stablehlo.convolution") == 20
    # jit_for_cpu traces the kernels in at every trace, whatever context it is called from
    stablehlo = jax_cpu.jit_for_cpu(forward).trace(state, x).lower().as_text()
    assert stablehlo.count("stablehlo.convolution") == 9


def test_the_cpu_step_keeps_convolutions_out_of_ynnpack():
    """jaxlib 0.10 hands convolutions to YNNPACK by default (the probe below), which is
    1.5-3.7x slower here than Eigen's; the backend's compiled CPU steps opt out."""
    backend = rn.BACKEND
    model = backend.build("d2l-resnet18", width=32)  # below that, YNNPACK declines the convs anyway
    x = np.zeros((4, 1, 32, 32), np.float32)
    backend.forward(model, x)
    params, stats = backend._state(model)
    step = model.cache[("step", "infer")]
    ours = step.lower(params, stats, backend._input(model, x)).compile().as_text()
    default = jax.jit(rn.steps(model.module)["infer"]).lower(params, stats, backend._input(model, x)).compile()

    def ynn_convolutions(text):
        bodies = dict(re.findall(r"^%?([\w.]+) .*?\{\n(.*?)\n\}", text, re.S | re.M))
        called = re.findall(r'calls=%?([\w.]+).*"__ynn_fusion"', text)
        return sum("convolution(" in bodies.get(name, "") for name in called)

    assert ynn_convolutions(default.as_text()) > 0  # jaxlib's default, as the comment says
    assert ynn_convolutions(ours) == 0
    assert "convolution(" in ours  # Eigen's, not gone


def test_max_pool_on_the_cpu_is_flaxs_max_pool_and_gradient():
    """The shifted-maximum pool gives reduce_window's numbers and sends each window's
    gradient to its first maximum, as reduce_window's select_and_scatter and the NumPy
    reference do; ties, which jnp.maximum's own gradient would split, are made here."""
    rng = np.random.default_rng(0)
    for shape in [(3, 16, 16, 5), (2, 7, 9, 3), (2, 1, 1, 4), (2, 2, 3, 2)]:
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        x = x.at[:, :4, :4, :].set(0.5)  # a flat patch: every window over it ties

        def flax_pool(x):
            return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        want, pullback = jax.vjp(flax_pool, x)

        def our_pool(x):
            return rn.max_pool(x, 3, 2, 1)

        np.testing.assert_array_equal(jax_cpu.jit_for_cpu(our_pool)(x), want)
        cotangent = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
        ours = jax_cpu.jit_for_cpu(lambda x, ct: jax.vjp(our_pool, x)[1](ct)[0])(x, cotangent)
        theirs = pullback(cotangent)[0]
        np.testing.assert_array_equal(ours != 0, theirs != 0)  # the same winners
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)  # sums in another order


def test_max_pool_is_reduce_window_off_the_cpu_and_outside_the_kernels():
    x = jnp.zeros((2, 8, 8, 3))
    assert "reduce_window" not in _lowered(lambda x: rn.max_pool(x), x, platform="cpu")
    assert "reduce_window" in _lowered(lambda x: rn.max_pool(x), x, platform="cuda")
    assert "reduce_window" in _lowered(lambda x: rn.max_pool(x), x, platform="cpu", kernels=False)
