"""The ``resnet-multi`` command: the chapter's experiment on any backend.

    resnet-multi backends
    resnet-multi summary  --backend torch --arch d2l-resnet18 --input 1,1,224,224
    resnet-multi train    --backend torch --preset quick
    resnet-multi train    --backend torch --preset chapter --device cuda:0 --out runs/chapter [--resume]
    resnet-multi evaluate --backend numpy --weights runs/torch-quick/weights.safetensors

Mistakes (unknown backend or architecture, a backend that is not installed, a
missing device, a non-positive number) get one line on stderr and exit status 2;
a run that fails for another reason (data, weights, run directory) exits 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import shapes
from .backend import BACKENDS, load_backend
from .spec import ARCHS

PROG = "resnet-multi"


class UsageError(Exception):
    """A bad argument found after parsing (e.g. a device the backend lacks)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, else a one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N,C,H,W (four integers), got {text!r}") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"must be N,C,H,W (four positive integers), got {text!r}")
    return shape


def _backend(name: str):
    """The backend adapter, or a one-line UsageError naming the pip extra."""
    try:
        return load_backend(name)
    except ImportError as e:
        raise UsageError(f"backend {name!r} is not installed: {str(e).splitlines()[0]}") from e


def _device(backend, device: str | None) -> str:
    """The user's device, checked; by default the first accelerator, as d2l's ``try_gpu``."""
    available = backend.devices()
    if device is None:
        return next((d for d in available if d != "cpu"), "cpu")
    if device not in available:
        raise UsageError(f"device {device!r} is not available to {backend.name}; available: "
                         f"{', '.join(available)}")
    return device


def _overrides(args) -> dict:
    return {} if args.width is None else {"width": args.width}


def _load_data(*, subset: bool, data_dir, limit: int | None):
    from .data import Dataset, load_fashion_mnist

    if subset and data_dir is not None:
        raise UsageError("--data-dir reads the full dataset; drop --subset (or the quick preset's subset)"
                         " with --no-subset")
    dataset = load_fashion_mnist(subset=True) if subset else load_fashion_mnist(data_dir)
    if limit is not None:  # the first images of each split, for smoke runs
        dataset = Dataset(dataset.train_images[:limit], dataset.train_labels[:limit],
                          dataset.test_images[:limit], dataset.test_labels[:limit],
                          f"{dataset.source}, first {limit}")
    return dataset


# ---- commands --------------------------------------------------------------------------
def cmd_backends(args) -> int:
    rows = [("backend", "installed", "version", "devices")]
    for name in BACKENDS:
        try:
            backend = load_backend(name)
            rows.append((name, "yes", backend.framework_version(), ", ".join(backend.devices())))
        except ImportError as e:
            rows.append((name, "no", "-", str(e).splitlines()[0]))
        except Exception as e:  # a framework that imports but fails to start: say so, go on
            rows.append((name, "broken", "-", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_summary(args) -> int:
    backend = _backend(args.backend)
    model = backend.build(args.arch, device=_device(backend, args.device), **_overrides(args))
    spec = model.spec
    input_shape = args.input or (1, spec.in_channels, 224, 224)  # the chapter's shape check
    rows = backend.layer_shapes(model, input_shape)
    native = backend.native_layer_shapes(model, input_shape) if backend.native_layout != "NCHW" else None
    _, macs = shapes.analyse(spec, input_shape)
    params, buffers = backend.count_parameters(model)
    print(f"{spec.name} on {backend.name} {backend.framework_version()} ({model.device}), "
          f"input {tuple(input_shape)} (NCHW)")
    print(shapes.format_table(rows, native=native, native_layout=backend.native_layout))
    print(f"trainable parameters: {params:,}; BN running statistics: {buffers:,}")
    print(f"multiply-accumulates: {macs / 1e9:.3f} G per image ({macs:,})")
    return 0


def cmd_train(args) -> int:
    from . import train

    default_preset = args.preset is None
    args.preset = args.preset or "chapter"
    settings = dict(train.PRESETS[args.preset])
    for key in ("arch", "epochs", "lr", "batch_size", "resize", "subset"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.data_dir is not None and args.subset is None:
        settings["subset"] = False  # a data folder means the full data set
    resize = settings["resize"] or None  # --resize 0: keep 28x28
    backend = _backend(args.backend)
    device = _device(backend, args.device)
    out = Path(args.out or f"runs/{args.backend}-{args.preset}")
    state = train.read_checkpoint(out)  # fit checks this too; here it fails before any work
    if args.resume and state is None:
        raise train.RunError(f"nothing to resume: {out / train.CHECKPOINT} does not exist")
    if not args.resume and state is not None:
        raise train.RunError(f"{out} already holds a run (at epoch {state['epoch']}); pass --resume "
                             f"to continue it or choose another --out")
    if default_preset:  # once the arguments are checked, before any work: the default is the long run
        print(f"{PROG} train: no --preset given, running --preset chapter (full Fashion-MNIST at 96x96, "
              f"10 epochs: for a GPU; --preset quick is the short CPU run)", file=sys.stderr)
    model = backend.build(settings["arch"], device=device, seed=args.seed, eager=args.eager, **_overrides(args))
    dataset = _load_data(subset=settings["subset"], data_dir=args.data_dir, limit=args.limit)
    print(f"training {model.spec.name} (preset {args.preset}) on {backend.name} "
          f"{backend.framework_version()} ({device}): "
          f"{len(dataset.train_images):,} train / {len(dataset.test_images):,} test images at "
          f"{resize or 28}x{resize or 28}, {settings['epochs']} epochs, lr {settings['lr']}, "
          f"batch {settings['batch_size']}, seed {args.seed}; writing {out}", file=sys.stderr)
    meta = {"preset": args.preset, "subset": settings["subset"],
            "data_dir": None if args.data_dir is None else str(args.data_dir), "limit": args.limit,
            "source": dataset.source}
    history = train.fit(backend, model, dataset, epochs=settings["epochs"], lr=settings["lr"],
                        batch_size=settings["batch_size"], resize=resize, seed=args.seed, out=out,
                        resume=args.resume, progress=not args.no_progress, meta=meta)
    print(history.summary(device))
    print(f"history {out / train.HISTORY}, plot {out / train.PLOT}, weights {out / train.FINAL_WEIGHTS}",
          file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from . import train
    from . import weights as canonical

    backend = _backend(args.backend)
    device = _device(backend, args.device)
    spec = canonical.read_arch(args.weights)
    if spec is None:
        raise canonical.WeightsError(f"{args.weights} records no architecture; it was not saved by resnet-multi")
    # A run directory says how its weights were trained: resize and data, unless overridden.
    run = train.read_checkpoint(Path(args.weights).parent) or {}
    meta = run.get("meta", {})
    resize = args.resize if args.resize is not None else run.get("recipe", {}).get("resize", 96)
    subset = args.subset if args.subset is not None else (meta.get("subset", False) and args.data_dir is None)
    data_dir = args.data_dir if args.data_dir is not None else (None if subset else meta.get("data_dir"))
    limit = args.limit if args.limit is not None else meta.get("limit")
    model = backend.build(spec, device=device, eager=args.eager)
    backend.load_weights(model, args.weights)
    dataset = _load_data(subset=subset, data_dir=data_dir, limit=limit)
    acc = train.evaluate_accuracy(backend, model, dataset.test_images, dataset.test_labels,
                                  batch_size=args.batch_size, resize=resize or None)
    print(f"test acc {acc:.3f} on {len(dataset.test_images):,} images ({dataset.source}, "
          f"{resize or 28}x{resize or 28}), {spec.name} on {backend.name} ({device})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The Residual Networks chapter of Dive into Deep Learning "
                                            "on five frameworks and a NumPy reference.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("backends", help="each backend: installed?, framework version, devices")
    p.set_defaults(func=cmd_backends)

    def eager(p):
        p.add_argument("--eager", action="store_true",
                       help="run op by op, without the backend's compiled step (tf.function, "
                            "hybridize, to_static, graph mode): slower, easier to step through")

    def common(p, arch_default=None):
        p.add_argument("--backend", required=True, choices=list(BACKENDS))
        p.add_argument("--device", help="e.g. cpu, cuda:0 (default: the first accelerator, else cpu)")
        p.add_argument("--arch", choices=list(ARCHS), default=arch_default)
        p.add_argument("--width", type=_positive_int, help="stem channels (the chapter: 64)")

    p = sub.add_parser("summary", help="the chapter's per-layer shape table, parameters and MACs")
    common(p, "d2l-resnet18")
    p.add_argument("--input", type=_input_shape, metavar="N,C,H,W",
                   help="input shape (default: 1,C,224,224 as in the chapter)")
    p.set_defaults(func=cmd_summary)

    from .train import PRESETS
    p = sub.add_parser("train", help="train and evaluate (d2l's train_ch6), with checkpoints and a plot")
    common(p)
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="chapter (the default): the chapter's recipe, full data at 96x96, 10 epochs "
                        "(for a GPU: about two hours with torch on a 2-core CPU); quick: the bundled "
                        "2,000/500 subset at 32x32, 12 epochs (about a minute with torch on a 2-core "
                        "CPU, 2 to 4 minutes with tf, mxnet or paddle; see the README)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--resize", type=_nonneg_int, help="image side (0: keep 28)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="initial weights and batch order")
    p.add_argument("--subset", action=argparse.BooleanOptionalAction, default=None,
                   help="the bundled 2,000/500 subset instead of the full data")
    p.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST files")
    p.add_argument("--limit", type=_positive_int, help="only the first N train and N test images")
    p.add_argument("--out", type=Path, help="run directory (default runs/BACKEND-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    eager(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy of saved weights, from any backend, on any backend")
    p.add_argument("--backend", required=True, choices=list(BACKENDS))
    p.add_argument("--device")
    p.add_argument("--weights", required=True, type=Path, help="a .safetensors file saved by resnet-multi")
    p.add_argument("--resize", type=_nonneg_int, help="(default: the run's, else 96)")
    p.add_argument("--subset", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--limit", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    eager(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    from .data import DataError
    from .train import RunError
    from .weights import WeightsError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(e if str(e).startswith(PROG) else f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, WeightsError, RunError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # the spec's and the seam's argument checks
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; a run with --out can be continued with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
