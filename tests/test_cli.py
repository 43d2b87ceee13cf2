"""Every ``resnet-multi`` command, on every backend under test (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cases import BACKEND_CASES

from resnet_multi import train
from resnet_multi.backend import BACKENDS, load_backend
from resnet_multi.cli import main

# The quick preset, shrunk: width 8, 128 train / 128 test images at 32x32.
TINY = ["--preset", "quick", "--width", "8", "--epochs", "2", "--batch-size", "64", "--limit", "128", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_backends_lists_every_backend(capsys):
    code, out, _ = run(capsys, "backends")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["backend", "installed", "version", "devices"]
    for name in BACKENDS:
        row = next(line for line in lines[1:] if line.split()[0] == name)
        try:
            backend = load_backend(name)
        except ImportError as e:
            assert row.split()[1] == "no" and str(e).splitlines()[0] in row
        else:
            assert row.split()[1] == "yes" and backend.framework_version() in row
            assert row.rstrip().endswith(", ".join(backend.devices()))


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_summary(backend, device, capsys):
    code, out, _ = run(
        capsys,
        "summary",
        "--backend",
        backend.name,
        "--device",
        device,
        "--arch",
        "d2l-resnet18",
        "--input",
        "1,1,96,96",
    )
    assert code == 0
    assert "stages.3      (1, 512, 3, 3)" in out and "head.fc       (1, 10)" in out
    assert "trainable parameters: 11,178,378; BN running statistics: 7,808" in out
    assert "multiply-accumulates: 0.319 G per image" in out


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_train_resume_and_evaluate_anywhere(backend, device, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--backend", backend.name, "--device", device, *TINY, "--out", str(out_dir))
    assert code == 0, err
    first, second = out.splitlines()
    assert first.startswith("loss ") and ", train acc " in first and ", test acc " in first
    assert second.endswith(f"examples/sec on {device}")
    for name in (train.CHECKPOINT, train.HISTORY, train.PLOT, train.FINAL_WEIGHTS):
        assert (out_dir / name).is_file(), name
    history = json.loads((out_dir / train.HISTORY).read_text())
    assert history["epoch"] == [1, 2] and history["resize"] == 32 and history["batch_size"] == 64

    # a finished run is not overwritten; --resume with more epochs extends it
    code, _, err = run(capsys, "train", "--backend", backend.name, "--device", device, *TINY, "--out", str(out_dir))
    assert code == 1 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(
        capsys,
        "train",
        "--backend",
        backend.name,
        "--device",
        device,
        *TINY,
        "--epochs",
        "3",
        "--out",
        str(out_dir),
        "--resume",
    )
    assert code == 0, err
    history = json.loads((out_dir / train.HISTORY).read_text())
    assert history["epoch"] == [1, 2, 3]
    test_acc = f"test acc {history['test_acc'][-1]:.3f}"
    assert test_acc in out

    # the weights, evaluated here and by the NumPy reference: the run's own test accuracy
    # (the run directory supplies resize and data)
    for name in dict.fromkeys([backend.name, "numpy"]):
        code, out, err = run(capsys, "evaluate", "--backend", name, "--weights", str(out_dir / train.FINAL_WEIGHTS))
        assert code == 0, err
        assert out.startswith(test_acc + " on 128 images"), out


def _absent_backend():
    for name in BACKENDS:
        try:
            load_backend(name)
        except ImportError as e:
            return name, str(e).splitlines()[0]
    return None, None


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_bad_arguments_get_one_line(backend, device, capsys, tmp_path):
    name = backend.name
    cases = [
        (["train", "--backend", "nosuch"], "invalid choice: 'nosuch'"),
        (["summary", "--backend", name, "--arch", "resnet19"], "invalid choice: 'resnet19'"),
        (["train", "--backend", name, "--device", "cuda:99"], "device 'cuda:99' is not available"),
        (["train", "--backend", name, "--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
        (["train", "--backend", name, "--batch-size", "-3"], "must be a positive integer"),
        (["train", "--backend", name, "--lr", "0"], "--lr: must be a positive number"),
        (["summary", "--backend", name, "--input", "1,1,96"], "N,C,H,W"),
        (["evaluate", "--backend", name, "--weights", str(tmp_path / "none.safetensors")], "does not exist"),
        (["train", "--backend", name, *TINY, "--out", str(tmp_path / "fresh"), "--resume"], "nothing to resume"),
        ([], "required: command"),
    ]
    absent, message = _absent_backend()
    if absent:  # every environment lacks some frameworks (they cannot share one)
        cases.append((["summary", "--backend", absent], message))
    for argv, expected in cases:
        code, out, err = run(capsys, *argv)
        assert code != 0, argv
        assert expected in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_console_script():
    """The installed entry point (pyproject's [project.scripts]) runs."""
    script = Path(sys.executable).with_name("resnet-multi")
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    result = subprocess.run([str(script), "backends"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backend") and "numpy" in result.stdout
    result = subprocess.run(
        [str(script), "train", "--backend", "numpy", "--batch-size", "0"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
