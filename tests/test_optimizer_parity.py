"""The fast recipe's optimizer on every backend against the NumPy reference: SGD with
Nesterov momentum, weight decay and label smoothing, at a learning rate that changes every
step (the one-cycle schedule's), on augmented batches; its state round-trips, and a
resumed run with momentum is the uninterrupted run, bit for bit.

Tolerances are the plain SGD step's (tests/test_parity.py, test_sgd_step_matches_reference):
1e-3 relative for the loss, the logits and each tensor's change.
"""

import json

import numpy as np
import pytest
from cases import BACKEND_CASES
from helpers import crash_at_step, first, random_weights, rel_err

from resnet_multi import data, optim, train
from resnet_multi.errors import InputError
from resnet_multi.weights import tensor_specs

RECIPE = optim.Optimizer(momentum=0.9, nesterov=True, weight_decay=5e-3, label_smoothing=0.1)
STEPS = 3
TINY = dict(width=8)


def augmented_kink_free_batch(oracle, ref, spec, *, seed, n=4, size=32, pad=2, margin=2e-5, tries=300):
    """The first seeded batch, flipped and cropped as the data pipeline does
    (:func:`resnet_multi.data.augment_images`), whose float64 training-mode pass at ``ref``'s
    weights keeps every ReLU and max-pool decision ``margin`` away (tests/helpers.py,
    kink_free_batch, says why); ``ref``'s BN statistics are restored after the search."""
    saved = [(layer, dict(layer.buffers)) for _, layer in ref.module.named_layers()]
    try:
        for s in range(seed, seed + tries):
            images = np.random.default_rng(s).standard_normal((n, size, size)).astype(np.float32)
            draws = data.augment_draws(n, flip=True, pad=pad, seed=s, epoch=0)
            x = data.augment_images(images, draws["flips"], draws["offsets"], pad)[:, None]
            oracle.forward64(ref, x, training=True)
            if ref.module.kink_margin() >= margin:
                return np.ascontiguousarray(x)
    finally:
        for layer, buffers in saved:
            layer.buffers.update(buffers)
    raise AssertionError(f"no augmented batch among {tries} seeds keeps a kink margin of {margin}")


def _bn_cancelled(oracle, spec, weights, x, y):
    """Trainable tensors whose true gradient is zero: a conv bias that a training-mode BN
    subtracts again. In float32 only rounding noise remains of it (test_parity.py)."""
    ref = oracle.build(spec)
    oracle.set_weights(ref, weights)
    grads = oracle.loss_and_grads(ref, x, y).grads
    scale = max(np.abs(g).max() for g in grads.values())
    return {name for name, g in grads.items() if np.abs(g).max() <= 1e-9 * scale}


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
@pytest.mark.parametrize(
    "settings",
    [RECIPE, optim.Optimizer(momentum=0.9, weight_decay=5e-3)],
    ids=["nesterov-smoothed", "momentum"],  # frameworks take another path without Nesterov
)
def test_recipe_steps_match_reference(backend, device, settings, oracle):
    model, ref = backend.build("d2l-resnet18", device=device, **TINY), oracle.build("d2l-resnet18", **TINY)
    weights = random_weights(model.spec, seed=3, damp_residuals=True)
    backend.set_weights(model, weights)
    oracle.set_weights(ref, weights)
    backend.configure_optimizer(model, settings)
    oracle.configure_optimizer(ref, settings)
    rates = [optim.learning_rate("one-cycle", step, 4, 0.2) for step in range(STEPS)]
    assert len(set(rates)) == STEPS  # the rate changes at every step
    cancelled = None
    for step, lr in enumerate(rates):
        x = augmented_kink_free_batch(oracle, ref, model.spec, seed=100 * step)
        y = np.random.default_rng(step).integers(0, 10, len(x))
        if cancelled is None:
            cancelled = _bn_cancelled(oracle, model.spec, weights, x, y)
        loss, logits = backend.sgd_step(model, x, y, lr)
        want_loss, want_logits = oracle.sgd_step(ref, x, y, lr)
        assert abs(loss - want_loss) <= 1e-3 * abs(want_loss), step
        assert rel_err(logits, want_logits) <= 1e-3, step
    got_w, want_w = backend.get_weights(model), oracle.get_weights(ref)
    got_v, want_v = backend.get_optimizer_state(model), oracle.get_optimizer_state(ref)
    assert set(got_v) == set(want_v) == {t.name for t in tensor_specs(model.spec) if t.trainable}
    for t in tensor_specs(model.spec):
        step = want_w[t.name] - weights[t.name]
        got_step = got_w[t.name] - weights[t.name]
        if t.name in cancelled:
            # its step is weight decay and momentum on rounding noise: small next to the
            # step of the conv's own weight, as the gradient test bounds it
            own = want_w[t.name.replace(".bias", ".weight")] - weights[t.name.replace(".bias", ".weight")]
            assert np.abs(got_step - step).max() <= 1e-3 * np.abs(own).max(), t.name
        elif np.abs(step).max() > 1e-6 * np.abs(weights[t.name]).max():
            assert rel_err(got_step, step) <= 1e-3, t.name
            if t.trainable:
                assert rel_err(got_v[t.name], want_v[t.name]) <= 1e-3, t.name


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_optimizer_state_round_trips(backend, device, oracle):
    """The momentum buffers read out and set into another model: its next step is this
    model's next step, bit for bit, in the backend's own precision."""
    models = [backend.build("d2l-resnet18", device=device, **TINY) for _ in range(2)]
    weights = random_weights(models[0].spec, seed=5, damp_residuals=True)
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.arange(4)
    backend.set_weights(models[0], weights)
    backend.configure_optimizer(models[0], RECIPE)
    assert not any(v.any() for v in backend.get_optimizer_state(models[0]).values())  # zeros before a step
    backend.sgd_step(models[0], x, y, 0.1)
    state = backend.get_optimizer_state(models[0])
    # as a checkpoint does: continue from what was saved (the NumPy reference computes in
    # float64, and this rounds it to the saved float32; the frameworks' float32 stays as is)
    backend.set_weights(models[0], backend.get_weights(models[0]))
    backend.set_optimizer_state(models[0], state)
    assert all(v.dtype == np.float32 for v in state.values()) and any(v.any() for v in state.values())
    backend.set_weights(models[1], backend.get_weights(models[0]))
    backend.configure_optimizer(models[1], RECIPE)
    backend.set_optimizer_state(models[1], state)
    for name, value in backend.get_optimizer_state(models[1]).items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    for model in models:
        backend.sgd_step(model, x[::-1].copy(), y, 0.05)
    after = [backend.get_weights(m) for m in models]
    for name in after[0]:
        np.testing.assert_array_equal(after[1][name], after[0][name], err_msg=name)
    bad = {**state, "head.fc.weight": state["head.fc.weight"].T.copy()}
    with pytest.raises(InputError, match="mis-shaped buffers"):
        backend.set_optimizer_state(models[1], bad)
    with pytest.raises(InputError, match="missing"):
        backend.set_optimizer_state(models[1], {k: v for k, v in state.items() if k != "head.fc.bias"})


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_resume_with_momentum_equals_uninterrupted(backend, device, subset, tmp_path, monkeypatch):
    """The fast recipe (momentum, weight decay, label smoothing, one-cycle, flips and crops)
    killed in its third epoch and resumed from the second epoch's checkpoint: the same
    history and weights as the run that was never stopped."""
    ds = first(subset, 96, 32)  # 3 steps an epoch
    options = dict(epochs=3, lr=0.1, batch_size=32, resize=32, seed=0, optimizer=RECIPE, schedule="one-cycle")
    options.update(augment="flip+crop2", plot=False)

    def build(seed=0):
        return backend.build("d2l-resnet18", device=device, seed=seed, **TINY)

    full_model = build()
    full = train.fit(backend, full_model, ds, out=tmp_path / "full", **options)
    crash_at_step(monkeypatch, backend, 8)
    with pytest.raises(KeyboardInterrupt):
        train.fit(backend, build(), ds, out=tmp_path / "run", **options)
    monkeypatch.undo()
    run = tmp_path / "run"
    state = json.loads((run / train.CHECKPOINT).read_text())
    assert state["optimizer"]["state"]["file"] == "optimizer-002.safetensors"
    assert sorted(p.name for p in run.glob("*-*.safetensors")) == ["epoch-002.safetensors", "optimizer-002.safetensors"]
    model = build(seed=5)
    resumed = train.fit(backend, model, ds, out=run, resume=True, **options)
    for key in ("train_loss", "train_acc", "test_acc", "curve"):
        assert getattr(resumed, key) == getattr(full, key), key
    got, want = backend.get_weights(model), backend.get_weights(full_model)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # another schedule length is another run: refused, not resumed
    with pytest.raises(train.RunError, match="schedule_steps: checkpoint has 9, this run 12"):
        train.fit(backend, build(), ds, out=run, resume=True, **{**options, "epochs": 4})


# ---- what each framework's own momentum optimizer does when the rate changes ----------------
# One parameter at 1, gradient 1, momentum 0.9, lr 0.1 then 0.2: PyTorch's formulation (lr
# outside the velocity) ends at 1 - 0.1 * 1 - 0.2 * 1.9 = 0.52; lr inside the velocity
# (m = mu * m - lr * g; p += m) at 1 - 0.1 - (0.09 + 0.2) = 0.61.
RATES = (0.1, 0.2)
ENDS = {False: 0.52, True: 0.61}


def _probe_numpy():
    p, v = np.ones(1), np.zeros(1)
    for lr in RATES:
        optim.sgd_update(p, np.ones(1), v, lr, optim.Optimizer(momentum=0.9))
    return float(p[0])


def _probe_torch():
    import torch

    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=RATES[0], momentum=0.9)
    for lr in RATES:
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.ones(1)
        opt.step()
    return float(p.detach()[0])


def _probe_tf():
    import keras
    import tensorflow as tf

    v = tf.Variable([1.0])
    opt = keras.optimizers.SGD(learning_rate=RATES[0], momentum=0.9)
    for lr in RATES:
        opt.learning_rate = lr
        opt.apply_gradients([(tf.ones(1), v)])
    return float(v.numpy()[0])


def _probe_mxnet():
    import mxnet as mx

    opt = mx.optimizer.SGD(learning_rate=RATES[0], momentum=0.9)
    updater, w = mx.optimizer.get_updater(opt), mx.np.ones(1)
    for lr in RATES:
        opt.set_learning_rate(lr)
        updater(0, mx.np.ones(1), w)
    return float(w.asnumpy()[0])


def _probe_paddle():
    import paddle

    p = paddle.create_parameter([1], "float32", default_initializer=paddle.nn.initializer.Constant(1.0))
    opt = paddle.optimizer.Momentum(learning_rate=RATES[0], momentum=0.9, parameters=[p])
    for lr in RATES:
        opt.set_lr(lr)
        p.sum().backward()
        opt.step()
        opt.clear_grad()
    return float(p.numpy()[0])


def _probe_mindspore():
    import mindspore as ms

    p = ms.Parameter(ms.Tensor(np.ones(1, np.float32)), name="p")
    opt = ms.nn.Momentum([p], learning_rate=RATES[0], momentum=0.9)
    for lr in RATES:
        opt.learning_rate.copy_(ms.Tensor(np.float32(lr)))  # set_data would swap the tensor under the graph
        opt((ms.Tensor(np.ones(1, np.float32)),))
    return float(p.asnumpy()[0])


def _probe_jax():
    import jax.numpy as jnp
    import optax

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=RATES[0], momentum=0.9)
    p = jnp.ones(1)
    state = tx.init(p)
    for lr in RATES:
        state.hyperparams["learning_rate"] = jnp.float32(lr)
        updates, state = tx.update(jnp.ones(1), state)
        p = optax.apply_updates(p, updates)
    return float(p[0])


VELOCITY_PROBES = {
    "numpy": _probe_numpy,
    "torch": _probe_torch,
    "tf": _probe_tf,
    "mxnet": _probe_mxnet,
    "paddle": _probe_paddle,
    "mindspore": _probe_mindspore,
    "jax": _probe_jax,
}


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_declared_optimizer_convention_is_the_frameworks(backend, device):
    """CONVENTIONS' ``optimizer.lr_in_velocity``, against the framework's own momentum SGD
    stepped at two rates: where it is True, the backend cannot use that optimizer as it is."""
    from resnet_multi import conventions

    declared = conventions.declared(backend.name)["optimizer"]
    end = VELOCITY_PROBES[backend.name]()
    assert end == pytest.approx(ENDS[declared["lr_in_velocity"]], abs=1e-6), end
