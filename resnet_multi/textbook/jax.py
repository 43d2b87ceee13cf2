"""d2l's ResNet-18 in JAX, as the chapter's JAX tab writes it: Flax Linen's default layers
(``padding='same'``, ``nn.BatchNorm``: momentum 0.99, eps 1e-5, biased running
variance; lecun-normal init), NHWC, a ``training`` field that picks batch or running
statistics. Training as d2l's ``Trainer`` does it for JAX: a ``TrainState`` that also
carries ``batch_stats``, ``optax.sgd``, the loss from
``optax.softmax_cross_entropy_with_integer_labels`` with ``mutable=['batch_stats']``,
``jax.value_and_grad``, ``state.apply_gradients``, all under ``jax.jit``. ``eager`` runs
the same step without ``jit`` (op by op). Inference is the ``training=False`` clone,
also jitted.

Changes to run here: ``width`` replaces the chapter's literal 64/128/256/512 (the
default is the chapter's); the chapter's ``ResNet`` subclasses ``d2l.Classifier``,
here a plain ``nn.Module`` (d2l's classifier adds only the training plumbing, written
out in ``trainer``); the chapter's ``arch`` tuple and ``block`` / ``create_net``
methods are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import require

jax = require("jax", "jax")
jnp = require("jax.numpy", "jax")
nn = require("flax.linen", "jax")
optax = require("optax", "jax")
train_state = require("flax.training.train_state", "jax")

LAYOUT = "NHWC"


class Residual(nn.Module):  # @save
    """The Residual block of ResNet models."""

    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self):
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same", strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same")
        if self.use_1x1conv:
            self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nn.relu(Y)


class ResNet(nn.Module):
    arch: tuple
    num_classes: int = 10
    training: bool = True
    width: int = 64  # here: the stem's channels, the chapter's 64

    def setup(self):
        self.net = self.create_net()

    def __call__(self, X):
        return self.net(X)

    def b1(self):
        return nn.Sequential(
            [
                nn.Conv(self.width, kernel_size=(7, 7), strides=(2, 2), padding="same"),
                nn.BatchNorm(not self.training),
                nn.relu,
                lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="same"),
            ]
        )

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=self.training))
            else:
                blk.append(Residual(num_channels, training=self.training))
        return nn.Sequential(blk)

    def create_net(self):
        net = nn.Sequential([self.b1()])
        for i, b in enumerate(self.arch):
            net.layers.extend([self.block(*b, first_block=(i == 0))])
        net.layers.extend(
            [
                nn.Sequential(
                    [
                        # Flax does not provide a GlobalAvg2D layer
                        lambda x: nn.avg_pool(x, window_shape=x.shape[1:3], strides=x.shape[1:3], padding="valid"),
                        lambda x: x.reshape((x.shape[0], -1)),
                        nn.Dense(self.num_classes),
                    ]
                )
            ]
        )
        return net


class TrainState(train_state.TrainState):
    """d2l's JAX state: parameters, optimizer state and the BN statistics."""

    batch_stats: Any


class Net:
    """The model and its state: Linen modules hold no weights, so the state travels
    beside them (``trainer`` replaces it each step)."""

    def __init__(self, module: ResNet, variables: dict):
        self.module = module
        self.variables = variables
        self.state = None


def net(width: int = 64, device: str = "cpu", seed: int = 0) -> Net:
    if device != "cpu":
        raise ValueError("the textbook JAX baseline runs on cpu only here")
    w = width  # the chapter: ResNet18's arch ((2, 64), (2, 128), (2, 256), (2, 512))
    module = ResNet(arch=((2, w), (2, 2 * w), (2, 4 * w), (2, 8 * w)), width=w)
    variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 96, 96, 1)))
    return Net(module, variables)


def idiom(eager: bool = False) -> str:
    return "d2l's TrainState step, op by op" if eager else "d2l's TrainState step, jax.jit"


def trainer(model: Net, lr: float, eager: bool = False):
    model.state = TrainState.create(
        apply_fn=model.module.apply,
        params=model.variables["params"],
        tx=optax.sgd(lr),
        batch_stats=model.variables["batch_stats"],
    )

    def loss(params, state, X, y):
        Y_hat, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, X, mutable=["batch_stats"]
        )
        l = optax.softmax_cross_entropy_with_integer_labels(Y_hat, y).mean()
        return l, (Y_hat, updates)

    def train_step(state, X, y):
        (l, (Y_hat, updates)), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, X, y)
        state = state.apply_gradients(grads=grads)
        return state.replace(batch_stats=updates["batch_stats"]), l, Y_hat

    compiled = train_step if eager else jax.jit(train_step)

    def step(X, y):
        model.state, l, Y_hat = compiled(model.state, jnp.asarray(X), jnp.asarray(y, jnp.int32))
        return float(l), np.asarray(Y_hat)

    return step


def predictor(model: Net, eager: bool = False):
    inference = model.module.clone(training=False)

    def forward(params, batch_stats, X):
        return inference.apply({"params": params, "batch_stats": batch_stats}, X)

    compiled = forward if eager else jax.jit(forward)

    def predict(X):
        state = model.state
        params, stats = (
            (state.params, state.batch_stats)
            if state is not None
            else (model.variables["params"], model.variables["batch_stats"])
        )
        return np.asarray(compiled(params, stats, jnp.asarray(X)))

    return predict


def parameter_count(model: Net) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(model.variables["params"])))
