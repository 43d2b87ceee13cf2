"""d2l's ResNet-18 in TensorFlow/Keras, as the chapter writes it: Keras' default layers
(``padding='same'``, default ``BatchNormalization``: momentum 0.99, eps 1e-3, Glorot
init), NHWC. Training as d2l's ``train_ch6`` does it through ``net.compile`` and
``net.fit``: Keras' ``fit`` runs ``train_step`` (forward with ``training=True`` under a
``GradientTape``, ``SparseCategoricalCrossentropy(from_logits=True)``,
``optimizer.apply_gradients``) inside one ``tf.function``; ``trainer`` is that step,
written out so that it hands back the loss and the logits like every other
benchmarked step. ``eager=True`` runs the same step op by op (Keras ``run_eagerly``).
Inference is ``net(X, training=False)``, in a ``tf.function`` as Keras' ``evaluate`` and
``predict`` run it (op by op with ``eager=True``). No XLA: Keras' ``jit_compile='auto'``
does not use it on a CPU.

Changes to run here: ``ResnetBlock`` keeps its blocks in a plain list and iterates
over it; the chapter's ``self.residual_layers.layers`` raises AttributeError on Keras 3.
``width`` replaces the chapter's literal 64/128/256/512 (the default is the chapter's).
"""

from __future__ import annotations

import numpy as np

from ..backend import require

tf = require("tensorflow", "tf")

LAYOUT = "NHWC"


class Residual(tf.keras.Model):  # @save
    """The Residual block of ResNet models."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = tf.keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
        self.conv2 = tf.keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides)
        self.bn1 = tf.keras.layers.BatchNormalization()
        self.bn2 = tf.keras.layers.BatchNormalization()

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return tf.keras.activations.relu(Y)


class ResnetBlock(tf.keras.layers.Layer):
    def __init__(self, num_channels, num_residuals, first_block=False, **kwargs):
        super().__init__(**kwargs)
        self.residual_layers = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                self.residual_layers.append(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                self.residual_layers.append(Residual(num_channels))

    def call(self, X):
        for layer in self.residual_layers:  # the chapter: self.residual_layers.layers (Keras 2 only)
            X = layer(X)
        return X


def net(width: int = 64, device: str = "cpu", seed: int = 0):
    if device != "cpu":
        raise ValueError("the textbook TensorFlow baseline runs on cpu only here")
    tf.keras.utils.set_random_seed(seed)
    w = width  # the chapter: 64
    return tf.keras.Sequential(
        [
            # The following layers are the same as b1 that we created earlier
            tf.keras.layers.Conv2D(w, kernel_size=7, strides=2, padding="same"),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation("relu"),
            tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same"),
            # The following layers are the same as b2, b3, b4, and b5 that we
            # created earlier
            ResnetBlock(w, 2, first_block=True),
            ResnetBlock(2 * w, 2),
            ResnetBlock(4 * w, 2),
            ResnetBlock(8 * w, 2),
            tf.keras.layers.GlobalAvgPool2D(),
            tf.keras.layers.Dense(units=10),
        ]
    )


def idiom(eager: bool = False) -> str:
    return "Keras fit's step, run eagerly" if eager else "Keras fit's step, tf.function"


def trainer(model, lr: float, eager: bool = False):
    optimizer = tf.keras.optimizers.SGD(learning_rate=lr)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train_step(X, y):
        with tf.GradientTape() as tape:
            y_hat = model(X, training=True)
            l = loss(y, y_hat)
        grads = tape.gradient(l, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return l, y_hat

    compiled = train_step if eager else tf.function(train_step, reduce_retracing=True)

    def step(X, y):
        l, y_hat = compiled(tf.convert_to_tensor(X), tf.convert_to_tensor(y))
        return float(l), y_hat.numpy()

    return step


def predictor(model, eager: bool = False):
    def forward(X):
        return model(X, training=False)

    compiled = forward if eager else tf.function(forward, reduce_retracing=True)

    def predict(X):
        return compiled(tf.convert_to_tensor(X)).numpy()

    return predict


def parameter_count(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))
