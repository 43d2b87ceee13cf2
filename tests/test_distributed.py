"""Data-parallel training (resnet_multi.distributed): two Gloo processes on the CPU
against one process.

With --sync-bn the two processes' run is the one-process run (losses, accuracies and
final weights, running statistics included, within the training-parity tolerance);
without it each process normalises over its own shard and the run differs. A process
that raises, or stops answering, ends the run with an error instead of a hang, the
last complete checkpoint stays, and ``resnet-multi train --nproc 2 --resume`` continues
it to the uninterrupted run's weights, bit for bit.

Tiny: the chapter's ResNet-18 at width 8, 15 images at 32x32, global batch 15 (shards
of 8 and 7), 5 one-step epochs, one thread per process.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="data-parallel training needs torch (the torch tox environment)")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch build has no torch.distributed with Gloo", allow_module_level=True)

from distributed_worker import BATCH, EPOCHS, LR, N_IMAGES, SIZE, WIDTH, tiny_dataset  # noqa: E402
from helpers import random_weights, rel_err  # noqa: E402
from test_train import PARITY_TOL  # noqa: E402

from resnet_multi import distributed, train  # noqa: E402
from resnet_multi import weights as canonical  # noqa: E402
from resnet_multi.backend import load_backend  # noqa: E402
from resnet_multi.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
}
CLI = [
    "train",
    "--backend",
    "torch",
    "--device",
    "cpu",
    "--preset",
    "quick",
    "--width",
    str(WIDTH),
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    str(BATCH),
    "--limit",
    str(N_IMAGES),
    "--lr",
    str(LR),
    "--resize",
    str(SIZE),
    "--no-progress",
]


def torchrun(out, *options, timeout=240):
    """The worker on two local processes, as torchrun starts them; (exit status, stderr, seconds)."""
    tic = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(WORKER),
            "--out",
            str(out),
            *options,
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stderr, time.perf_counter() - tic


@pytest.fixture(scope="module")
def one_process():
    """The same run in this process: history and final weights."""
    backend = load_backend("torch")
    model = backend.build("d2l-resnet18", device="cpu", seed=0, width=WIDTH)
    backend.set_weights(model, random_weights(model.spec, 0, damp_residuals=True))
    history = train.fit(backend, model, tiny_dataset(), epochs=EPOCHS, lr=LR, batch_size=BATCH, resize=SIZE, seed=0)
    return history, backend.get_weights(model)


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """The two-process run with --sync-bn, uninterrupted."""
    out = tmp_path_factory.mktemp("synced")
    code, err, _ = torchrun(out, "--sync-bn")
    assert code == 0, err
    return out


def saved(out, spec):
    return json.loads((out / train.HISTORY).read_text()), canonical.load_weights(out / train.FINAL_WEIGHTS, spec)


def test_sync_bn_is_the_one_process_run(synced, one_process):
    history, weights = one_process
    got, got_weights = saved(synced, canonical.read_arch(synced / train.FINAL_WEIGHTS))
    losses = np.array(got["train_loss"])
    rel = np.abs(losses - history.train_loss) / np.array(history.train_loss)
    assert rel.max() <= PARITY_TOL, f"per-step relative loss gaps {rel}"
    assert (got["train_acc"], got["test_acc"]) == (history.train_acc, history.test_acc)
    assert got["examples"] == [N_IMAGES] * EPOCHS  # the global batch's, counted once
    # The running statistics too: the mean and the unbiased variance over the 15 images of the
    # global batch, not over a shard of 8 or 7 (and the weights' updates are the global mean's).
    for name, want in weights.items():
        assert rel_err(got_weights[name], want) <= PARITY_TOL, name


def test_without_sync_bn_each_process_normalises_its_shard(tmp_path, one_process):
    history, weights = one_process
    code, err, _ = torchrun(tmp_path)
    assert code == 0, err
    got, got_weights = saved(tmp_path, canonical.read_arch(tmp_path / train.FINAL_WEIGHTS))
    rel = np.abs(np.array(got["train_loss"]) - history.train_loss) / np.array(history.train_loss)
    # the first step's forward pass already normalises 8 and 7 images apart
    assert rel[0] > 100 * PARITY_TOL, f"per-step relative loss gaps {rel}"
    # the last stage's statistics, over 8 (rank 0's shard) of the 15 images at 1x1
    name = "stages.3.1.bn2.running_var"
    assert rel_err(got_weights[name], weights[name]) > 100 * PARITY_TOL, rel_err(got_weights[name], weights[name])


def test_a_failed_process_ends_the_run_and_resume_continues(tmp_path, synced, capfd):
    code, err, seconds = torchrun(tmp_path, "--sync-bn", "--fail-step", "4")
    assert code != 0 and "simulated failure of rank 1" in err, err
    assert seconds < 120, f"the run took {seconds:.0f} s to end after a process failed"
    state = train.read_checkpoint(tmp_path)
    assert state["epoch"] == 3 and (tmp_path / state["weights"]).is_file()
    assert not (tmp_path / train.FINAL_WEIGHTS).exists()

    # resnet-multi's own launcher, two processes, resumed from the distributed run's checkpoint
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_multi.cli",
            *CLI,
            "--nproc",
            "2",
            "--sync-bn",
            "--out",
            str(tmp_path),
            "--resume",
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()  # the chapter's two lines, from rank 0 alone
    assert len(lines) == 2 and lines[1].endswith("examples/sec on 2 processes (gloo), rank 0 on cpu"), lines
    assert done.stderr.count("training d2l-resnet18") == 1
    spec = canonical.read_arch(synced / train.FINAL_WEIGHTS)
    (want, want_weights), (got, got_weights) = saved(synced, spec), saved(tmp_path, spec)
    assert (got["train_loss"], got["test_acc"]) == (want["train_loss"], want["test_acc"])
    for name in want_weights:
        np.testing.assert_array_equal(got_weights[name], want_weights[name], err_msg=name)


def test_a_silent_process_times_out(tmp_path):
    code, err, seconds = torchrun(tmp_path, "--sync-bn", "--hang-step", "2", "--timeout", "5")
    assert code != 0 and "lost the others" in err, err
    assert seconds < 120, f"the run took {seconds:.0f} s to end after a process stopped answering"
    assert train.read_checkpoint(tmp_path)["epoch"] == 1


# ---- mistakes, found before any process starts -------------------------------------------------
def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_shards_too_small_for_batchnorm():
    spec = load_backend("torch").build("d2l-resnet18", width=WIDTH).spec
    distributed.check_shards(spec, 15, 15, 32, 2)  # 8 and 7
    with pytest.raises(ValueError, match=r"last batch holds 3\) split over 2 processes leaves a shard of 1"):
        distributed.check_shards(spec, 35, 16, 32, 2)
    with pytest.raises(ValueError, match="a global batch of 15 split over 8 processes leaves a shard of 1"):
        distributed.check_shards(spec, 120, 15, 32, 8)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sync-bn"], "add --nproc N"),
        (["--nproc", "2", "--device", "cuda:0"], "pass --device cuda"),
        (["--nproc", "2", "--batch-size", "3"], "leaves a shard of 1"),
    ],
)
def test_cli_refuses(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, *CLI, "--out", str(tmp_path / "run"), *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


def test_cli_refuses_other_backends(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--backend", "numpy", "--nproc", "2", "--out", str(tmp_path))
    assert code == 2 and "runs on the torch backend only" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so --device cuda is no mistake")
def test_cli_refuses_gpus_it_does_not_have(capsys, tmp_path):
    code, err = run_cli(capsys, *CLI, "--out", str(tmp_path), "--nproc", "2", "--device", "cuda")
    assert code == 2 and "PyTorch sees no GPU here" in err, err


# ---- processes and network --------------------------------------------------------------------
def _children(pid):
    """The process ids whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                kids.append(int(entry))
    return kids


def _listening(pids):
    """(address, port) of every listening TCP socket the processes hold, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    address, port = fields[1].split(":")
                    found.append((address, int(port, 16)))
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1, as /proc writes them


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and relies on PR_SET_PDEATHSIG (Linux)")
def test_the_launcher_listens_on_loopback_only_and_its_processes_die_with_it(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "resnet_multi.cli", *CLI, "--epochs", "500", "--nproc", "2", "--out", str(out)],
        env=ENV,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        ranks, sockets = [], []
        while time.monotonic() < deadline and launcher.poll() is None:
            ranks = _children(launcher.pid)
            if len(ranks) == 2 and (out / train.CHECKPOINT).exists():  # both ranks are training
                sockets = _listening([launcher.pid, *ranks])
                break
            time.sleep(0.2)
        assert len(ranks) == 2 and sockets, (ranks, launcher.poll())
        assert all(address in LOOPBACK for address, _ in sockets), f"listening beyond loopback: {sockets}"
        launcher.kill()  # SIGKILL: the launcher can clean nothing up
        launcher.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in ranks):
            time.sleep(0.2)
        alive = [pid for pid in ranks if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
        assert not alive, f"processes {alive} outlived their launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_resuming_with_other_batch_norm_statistics_is_refused_before_starting(tmp_path, capsys, monkeypatch):
    """A run of two processes without --sync-bn normalised over each shard: resuming it with
    --sync-bn (or on one process) would change what the history measures."""

    class PlainTwoProcesses(train.OneProcess):  # what a 2-process run without --sync-bn records
        bn_statistics = train.bn_statistics(2, sync_bn=False)

    backend = load_backend("torch")
    model = backend.build("d2l-resnet18", device="cpu", seed=0, width=WIDTH)
    out = tmp_path / "run"
    train.fit(backend, model, tiny_dataset(), epochs=1, lr=LR, batch_size=BATCH, resize=SIZE, seed=0, out=out,
              processes=PlainTwoProcesses)  # fmt: skip
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("processes were started"))
    code, err = run_cli(capsys, *CLI, "--out", str(out), "--resume", "--nproc", "2", "--sync-bn")
    assert code == 1 and 'bn_statistics: checkpoint has "each process\'s shard, 2 processes"' in err, err
    assert "'global batch' (one process, or --sync-bn)" in err and len(err.strip().splitlines()) == 1, err
