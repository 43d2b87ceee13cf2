"""Shared test helpers: weights with non-trivial values everywhere, and error measures."""

import numpy as np

from resnet_multi.weights import init_weights, tensor_specs

DAMPING = 0.05


def random_weights(spec, seed=0, *, damp_residuals=False):
    """Canonical weights in which nothing is trivial: the spec's initial conv and dense
    weights, plus random biases, BN scales/shifts and running statistics, so that a
    wrong bias, a swapped gamma/beta or a misread running variance changes the output.

    ``damp_residuals`` scales each block's residual branch by ``DAMPING`` (its last
    BN's gamma, or a pre-activation block's last conv), close to what
    zero-init-residual recipes start from. Deep batch-normalised nets with full
    branches have exploding gradients (Yang et al. 2019, "A Mean Field Theory of
    Batch Normalization"), which amplify float32 rounding until it hides real errors
    in the deepest nets; damped, float32 stays at its rounding level, while float64
    agrees with the reference undamped.
    """
    rng = np.random.default_rng(seed)
    w = init_weights(spec, seed)
    draw = {
        "conv_bias": lambda s: rng.normal(0, 0.05, s),
        "fc_bias": lambda s: rng.normal(0, 0.1, s),
        "bn_gamma": lambda s: rng.uniform(0.5, 1.5, s),
        "bn_beta": lambda s: rng.normal(0, 0.2, s),
        "bn_mean": lambda s: rng.normal(0, 0.2, s),
        "bn_var": lambda s: rng.uniform(0.5, 2.0, s),
    }
    for t in tensor_specs(spec):
        if t.role in draw:
            w[t.name] = draw[t.role](t.shape).astype(np.float32)
    if damp_residuals:
        for i, stage in enumerate(spec.stages):
            for j, block in enumerate(stage.blocks):
                last = len(block.convs())
                name = f"stages.{i}.{j}.conv{last}.weight" if block.preact else f"stages.{i}.{j}.bn{last}.weight"
                w[name] = (w[name] * DAMPING).astype(np.float32)
    return w


def rel_err(a, b):
    """max |a - b| / max |b|: the error relative to the tensor's own scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def kink_free_batch(oracle, ref, spec, *, n=4, size=32, margin=2e-5, tries=300, first_seed=0):
    """The first seeded Gaussian batch (seeds from ``first_seed``) whose float64
    training-mode forward pass, at ``ref``'s current weights, keeps every ReLU input
    and every max-pool runner-up at least ``margin`` from its decision.

    Float32 forward passes differ from float64 by about 1e-6 here. Where a ReLU
    input or a max-pool tie lies closer than that, float32 may take the other
    branch and a correct framework gets a different gradient (one flipped unit at
    a 1x1 grid moved gradients by 20% in a resnet18 run). 2e-5 is 20 times that error.
    The search runs in training mode; ``ref``'s BN statistics are restored after it.
    """
    saved = [(layer, dict(layer.buffers)) for _, layer in ref.module.named_layers()]
    try:
        for seed in range(first_seed, first_seed + tries):
            x = np.random.default_rng(seed).standard_normal((n, spec.in_channels, size, size)).astype(np.float32)
            oracle.forward64(ref, x, training=True)
            if ref.module.kink_margin() >= margin:
                return x
    finally:
        for layer, buffers in saved:
            layer.buffers.update(buffers)
    raise AssertionError(f"no batch among {tries} seeds keeps a kink margin of {margin} in {spec.name}")


def first(ds, n_train, n_test):
    """The first ``n_train`` training and ``n_test`` test images of a data set."""
    from resnet_multi import data

    return data.Dataset(
        ds.train_images[:n_train],
        ds.train_labels[:n_train],
        ds.test_images[:n_test],
        ds.test_labels[:n_test],
        ds.source,
    )


def crash_at_step(monkeypatch, backend, step: int) -> None:
    """Make ``backend.train_step`` raise KeyboardInterrupt on its ``step``-th call (1-based),
    as a kill in the middle of a run would; ``monkeypatch.undo()`` restores it."""
    calls, real_step = [], backend.train_step

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(backend, "train_step", crashing_step)
