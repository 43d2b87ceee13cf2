"""scripts/time_to_accuracy.py's reading of a run's history (the runs themselves train for
minutes per backend; the script is run by hand)."""

import importlib.util
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
