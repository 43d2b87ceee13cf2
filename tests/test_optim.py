"""The recipe beyond the chapter's plain SGD, in the shared code every backend uses: the
learning-rate schedule, the seeded augmentation, the optimizer's settings and the NumPy
reference's update and smoothed loss (the backends' agreement with it is
tests/test_optimizer_parity.py)."""

import math

import numpy as np
import pytest

from resnet_multi import data, optim, train
from resnet_multi.errors import InputError
from resnet_multi.numpy import smoothed_cross_entropy, softmax_cross_entropy


# ---- the schedule ------------------------------------------------------------------------
def test_constant_schedule_is_the_rate_itself():
    assert all(optim.learning_rate("constant", s, 10, 0.05) == 0.05 for s in range(10))


def test_one_cycle_warms_up_then_anneals():
    total, peak = 100, 0.2
    rates = [optim.learning_rate("one-cycle", s, total, peak) for s in range(total)]
    warmup = round(optim.WARMUP_FRACTION * total)
    assert rates[0] == pytest.approx(peak * optim.WARMUP_START)
    assert rates[warmup] == pytest.approx(peak) and max(rates) == rates[warmup]
    assert all(a < b for a, b in zip(rates[:warmup], rates[1 : warmup + 1]))  # rising
    assert all(a > b for a, b in zip(rates[warmup:], rates[warmup + 1 :]))  # falling
    assert 0 < rates[-1] < 1e-3 * peak  # positive to the end: every step trains


def test_cosine_halves_at_the_middle():
    rates = [optim.learning_rate("cosine", s, 10, 1.0) for s in range(10)]
    assert rates[0] == 1.0 and rates[5] == pytest.approx(0.5) and 0 < rates[-1] < 0.03
    assert rates[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_schedule_is_a_pure_function_of_the_step():
    a = [optim.learning_rate("one-cycle", s, 47, 0.1) for s in range(47)]
    b = [optim.learning_rate("one-cycle", s, 47, 0.1) for s in reversed(range(47))][::-1]
    assert a == b


def test_schedule_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="unknown learning-rate schedule 'linear'; choose one of constant"):
        optim.learning_rate("linear", 0, 10, 0.1)
    with pytest.raises(InputError, match="step 10 lies outside the schedule's 10 steps"):
        optim.learning_rate("cosine", 10, 10, 0.1)


# ---- augmentation ------------------------------------------------------------------------
def _images(n=64):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_flip_really_flips():
    images = _images(4)
    out = data.augment_images(images, np.array([True, False, True, False]), np.zeros((4, 2), int), 0)
    np.testing.assert_array_equal(out[0], images[0][:, ::-1])
    np.testing.assert_array_equal(out[1], images[1])
    assert out.dtype == np.uint8 and out.shape == images.shape


def test_crop_shifts_within_the_zero_padding():
    images = _images(3)
    offsets = np.array([[2, 2], [0, 0], [4, 1]])  # pad 2: (2, 2) is the image itself
    out = data.augment_images(images, np.zeros(3, bool), offsets, 2)
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_array_equal(out[1][2:, 2:], images[1][:-2, :-2])  # moved down and right
    assert not out[1][:2].any() and not out[1][:, :2].any()  # the padding is zeros
    np.testing.assert_array_equal(out[2][:-2, 1:], images[2][2:, :-1])


def test_augmented_batches_are_seeded_and_keep_the_order():
    images, labels = _images(), np.arange(64) % 10
    plain = list(data.iterate_batches(images, labels, 16, shuffle=True, seed=3, epoch=1, resize=32))
    flipped = list(data.iterate_batches(images, labels, 16, shuffle=True, seed=3, epoch=1, resize=32, augment="flip"))
    again = list(data.iterate_batches(images, labels, 16, shuffle=True, seed=3, epoch=1, resize=32, augment="flip"))
    other = list(data.iterate_batches(images, labels, 16, shuffle=True, seed=3, epoch=2, resize=32, augment="flip"))
    for (x, y), (xf, yf), (xa, _) in zip(plain, flipped, again):
        np.testing.assert_array_equal(y, yf)  # the batch order is the one without augmentation
        np.testing.assert_array_equal(xf, xa)  # bit-identical for the same seed and epoch
        assert xf.shape == x.shape == (16, 1, 32, 32) and xf.dtype == np.float32
        for image, candidate in zip(x, xf):  # each image is itself or its mirror image
            assert np.array_equal(candidate, image) or np.array_equal(candidate, image[:, :, ::-1])
    changed = sum(not np.array_equal(a[0], b[0]) for a, b in zip(plain, flipped))
    assert changed == len(plain), "some batch had no image flipped"
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(flipped, other)), "another epoch, the same flips"
    draws = data.augment_draws(10_000, flip=True, pad=2, seed=0, epoch=0)
    assert 0.47 < draws["flips"].mean() < 0.53 and set(np.unique(draws["offsets"])) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rotate", "unknown augmentation 'rotate'"),
        ("crop9", "unknown augmentation 'crop9'"),
        ("flip+flip", "names 'flip' twice"),
        ("crop2+crop3", "names two crops"),
    ],
)
def test_bad_augmentation_is_refused(spec, message):
    with pytest.raises(InputError, match=message):
        data.iterate_batches(_images(4), np.zeros(4, np.int64), 2, shuffle=True, seed=0, augment=spec)


def test_augmentation_spellings():
    assert data.parse_augment(None) == data.parse_augment("none") == (False, 0)
    assert data.parse_augment("crop3+flip") == (True, 3)
    assert data.canonical_augment("crop3+flip") == "flip+crop3" and data.canonical_augment("none") is None


# ---- the optimizer's settings and the reference's update ---------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(momentum=1.0), r"momentum must lie in \[0, 1\), got 1.0"),
        (dict(nesterov=True), "Nesterov momentum needs a momentum above 0"),
        (dict(weight_decay=-1e-4), "weight decay must be >= 0"),
        (dict(label_smoothing=1.0), r"label smoothing must lie in \[0, 1\)"),
        (dict(momentum=float("nan")), "momentum must be finite"),
        (dict(momentum="0.9"), "momentum must be a number"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(InputError, match=message):
        optim.Optimizer(**settings)


def test_canonical_update_is_pytorchs():
    """Two steps by hand, with the lr changing between them: v = mu * v + (g + wd * p),
    p -= lr * (g + wd * p + mu * v) (Nesterov), lr outside the velocity."""
    opt = optim.Optimizer(momentum=0.9, nesterov=True, weight_decay=0.1)
    p, v = np.array([1.0]), np.zeros(1)
    optim.sgd_update(p, np.array([0.5]), v, 0.1, opt)  # g = 0.6, v = 0.6, p = 1 - 0.1 * 1.14
    assert v[0] == pytest.approx(0.6) and p[0] == pytest.approx(0.886)
    optim.sgd_update(p, np.array([0.5]), v, 0.2, opt)  # g = 0.5886, v = 1.1286
    assert v[0] == pytest.approx(0.54 + 0.5886) and p[0] == pytest.approx(0.886 - 0.2 * (0.5886 + 0.9 * 1.1286))
    plain = np.array([1.0])
    optim.sgd_update(plain, np.array([0.5]), np.zeros(1), 0.1, optim.PLAIN)
    assert plain[0] == pytest.approx(0.95)


def test_smoothed_cross_entropy_and_its_gradient():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((5, 10)), rng.integers(0, 10, 5)
    assert smoothed_cross_entropy(logits, labels, 0.0)[0] == pytest.approx(softmax_cross_entropy(logits, labels)[0])
    loss, grad = smoothed_cross_entropy(logits, labels, 0.1)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -(0.9 * log_p[np.arange(5), labels] + 0.1 * log_p.mean(axis=1)).mean()
    assert loss == pytest.approx(want, rel=1e-12)
    eps, i, j = 1e-6, 2, 7
    bumped = logits.copy()
    bumped[i, j] += eps
    assert grad[i, j] == pytest.approx((smoothed_cross_entropy(bumped, labels, 0.1)[0] - loss) / eps, rel=1e-4)


# ---- the fast preset and its recipe ------------------------------------------------------
def test_fast_preset_is_the_documented_recipe():
    settings = train.recipe("fast")
    assert settings["subset"] is False and settings["width"] == 32 and settings["resize"] == 40
    assert (settings["momentum"], settings["nesterov"], settings["weight_decay"]) == (0.9, True, 5e-4)
    assert (settings["label_smoothing"], settings["schedule"], settings["augment"]) == (0.1, "one-cycle", "flip")
    # the chapter's presets are plain SGD at a constant rate, as before
    chapter = train.recipe("chapter")
    assert (chapter["momentum"], chapter["weight_decay"], chapter["schedule"], chapter["augment"]) == (
        0.0,
        0.0,
        "constant",
        None,
    )


def test_plain_recipe_records_nothing_new():
    assert train.run_recipe(0.05, 256, 96, 0, optimizer=optim.PLAIN, schedule_steps=10) == {
        "lr": 0.05,
        "batch_size": 256,
        "resize": 96,
        "seed": 0,
    }
    full = train.run_recipe(
        0.2, 256, 40, 0, optimizer=optim.Optimizer(momentum=0.9), schedule="cosine", schedule_steps=7, augment="flip"
    )
    assert full["optimizer"]["momentum"] == 0.9 and full["schedule_steps"] == 7 and full["augment"] == "flip"


# ---- the command line's flags ------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--momentum", "1.5"], "argument --momentum: momentum must lie in [0, 1), got 1.5"),
        (["--weight-decay", "-1"], "argument --weight-decay: weight decay must be >= 0"),
        (["--label-smoothing", "x"], "argument --label-smoothing: must be a number, got 'x'"),
        (["--augment", "rotate"], "argument --augment: unknown augmentation 'rotate'"),
        (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
        (["--nesterov"], "Nesterov momentum needs a momentum above 0 (e.g. --momentum 0.9), or drop --nesterov"),
    ],
)
def test_bad_recipe_flags_are_usage_errors(flags, message, tmp_path, capsys):
    from resnet_multi import cli

    argv = ["train", "--backend", "numpy", "--preset", "quick", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv + flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()
