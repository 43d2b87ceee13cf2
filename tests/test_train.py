"""The shared training loop on every backend: the loss goes down, seeds reproduce,
resume equals an uninterrupted run, weights move between backends, and ten SGD
steps give the NumPy reference's per-step losses.

Tiny nets (the chapter's ResNet-18 at width 8, 32x32 inputs) on slices of the
bundled subset, so that the NumPy reference runs them in seconds.
"""

import json

import numpy as np
import pytest
from cases import BACKEND_CASES
from helpers import crash_at_step, first, kink_free_batch, random_weights

from resnet_multi import data, train
from resnet_multi import weights as canonical

TINY = dict(width=8)
SIZE = 32


def small_fit(backend, device, ds, *, seed=0, epochs=3, **kwargs):
    model = backend.build("d2l-resnet18", device=device, seed=seed, **TINY)
    history = train.fit(backend, model, ds, epochs=epochs, lr=0.05, batch_size=32, resize=SIZE, seed=seed, **kwargs)
    return model, history


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_loss_goes_down(backend, device, subset):
    model, history = small_fit(backend, device, first(subset, 128, 64), epochs=4)
    assert history.epoch == [1, 2, 3, 4]
    assert history.train_loss[-1] < 0.8 * history.train_loss[0], history.train_loss
    assert all(0 <= a <= 1 for a in history.train_acc + history.test_acc)
    assert history.examples == [128] * 4 and history.examples_per_sec > 0
    # the chapter's two closing lines
    lines = history.summary(device).splitlines()
    assert lines[0].startswith("loss ") and ", train acc " in lines[0] and ", test acc " in lines[0]
    assert lines[1].endswith(f" examples/sec on {device}")


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_same_seed_same_run(backend, device, subset):
    ds = first(subset, 64, 32)
    model_a, a = small_fit(backend, device, ds, epochs=2)
    model_b, b = small_fit(backend, device, ds, epochs=2)
    assert (a.train_loss, a.train_acc, a.test_acc, a.curve) == (b.train_loss, b.train_acc, b.test_acc, b.curve)
    wa, wb = backend.get_weights(model_a), backend.get_weights(model_b)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    _, c = small_fit(backend, device, ds, epochs=2, seed=1)
    assert c.train_loss != a.train_loss


def _without_timings(h):
    d = h.to_dict()
    del d["train_seconds"]
    return d


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_resume_equals_uninterrupted(backend, device, subset, tmp_path, monkeypatch):
    ds = first(subset, 96, 32)  # 3 steps an epoch
    full_model, full = small_fit(backend, device, ds, out=tmp_path / "full")

    # The same run, killed in the middle of its third epoch.
    crash_at_step(monkeypatch, backend, 8)
    with pytest.raises(KeyboardInterrupt):
        small_fit(backend, device, ds, out=tmp_path / "run")
    monkeypatch.undo()
    state = json.loads((tmp_path / "run" / train.CHECKPOINT).read_text())
    assert (state["epoch"], state["steps"], state["seed"], state["lr"]) == (2, 6, 0, 0.05)
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch-*")) == ["epoch-002.safetensors"]

    # A fresh process would build the net from another seed: resume must not care.
    model = backend.build("d2l-resnet18", device=device, seed=5, **TINY)
    resumed = train.fit(
        backend, model, ds, epochs=3, lr=0.05, batch_size=32, resize=SIZE, seed=0, out=tmp_path / "run", resume=True
    )
    assert _without_timings(resumed) == _without_timings(full)
    got, want = backend.get_weights(model), backend.get_weights(full_model)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    saved = canonical.load_weights(tmp_path / "run" / train.FINAL_WEIGHTS, model.spec)
    for name in want:
        np.testing.assert_array_equal(saved[name], want[name], err_msg=name)

    # what the run directory holds, and nothing half-written
    run = tmp_path / "run"
    assert (run / train.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((run / train.HISTORY).read_text())
    assert history["test_acc"] == full.test_acc and history["backend"] == backend.name
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_run_directory_is_protected(backend, device, subset, tmp_path):
    ds = first(subset, 32, 16)
    small_fit(backend, device, ds, epochs=1, out=tmp_path)
    with pytest.raises(train.RunError, match="already holds a run"):
        small_fit(backend, device, ds, epochs=1, out=tmp_path)
    with pytest.raises(train.RunError, match=r"lr: checkpoint has 0.05, this run 0.1"):
        train.fit(
            backend,
            backend.build("d2l-resnet18", device=device, **TINY),
            ds,
            epochs=2,
            lr=0.1,
            batch_size=32,
            resize=SIZE,
            out=tmp_path,
            resume=True,
        )
    with pytest.raises(train.RunError, match="data"):
        small_fit(backend, device, first(subset, 64, 16), epochs=2, out=tmp_path, resume=True)
    with pytest.raises(train.RunError, match="nothing to resume"):
        small_fit(backend, device, ds, epochs=1, out=tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        train.fit(backend, backend.build("d2l-resnet18", device=device, **TINY), ds, epochs=1, batch_size=0)


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_weights_give_the_same_accuracy_on_the_reference(backend, device, subset, oracle, tmp_path):
    """Weights trained here, evaluated by the NumPy reference (and back): the same
    predictions, except where the reference's two classes nearly tie (float32 vs float64).
    What is bounded is the number of predictions that differ, each of which must be such a
    tie; a weight misread in either direction changes far more than two of 500."""
    ds = first(subset, 128, 500)
    model, history = small_fit(backend, device, ds, epochs=2, out=tmp_path)
    ref = oracle.build(canonical.read_arch(tmp_path / train.FINAL_WEIGHTS))
    oracle.load_weights(ref, tmp_path / train.FINAL_WEIGHTS)
    mine = train.predict(backend, model, ds.test_images, resize=SIZE)
    logits = np.concatenate(
        [
            oracle.forward64(ref, x)
            for x, _ in data.iterate_batches(ds.test_images, ds.test_labels, 256, shuffle=False, resize=SIZE)
        ]
    )
    rows = np.arange(len(mine))
    gap = logits[rows, logits.argmax(axis=1)] - logits[rows, mine]  # 0 where the predictions agree
    differ = gap > 0
    assert (gap[differ] < 1e-4 * np.abs(logits).max()).all(), gap[differ]
    assert differ.sum() <= 2
    acc_ref = train.evaluate_accuracy(oracle, ref, ds.test_images, ds.test_labels, resize=SIZE)
    assert abs(acc_ref - history.test_acc[-1]) <= differ.sum() / len(ds.test_images)
    # and back: the reference's weights in this backend, the same predictions but for near ties
    top2 = np.sort(logits, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) < 1e-4 * np.abs(logits).max()
    other = backend.build("d2l-resnet18", device=device, seed=9, **TINY)
    backend.set_weights(other, oracle.get_weights(ref))
    assert np.array_equal(train.predict(backend, other, ds.test_images, resize=SIZE)[~near_tie], mine[~near_tie])


# Training parity ---------------------------------------------------------------------------
PARITY_TOL = 1e-5


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_training_parity_with_reference(backend, device, seed, oracle):
    """Ten SGD steps (lr 0.05, batch 16, 32x32) of a width-8 ResNet-18 from the same
    initial weights on the same batches: each step's loss within PARITY_TOL
    (relative) of the float64 reference.

    Each step's batch is the first seeded Gaussian batch whose reference forward
    pass at the current weights stays clear of every ReLU and max-pool decision
    (tests/helpers.py, kink_free_batch), and the residual branches are damped.
    Without those two precautions, float32 rounding flips a ReLU or max-pool decision
    within a few steps and the dynamics amplify it, so no tolerance could pass a correct
    float32 backend and fail a wrong one; with them, the gap stays at float32's rounding
    level. PARITY_TOL sits well above that level and well below what a learning rate
    off by 1% does to the loss within two steps, so it catches an error in the update.
    """
    model = backend.build("d2l-resnet18", device=device, **TINY)
    ref = oracle.build("d2l-resnet18", **TINY)
    weights = random_weights(model.spec, seed=seed, damp_residuals=True)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    got, want, next_seed = [], [], 1000 * seed
    for step in range(10):
        x = kink_free_batch(oracle, ref, model.spec, n=16, first_seed=next_seed)
        next_seed += 1 + step
        y = np.random.default_rng(next_seed).integers(0, 10, 16)
        got.append(backend.sgd_step(model, x, y, 0.05)[0])
        want.append(oracle.sgd_step(ref, x, y, 0.05)[0])
    got, want = np.array(got), np.array(want)
    rel = np.abs(got - want) / np.abs(want)
    assert rel.max() <= PARITY_TOL, f"per-step relative loss gaps {rel}"
