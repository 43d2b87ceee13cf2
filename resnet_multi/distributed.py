"""Data-parallel training of the chapter's experiment: PyTorch's DistributedDataParallel.

    resnet-multi train --backend torch --preset quick --nproc 2 [--sync-bn]
    torchrun --nproc-per-node 8 -m resnet_multi.cli train --backend torch --preset chapter
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id run1 -m resnet_multi.cli train --backend torch --preset chapter --out /shared/run

Every process draws the same seeded global batch order (:func:`resnet_multi.data.iterate_batches`)
and trains on its contiguous shard of each global batch; DDP averages the gradients.
The global batch size and learning rate mean what they mean in one process: each rank
scales its mean loss by ``shard / (batch / processes)`` before the backward pass, so
DDP's average is the gradient of the mean loss over the whole global batch even where
the last batch does not split evenly. The step's loss and logits are gathered, so the
shared loop (:func:`resnet_multi.train.fit`) counts the global batch's loss, accuracy
and examples; test batches are split and gathered the same way.

BatchNorm: without ``sync_bn`` each rank normalises over its own shard and DDP keeps
rank 0's running statistics (by default it broadcasts them before every forward pass), as the
textbook's multi-GPU code (``nn.DataParallel``, which keeps device 0's) does: the run
is then not the one-process run. With ``sync_bn`` the batch statistics are those of
the global batch and the run is the one-process run up to float32 rounding. On GPUs
that is :class:`torch.nn.SyncBatchNorm`; PyTorch's is GPU-only, so on the CPU (Gloo)
:class:`CPUSyncBatchNorm` computes the same statistics with two differentiable all-reduces.

Only rank 0 reads and writes the run directory (:func:`resnet_multi.train.fit` asks
:meth:`ProcessGroup.share` for rank 0's opening state, sent to the others as JSON bytes,
never pickled, and lets only the writer write), prints, and shows the progress bar. A
process that fails ends the others: under the launcher the agent stops them; a peer that
is gone or silent for ``timeout`` seconds turns into a :class:`PeerLost` error in the
others; a rank whose launcher dies, even by SIGKILL, dies with it. The last complete
checkpoint stays. ``--nproc``'s launcher listens on no socket, and its processes only on
127.0.0.1 (:func:`launch`).

BatchNorm without ``sync_bn`` over several processes gives another run than one process
does: the checkpoint's recipe records it (``bn_statistics``), so a resume cannot switch.

The command line imports this module only for a data-parallel run of the torch backend.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import uuid
from datetime import timedelta

import numpy as np

from . import validate
from .backend import Backend
from .errors import InputError, Terminated
from .torch import F, TorchBackend, nn, torch
from .train import RunError, bn_statistics

dist = torch.distributed

# What torchrun (torch.distributed.run) sets in each process it starts.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
DEFAULT_TIMEOUT = 300  # seconds a process waits for the others in one collective


class PeerLost(RunError):
    """Another process of the run failed, was killed, or stopped answering."""


class WorkerFailed(RunError):
    """A process started by :func:`launch` exited with an error."""

    def __init__(self, message: str, exitcode: int):
        super().__init__(message)
        self.exitcode = exitcode


def launched() -> bool:
    """Whether this process was started by torchrun (or :func:`launch`) as one rank."""
    return all(k in os.environ for k in LAUNCH_ENV)


def check_request(nproc: int | None) -> None:
    """What the command line asks for is something this module can run."""
    if launched():
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        if nproc is not None and nproc != local:
            raise InputError(
                f"--nproc {nproc} under a launcher that started {local} process(es) on this "
                f"node; drop --nproc (torchrun's --nproc-per-node says how many)"
            )
    elif nproc is None:
        raise InputError(
            "--sync-bn synchronises BatchNorm across processes: add --nproc N, or start the command with torchrun"
        )


def choose_device(device: str | None, local_rank: int, local_world: int) -> str:
    """Each process's device: its local rank's GPU where there are GPUs (or ``cuda`` is
    asked for), else the CPU. One GPU per process: a fixed ``cuda:K`` is refused."""
    gpus = torch.cuda.device_count()
    if device is None:
        device = "cuda" if gpus else "cpu"
    if device == "cpu":
        return "cpu"
    if device != "cuda":
        raise InputError(
            f"with several processes each one takes the GPU of its local rank, so --device "
            f"{device} cannot be shared; pass --device cuda (or cpu)"
        )
    if gpus == 0:
        raise InputError("--device cuda: PyTorch sees no GPU here (a CPU build, or no driver); use --device cpu")
    if local_world > gpus:
        raise InputError(
            f"{local_world} processes on this machine need {local_world} GPUs, and it has "
            f"{gpus}; use --nproc {gpus}, or --device cpu"
        )
    return f"cuda:{local_rank}"


# ---- the launcher: --nproc N ------------------------------------------------------------
# Set by launch() in every process it starts: its own process id (a rank whose launcher is
# already gone exits), and that the run is local, so its sockets listen on loopback only.
LAUNCHER_PID = "RESNET_MULTI_LAUNCHER_PID"


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), for Gloo and NCCL."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    return next((name for name in names if name.startswith("lo")), None)


def launch(nproc: int, argv: list[str]) -> int:
    """Start ``nproc`` local processes running ``python -m resnet_multi.cli ARGV`` with
    torchrun's parser and elastic agent; wait for them. A failed process stops the others:
    WorkerFailed names it.

    Unlike ``torchrun --standalone``, nothing listens beyond this machine: the agents meet
    through a file in a private temporary directory (the c10d rendezvous's FileStore, not a
    TCPStore, which listens on every interface), torch's shared TCP store is off, and the
    processes' own store (:func:`_loopback_store`) and Gloo/NCCL sockets use 127.0.0.1."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    meeting = tempfile.mkdtemp(prefix="resnet-multi-rendezvous-")  # 0700: this user's alone
    args = get_args_parser().parse_args(
        [
            f"--nproc-per-node={nproc}",
            "--max-restarts=0",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={os.path.join(meeting, 'store')}",
            "--rdzv-conf=store_type=file",
            "--local-addr=127.0.0.1",  # the processes' MASTER_ADDR
            f"--rdzv-id={uuid.uuid4()}",
            "-m",
            "resnet_multi.cli",
        ]
    )
    args.training_script_args = list(argv)  # not through torchrun's parser: --nproc abbreviates its own
    config, cmd, cmd_args = config_from_args(args)
    loopback = _loopback_interface()
    settings = {
        # Split the CPU's cores between the processes (torchrun would give each one thread).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc)),
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # no agent store on every interface
        LAUNCHER_PID: str(os.getpid()),
        **({"GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback} if loopback else {}),
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)  # the agent reads them here; the processes inherit them
    try:
        elastic_launch(config, cmd)(*cmd_args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = (
            f"was killed by signal {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with status {failure.exitcode}"
        )
        raise WorkerFailed(
            f"process {rank} of {nproc} {how} (its own error is above); the others were stopped",
            failure.exitcode if failure.exitcode > 0 else 1,
        ) from None
    except SignalException as e:  # Ctrl-C or SIGTERM reached the agent, which stopped the processes
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise Terminated(int(e.sigval)) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(meeting, ignore_errors=True)
    return 0


def _die_with_launcher() -> None:
    """Make this rank end when the process that started it ends, even by SIGKILL (Linux:
    prctl PR_SET_PDEATHSIG), so that no rank is left running alone; a rank whose launcher
    is already gone exits at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is not None and os.getppid() != int(launcher):
        print(f"rank {os.environ.get('RANK')}: its launcher (process {launcher}) is gone; exiting", file=sys.stderr)
        os._exit(1)


def _loopback_store(rank: int, world_size: int, timeout: float):
    """The processes' key-value store for a run :func:`launch` started, on 127.0.0.1 only:
    rank 0 binds the socket itself (a TCPStore binds every interface) and hands it over."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    wait = timedelta(seconds=timeout)
    if rank != 0:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=wait)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    return dist.TCPStore(
        host, port, world_size, is_master=True, timeout=wait, master_listen_fd=sock.detach(), wait_for_workers=False
    )


# ---- one rank ------------------------------------------------------------------------------
class ProcessGroup:
    """This process's place in the run: rank, world size, device, and the collectives
    that :func:`resnet_multi.train.fit` and :class:`DataParallelTorch` use."""

    def __init__(self, *, device: str | None, sync_bn: bool, timeout: float = DEFAULT_TIMEOUT):
        _die_with_launcher()
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.device = choose_device(device, self.local_rank, int(os.environ["LOCAL_WORLD_SIZE"]))
        self.comm = "nccl" if self.device.startswith("cuda") else "gloo"
        self.sync_bn = bool(sync_bn)
        self.timeout = validate.check_timeout(timeout, "the timeout for the other processes")
        kwargs = {}
        if self.comm == "nccl":
            torch.cuda.set_device(self.device)
            kwargs["device_id"] = torch.device(self.device)
        try:
            if LAUNCHER_PID in os.environ:  # started by launch(): everything on loopback
                kwargs.update(store=_loopback_store(self.rank, self.world_size, self.timeout))
                kwargs.update(rank=self.rank, world_size=self.world_size)
            dist.init_process_group(self.comm, timeout=timedelta(seconds=self.timeout), **kwargs)
        except (RuntimeError, OSError, dist.DistError) as e:
            raise PeerLost(
                f"rank {self.rank} could not join the other {self.world_size - 1} process(es) "
                f"within {timeout:g} s ({_first_line(e)}); check that every node was started "
                f"with the same --rdzv-endpoint and --nnodes"
            ) from None

    @property
    def writes(self) -> bool:
        """Rank 0 alone reads and writes the run directory and prints."""
        return self.rank == 0

    def describe(self, device: str) -> str:
        """Where the chapter's last line says the examples/sec were measured."""
        return f"{self.world_size} processes ({self.comm}), rank 0 on {device}"

    def meta(self) -> dict:
        return {"processes": self.world_size, "comm": self.comm, "sync_bn": self.sync_bn}

    @property
    def bn_statistics(self) -> str | None:
        """What BatchNorm normalises over (:func:`resnet_multi.train.bn_statistics`)."""
        return bn_statistics(self.world_size, self.sync_bn)

    def backend(self) -> DataParallelTorch:
        return DataParallelTorch(self)

    # -- sharding ------------------------------------------------------------------------
    def sizes(self, n: int) -> list[int]:
        """Shard sizes of a global batch of ``n``: the first ``n % world`` ranks one more."""
        q, r = divmod(n, self.world_size)
        return [q + (k < r) for k in range(self.world_size)]

    def shard(self, n: int) -> slice:
        sizes = self.sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    # -- collectives -----------------------------------------------------------------------
    def gather(self, rows, n: int):
        """Every rank's ``rows`` (its shard's, first dimension) in rank order: ``n`` rows."""
        sizes = self.sizes(n)
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        with self.collective("gathering the step's outputs"):
            dist.all_gather(parts, padded)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)])

    def share(self, make):
        """``make()`` run on rank 0, its result (plain JSON data) on every rank; if it
        raises, rank 0 raises that and every other rank a RunError with its message. Sent
        as JSON bytes in a tensor: no pickle, so no rank runs code another one sent."""
        result, error = None, None
        if self.writes:
            try:
                result = make()
                message = {"ok": result}
            except Exception as e:  # every rank raises, so none waits for the others
                error, message = e, {"error": f"{type(e).__name__}: {e}"}
            payload = torch.frombuffer(bytearray(json.dumps(message, allow_nan=False).encode()), dtype=torch.uint8)
            size = torch.tensor([len(payload)], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        device = self.device if self.comm == "nccl" else "cpu"
        with self.collective("sharing rank 0's run state"):
            size = size.to(device)
            dist.broadcast(size, src=0)
            buffer = (
                payload.to(device) if self.writes else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
            )
            dist.broadcast(buffer, src=0)
        if self.writes:
            if error is not None:
                raise error
            return result
        message = json.loads(bytes(buffer.cpu().numpy()))
        if "error" in message:
            raise RunError(f"rank {self.rank} stops: rank 0 could not open the run (its error: {message['error']})")
        return message["ok"]

    def collective(self, what: str):
        return _Collective(self, what)

    def abandon(self) -> None:
        """Leave after a failure, without waiting for the others: a process that exits with
        its process group still open is aborted by the C++ runtime instead."""
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # leaving anyway; the failure that brought us here is the one to report
                pass

    def finish(self) -> None:
        """Wait for every rank (rank 0 writes the last checkpoint meanwhile), then leave."""
        with self.collective("finishing"):
            dist.barrier()
        dist.destroy_process_group()


class _Collective:
    """A collective (or a step holding DDP's) whose failure means a peer is gone."""

    def __init__(self, group: ProcessGroup, what: str):
        self.group, self.what = group, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is not None and issubclass(kind, (dist.DistError, RuntimeError)) and _is_peer_failure(error):
            g = self.group
            raise PeerLost(
                f"rank {g.rank} of {g.world_size} lost the others while {self.what} "
                f"({_first_line(error)}): another process failed (see its error) or did not "
                f"answer within {g.timeout:g} s; the last complete checkpoint in the run "
                f"directory is kept, and --resume continues from it"
            ) from None
        return False


def _is_peer_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- the shards must each be trainable -------------------------------------------------------
def check_shards(spec, n_train: int, batch_size: int, resize: int | None, world_size: int) -> None:
    """Before any training: every rank's shard of every global batch, the last partial
    one included, is one BatchNorm can train on alone (more than one value per channel),
    which ``ResNet.forward`` checks per process, with or without ``--sync-bn``."""
    from . import shapes

    side = resize or 28
    gh, gw = shapes.final_grid(spec, side, side)
    need = shapes.bn_min_batch(gh, gw)
    batches = {min(batch_size, n_train)} | ({n_train % batch_size} - {0})
    smallest = min(batches)
    if smallest // world_size >= need:
        return
    better = need * world_size
    last = "" if smallest == min(batch_size, n_train) else f" (the last batch holds {smallest})"
    raise InputError(
        f"a global batch of {smallest}{last} split over {world_size} processes leaves a shard of "
        f"{smallest // world_size} image(s), and each process's BatchNorm needs at least {need} "
        f"({spec.name}'s last stage sees {gh}x{gw} at {side}x{side}); use fewer processes or a batch "
        f"size that leaves every shard {need} or more (at least {better}, and a last batch of at least "
        f"{better} or none)"
    )


# ---- BatchNorm over the global batch ---------------------------------------------------------
class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch for CPU tensors, which :class:`torch.nn.SyncBatchNorm`
    refuses (PyTorch 2.13: its kernels are GPU-only, and DDP rejects it in a CPU module).

    The statistics are SyncBatchNorm's: the mean and biased variance over every process's
    images normalise the batch, and the running variance takes the unbiased variance over
    the global count, ``var * n / (n - 1)`` (the spec's convention). They come from two
    all-reduces (the sum, then the squared deviations from the global mean: two passes,
    in float64, so no cancellation) through a differentiable all-reduce, whose backward
    sums every rank's gradient of the statistics, as SyncBatchNorm's backward does. In
    inference, or outside a process group, it is ``BatchNorm2d``."""

    def forward(self, x):
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        per_channel = (1, -1, 1, 1)
        x64 = x.double()
        count = x64.new_tensor([x.numel() // x.shape[1]])
        total = all_reduce(torch.cat([x64.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x64 - mean.view(per_channel)
        var = all_reduce(centred.square().sum((0, 2, 3))) / n
        y = (centred * torch.rsqrt(var + self.eps).view(per_channel)).to(x.dtype)
        with torch.no_grad():
            m = self.momentum  # the spec's: running = (1 - m) * running + m * batch
            self.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_((var * n / (n - 1)).to(x.dtype), alpha=m)
            self.num_batches_tracked += 1
        return y * self.weight.view(per_channel) + self.bias.view(per_channel)


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient, the sum of the ranks' gradients
    (what the deprecated ``torch.distributed.nn.functional.all_reduce`` computes)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm layer made one over the global batch: PyTorch's SyncBatchNorm on
    GPUs; on the CPU, :class:`CPUSyncBatchNorm`."""
    if device != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if type(layer) is nn.BatchNorm2d:
            layer.__class__ = CPUSyncBatchNorm  # a subclass adding no state: only forward differs
    return module


# ---- the backend: the torch adapter, data-parallel --------------------------------------------
class DataParallelTorch(TorchBackend):
    """The torch backend with each training step and test batch split over the process
    group: the seam's NumPy batches are global, every rank takes its shard, DDP averages
    the gradients, and the step returns the global batch's loss and logits, so the shared
    loop's metrics are the global ones on every rank. The checkpoint's backend is
    ``torch``, so a run can be resumed on one process, or on another number of them."""

    precisions = ("float32",)

    def __init__(self, group: ProcessGroup):
        self.group = group

    # The loop's step is the seam's default, sgd_step on the global NumPy batch, whose
    # loss and logits (below) are the global ones: not the one-process torch step, with
    # its batches and metrics on the device.
    def configure_training(self, model, *, precision="float32", channels_last=None, device_batches=None):
        if precision != "float32" or channels_last or device_batches:
            raise InputError(
                "--precision bf16, --channels-last and device batches are for one process so "
                "far; a data-parallel run trains in float32 on NumPy batches"
            )
        Backend.configure_training(self, model)

    training_batches = Backend.training_batches
    new_metrics = Backend.new_metrics
    train_step = Backend.train_step

    def configure_optimizer(self, model, optimizer=None):
        # _sgd_step below is plain SGD; a schedule and augmentation need nothing of it
        if optimizer is not None and not optimizer.plain:
            raise InputError(
                "momentum, weight decay and label smoothing are for one process so far; a data-parallel "
                "run trains with plain SGD (a --schedule and --augment work with it)"
            )
        super().configure_optimizer(model, optimizer)

    def _build(self, spec, device):
        module = super()._build(spec, device)
        return convert_sync_batchnorm(module, device) if self.group.sync_bn else module

    def _replicated(self, model):
        """DDP around the module, built at the first step: its constructor broadcasts
        rank 0's parameters and statistics, so the replicas start from rank 0's weights,
        the spec's initial ones or those a resume loaded there."""
        ddp = model.cache.get("ddp")
        if ddp is None:
            index = [torch.device(model.device).index] if model.device.startswith("cuda") else None
            with self.group.collective("replicating the model"):
                ddp = model.cache["ddp"] = nn.parallel.DistributedDataParallel(model.module, device_ids=index)
        return ddp

    def _sgd_step(self, model, x, y, lr):
        ddp = self._replicated(model)
        module = model.module.train(True)
        optimizer = model.cache.get("sgd")
        if optimizer is None or optimizer.param_groups[0]["lr"] != lr:
            optimizer = model.cache["sgd"] = torch.optim.SGD(module.parameters(), lr=lr)
        part, n = self.group.shard(len(x)), len(x)
        mine = part.stop - part.start
        with self.group.collective("training"):
            optimizer.zero_grad(set_to_none=True)
            logits = ddp(self._tensor(model, x[part]))
            loss = F.cross_entropy(logits, self._tensor(model, y[part]))
            # DDP averages over ranks; weighting by the shard's share of the global batch
            # makes that the gradient of the global batch's mean loss (1 for even shards).
            weight = mine * self.group.world_size / n
            (loss if weight == 1 else loss * weight).backward()
            optimizer.step()
            rows = torch.cat([logits.detach(), loss.detach().expand(mine, 1)], dim=1)
            gathered = self.group.gather(rows, n).double().cpu().numpy()
        model.cache["synced"] = False
        return float(gathered[:, -1].mean()), gathered[:, :-1].astype(np.float32)

    def _forward(self, model, x, training):
        if training:  # one process's own pass (the loop's steps go through _sgd_step)
            return super()._forward(model, x, training)
        self._replicated(model)
        if not model.cache.get("synced"):
            # Without sync-bn each rank's statistics are its own since the last step; rank 0's
            # (the checkpoint's) are the model's, as DDP would broadcast before the next step.
            with self.group.collective("sharing rank 0's statistics"):
                for buffer in model.module.buffers():
                    dist.broadcast(buffer, src=0)
            model.cache["synced"] = True
        part = self.group.shard(len(x))
        model.module.train(False)
        with torch.no_grad():
            if part.stop > part.start:
                logits = model.module(self._tensor(model, x[part]))
            else:  # fewer test images than processes: this rank only takes part in the gather
                logits = torch.zeros((0, model.spec.num_classes), device=model.device)
            return self.group.gather(logits, len(x)).cpu().numpy()
