"""``resnet-multi bench`` runs and reports sane figures on every backend under test.

No timing is asserted (the machines are shared and noisy): only that the command
runs, that every figure is a positive finite number with min <= median <= max,
that the JSON has its schema, and that the textbook baseline is the chapter's
network (same parameter count as the package's) wherever there is one.
"""

import json
import math

import numpy as np
import pytest
from cases import BACKEND_CASES

from resnet_multi import bench, machine, textbook
from resnet_multi.backend import BACKENDS, load_backend
from resnet_multi.cli import main

TINY = dict(width=8, size=32, batch_size=4, steps=3, warmup=1)


def _eager(backend):
    return getattr(backend, "eager", False)  # cases.ModeBackend's mode; False for a backend without one


def test_every_framework_has_its_textbook_code():
    assert set(textbook.MODULES) == set(BACKENDS) - {"numpy"}
    assert textbook.load("numpy") is None


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_bench_reports_sane_figures(backend, device):
    result = bench.run(backend, device=device, eager=_eager(backend), **TINY)
    bench.check_result(result)
    json.loads(json.dumps(result))  # JSON-ready as it is
    assert result["backend"] == backend.name and result["eager"] == _eager(backend)
    assert result["input_shape"] == [4, 1, 32, 32] and result["width"] == 8
    record = result["machine"]
    assert isinstance(record["thread_env"], dict)
    assert record["threads"] == backend.cpu_threads()  # the framework's own settings, as it reports them
    assert set(record["cpu_flags"]) <= set(machine.VECTOR_FLAGS)
    load = record["load_average_1min"]
    assert load["start"] >= 0 and load["end"] >= 0 and load["mean"] <= load["max"]
    assert (
        result["flop_per_image"]["train"]
        == 3 * result["flop_per_image"]["inference"]
        == 3 * 2 * result["macs_per_image"]
    )
    for model in result["models"].values():
        for phase in bench.PHASES:
            stats = model[phase]
            assert math.isclose(stats["examples_per_s"], 4 / stats["step_s"]["median"])
            assert math.isclose(stats["flop_per_s"], stats["examples_per_s"] * result["flop_per_image"][phase])
            assert sorted(stats["step_times_s"])[1] == stats["step_s"]["median"]
    if backend.name in textbook.MODULES and (device == "cpu" or backend.name == "torch"):
        assert set(result["models"]) == {"package", "textbook"} and result["textbook_na"] is None
        for phase in bench.PHASES:
            assert math.isclose(
                result["ratio"][phase],
                result["models"]["package"][phase]["examples_per_s"]
                / result["models"]["textbook"][phase]["examples_per_s"],
            )
    else:
        assert set(result["models"]) == {"package"} and result["ratio"] is None
        assert result["textbook_na"]
    table = bench.format_table(result)
    assert "train" in table and "inference" in table and backend.name in table


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_textbook_net_is_the_chapters(backend, device):
    """The textbook model has exactly the package's d2l-resnet18 trainable parameters."""
    book = textbook.load(backend.name)
    if book is None:
        pytest.skip(f"{backend.name} has no textbook code: it is the package's own reference")
    model = backend.build("d2l-resnet18", device="cpu", width=8)
    net = book.net(width=8)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32), dtype=np.float32)
    logits = book.predictor(net)(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if book.LAYOUT == "NHWC" else x)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    assert book.parameter_count(net) == backend.count_parameters(model)[0]
    loss, logits = book.trainer(net, 0.05)(
        x if book.LAYOUT == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.array([1, 2])
    )
    assert math.isfinite(loss) and loss > 0 and logits.shape == (2, 10)


@pytest.mark.parametrize("backend, device", BACKEND_CASES[:1])
def test_other_archs_have_no_textbook_baseline(backend, device):
    result = bench.run(backend, arch="resnet18", device=device, width=8, size=32, batch_size=2, steps=1, warmup=0)
    bench.check_result(result)
    assert set(result["models"]) == {"package"} and "only d2l-resnet18" in result["textbook_na"]


@pytest.mark.parametrize("backend, device", BACKEND_CASES[:1])
def test_check_result_refuses_insane_figures(backend, device):
    result = bench.run(backend, device=device, with_textbook=False, **TINY)
    bench.check_result(result)
    assert result["textbook_na"] == "not requested" and result["ratio"] is None
    stats = result["models"]["package"]["train"]
    for key, bad in (
        ("examples_per_s", float("nan")),
        ("examples_per_s", -1.0),
        ("first_step_s", 0.0),
        ("flop_per_s", float("inf")),
    ):
        broken = json.loads(json.dumps(result))
        broken["models"]["package"]["train"][key] = bad
        with pytest.raises(ValueError, match=key):
            bench.check_result(broken)
    broken = json.loads(json.dumps(result))
    broken["models"]["package"]["train"]["step_s"]["min"] = stats["step_s"]["max"] * 2
    with pytest.raises(ValueError, match="min <= median <= max"):
        bench.check_result(broken)
    broken = json.loads(json.dumps(result))
    broken["format"] = "something else"
    with pytest.raises(ValueError, match="format"):
        bench.check_result(broken)


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_bench_command_prints_a_table_and_writes_json(backend, device, tmp_path, capsys):
    path = tmp_path / "figures" / "bench.json"
    argv = [
        "bench",
        "--backend",
        backend.name,
        "--device",
        device,
        "--width",
        "8",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--json",
        str(path),
        "--quiet",
    ]
    code = main(argv + (["--eager"] if _eager(backend) else []))
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(path.read_text())
    bench.check_result(result)
    assert result["steps"] == 2 and result["warmup"] == 0 and result["input_shape"] == [4, 1, 32, 32]
    assert out.strip() == bench.format_table(result)
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temporary file left


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps"),
        (["--batch-size", "1", "--size", "32"], "too small to train"),
        (["--arch", "nope"], "--arch"),
    ],
)
def test_bench_command_refuses_bad_arguments(argv, message, capsys):
    code = main(["bench", "--backend", "numpy", "--width", "8", *argv])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_command_takes_the_presets_shapes_and_width(tmp_path, capsys):
    """--preset fast times the fast preset's network (width 32) at its 40x40; --width wins."""
    path = tmp_path / "fast.json"
    argv = ["bench", "--backend", "numpy", "--preset", "fast", "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    assert main([*argv, "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["width"] == 32 and result["input_shape"] == [2, 1, 40, 40]
    assert main([*argv, "--width", "8", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["width"] == 8
    capsys.readouterr()


@pytest.mark.parametrize("backend, device", BACKEND_CASES)
def test_declared_execution_is_the_backends_default_on_a_cpu(backend, device):
    """CONVENTIONS' ``execution.cpu_mode`` says what ``build`` picks on a CPU when not told."""
    from resnet_multi import conventions

    declared = conventions.declared(backend.name)["execution"]["cpu_mode"]
    eager = not backend.compiles or backend.default_eager("cpu")
    assert declared == ("eager" if eager else "compiled")
    assert load_backend(backend.name).build("d2l-resnet18", width=4).eager is (eager and backend.compiles)
