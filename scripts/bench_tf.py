"""TensorFlow side by side: the textbook's own Keras ResNet-18 against resnet_multi's
TF backend, compiled and eager, in one process.

    python scripts/bench_tf.py                 # training at 32x32 batch 256, inference at 96x96 batch 64
    python scripts/bench_tf.py --rounds 7 --steps 4

The textbook model is d2l's TensorFlow code for the chapter, as
:mod:`resnet_multi.textbook.tf` holds it (``Residual`` and ``ResnetBlock`` with Keras
``Conv2D(padding="same")`` and default ``BatchNormalization``; the one ``resnet-multi
bench`` runs), trained as d2l trains it: ``model.fit`` after ``compile`` (whose
default ``jit_compile="auto"`` may pick XLA; the table's note says what it picked),
and, for comparison, that module's ``trainer``: fit's ``train_step`` (a GradientTape
step) in a ``tf.function``, reading the loss and the logits back to NumPy every step.
fit is timed from its first batch to the end of its epoch. Inference: the module's
``predictor`` (``model(x, training=False)``, eager or in a ``tf.function``) and Keras'
``predict_on_batch``. resnet_multi runs through the backend seam, NCHW NumPy in and
out, as ``train`` runs it.

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

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from resnet_multi.backend import load_backend  # noqa: E402
from resnet_multi.spec import get_arch  # noqa: E402
from resnet_multi.textbook import tf as book  # noqa: E402

# ---- the textbook's model: resnet_multi.textbook.tf (d2l's Keras code, tf.keras layers) ---------
# WIDTH is the chapter's 64 (the spec's width, so both models are the same size).
WIDTH = get_arch("d2l-resnet18").width


def textbook_net():
    return book.net(width=WIDTH)


LR = 0.05


def textbook_fit(size, batch, steps):
    net = textbook_net()
    net.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
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
    # The package's textbook trainer: fit's train_step (GradientTape, apply_gradients) in a
    # tf.function, handing back the loss as a float and the logits as NumPy every step.
    step = book.trainer(textbook_net(), LR)
    batches = _nhwc_batches(size, batch, steps)

    def run():
        for x, y in batches:
            step(x, y)

    return run, ""


def textbook_infer(size, batch, steps, how):
    net = textbook_net()
    net.build((None, size, size, 1))
    x = np.random.default_rng(1).standard_normal((batch, size, size, 1)).astype(np.float32)
    if how == "predict":  # Keras' own compiled predict
        net.compile()
        call = lambda: net.predict_on_batch(x)  # noqa: E731
    else:  # net(x, training=False), op by op ("eager") or in a tf.function
        predict = book.predictor(net, eager=how == "eager")
        call = lambda: predict(x)  # noqa: E731

    def run():
        for _ in range(steps):
            call()

    return run, ""


def _nhwc_batches(size, batch, steps):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((batch, size, size, 1)).astype(np.float32), rng.integers(0, 10, batch))
        for _ in range(steps)
    ]


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
    return [
        (name, statistics.median(rates[name]), min(rates[name]), max(rates[name]), setup, note)
        for name, _, note, setup in runs
    ]


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
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}; "
        f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
    )
    s, b, n = args.train_size, args.train_batch, args.steps
    if args.only in (None, "train"):
        rows = measure(
            [
                ("textbook Keras fit", lambda: textbook_fit(s, b, n)),
                ("textbook tf.function GradientTape step (textbook.tf trainer)", lambda: textbook_tape(s, b, n)),
                ("resnet_multi sgd_step, compiled", lambda: ours_train(s, b, n, eager=False)),
                ("resnet_multi sgd_step, eager", lambda: ours_train(s, b, n, eager=True)),
            ],
            b,
            n,
            args.rounds,
            args.warmup,
        )
        table(f"training, d2l-resnet18, {s}x{s}, batch {b}, SGD lr {LR}", rows)
    s, b = args.infer_size, args.infer_batch
    if args.only in (None, "infer"):
        rows = measure(
            [
                ("textbook model(x, training=False), eager", lambda: textbook_infer(s, b, n, "eager")),
                ("textbook Keras predict_on_batch", lambda: textbook_infer(s, b, n, "predict")),
                ("textbook model in a tf.function", lambda: textbook_infer(s, b, n, "tf.function")),
                ("resnet_multi forward, compiled", lambda: ours_infer(s, b, n, eager=False)),
                ("resnet_multi forward, eager", lambda: ours_infer(s, b, n, eager=True)),
            ],
            b,
            n,
            args.rounds,
            args.warmup,
        )
        table(f"inference, d2l-resnet18, {s}x{s}, batch {b}", rows)


if __name__ == "__main__":
    main()
