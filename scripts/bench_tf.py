"""TensorFlow side by side: the textbook's own Keras ResNet-18 against resnet_multi's
TF backend, compiled and eager, in one process.

    python scripts/bench_tf.py                 # training at 32x32 batch 256, inference at 96x96 batch 64
    python scripts/bench_tf.py --rounds 7 --steps 4

The textbook model is d2l's TensorFlow code for the chapter (``Residual`` and
``ResnetBlock`` with Keras ``Conv2D(padding="same")`` and default
``BatchNormalization``), trained as d2l trains it: ``model.fit`` after
``compile`` (whose default ``jit_compile="auto"`` may pick XLA; the table's note says
what it picked), and, for comparison, a ``tf.function`` GradientTape step. fit is
timed from its first batch to the end of its epoch. resnet_multi runs through the
backend seam, NCHW NumPy in and out, as ``train`` runs it.

Rounds are interleaved (each round times every contender in turn) and the table
reports each contender's median examples/s and its ratio to the first row of its
section, so that load from other processes on a shared machine hits all alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from resnet_multi.backend import load_backend  # noqa: E402


# ---- the textbook's code (d2l, "Residual Networks (ResNet)", TensorFlow tab) -----------------
class Residual(keras.Model):
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
        self.conv2 = keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides)
        self.bn1 = keras.layers.BatchNormalization()
        self.bn2 = keras.layers.BatchNormalization()

    def call(self, X):
        Y = keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return keras.activations.relu(Y)


class ResnetBlock(keras.layers.Layer):
    def __init__(self, num_channels, num_residuals, first_block=False, **kwargs):
        super().__init__(**kwargs)
        self.residual_layers = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                self.residual_layers.append(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                self.residual_layers.append(Residual(num_channels))

    def call(self, X):
        for layer in self.residual_layers:  # the book's `.layers` is gone in Keras 3
            X = layer(X)
        return X


def textbook_net():
    return keras.Sequential([
        keras.layers.Conv2D(64, kernel_size=7, strides=2, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same"),
        ResnetBlock(64, 2, first_block=True),
        ResnetBlock(128, 2),
        ResnetBlock(256, 2),
        ResnetBlock(512, 2),
        keras.layers.GlobalAvgPool2D(),
        keras.layers.Dense(units=10)])


LR = 0.05


def textbook_fit(size, batch, steps):
    net = textbook_net()
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=LR),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, size, size, 1)).astype(np.float32)
    y = rng.integers(0, 10, batch * steps)

    clock = _FitClock()

    def run():
        net.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
        return clock.seconds
    return run, f"jit_compile={net.jit_compile}"


class _FitClock(keras.callbacks.Callback):
    """Times fit from its first batch to the end of the epoch (the logs are read back
    there), leaving out fit's per-call setup, which a real epoch spreads over many steps."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def textbook_tape(size, batch, steps):
    net = textbook_net()
    optimizer = keras.optimizers.SGD(learning_rate=LR)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    net.build((None, size, size, 1))
    optimizer.build(net.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    batches = _nhwc_batches(size, batch, steps)

    def run():
        for x, y in batches:
            float(step(x, y))
    return run, ""


def textbook_infer(size, batch, steps, how):
    net = textbook_net()
    net.build((None, size, size, 1))
    x = np.random.default_rng(1).standard_normal((batch, size, size, 1)).astype(np.float32)
    if how == "eager":
        call = lambda: net(tf.constant(x), training=False).numpy()  # noqa: E731
    elif how == "tf.function":
        fn = tf.function(lambda t: net(t, training=False))
        call = lambda: fn(tf.constant(x)).numpy()  # noqa: E731
    else:  # Keras' own compiled predict
        net.compile()
        call = lambda: net.predict_on_batch(x)  # noqa: E731

    def run():
        for _ in range(steps):
            call()
    return run, ""


def _nhwc_batches(size, batch, steps):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((batch, size, size, 1)).astype(np.float32), rng.integers(0, 10, batch))
            for _ in range(steps)]


# ---- resnet_multi through the seam ---------------------------------------------------------------
def ours_train(size, batch, steps, eager):
    backend = load_backend("tf")
    model = backend.build("d2l-resnet18", eager=eager)
    batches = [(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y) for x, y in _nhwc_batches(size, batch, steps)]

    def run():
        for x, y in batches:
            backend.sgd_step(model, x, y, LR)
    return run, ""


def ours_infer(size, batch, steps, eager):
    backend = load_backend("tf")
    model = backend.build("d2l-resnet18", eager=eager)
    x = np.random.default_rng(1).standard_normal((batch, 1, size, size)).astype(np.float32)

    def run():
        for _ in range(steps):
            backend.forward(model, x, training=False)
    return run, ""


def measure(contenders, batch, steps, rounds, warmup):
    runs = []
    for name, make in contenders:
        t = time.perf_counter()
        run, note = make()
        for _ in range(warmup):
            run()
        runs.append((name, run, note, time.perf_counter() - t))
    rates = {name: [] for name, *_ in runs}
    for _ in range(rounds):
        for name, run, _, _ in runs:
            t = time.perf_counter()
            seconds = run()  # a contender that times itself returns its seconds
            rates[name].append(batch * steps / (seconds or time.perf_counter() - t))
    return [(name, statistics.median(rates[name]), min(rates[name]), max(rates[name]), setup, note)
            for name, _, note, setup in runs]


def table(title, rows):
    base = rows[0][1]
    print(f"\n{title}")
    print("| contender | examples/s (median) | min | max | ratio | build+warm-up s | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, med, lo, hi, setup, note in rows:
        print(f"| {name} | {med:.0f} | {lo:.0f} | {hi:.0f} | {med / base:.2f} | {setup:.1f} | {note} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--infer-size", type=int, default=96)
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps (batches) per contender per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of `steps` steps before the rounds")
    p.add_argument("--only", choices=["train", "infer"], help="run one section")
    args = p.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}")
    s, b, n = args.train_size, args.train_batch, args.steps
    if args.only in (None, "train"):
        rows = measure([
            ("textbook Keras fit", lambda: textbook_fit(s, b, n)),
            ("textbook tf.function GradientTape step", lambda: textbook_tape(s, b, n)),
            ("resnet_multi sgd_step, compiled", lambda: ours_train(s, b, n, eager=False)),
            ("resnet_multi sgd_step, eager", lambda: ours_train(s, b, n, eager=True)),
        ], b, n, args.rounds, args.warmup)
        table(f"training, d2l-resnet18, {s}x{s}, batch {b}, SGD lr {LR}", rows)
    s, b = args.infer_size, args.infer_batch
    if args.only in (None, "infer"):
        rows = measure([
            ("textbook model(x, training=False), eager", lambda: textbook_infer(s, b, n, "eager")),
            ("textbook Keras predict_on_batch", lambda: textbook_infer(s, b, n, "predict")),
            ("textbook model in a tf.function", lambda: textbook_infer(s, b, n, "tf.function")),
            ("resnet_multi forward, compiled", lambda: ours_infer(s, b, n, eager=False)),
            ("resnet_multi forward, eager", lambda: ours_infer(s, b, n, eager=True)),
        ], b, n, args.rounds, args.warmup)
        table(f"inference, d2l-resnet18, {s}x{s}, batch {b}", rows)


if __name__ == "__main__":
    main()
