"""scripts/time_to_accuracy.py's reading of a run's history (the runs themselves train for
minutes per backend; the script is run by hand)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "time_to_accuracy.py"


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HISTORY = {
    "epoch": [1, 2, 3, 4],
    "test_acc": [0.85, 0.905, 0.899, 0.921],
    "train_seconds": [60.0, 55.0, 58.0, 57.0],
    "examples": [60000] * 4,
    "examples_per_sec": 1043.5,
}


def test_seconds_to_a_target_count_until_the_first_epoch_that_reaches_it(tta):
    assert tta.time_to(HISTORY, 0.90) == 115.0  # epoch 2, although epoch 3 falls below again
    assert tta.time_to(HISTORY, 0.92) == 230.0
    assert tta.time_to(HISTORY, 0.95) is None


def test_summary_of_a_run(tta):
    summary = tta.summarize(HISTORY)
    assert summary["seconds_to"] == {"0.90": 115.0, "0.92": 230.0}
    assert summary["final_test_acc"] == 0.921 and summary["total_train_seconds"] == 230.0
    assert summary["cumulative_train_seconds"] == [60.0, 115.0, 173.0, 230.0]
    assert summary["examples_per_sec"] == 1043.5


def test_command_resumes_an_interrupted_run_and_passes_smoke_options(tta, tmp_path):
    class Args:
        epochs, data_dir, limit, subset = 1, None, 512, False

    out = tmp_path / "torch-seed0"
    command = tta.train_command(Path("python"), "torch", 3, out, Args)
    assert command[command.index("--preset") + 1] == "fast" and command[command.index("--seed") + 1] == "3"
    assert ["--epochs", "1"] == command[command.index("--epochs") :][:2] and "--resume" not in command
    out.mkdir()
    (out / "checkpoint.json").write_text("{}")
    assert tta.train_command(Path("python"), "torch", 3, out, Args)[-1] == "--resume"


def test_a_smoke_run_writes_a_file_the_benchmarks_page_renders(tta, tmp_path):
    """The whole script on the NumPy reference (1 epoch on 64 images), its JSON, a second
    call that reuses the run, and the benchmarks page's table from the file."""
    numpy_env = tmp_path / "envs" / "numpy" / "bin"
    numpy_env.mkdir(parents=True)
    python = numpy_env / "python"  # this interpreter (a symlink would lose its virtual environment)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "tta.json"
    argv = ["--env-dir", str(tmp_path / "envs"), "--runs", str(tmp_path / "runs"), "--backends", "numpy"]
    argv += ["--epochs", "1", "--limit", "64", "--sample-every", "0.5", "--json", str(out)]
    assert tta.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["format"] == tta.FORMAT and result["framework_versions"]["numpy"]
    (row,) = result["rows"]
    assert row["backend"] == "numpy" and row["epochs"] == 1 and not row["reused"]
    assert row["load_average_1min"]["max"] >= row["load_average_1min"]["mean"] >= 0
    assert row["recipe"]["augment"] == "flip" and row["arch"] == "d2l-resnet18"
    assert set(result["machine"]["cpu_flags"]) <= set(tta.machine.VECTOR_FLAGS)

    assert tta.main(argv) == 0  # reads the finished run instead of training it again
    again = json.loads(out.read_text())["rows"][0]
    assert again["reused"] and again["load_average_1min"] == row["load_average_1min"]
    assert again["test_acc"] == row["test_acc"]

    spec = importlib.util.spec_from_file_location("pages", SCRIPT.parent.parent / "docs" / "tools" / "pages.py")
    pages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pages)
    section = pages.time_to_accuracy_section(json.loads(out.read_text()), out)
    numpy_row = next(line for line in section.splitlines() if line.startswith("| numpy |"))
    assert f"{row['test_acc'][0]:.3f}" in numpy_row and f"{row['examples_per_sec']:.0f}" in numpy_row
