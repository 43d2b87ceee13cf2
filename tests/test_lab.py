"""The lab kit (resnet_multi.lab): in each framework's environment, the package's own classes
pass every exercise, the chapter's own code passes (TensorFlow's and JAX's: shapes pass, the
numbers fail with the padding hint), and each planted mistake is named by its own hint; in
the NumPy environment, every known mistake of the catalogue is told apart from the others,
bad submissions get one clear line and a failing score, and the command line writes
Gradescope's results.json.

Each case runs where its framework is selected (``RESNET_MULTI_TEST_BACKENDS``, as in the
parity suite); a framework that is not installed is skipped and says so.
"""

import ast
import functools
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from cases import selected_backends
from lab_students import MISTAKES, planted, residual

from resnet_multi import cli, lab
from resnet_multi.lab import exercises, grade, mistakes

SELECTED = selected_backends()
LAB = Path(lab.__file__).resolve().parent
FRAMEWORKS_IMPORTED = {"torch", "tensorflow", "keras", "mxnet", "paddle", "mindspore", "jax", "jaxlib", "flax", "optax"}
FRAMEWORK_MODULES = {"torch", "tf", "mxnet", "paddle", "mindspore", "jax", "textbook", "torch_device", "jax_cpu"}


def framework_module(name, fw):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"{fw} is not installed here: {e}")


def cases(frameworks):
    return [fw for fw in frameworks if fw in SELECTED]


# the framework-free parts are tested in the NumPy environment (the same in every environment)
NUMPY = "numpy" in SELECTED


# ---- the layering: only the adapters import a framework ---------------------------------------------
@pytest.mark.parametrize("path", sorted(p for p in LAB.glob("*.py")), ids=lambda p: p.name)
def test_lab_imports_no_framework_outside_its_adapters(path):
    """The framework-free part of lab: no framework, no framework module of the package
    (module level and inside functions alike); adapters are imported by name."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = {node.module.split(".")[0]}
            else:  # from ..torch import x, from .. import tf
                names = {(node.module or "").split(".")[0]} | {a.name for a in node.names} if node.level == 2 else set()
        else:
            continue
        assert not names & FRAMEWORKS_IMPORTED, f"{path.name} imports {names & FRAMEWORKS_IMPORTED}"
        assert not names & FRAMEWORK_MODULES, f"{path.name} imports resnet_multi.{names & FRAMEWORK_MODULES}"


# ---- the package's own classes pass every exercise --------------------------------------------------
SOLUTIONS = {
    "residual": "Residual",
    "resnet_block": "resnet_block",
    "bottleneck": "Bottleneck",
    "preact": "PreActResidual",
    "resnet18": "net",
}


def solution(module, exercise):
    if exercise == "resnet34":
        return functools.partial(module.net, "d2l-resnet18", layers=(3, 4, 6, 3))
    return getattr(module, SOLUTIONS[exercise])


# the six frameworks: every exercise; the NumPy reference checked against itself: the blocks
SOLVED = [
    (fw, exercise)
    for fw in cases(["numpy", "torch", "tf", "mxnet", "paddle", "mindspore", "jax"])
    for exercise in exercises.EXERCISES
    if fw != "numpy" or exercises.EXERCISES[exercise].target != "net"
]


@pytest.mark.parametrize("fw, exercise", SOLVED, ids=[f"{fw}-{e}" for fw, e in SOLVED])
def test_package_classes_pass_every_exercise(fw, exercise):
    module = framework_module(f"resnet_multi.{fw}", fw)
    result = lab.check(solution(module, exercise), exercise, fw, quiet=True)
    assert result.passed, result.report()
    assert result.score == result.max_score == len(grade.TEST_NAMES)


# ---- the chapter's own code, as printed -----------------------------------------------------------
def chapter_code(fw):
    tb = framework_module(f"resnet_multi.textbook.{fw}", fw)
    out = {"residual": tb.Residual}
    out["resnet_block"] = getattr(tb, "ResnetBlock", None) or getattr(tb, "resnet_block", None)
    if fw == "jax":  # the chapter's stage is the body of its ResNet.block method
        linen = importlib.import_module("flax.linen")

        def resnet_block(num_channels, num_residuals, first_block=False, training=True):
            blk = []
            for i in range(num_residuals):
                if i == 0 and not first_block:
                    blk.append(tb.Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=training))
                else:
                    blk.append(tb.Residual(num_channels, training=training))
            return linen.Sequential(blk)

        out["resnet_block"] = resnet_block
    else:
        out["resnet18"] = tb.net
    return out


if cases(["torch", "mxnet", "paddle", "mindspore"]):

    @pytest.mark.parametrize("fw", cases(["torch", "mxnet", "paddle", "mindspore"]))
    def test_chapter_code_passes(fw):
        for exercise, obj in chapter_code(fw).items():
            result = lab.check(obj, exercise, fw, quiet=True)
            assert result.passed, result.report()


if cases(["tf", "jax"]):

    @pytest.mark.parametrize("fw", cases(["tf", "jax"]))
    def test_chapter_code_with_same_padding_gets_the_padding_hint(fw):
        """padding='same' at stride 2 pads (0, 1): every shape is right, the numbers are not."""
        for exercise in ("residual", "resnet_block"):
            result = lab.check(chapter_code(fw)[exercise], exercise, fw, quiet=True)
            for name in grade.TEST_NAMES[:4]:
                assert result.test(name).passed, result.report()
            training = result.test("outputs, training mode")
            assert not training.passed and "padding_same" in training.mistakes, result.report()
            assert "padding='same' at stride 2" in training.hint
            # the Keras and Flax defaults the chapter leaves: momentum 0.99 (and Keras' epsilon 1e-3)
            assert "bn_momentum=0.01" in result.test("BatchNorm running statistics").mistakes
            assert ("bn_eps=0.001" in result.mistakes) == (fw == "tf"), result.report()


# ---- planted mistakes ---------------------------------------------------------------------------
PLANTED = [(fw, m) for fw in cases(list(MISTAKES)) for m in MISTAKES[fw]]


if PLANTED:

    @pytest.mark.parametrize("fw, mistake", PLANTED, ids=[f"{fw}-{m}" for fw, m in PLANTED])
    def test_planted_mistake_gets_its_own_hint(fw, mistake):
        framework_module({"tf": "tensorflow", "jax": "flax"}.get(fw, fw), fw)
        result = lab.check(residual(fw, mistake), "residual", fw, quiet=True)
        assert not result.passed
        named = {m for m in result.mistakes if not mistakes.BY_KEY.get(m, mistakes.Mistake(m, "", ())).accepted}
        assert named == {mistake}, result.report()
        line = next(t for t in result.tests if mistake in t.mistakes).line()
        assert mistakes.describe(mistake, fw) in line, line
        assert "(the outputs part from the reference at " in line or "(first in " in line, line


if cases(["torch", "tf", "mxnet", "paddle", "mindspore", "jax"]):

    @pytest.mark.parametrize("fw", cases(["torch", "tf", "mxnet", "paddle", "mindspore", "jax"]))
    def test_students_correct_code_passes(fw):
        framework_module({"tf": "tensorflow", "jax": "flax"}.get(fw, fw), fw)
        result = lab.check(residual(fw), "residual", fw, quiet=True)
        assert result.passed, result.report()


if cases(["torch"]):

    @pytest.mark.parametrize("fw", cases(["torch"]))
    def test_conv_bias_where_the_spec_has_none(fw):
        """A spec without conv biases (``options``): a bias-free block passes, the chapter's does not."""
        tb = framework_module(f"resnet_multi.textbook.{fw}", fw)
        nn = importlib.import_module("torch.nn")

        def without_bias(conv):
            return nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
            )

        class Residual(tb.Residual):
            def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
                super().__init__(input_channels, num_channels, use_1x1conv, strides)
                self.conv1, self.conv2 = without_bias(self.conv1), without_bias(self.conv2)
                self.conv3 = without_bias(self.conv3) if self.conv3 is not None else None

        assert lab.check(Residual, "residual", fw, options={"conv_bias": False}, quiet=True).passed
        result = lab.check(tb.Residual, "residual", fw, options={"conv_bias": False}, quiet=True)
        assert result.mistakes == {"conv_bias"}, result.report()
        assert "bias=False" in result.test("parameter count").hint


if cases(["torch"]):

    @pytest.mark.parametrize("fw", cases(["torch"]))
    def test_blocks_in_a_plain_list_are_not_the_modules(fw):
        """A stage that keeps its blocks in a Python list: PyTorch neither counts nor trains them,
        and eval() does not reach them; the report says so instead of blaming the numbers."""
        tb = framework_module(f"resnet_multi.textbook.{fw}", fw)
        nn = importlib.import_module("torch.nn")

        class Stage(nn.Module):
            def __init__(self, input_channels, num_channels, num_residuals, first_block=False):
                super().__init__()
                self.blocks = tb.resnet_block(input_channels, num_channels, num_residuals, first_block)

            def forward(self, X):
                for blk in self.blocks:
                    X = blk(X)
                return X

        result = lab.check(Stage, "resnet_block", fw, quiet=True)
        assert "held in a plain list or dict" in result.test("parameter count").detail
        assert "does not register" in result.test("one SGD step").detail
        assert "plain list or dict" in result.test("outputs, inference mode").hint, result.report()


# ---- every mistake of the catalogue is told apart (NumPy: the reference as the student) ------------
KINDS = {
    "basic": ("Residual", {}),
    "bottleneck": ("Bottleneck", {"kind": "bottleneck"}),
    "preact": ("PreActResidual", {"preact": True}),
}
EXERCISE_OF = {"basic": "residual", "bottleneck": "bottleneck", "preact": "preact"}
CATALOGUE_CASES = [
    (kind, m.key)
    for kind in KINDS
    for m in mistakes.candidates(kind, "block")
    # every mistake in the chapter's block; in the exercises' blocks, those of their own
    if not m.accepted and (kind == "basic" or set(m.targets) != {"basic", "bottleneck", "preact"})
]


if NUMPY:

    @pytest.mark.parametrize("kind, key", CATALOGUE_CASES, ids=[f"{k}-{m}" for k, m in CATALOGUE_CASES])
    def test_every_catalogued_mistake_is_named(kind, key):
        class_name, options = KINDS[kind]
        student = planted(class_name, {key}, conv_bias=True, shortcut="conv", **options)
        result = lab.check(student, EXERCISE_OF[kind], "numpy", quiet=True)
        named = {m for m in result.mistakes if not mistakes.BY_KEY[m].accepted}
        assert named == {key}, result.report()


if NUMPY:

    def test_two_mistakes_at_once_are_both_named():
        student = planted("Residual", {"stride_on_conv2", "bn_momentum=0.9"}, conv_bias=True, shortcut="conv")
        result = lab.check(student, "residual", "numpy", quiet=True)
        assert result.mistakes == {"stride_on_conv2", "bn_momentum=0.9"}, result.report()


# ---- submissions that do not work, the command line and Gradescope's results.json -----------------
def absent_framework() -> str:
    for name in ("mxnet", "mindspore", "paddle", "torch", "tensorflow", "flax"):
        if importlib.util.find_spec(name) is None:
            return name
    pytest.skip("every framework is installed here: none can be missing")


BAD = {
    "syntax": ("class Residual(:\n    pass\n", "bad.py does not compile: invalid syntax (line 1"),
    "missing": ("import {absent}\n", "bad.py imports {absent}, which is not installed here"),
    "signature": (
        "from resnet_multi import numpy as rn\n\n\nclass Residual(rn.Residual):\n"
        "    def __init__(self, channels):\n        super().__init__(channels, channels)\n",
        "building Residual(3, 3) raised TypeError",
    ),
    "raises": (
        "from resnet_multi import numpy as rn\n\n\nclass Residual(rn.Residual):\n"
        "    def forward(self, X):\n        raise RuntimeError('boom')\n",
        "raised RuntimeError: boom (bad.py, line 6, in forward: raise RuntimeError('boom'))",
    ),
    "wrong_type": (
        "from resnet_multi import numpy as rn\n\n\nclass Residual(rn.Residual):\n"
        "    def forward(self, X):\n        return [super().forward(X)]\n",
        "forward returned a list, not a NumPy array",
    ),
    "never_returns": (
        "from resnet_multi import numpy as rn\n\n\nclass Residual(rn.Residual):\n"
        "    def forward(self, X):\n        while True:\n            pass\n",
        "did not finish within 0.5 s (the time limit per call)",
    ),
    "import_never_returns": ("while True:\n    pass\n", "importing bad.py did not finish within 0.5 s"),
    "nothing": ("x = 1\n", "bad.py defines no Residual"),
}


def run_cli(capsys, *args):
    rc = cli.main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


if NUMPY:

    @pytest.mark.parametrize("kind", list(BAD))
    def test_a_bad_submission_gets_one_clear_line_and_no_score(kind, tmp_path, capsys):
        source, expected = BAD[kind]
        absent = absent_framework() if kind == "missing" else ""
        path = tmp_path / "bad.py"
        path.write_text(source.format(absent=absent))
        results = tmp_path / "results.json"
        rc, out, err = run_cli(capsys, path, "--framework", "numpy", "--time-limit", "0.5", "--json", results)
        assert rc == 1
        assert expected.format(absent=absent) in out, out
        assert "Traceback" not in out + err
        data = json.loads(results.read_text())
        assert data["score"] < sum(t["max_score"] for t in data["tests"])
        assert any(t["status"] == "failed" for t in data["tests"]) and expected.format(absent=absent) in data["output"]


if NUMPY:

    def test_gradescope_results_for_a_correct_and_a_buggy_file(tmp_path, capsys):
        good, buggy = tmp_path / "good.py", tmp_path / "buggy.py"
        good.write_text("from resnet_multi.numpy import Bottleneck, Residual  # noqa: F401\n")
        buggy.write_text(
            "from lab_students import planted\n\n"
            "Residual = planted('Residual', {'no_relu_after_add'}, conv_bias=True, shortcut='conv')\n"
        )
        rc, out, _ = run_cli(capsys, good, "--json", tmp_path / "good.json")
        assert rc == 0, out
        data = json.loads((tmp_path / "good.json").read_text())
        names = [t["name"] for t in data["tests"]]
        assert names == [f"{e}: {n}" for e in ("residual", "bottleneck") for n in grade.TEST_NAMES]
        assert data["score"] == 2 * len(grade.TEST_NAMES)
        assert all(t["status"] == "passed" and t["score"] == t["max_score"] == 1 for t in data["tests"])

        rc, out, _ = run_cli(capsys, buggy, "--framework", "numpy", "--points", "5", "--json", tmp_path / "bad.json")
        assert rc == 1
        data = json.loads((tmp_path / "bad.json").read_text())
        assert sum(t["max_score"] for t in data["tests"]) == pytest.approx(5)
        failed = [t for t in data["tests"] if t["status"] == "failed"]
        assert failed and all(t["score"] == 0 for t in failed)
        assert all("hint: no ReLU after the addition" in t["output"] for t in failed), failed
        assert data["score"] == pytest.approx(sum(t["score"] for t in data["tests"]))


if NUMPY:

    def test_check_in_a_notebook_prints_the_report_and_reads_its_namespace(capsys):
        from resnet_multi import numpy as rn

        result = lab.check({"Residual": rn.Residual, "np": rn.np}, "residual")
        printed = capsys.readouterr().out
        assert result.passed and printed.strip() == result.report()
        assert result.framework == "numpy" and result.summary() == "residual: all 10 tests pass"
        missing = lab.check({"np": rn.np}, "residual", quiet=True)
        assert not missing.passed and "defines no Residual" in missing.tests[0].detail
