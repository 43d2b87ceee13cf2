"""A training run as ``resnet-multi train`` asks for it: checks, then one process or many.

The command line parses its flags into a :class:`TrainRequest` and calls :func:`train`;
everything between (checking what can be checked before any work, the data-parallel
launcher and its ranks, the lines on stderr) is here, so that a program can start the
same run without going through ``argparse``.

In one process :func:`train` checks, builds and calls :func:`resnet_multi.training_loop.fit`. With
``nproc`` it is the launcher: it checks everything rank 0 would, then starts ``nproc``
processes that each run ``argv`` (the same command) and become the ranks of a process
group (as under ``torchrun``); rank 0 alone reads and writes the run directory and prints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import memory
from . import train as training_loop
from .backend import Backend
from .data import canonical_augment, load_dataset
from .errors import InputError
from .optim import Optimizer
from .spec import get_arch

# What torchrun sets in each process it starts (resnet_multi.distributed.LAUNCH_ENV).
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class TrainRequest:
    """What to train, and how: ``settings`` is :func:`resnet_multi.train.recipe`'s."""

    preset: str | None  # None: the chapter's, which is then said on stderr (it is the long run)
    settings: dict
    out: Path
    seed: int = 0
    resume: bool = False
    device: str | None = None  # None: the first accelerator, else cpu
    eager: bool | None = None  # None: the backend's faster mode on the device (Backend.default_eager)
    data_dir: Path | None = None
    limit: int | None = None
    progress: bool = True
    precision: str = "float32"
    channels_last: bool = False
    nproc: int | None = None  # data-parallel processes to start (torch)
    sync_bn: bool = False
    dist_timeout: float | None = None
    argv: tuple[str, ...] = ()  # the command line each started process runs
    memory_limit: int | None = None  # bytes; None: no limit

    @property
    def resize(self) -> int | None:
        return self.settings["resize"] or None  # 0: keep 28x28


def recipe_beyond_sgd(settings: dict) -> tuple[Optimizer, dict[str, str]]:
    """(optimizer, {flag: description}) of the recipe beyond the chapter's plain SGD at a
    constant lr without augmentation; no descriptions for the chapter's."""
    optimizer = Optimizer(
        momentum=settings["momentum"],
        nesterov=settings["nesterov"],
        weight_decay=settings["weight_decay"],
        label_smoothing=settings["label_smoothing"],
    )
    extras = {}
    if optimizer.momentum:
        extras["--momentum"] = f"{'Nesterov ' if optimizer.nesterov else ''}momentum {optimizer.momentum}"
    if optimizer.weight_decay:
        extras["--weight-decay"] = f"weight decay {optimizer.weight_decay}"
    if optimizer.label_smoothing:
        extras["--label-smoothing"] = f"label smoothing {optimizer.label_smoothing}"
    if settings["schedule"] != "constant":
        extras["--schedule"] = f"{settings['schedule']} schedule"
    if canonical_augment(settings["augment"]):
        extras["--augment"] = f"augment {canonical_augment(settings['augment'])}"
    return optimizer, extras


def process_group(request: TrainRequest, backend: Backend):
    """(group, launch_device) for a data-parallel run. In a rank: the process group, joined
    (initialised here), and None. In the process that ``nproc`` makes the launcher: None and
    rank 0's device. In one process: (None, None)."""
    launched = all(k in os.environ for k in LAUNCH_ENV)
    if request.nproc is None and not request.sync_bn and not launched:
        return None, None
    if backend.name != "torch":
        raise InputError(
            f"data-parallel training (--nproc, --sync-bn, torchrun) runs on the torch backend "
            f"only (DistributedDataParallel), not {backend.name}; use --backend torch"
        )
    from . import distributed

    distributed.check_request(request.nproc)
    if not launched:
        return None, distributed.choose_device(request.device, 0, request.nproc)  # before starting anything
    return distributed.ProcessGroup(device=request.device, sync_bn=request.sync_bn, timeout=request.dist_timeout), None


def train(request: TrainRequest, backend: Backend, *, prog: str = "resnet-multi") -> int:
    """Run ``request`` on ``backend``; the exit status (a data-parallel worker's, if one failed)."""
    group, launch_device = process_group(request, backend)
    try:
        return _train(request, backend, group, launch_device, prog)
    except BaseException:
        if group:
            group.abandon()  # leave without waiting for the others, which fail in their turn
        raise


def _train(request: TrainRequest, backend: Backend, group, launch_device, prog: str) -> int:
    settings, resize, out = request.settings, request.resize, request.out
    preset = request.preset or "chapter"
    device = group.device if group else launch_device or backend.choose_device(request.device)
    writes = group is None or group.writes  # rank 0 alone reads and writes the run directory, and prints
    if writes:
        training_loop.check_start(out, request.resume)  # fit checks this too; here it fails before any work
    if request.preset is None and writes and not launch_device:  # the default is the long run: say so
        print(
            f"{prog} train: no --preset given, running --preset chapter (full Fashion-MNIST at 96x96, "
            f"10 epochs: for a GPU; --preset quick is the short CPU run)",
            file=sys.stderr,
        )
    spec = get_arch(settings["arch"], **({"width": settings["width"]} if settings["width"] else {}))
    side = resize or 28
    memory.check_memory(
        spec,
        (settings["batch_size"], spec.in_channels, side, side),
        training=True,
        limit_bytes=request.memory_limit,
        itemsize=memory.itemsize(backend.name),
    )
    training = dict(precision=request.precision, channels_last=request.channels_last)
    optimizer, recipe_extras = recipe_beyond_sgd(settings)
    model = None
    if launch_device or group:
        if request.precision != "float32" or request.channels_last:
            raise InputError(
                "--precision bf16 and --channels-last are for one process so far; drop them with --nproc or torchrun"
            )
        if recipe_extras:
            raise InputError(
                f"{', '.join(recipe_extras)} are for one process so far (preset {preset} sets them); "
                f"with --nproc or torchrun train with --preset chapter or quick"
            )
    else:  # built now so that the training options fail before any work (fit sets them again)
        model = backend.build(spec, device=device, seed=request.seed, eager=request.eager)
        backend.configure_training(model, **training)
    dataset = load_dataset(
        subset=settings["subset"],
        data_dir=request.data_dir,
        limit=request.limit,
        instead="--preset quick (or --subset)",
    )
    training_loop.check_run(
        spec, len(dataset.train_images), settings["batch_size"], resize, out if writes else None, backend=backend
    )
    if launch_device or group:
        from . import distributed

        distributed.check_shards(
            spec,
            len(dataset.train_images),
            settings["batch_size"],
            resize,
            group.world_size if group else request.nproc,
        )
    if launch_device and request.resume:  # what fit checks in rank 0, before any process starts
        training_loop.check_resume(
            out,
            backend,
            spec,
            dataset,
            epochs=settings["epochs"],
            recipe=training_loop.run_recipe(
                settings["lr"],
                settings["batch_size"],
                resize,
                request.seed,
                bn_statistics=training_loop.bn_statistics(request.nproc, request.sync_bn),
            ),
        )
    if launch_device:  # every check passed: start the processes, each runs this command
        try:
            return distributed.launch(request.nproc, list(request.argv))
        except distributed.WorkerFailed as e:
            print(f"{prog}: error: {e}; {training_loop.standing(out)}", file=sys.stderr)
            return e.exitcode
    if group:
        backend = group.backend()
        model = backend.build(spec, device=device, seed=request.seed, eager=request.eager)
    if writes:
        print(
            f"training {model.spec.name} (preset {preset}) on {backend.name} "
            f"{backend.framework_version()} ({device}): "
            f"{len(dataset.train_images):,} train / {len(dataset.test_images):,} test images at "
            f"{side}x{side}, {settings['epochs']} epochs, lr {settings['lr']}, "
            f"batch {settings['batch_size']}, seed {request.seed}"
            + "".join(f", {extra}" for extra in recipe_extras.values())
            + f"{'' if request.precision == 'float32' else ', precision ' + request.precision}; writing {out}"
            + (f"; {group.describe(device)}" if group else ""),
            file=sys.stderr,
        )
    meta = {
        "preset": preset,
        "subset": settings["subset"],
        "data_dir": None if request.data_dir is None else str(request.data_dir),
        "limit": request.limit,
        "source": dataset.source,
        **({"parallel": group.meta()} if group else {}),
    }
    history = training_loop.fit(
        backend,
        model,
        dataset,
        epochs=settings["epochs"],
        lr=settings["lr"],
        batch_size=settings["batch_size"],
        resize=resize,
        seed=request.seed,
        out=out,
        resume=request.resume,
        progress=writes and request.progress,
        meta=meta,
        **training,
        **({"processes": group} if group else {}),
        **(
            {"optimizer": optimizer, "schedule": settings["schedule"], "augment": settings["augment"]}
            if recipe_extras
            else {}
        ),
    )
    if group:
        group.finish()
    if writes:
        print(history.summary(group.describe(device) if group else device))
        print(
            f"history {out / training_loop.HISTORY}, plot {out / training_loop.PLOT}, "
            f"weights {out / training_loop.FINAL_WEIGHTS}",
            file=sys.stderr,
        )
    return 0
