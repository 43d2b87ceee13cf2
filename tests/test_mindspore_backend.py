"""Checks specific to the MindSpore backend: the conventions it translates and the
framework defaults that would otherwise differ silently from the spec."""

import importlib
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from helpers import random_weights, rel_err
from test_parity import kink_free_batch

from resnet_multi import BatchNormSpec, get_arch
from resnet_multi.spec import block_class, block_spec
from resnet_multi.weights import count


def test_missing_mindspore_names_its_environment():
    """Without MindSpore, importing the backend says which environment has it (runs anywhere)."""
    code = (
        "import sys; sys.modules['mindspore'] = None\n"
        "try:\n    import resnet_multi.mindspore\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tox -e mindspore" in out and "not installed in this environment" in out, out


@pytest.fixture(scope="module")
def rn():
    pytest.importorskip("mindspore", reason="MindSpore is not installed in this environment (tox -e mindspore)")
    return importlib.import_module("resnet_multi.mindspore")


@pytest.fixture(scope="module")
def ms(rn):
    return rn.ms


def test_numpy_is_below_2(ms):
    # MindSpore 2.x fails at the first tensor + Python scalar on numpy 2 ("compiled using NumPy 1.x").
    assert int(np.__version__.split(".")[0]) < 2
    assert (ms.Tensor(np.ones(2, np.float32)) + 1).asnumpy().tolist() == [2.0, 2.0]


def test_batch_norm_momentum_is_translated(ms, rn):
    """The spec's momentum 0.1 (PyTorch's convention) is MindSpore's 0.9; the running
    variance takes the unbiased batch variance. Data: mean 4.5, biased var 5.25, unbiased 6."""
    bn = rn.batch_norm(1, BatchNormSpec(eps=1e-5, momentum=0.1))
    assert not bn.training, "MindSpore cells start in inference mode"
    bn.set_train(True)
    x = ms.Tensor(np.arange(1, 9, dtype=np.float32).reshape(8, 1, 1, 1))
    y = bn(x).asnumpy().ravel()
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), [0.1 * 4.5], rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.asnumpy(), [0.9 * 1 + 0.1 * 6.0], rtol=1e-6)
    # the batch itself is normalised with the biased variance
    np.testing.assert_allclose(y, (np.arange(1, 9) - 4.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)
    # the trap: the spec's 0.1 passed unconverted keeps only 10% of the old statistics
    unconverted = ms.nn.BatchNorm2d(1, momentum=0.1)
    unconverted.set_train(True)
    unconverted(x)
    np.testing.assert_allclose(unconverted.moving_mean.asnumpy(), [0.9 * 4.5], rtol=1e-6)


def test_bn_statistics_are_canonical_names(rn):
    model = rn.net("d2l-resnet18")
    params = rn.canonical_parameters(model)
    assert params["stem.bn.running_var"] is model.stem.bn.moving_variance
    assert params["stem.bn.weight"] is model.stem.bn.gamma
    assert params["head.fc.weight"].shape == (10, 512)  # nn.Dense is (out, in), as canonical


BLOCK_OPTIONS = [
    {},
    {"shortcut": "conv_bn", "conv_bias": False},
    {"kind": "bottleneck"},
    {"kind": "bottleneck", "stride_on": "1x1", "shortcut": "conv_bn"},
    {"preact": True},
    {"preact": True, "shortcut": "conv_bn"},
    {"kind": "bottleneck", "preact": True, "shortcut": "conv_bn", "stride_on": "1x1"},
]


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
@pytest.mark.parametrize("options", BLOCK_OPTIONS, ids=lambda o: "-".join(f"{v}" for v in o.values()) or "chapter")
def test_block_classes_hold_the_specs_layers(ms, rn, options, projection):
    """Each block class writes its layers out as the book does: they must be the spec's
    convolutions (channels, kernel, stride, padding, bias) and BatchNorms, under the
    attribute names weights.module_paths maps the canonical names to, and nothing else."""
    spec = block_spec(8, 16, True, 2, **options) if projection else block_spec(16, 16, **options)
    blk = rn.block(spec)
    assert type(blk).__name__ == block_class(spec) and blk.spec == spec
    paths = spec.attribute_names()
    convs = list(spec.convs())
    if projection:
        convs.append(("shortcut.conv", spec.in_channels, spec.out_channels, 1, spec.stride, 0))
    cells = dict(blk.cells_and_names())
    for name, cin, cout, k, s, p in convs:
        conv = cells[paths[name]]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.pad_mode) == (
            cin,
            cout,
            (k, k),
            (s, s),
            p,
            "pad",
        ), name
        assert conv.has_bias == spec.conv_bias, name
    bns = dict(spec.bn_names())
    if projection and spec.shortcut == "conv_bn":
        bns["shortcut.bn"] = spec.out_channels
    for name, channels in bns.items():
        assert cells[paths[name]].num_features == channels, name
    with_weights = {path for path, cell in cells.items() if list(cell.get_parameters(expand=False))}
    assert with_weights == {paths[name] for name, *_ in convs} | {paths[name] for name in bns}
    blk.set_train(True)
    out = blk(ms.Tensor(np.random.default_rng(0).random((2, spec.in_channels, 6, 6), dtype=np.float32)))
    assert out.shape == (2, spec.out_channels, 6 // spec.stride, 6 // spec.stride)


def test_block_classes_refuse_another_kind(rn):
    with pytest.raises(ValueError, match="Residual builds basic blocks.*use PreActResidual"):
        rn.Residual(8, 16, True, 2, preact=True)
    assert rn.BACKEND.residual_output_shape((2, 8, 6, 6), 8, 16, True, 2, kind="bottleneck") == (2, 16, 3, 3)


def test_the_chapters_projection_is_conv3(rn):
    """The book calls a basic block's projection conv3; canonical names keep shortcut.conv."""
    model = rn.net("d2l-resnet18", width=8)
    params = rn.canonical_parameters(model)
    assert params["stages.1.0.shortcut.conv.weight"] is model.stages[1][0].conv3.weight
    assert model.stages[1][0].bn3 is None and model.stages[1][1].conv3 is None


def test_every_conv_pads_symmetrically_with_the_specs_bias(ms, rn):
    """MindSpore's Conv2d defaults (pad_mode='same', has_bias=False) would pad the 7x7/2
    stem (2, 3) on an even size and drop the chapter's 4,800 conv-bias parameters."""
    model = rn.net("d2l-resnet18")
    convs = [c for _, c in model.cells_and_names() if isinstance(c, ms.nn.Conv2d)]
    assert convs and all(c.pad_mode == "pad" and c.has_bias for c in convs)
    assert rn.BACKEND.count_parameters(rn.BACKEND.build("d2l-resnet18")) == count(get_arch("d2l-resnet18"))
    # the textbook's layers, for contrast: the same stem conv with MindSpore's defaults
    textbook = ms.nn.Conv2d(1, 64, 7, stride=2)
    assert textbook.pad_mode == "same" and not textbook.has_bias


def test_stem_on_an_even_size_matches_symmetric_padding(ms, rn):
    """At 96x96 (even) the stem conv + max pool must equal explicit symmetric zero / -inf padding."""
    model = rn.net("d2l-resnet18", seed=1)
    model.set_train(False)
    x = np.random.default_rng(0).standard_normal((1, 1, 96, 96)).astype(np.float32)
    conv = model.stem.conv(ms.Tensor(x)).asnumpy()
    w = model.stem.conv.weight.asnumpy()
    b = model.stem.conv.bias.asnumpy()
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (7, 7), axis=(2, 3))[:, :, ::2, ::2]
    want = np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]
    assert conv.shape == (1, 64, 48, 48) and rel_err(conv, want) <= 1e-5
    pooled = model.stem.pool(ms.Tensor(conv)).asnumpy()
    cp = np.pad(conv, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pool_windows = np.lib.stride_tricks.sliding_window_view(cp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    want_pool = pool_windows.max(axis=(-1, -2))
    np.testing.assert_array_equal(pooled, want_pool)


def test_device_is_the_process_device(rn):
    assert rn.devices() == rn.BACKEND.devices() and len(rn.devices()) == 1
    with pytest.raises(ValueError, match="mindspore.set_device"):
        rn.net("d2l-resnet18", device="gpu:7")
    with pytest.raises(ValueError, match="mindspore.set_device"):  # the seam says the same
        rn.BACKEND.build("d2l-resnet18", device="cuda:7")


def test_compiled_steps_match_eager(rn):
    """The backend's mindspore.jit steps against the same cells in PyNative: SGD steps
    across a smaller batch (a second trace) and a new learning rate (a new optimizer),
    then a training-mode and an inference forward pass on the same model (two graphs,
    each keeping its own training flag). Same logits, losses, weights and BN statistics."""
    backend = rn.BACKEND
    spec_kw = dict(width=8)
    weights = random_weights(get_arch("d2l-resnet18", **spec_kw), seed=5, damp_residuals=True)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, n)) for n in (4, 3, 4)]
    runs = []
    for eager in (False, True):
        model = backend.build("d2l-resnet18", eager=eager, **spec_kw)
        backend.set_weights(model, weights)
        losses, logits = [], []
        for (x, y), lr in zip(batches, (0.05, 0.05, 0.1), strict=True):
            loss, z = backend.sgd_step(model, x, y, lr)
            losses.append(loss)
            logits.append(z)
        logits.append(backend.forward(model, batches[1][0], training=True))
        before = backend.get_weights(model)
        logits.append(backend.forward(model, batches[0][0], training=False))
        after = backend.get_weights(model)
        for name in before:  # inference after a training pass leaves every tensor alone
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        runs.append((losses, logits, after))
    (l0, z0, w0), (l1, z1, w1) = runs
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(z0, z1, strict=True))
    for name in w1:
        assert rel_err(w0[name], w1[name]) <= 1e-5, name
    assert not np.array_equal(w0["head.fc.weight"], weights["head.fc.weight"]), "no step was taken"


def test_compiled_steps_run_as_graphs(rn, monkeypatch):
    """Compiled, a step runs no Python of the model after tracing (the input check in
    ResNet.__call__, which a PyNative call runs, is not part of the graph); eager, it
    runs once per step."""
    calls = []
    check = rn.check_input_shape

    def counting_check(spec, shape, **kwargs):
        calls.append(tuple(shape))
        return check(spec, shape, **kwargs)

    monkeypatch.setattr(rn, "check_input_shape", counting_check)
    backend = rn.BACKEND
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    for eager, want in ((False, []), (True, [(4, 1, 32, 32)] * 3)):
        calls.clear()
        model = backend.build("d2l-resnet18", width=8, eager=eager)
        backend.sgd_step(model, x, np.arange(4), 0.05)
        backend.sgd_step(model, x, np.arange(4), 0.05)
        backend.forward(model, x)
        assert calls == want, f"eager={eager}"


def test_convolutions_avoid_onednns_reference_kernel(rn):
    """On AVX-512 CPUs oneDNN 3.10 runs MindSpore's plain-layout convolutions through
    its reference kernel (jit_uni_ncsp:conv+ref:any) unless capped at AVX2, which the
    module does on import. Read off oneDNN's verbose log of one training step and one
    inference pass, in a fresh process (the cap only takes before MindSpore's first kernel)."""
    code = (
        "import numpy as np\n"
        "from resnet_multi import mindspore as rn\n"
        "b = rn.BACKEND\n"
        "m = b.build('d2l-resnet18', width=8, eager=True)\n"
        "x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)\n"
        "b.sgd_step(m, x, np.arange(4), 0.05)\n"
        "b.forward(m, x)\n"
        "print('capped', rn.ONEDNN_ISA_CAPPED)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env["ONEDNN_VERBOSE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(rn.__file__)),
    ).stdout
    convs = [
        line
        for line in out.splitlines()
        if line.startswith("onednn_verbose") and ",exec," in line and ",convolution," in line
    ]
    if not convs:
        pytest.skip("MindSpore ran no oneDNN convolution here (not an x86 CPU build?)")
    passes = {line.split(",")[7] for line in convs}
    assert {"forward_training", "backward_data", "backward_weights"} <= passes, passes
    slow = [line for line in convs if "ref:any" in line or ",ref," in line]
    assert not slow, f"{len(slow)} of {len(convs)} convolutions ran oneDNN's reference kernel: {slow[0]}"
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "capped True" in out


def test_two_sgd_steps_are_plain_sgd(rn, oracle):
    """Two steps, not one: momentum leaves the first SGD step unchanged (its velocity
    starts at zero), so only a second step shows that nn.SGD is plain SGD here."""
    backend = rn.BACKEND
    model, ref = backend.build("d2l-resnet18", width=8), oracle.build("d2l-resnet18", width=8)
    weights = random_weights(model.spec, seed=3, damp_residuals=True)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    x = kink_free_batch(oracle, ref, model.spec)  # see test_parity: no ReLU or pool decision near a tie
    oracle.set_weights(ref, weights)
    y = np.arange(4) % 10
    for _ in range(2):
        loss, _ = backend.sgd_step(model, x, y, 0.05)
        want_loss, _ = oracle.sgd_step(ref, x, y, 0.05)
        assert abs(loss - want_loss) <= 1e-3 * abs(want_loss)
    got, want = backend.get_weights(model), oracle.get_weights(ref)
    for name in ("stem.conv.weight", "stages.3.1.conv2.weight", "head.fc.weight", "head.fc.bias"):
        assert rel_err(got[name] - weights[name], want[name] - weights[name]) <= 1e-3, name


def test_set_weights_after_training_is_not_lost(rn):
    """Parameter.set_data would swap in a new tensor that an existing nn.SGD never
    updates (and that aliases the caller's array): a resumed or re-synced run would
    silently stop learning. After set_weights, a step must start from the new weights."""
    backend = rn.BACKEND
    model = backend.build("d2l-resnet18", width=8)
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.arange(4)
    backend.sgd_step(model, x, y, 0.05)  # the optimizer now exists
    weights = random_weights(model.spec, seed=1)
    kept = {k: v.copy() for k, v in weights.items()}
    backend.set_weights(model, weights)
    backend.sgd_step(model, x, y, 0.05)
    fresh = backend.build("d2l-resnet18", width=8)
    backend.set_weights(fresh, weights)
    backend.sgd_step(fresh, x, y, 0.05)
    got, want = backend.get_weights(model), backend.get_weights(fresh)
    assert not np.array_equal(got["head.fc.weight"], weights["head.fc.weight"]), "the step was lost"
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        np.testing.assert_array_equal(weights[name], kept[name], err_msg=f"{name}: caller's array changed")


def test_default_mode_is_pynative_on_a_cpu_and_either_can_be_asked_for(rn):
    """On a CPU the backend's default is PyNative, its faster mode there; --compiled and
    eager=False still give the mindspore.jit step (what test_compiled_steps_match_eager checks)."""
    assert rn.BACKEND.default_eager("cpu") is True
    assert rn.BACKEND.build("d2l-resnet18", width=8).eager is True
    assert rn.BACKEND.build("d2l-resnet18", width=8, eager=False).eager is False
    from resnet_multi.cli import UsageError, build_parser

    train = ["train", "--backend", "mindspore"]
    assert build_parser().parse_args(train).eager is None  # None: build's default
    assert build_parser().parse_args([*train, "--compiled"]).eager is False
    assert build_parser().parse_args([*train, "--eager"]).eager is True
    with pytest.raises(UsageError, match="--compiled: not allowed with argument --eager"):
        build_parser().parse_args([*train, "--eager", "--compiled"])
