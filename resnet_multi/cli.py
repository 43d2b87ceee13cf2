"""The ``resnet-multi`` command: the chapter's experiment on any backend.

    resnet-multi backends
    resnet-multi summary  --backend torch --arch d2l-resnet18 --input 1,1,224,224
    resnet-multi train    --backend torch --preset quick
    resnet-multi train    --backend torch --preset chapter --device cuda:0 --out runs/chapter [--resume]
    resnet-multi train    --backend torch --preset quick --nproc 2 [--sync-bn]
    torchrun --nproc-per-node 8 -m resnet_multi.cli train --backend torch --preset chapter [--sync-bn]
    resnet-multi evaluate --backend numpy --weights runs/torch-quick/weights.safetensors
    resnet-multi bench    --backend torch [--size 96 --batch-size 64 --steps 20 --json bench.json]
    resnet-multi trace    --backend torch --steps 10 --out traces/torch.safetensors
    resnet-multi compare  traces/numpy.safetensors traces/torch.safetensors [--tolerance 1e-3]
    resnet-multi conventions
    resnet-multi import   --from torchvision resnet50-0676ba61.pth --arch resnet50 --output resnet50.safetensors
    resnet-multi predict  --weights resnet50.safetensors --backend numpy cat.jpg dog.png
    resnet-multi export   --weights runs/torch-quick/weights.safetensors --format onnx --output model.onnx

Mistakes (unknown backend or architecture, a backend that is not installed, a
missing device, a number out of range, an output path that is not a regular file, a
network too big for --max-memory) get one line on stderr and exit status 2; a run that
fails for another reason (data, weights, run directory, a number that came out NaN or
infinite, a full disk) exits 1, and so does anything else, reported as the bug it is.
Ctrl-C exits 130 and SIGTERM 143, each saying where a training run stands. ``--debug``
shows the traceback.

The commands only parse, call into the modules and print: what a command does lives
in :mod:`resnet_multi.train`, :mod:`resnet_multi.trace`, :mod:`resnet_multi.bench` and
:mod:`resnet_multi.compare`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from . import files, frameworks, memory, shapes, validate
from .backend import load_backend
from .errors import InputError, NonFiniteError, Terminated
from .spec import ARCHS, get_arch

PROG = "resnet-multi"


class UsageError(InputError):
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


def _checked(check, parse=float):
    """An argparse type: ``parse`` the text, then one of resnet_multi.validate's checks, the
    same the Python API applies; its message becomes the option's error."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if parse is int else 'a number'}, got {text!r}"
            ) from None
        try:
            return check(value, "the value")
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the value ")) from None

    return convert


_learning_rate = _checked(validate.check_learning_rate)
_epochs = _checked(validate.check_epochs, int)
_timeout = _checked(validate.check_timeout)
_perturb = _checked(validate.check_perturb)


def _optimizer_option(name: str):
    """An argparse type for one of SGD's settings, checked as resnet_multi.optim.Optimizer checks it."""

    def check(value, what):
        from .optim import Optimizer

        Optimizer(**{name: value})
        return value

    return _checked(check)


def _augment(text: str) -> str:
    from .data import parse_augment

    try:
        parse_augment(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _path(text: str) -> Path:
    """An argparse type: a path, never the empty string (which Path() reads as the current directory)."""
    if not text:
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return Path(text)


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N,C,H,W (four integers), got {text!r}") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"must be N,C,H,W (four positive integers), got {text!r}")
    return shape


def _convention_framework(name: str) -> str:
    if name not in frameworks.BACKEND_NAMES:
        raise argparse.ArgumentTypeError(
            f"no conventions for {name!r}: choose among {', '.join(frameworks.BACKEND_NAMES)}"
        )
    return name


def _backend(name: str):
    """The backend adapter, or a one-line UsageError naming the pip extra."""
    try:
        return load_backend(name)
    except ImportError as e:
        raise UsageError(f"backend {name!r} is not installed: {str(e).splitlines()[0]}") from e


def _device(backend, device: str | None) -> str:
    return backend.choose_device(device)


def _memory_limit(args) -> int | None:
    """--max-memory in bytes; by default this machine's RAM."""
    if getattr(args, "max_memory", None) is not None:
        return int(args.max_memory * 2**30)
    return memory.physical_memory()


def _check_memory(backend, spec, input_shape, args, *, training: bool) -> None:
    limit = _memory_limit(args)
    memory.check_memory(spec, input_shape, training=training, limit_bytes=limit, itemsize=memory.itemsize(backend.name))


def _overrides(args) -> dict:
    return {} if args.width is None else {"width": args.width}


def _load_data(*, subset: bool, data_dir, limit: int | None, instead: str = "--subset"):
    from .data import load_dataset

    return load_dataset(subset=subset, data_dir=data_dir, limit=limit, instead=instead)


# ---- commands --------------------------------------------------------------------------
def cmd_backends(args) -> int:
    rows = [("backend", "installed", "version", "devices")]
    for name in frameworks.BACKEND_NAMES:
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
    device = _device(backend, args.device)
    spec = get_arch(args.arch, **_overrides(args))
    input_shape = args.input or (1, spec.in_channels, 224, 224)  # the chapter's shape check
    _check_memory(backend, spec, input_shape, args, training=False)
    model = backend.build(spec, device=device)
    rows = backend.layer_shapes(model, input_shape)
    native = backend.native_layer_shapes(model, input_shape) if backend.native_layout != "NCHW" else None
    _, macs = shapes.analyse(spec, input_shape)
    params, buffers = backend.count_parameters(model)
    print(
        f"{spec.name} on {backend.name} {backend.framework_version()} ({model.device}), "
        f"input {tuple(input_shape)} (NCHW)"
    )
    print(shapes.format_table(rows, native=native, native_layout=backend.native_layout))
    print(f"trainable parameters: {params:,}; BN running statistics: {buffers:,}")
    print(f"multiply-accumulates: {macs / 1e9:.3f} G per image ({macs:,})")
    return 0


def _run_directory(args) -> Path:
    return Path(args.out or f"runs/{args.backend}-{args.preset or 'chapter'}")


def cmd_train(args) -> int:
    from . import run, train

    settings = train.recipe(
        args.preset or "chapter",
        data_dir=args.data_dir,
        arch=args.arch,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        resize=args.resize,
        subset=args.subset,
        width=args.width,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        schedule=args.schedule,
        augment=args.augment,
    )
    request = run.TrainRequest(
        preset=args.preset,
        settings=settings,
        out=_run_directory(args),
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        eager=args.eager,
        data_dir=args.data_dir,
        limit=args.limit,
        progress=not args.no_progress,
        precision=args.precision,
        channels_last=args.channels_last,
        nproc=args.nproc,
        sync_bn=args.sync_bn,
        dist_timeout=args.dist_timeout,
        argv=tuple(args.argv),
        memory_limit=_memory_limit(args),
    )
    return run.train(request, _backend(args.backend), prog=PROG)


def _run_beside(weights_path: Path) -> dict:
    """The checkpoint of the run directory holding the weights, if any. It only supplies
    defaults (the data the run used), so a broken one is reported and passed over."""
    from . import train

    try:
        return train.read_checkpoint(weights_path.parent) or {}
    except train.RunError:
        print(
            f"{PROG}: note: ignoring {weights_path.parent / train.CHECKPOINT}: it is not a usable "
            f"checkpoint; the weights file is read on its own",
            file=sys.stderr,
        )
        return {}


def cmd_evaluate(args) -> int:
    from . import data, train
    from . import weights as canonical

    backend = _backend(args.backend)
    device = _device(backend, args.device)
    recorded = canonical.read_metadata(args.weights)  # validated before anything is built
    spec = recorded.arch
    if (spec.in_channels, spec.num_classes) != (1, 10):
        raise UsageError(
            f"{args.weights} holds a {spec.name} for {spec.in_channels}-channel images and {spec.num_classes} "
            f"classes{' (' + recorded.source['zoo'] + ')' if recorded.source else ''}; evaluate measures "
            f"Fashion-MNIST test accuracy (1 channel, 10 classes): for its classes of your own images run "
            f"{PROG} predict --weights {args.weights} --backend {args.backend} IMAGE..."
        )
    run = _run_beside(Path(args.weights))
    meta = run.get("meta", {})
    known, trained = train.trained_resize(recorded.preprocess, run)
    if args.resize is not None:
        resize = args.resize or None
        if known and resize != trained:
            print(
                f"{PROG}: note: evaluating at {resize or 28}x{resize or 28} as asked; these weights "
                f"were trained at {trained or 28}x{trained or 28}",
                file=sys.stderr,
            )
    elif known:
        resize = trained
    else:
        resize = 96
        print(
            f"{PROG}: note: {args.weights} records no training resolution (saved by an older "
            f"version); evaluating at the chapter's 96x96: pass --resize to choose",
            file=sys.stderr,
        )
    subset = args.subset if args.subset is not None else (meta.get("subset", False) and args.data_dir is None)
    data_dir = args.data_dir if args.data_dir is not None else (None if subset else meta.get("data_dir"))
    limit = args.limit if args.limit is not None else meta.get("limit")
    side = resize or 28
    _check_memory(backend, spec, (args.batch_size, spec.in_channels, side, side), args, training=False)
    model = backend.build(spec, device=device, eager=args.eager)
    backend.load_weights(model, args.weights)
    dataset = _load_data(subset=subset, data_dir=data_dir, limit=limit)
    normalize = recorded.preprocess or data.preprocessing(resize)
    try:
        acc = train.evaluate_accuracy(
            backend,
            model,
            dataset.test_images,
            dataset.test_labels,
            batch_size=args.batch_size,
            resize=resize,
            normalize=normalize,
            check_layers=True,  # weights from a file: every layer's output, not the logits alone
        )
    except NonFiniteError as e:
        raise NonFiniteError(
            f"no accuracy for {args.weights}: {e.short}: the weights overflow float32 on the test "
            f"images; evaluate the weights of a run that did not diverge"
        ) from None
    print(
        f"test acc {acc:.3f} on {len(dataset.test_images):,} images ({dataset.source}, "
        f"{side}x{side}), {spec.name} on {backend.name} ({device})"
    )
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .train import PRESETS

    if args.json is not None:
        files.check_output(args.json, "--json")  # before any work, as every writer checks it again
    backend = _backend(args.backend)
    device = _device(backend, args.device)
    # By default the preset that suits the device: quick (32x32) on a CPU, the chapter's 96x96 on a GPU.
    preset = PRESETS[args.preset or ("quick" if device == "cpu" else "chapter")]
    size, batch_size = args.size or preset["resize"], args.batch_size or preset["batch_size"]
    width = args.width or (preset.get("width") if args.arch == preset["arch"] else None)  # fast: width 32
    spec = get_arch(args.arch, **({} if width is None else {"width": width}))
    _check_memory(backend, spec, (batch_size, spec.in_channels, size, size), args, training=True)
    result = bench.run(
        backend,
        arch=args.arch,
        size=size,
        batch_size=batch_size,
        steps=args.steps,
        warmup=args.warmup,
        eager=args.eager,
        width=width,
        device=device,
        lr=preset["lr"],
        seed=args.seed,
        with_textbook=not args.no_textbook,
        log=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )
    print(bench.format_table(result))
    if args.json is not None:
        print(f"figures written to {bench.write_json(args.json, result)}", file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from . import trace
    from . import weights as canonical
    from .train import PRESETS

    inference = args.inference or args.backend in frameworks.INFERENCE_ONLY
    if inference and (args.lr is not None or args.full_grads or args.perturb):
        raise UsageError(
            "an inference trace (--inference, or an inference-only backend) takes no training step: "
            "drop --lr, --full-grads and --perturb"
        )
    suffix = "-inference" if inference else "-perturbed" if args.perturb else ""
    out = files.check_output(args.out or Path(f"traces/{args.backend}{suffix}.safetensors"), "--out")  # first
    if args.threads is not None:
        trace.pin_threads(args.threads)  # before the framework starts its thread pools
    backend = _backend(args.backend)
    device = _device(backend, args.device)
    quick = PRESETS["quick"]
    if args.weights is not None:
        if args.arch is not None or args.width is not None:
            raise UsageError("--weights records its architecture; drop --arch and --width")
        spec = canonical.read_arch(args.weights)  # validated: a file without one is refused there
    else:
        spec = get_arch(args.arch or quick["arch"], **_overrides(args))
    resize = (quick["resize"] if args.resize is None else args.resize) or None
    batch_size = args.batch_size or quick["batch_size"]
    side = resize or 28
    _check_memory(backend, spec, (batch_size, spec.in_channels, side, side), args, training=not inference)
    if args.weights is not None:
        model = backend.build(spec, device=device, eager=args.eager)
        backend.load_weights(model, args.weights)
        start = {"weights": str(args.weights)}
    else:
        model = backend.build(spec, device=device, seed=args.seed, eager=args.eager)
        start = {"init_seed": args.seed}
    subset = args.subset if args.subset is not None else args.data_dir is None
    dataset = _load_data(subset=subset, data_dir=args.data_dir, limit=args.limit)
    lr = args.lr or quick["lr"]
    recipe = {"batch_size": batch_size, "resize": resize, "seed": args.seed, "data": dataset.source, **start}
    batches = trace.training_batches(dataset, steps=args.steps, batch_size=batch_size, seed=args.seed, resize=resize)
    print(
        f"tracing {args.steps} {'batches in inference mode' if inference else 'steps'} of {model.spec.name} on "
        f"{backend.name} {backend.framework_version()} ({device}), batch {batch_size} at "
        f"{resize or 28}x{resize or 28}{'' if inference else f', lr {lr}'}, seed {args.seed}",
        file=sys.stderr,
    )
    try:
        if inference:
            tensors, meta = trace.record_inference(
                backend, model, batches, activation_images=args.activation_images, recipe=recipe
            )
        else:
            tensors, meta = trace.record(
                backend,
                model,
                batches,
                lr=lr,
                activation_images=args.activation_images,
                full_grads=args.full_grads,
                recipe=recipe,
                perturb=args.perturb or 0.0,
            )
    except NonFiniteError as e:
        start = (
            f"--weights {args.weights}" if args.weights is not None else f"the initial weights of --seed {args.seed}"
        )
        raise NonFiniteError(
            f"nothing traced, from {start}: {e.short}; these weights and this lr overflow float32: "
            f"trace from the weights of a run that did not diverge, or with a lower --lr"
        ) from None
    out = trace.save(out, tensors, meta)
    print(f"loss {tensors['loss'][0]:.4f} -> {tensors['loss'][-1]:.4f} over {len(tensors['loss'])} steps; trace {out}")
    return 0


def cmd_compare(args) -> int:
    from . import compare

    plot = None
    if args.plot is not None or not args.no_plot:
        plot = files.check_output(args.plot or Path(args.traces[0]).parent / "compare.png", "--plot")
    result = compare.compare(args.traces, reference=args.reference, steps=args.steps)
    print(compare.format_report(result, threshold=args.threshold))
    if plot is not None:
        print(f"plot {compare.save_plot(result, plot)}", file=sys.stderr)
    if args.tolerance is not None and result.worst() > args.tolerance:
        worst = result.worst()
        what = "a non-finite value (NaN or Inf) in one trace" if worst == float("inf") else f"{worst:.2e}"
        print(f"{PROG}: a difference of {what} exceeds --tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def cmd_conventions(args) -> int:
    from . import conventions

    print(conventions.format_table(conventions.collect(args.frameworks or None), markdown=args.markdown))
    return 0


def cmd_export(args) -> int:
    try:
        from . import onnx_export

        onnx_export.check_opset(args.opset)
    except ImportError as e:
        raise UsageError(f"export --format onnx: {str(e).splitlines()[0]}") from e
    out = files.check_output(args.output, "--output")  # before any work
    path = onnx_export.export_weights_file(args.weights, out, fold_bn=args.fold_bn, opset=args.opset)
    bn = "BatchNorm folded into the convs" if args.fold_bn else "BatchNorm as its own nodes"
    print(
        f"wrote {path} ({path.stat().st_size:,} bytes): ONNX opset {args.opset}, {bn}, input "
        f"{onnx_export.INPUT!r} (batch, C, height, width) float32, output {onnx_export.OUTPUT!r}"
    )
    return 0


def cmd_import(args) -> int:
    from . import zoo

    path = zoo.import_file(args.zoo, args.checkpoint, args.arch, args.output)
    print(f"imported {zoo.describe(path)}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from . import data, images
    from . import weights as canonical

    recorded = canonical.read_metadata(args.weights)  # validated before anything is built
    spec = recorded.arch
    preprocess = recorded.preprocess
    if preprocess is None:
        preprocess = data.preprocessing(96)
        print(
            f"{PROG}: note: {args.weights} records no preprocessing (saved by an older version); "
            f"preparing images as the chapter trains: grey, 96x96",
            file=sys.stderr,
        )
    x = images.load_batch(args.images, preprocess, spec)  # every file read before a model is built
    backend = _backend(args.backend)
    device = _device(backend, args.device)
    _check_memory(backend, spec, (min(len(x), args.batch_size), *x.shape[1:]), args, training=False)
    model = backend.build(spec, device=device, eager=args.eager)
    backend.load_weights(model, args.weights)
    # weights from a file: every layer's output checked on the first batch, as evaluate does
    backend.named_outputs(model, x[: args.batch_size], training=False)
    logits = [backend.forward(model, x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    names = images.class_names(recorded.classes, spec)
    for path, best in zip(args.images, images.top_k(np.concatenate(logits), names, args.top)):
        print(path)
        for rank, (index, name, prob) in enumerate(best, 1):
            print(f"  {rank}. {prob:6.2%}  {name} ({index})")
    return 0


def cmd_check(args) -> int:
    from .lab import grade, report

    if args.json is not None:
        files.check_output(args.json, "results file")
    results = grade.check_file(
        args.submission, args.exercise, args.framework, time_limit=args.time_limit, quiet=True, points=args.points
    )
    print("\n\n".join(r.report() for r in results))
    if args.json is not None:
        output = results[0].output if results and results[0].output else ""
        report.write_gradescope(args.json, results, output=output)
    return 0 if all(r.passed for r in results) else 1


def _max_memory(p):
    p.add_argument(
        "--max-memory",
        type=_positive_float,
        metavar="GIB",
        help="refuse networks and inputs whose memory, estimated from the spec "
        "before anything is allocated, exceeds this (default: this machine's RAM)",
    )


def _eager(p):
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--eager",
        action="store_const",
        const=True,
        help="run op by op, without the backend's compiled step (tf.function, hybridize, "
        "mindspore.jit): easier to step through, and slower, except MindSpore on a CPU",
    )
    mode.add_argument(
        "--compiled",
        dest="eager",
        action="store_const",
        const=False,
        help="the backend's compiled step (default: whichever mode trains faster on the device; "
        "compiled everywhere but MindSpore on a CPU)",
    )


def _backend_option(p):
    # inference-only runtimes too: they refuse training (train, trace) with a message of their own
    p.add_argument("--backend", required=True, choices=list(frameworks.BACKEND_NAMES), help="the framework to run")


def _device_option(p):
    p.add_argument("--device", help="e.g. cpu, cuda:0 (default: the first accelerator, else cpu)")


def _model_options(p, arch_default=None):
    _backend_option(p)
    _device_option(p)
    p.add_argument("--arch", choices=list(ARCHS), default=arch_default, help="architecture from the spec table")
    p.add_argument("--width", type=_positive_int, help="stem channels (the chapter: 64)")


def _add_backends(sub):
    p = sub.add_parser("backends", help="each backend: installed?, framework version, devices")
    p.set_defaults(func=cmd_backends)


def _add_summary(sub):
    p = sub.add_parser("summary", help="the chapter's per-layer shape table, parameters and MACs")
    _model_options(p, "d2l-resnet18")
    p.add_argument(
        "--input", type=_input_shape, metavar="N,C,H,W", help="input shape (default: 1,C,224,224 as in the chapter)"
    )
    _max_memory(p)
    p.set_defaults(func=cmd_summary)


def _add_train(sub):
    from .train import PRESETS

    p = sub.add_parser("train", help="train and evaluate (d2l's train_ch6), with checkpoints and a plot")
    _model_options(p)
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="chapter (the default): the chapter's recipe, full data at 96x96, 10 epochs "
        "(for a GPU: about two hours with torch on a 2-core CPU); quick: the bundled "
        "2,000/500 subset at 32x32, 12 epochs (minutes on a CPU); fast: full data, width 32 "
        "at 40x40, 5 epochs of one-cycle Nesterov SGD with weight decay, label smoothing and "
        "flips, for 0.92 test accuracy within about 5 minutes of training on a 2-core CPU",
    )
    p.add_argument("--epochs", type=_epochs, help=f"(default: the preset's; at most {validate.MAX_EPOCHS:,})")
    p.add_argument("--lr", type=_learning_rate, help="SGD learning rate, a schedule's peak (default: the preset's)")
    p.add_argument("--batch-size", type=_positive_int, help="(default: the preset's)")
    p.add_argument("--resize", type=_nonneg_int, help="image side (0: keep 28)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="initial weights and batch order")
    p.add_argument(
        "--momentum", type=_optimizer_option("momentum"), help="SGD momentum in [0, 1) (default: the preset's)"
    )
    p.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum (needs --momentum above 0; default: the preset's)",
    )
    p.add_argument(
        "--weight-decay",
        type=_optimizer_option("weight_decay"),
        help="L2 weight decay on every trainable tensor (default: the preset's)",
    )
    p.add_argument(
        "--label-smoothing", type=_optimizer_option("label_smoothing"), help="in [0, 1) (default: the preset's)"
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "one-cycle", "cosine"],
        help="learning rate per step, --lr its peak (default: the preset's)",
    )
    p.add_argument(
        "--augment",
        type=_augment,
        metavar="SPEC",
        help="none, flip, cropP (pad P pixels, crop back) or flip+cropP (default: the preset's)",
    )
    p.add_argument(
        "--subset",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the bundled 2,000/500 subset instead of the full data",
    )
    p.add_argument("--data-dir", type=_path, help="folder with the four Fashion-MNIST files")
    p.add_argument("--limit", type=_positive_int, help="only the first N train and N test images")
    p.add_argument("--out", type=_path, help="run directory (default runs/BACKEND-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=_positive_int,
        metavar="N",
        help="data-parallel training (torch): start N local processes, one per GPU (NCCL) or "
        "on the CPU (Gloo), each training on its shard of every global batch; --batch-size "
        "and --lr keep their one-process meaning. For several machines, start the command "
        "with torchrun instead (see the README)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="with several processes: BatchNorm statistics over the global batch "
        "(SyncBatchNorm), so the run is the one-process run; without it each process "
        "normalises over its own shard, as the textbook's multi-GPU code does",
    )
    p.add_argument(
        "--dist-timeout",
        type=_timeout,
        default=300,
        metavar="SECONDS",
        help="with several processes: how long one waits for the others before it gives up with an error (default 300)",
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bf16"],
        default="float32",
        help="bf16: mixed precision (autocast to bfloat16, float32 weights), torch only",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format for the convolutions, torch only (default: on for CUDA)",
    )
    _eager(p)
    _max_memory(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test accuracy of saved weights, from any backend, on any backend")
    _backend_option(p)
    _device_option(p)
    p.add_argument("--weights", required=True, type=_path, help="a .safetensors file saved by resnet-multi")
    p.add_argument("--resize", type=_nonneg_int, help="image side, 0 for 28 (default: the one recorded in the weights)")
    p.add_argument(
        "--subset",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the bundled 500 test images (default: the data the weights were trained on)",
    )
    p.add_argument("--data-dir", type=_path, help="folder with the four Fashion-MNIST files")
    p.add_argument("--limit", type=_positive_int, help="only the first N test images")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (default 256)")
    _eager(p)
    _max_memory(p)
    p.set_defaults(func=cmd_evaluate)


def _add_bench(sub):
    from .train import PRESETS

    p = sub.add_parser(
        "bench", help="training and inference speed, next to the chapter's own code in the same framework"
    )
    _model_options(p, "d2l-resnet18")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="take size, batch size and width (fast: 32) from a train preset (default: quick on a CPU, "
        "chapter on a GPU)",
    )
    p.add_argument("--size", type=_positive_int, help="image side (default: the preset's resize)")
    p.add_argument("--batch-size", type=_positive_int, help="(default: the preset's)")
    p.add_argument("--steps", type=_positive_int, default=10, help="timed steps per model and phase")
    p.add_argument("--warmup", type=_nonneg_int, default=2, help="untimed steps after the first")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="initial weights and batches")
    p.add_argument("--no-textbook", action="store_true", help="only the package's model")
    p.add_argument("--json", type=_path, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _eager(p)
    _max_memory(p)
    p.set_defaults(func=cmd_bench)


def _add_trace(sub):
    p = sub.add_parser(
        "trace",
        help="record loss, logits, stage outputs, gradient norms and BN statistics "
        "of the first training steps, for resnet-multi compare",
    )
    _model_options(p)
    p.add_argument(
        "--weights",
        type=_path,
        help="start from these canonical weights (default: the spec's initial weights for --seed)",
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="initial weights (without --weights) and batch order")
    p.add_argument("--steps", type=_positive_int, default=10, help="training steps to trace (default 10)")
    p.add_argument("--lr", type=_learning_rate, help="(default: the quick preset's, 0.05)")
    p.add_argument("--batch-size", type=_positive_int, help="(default: the quick preset's, 256)")
    p.add_argument("--resize", type=_nonneg_int, help="image side, 0: keep 28 (default: the quick preset's, 32)")
    p.add_argument(
        "--subset",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the bundled 2,000/500 subset (the default unless --data-dir)",
    )
    p.add_argument("--data-dir", type=_path, help="folder with the four Fashion-MNIST files")
    p.add_argument("--limit", type=_positive_int, help="only the first N train images")
    p.add_argument(
        "--activation-images",
        type=_nonneg_int,
        default=8,
        help="record each stage's output for the batch's first N images (default 8; 0: none)",
    )
    p.add_argument("--full-grads", action="store_true", help="also record step 0's full gradients")
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads for the framework: sets OMP_NUM_THREADS and the like before it "
        "starts (NumPy's BLAS has started already: for it, set them in the environment). "
        "Results can depend on the count; the trace records it",
    )
    p.add_argument(
        "--perturb",
        type=_perturb,
        help="control run: multiply the starting weights by 1 + X * N(0, 1) first; with the "
        "numpy backend and X = 1e-7 (float32's rounding), compare then shows how fast "
        "rounding-sized differences alone grow",
    )
    p.add_argument(
        "--inference",
        action="store_true",
        help="run the batches through the network in inference mode, without training it: logits and "
        "stage outputs with BatchNorm's running statistics, to compare with other inference traces "
        "(always so for an inference-only backend such as onnxruntime)",
    )
    p.add_argument("--out", type=_path, help="trace file (default traces/BACKEND.safetensors)")
    _eager(p)
    _max_memory(p)
    p.set_defaults(func=cmd_trace)


def _add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="compare traces from any backends step by step (imports no framework)",
        description="Per step, each trace's relative difference from the reference: max|a - r| / max|r| "
        "for logits, stage outputs (the batch's first images, training mode) and BN "
        "statistics after the step; |a - r| / |r| for the loss and each gradient norm (the "
        "worst tensor shown; gradients that are zero in exact arithmetic, conv biases "
        "feeding a BN, on the largest gradient's scale). Then where each trace, and each "
        "pair, first differs by more than --threshold.",
    )
    p.add_argument("traces", nargs="+", type=_path, help="trace files written by resnet-multi trace")
    p.add_argument("--reference", help="backend to compare against (default numpy if traced, else the first)")
    p.add_argument("--steps", type=_positive_int, help="compare only the first N steps")
    p.add_argument(
        "--threshold",
        type=_positive_float,
        default=1e-3,
        help="report the first step and quantity above this relative difference (default 1e-3)",
    )
    p.add_argument(
        "--tolerance", type=_positive_float, help="exit with status 1 if any relative difference exceeds this"
    )
    p.add_argument("--plot", type=_path, help="plot file (default compare.png beside the first trace)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.set_defaults(func=cmd_compare)


def _add_conventions(sub):
    p = sub.add_parser(
        "conventions", help="what each framework does differently from the spec, and how its module translates it"
    )
    p.add_argument(
        "frameworks",
        nargs="*",
        type=_convention_framework,
        metavar="FRAMEWORK",
        help=f"only these, next to the spec's (one of {', '.join(frameworks.BACKEND_NAMES)}; default all)",
    )
    p.add_argument("--markdown", action="store_true", help="a markdown table")
    p.set_defaults(func=cmd_conventions)


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="write saved weights as an ONNX inference model (onnx package; run it with onnxruntime)",
        description="The network recorded in a weights file, in inference mode, as one ONNX file: "
        "input 'images' (batch, C, height, width) float32 NCHW, batch and image side free; output "
        "'logits'. The architecture and preprocessing go into its metadata_props.",
    )
    p.add_argument("--weights", required=True, type=_path, help="a .safetensors file saved by resnet-multi")
    p.add_argument("--format", required=True, choices=["onnx"], help="the file format (onnx)")
    p.add_argument("--output", required=True, type=_path, help="the file to write, e.g. model.onnx")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold each BatchNorm that follows a conv into that conv (default: BatchNorm nodes of their own)",
    )
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    p.set_defaults(func=cmd_export)


def _add_import(sub):
    from .zoo import ZOOS

    p = sub.add_parser(
        "import",
        help="convert a model zoo's pretrained ResNet (torchvision, timm, Keras, Paddle) into a weights file",
        description="Reads the checkpoint as its zoo saves it (never unpickling arbitrary objects) and "
        "writes canonical weights with the zoo's class names and preprocessing, for predict and every backend.",
    )
    p.add_argument("--from", dest="zoo", required=True, choices=ZOOS, help="the zoo the checkpoint comes from")
    p.add_argument("checkpoint", type=_path, help="the zoo's file (.pth, .safetensors, .weights.h5, .keras, .pdparams)")
    p.add_argument(
        "--arch", required=True, choices=list(ARCHS), help="its architecture (Keras' ResNet50: keras-resnet50)"
    )
    p.add_argument("--output", required=True, type=_path, help="the .safetensors file to write")
    p.set_defaults(func=cmd_import)


def _add_predict(sub):
    p = sub.add_parser("predict", help="the most likely classes of images, with the weights' own preprocessing")
    _backend_option(p)
    _device_option(p)
    p.add_argument("--weights", required=True, type=_path, help="a .safetensors file saved or imported by resnet-multi")
    p.add_argument("images", nargs="+", type=_path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass (default 16)")
    _eager(p)
    _max_memory(p)
    p.set_defaults(func=cmd_predict)


def _add_check(sub):
    from .lab.exercises import EXERCISES

    p = sub.add_parser(
        "check",
        help="check a student's ResNet (a .py file or notebook) against the NumPy reference, "
        "naming the known mistake behind each difference",
        description="Runs the submission's code with your rights: run it inside a sandbox. "
        "Exit status 0 only when every test of every exercise passes.",
    )
    p.add_argument("submission", type=_path, help="a .py file or .ipynb notebook defining the chapter's classes")
    p.add_argument(
        "--exercise",
        action="append",
        choices=list(EXERCISES),
        help="the exercise to check (repeatable; default: every exercise whose names the file defines)",
    )
    p.add_argument("--framework", choices=list(frameworks.NAMES), help="(default: found from the submission)")
    p.add_argument("--json", type=_path, metavar="PATH", help="also write Gradescope's results.json")
    p.add_argument(
        "--time-limit", type=_positive_float, default=60.0, metavar="SECONDS", help="per call into the submission"
    )
    p.add_argument("--points", type=_positive_float, help="points per exercise (default: one per test)")
    p.set_defaults(func=cmd_check)


COMMANDS = (
    _add_backends,
    _add_summary,
    _add_train,
    _add_evaluate,
    _add_bench,
    _add_trace,
    _add_compare,
    _add_conventions,
    _add_check,
    _add_export,
    _add_import,
    _add_predict,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The Residual Networks chapter of Dive into Deep Learning on six frameworks and a NumPy reference.",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM raises Terminated in the main thread while a command runs (the previous
    handler comes back after), so that it is reported as Ctrl-C is: where the run stands."""

    def stop(signum, frame):
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    with _stop_on_sigterm():
        return _main(argv)


def _main(argv=None) -> int:
    from .data import DataError
    from .trace import TraceError
    from .train import RunError, standing
    from .weights import WeightsError

    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, before or after the command
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.debug = debug
        args.argv = (["--debug"] if debug else []) + argv  # what --nproc's processes run
        return args.func(args)
    except UsageError as e:
        if debug:
            raise
        print(e if str(e).startswith(PROG) else f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, WeightsError, RunError, TraceError, NonFiniteError, OSError) as e:  # a run that cannot go on
        if debug:
            raise
        print(f"{PROG}: error: {e.for_command_line if isinstance(e, DataError) else e}", file=sys.stderr)
        return 1
    except InputError as e:  # the spec's and the seam's checks of what was asked
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        if debug:
            raise
        where = f"; {standing(_run_directory(args))}" if getattr(args, "command", None) == "train" else ""
        if isinstance(e, Terminated):
            print(f"{PROG}: terminated by {signal.Signals(e.signal).name}{where}", file=sys.stderr)
            return 128 + e.signal
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, and the way to see more
        if debug:
            raise
        print(
            f"{PROG}: internal error: {type(e).__name__}: {e} (run again with --debug for the "
            f"traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
