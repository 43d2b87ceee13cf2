"""The lab notebooks (notebooks/lab/, written by resnet_multi.lab.notebooks): each runs in its
framework's environment with the solution in the student's cell (the package's own class:
every test passes) and with a planted mistake (the check fails and names it); in the NumPy
environment, otter-grader grades the NumPy lab end to end (``otter generate``, ``otter run``)
with the otter test files resnet_multi.lab.report writes, on a correct and a buggy
submission. otter-grader comes with the lab extra, which only the NumPy environment installs
(its dependencies are too many for every framework's environment to carry).
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cases import selected_backends
from lab_students import MISTAKES

import resnet_multi
from resnet_multi.lab import exercises, mistakes, notebooks, report

nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the test extra")
nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the test extra")

ROOT = Path(__file__).resolve().parent.parent
LAB_NOTEBOOKS = ROOT / "notebooks" / "lab"
TESTS = Path(__file__).resolve().parent
SELECTED = selected_backends()
FRAMEWORK_PACKAGE = {"tf": "tensorflow", "jax": "flax"}


def solution(fw):
    return f"from resnet_multi.{fw} import Residual"


def planted(fw):
    """The student's cell with a mistake, and the mistake."""
    if fw == "numpy":
        source = (
            "from lab_students import planted\n\n"
            "Residual = planted('Residual', {'no_relu_after_add'}, conv_bias=True, shortcut='conv')"
        )
        return source, "no_relu_after_add"
    mistake = MISTAKES[fw][0]
    return f"from lab_students import residual\n\nResidual = residual({fw!r}, {mistake!r})", mistake


def kernel_env(tmp_path):
    """A kernelspec for this interpreter (by absolute path) and an environment in which the
    kernel imports the resnet_multi this process imported, and finds lab_students."""
    kernels = tmp_path / "jupyter" / "kernels" / "resnet-multi-lab"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "lab", "language": "python"}))
    package_root = str(Path(resnet_multi.__file__).resolve().parent.parent)
    env = dict(os.environ)
    paths = [package_root, str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    env.update(JUPYTER_PATH=str(tmp_path / "jupyter"), PYTHONPATH=os.pathsep.join(paths), TMPDIR=str(tmp_path))
    return env


def filled(fw, source):
    nb = nbformat.read(LAB_NOTEBOOKS / notebooks.filename("residual", fw), as_version=4)
    (student,) = [c for c in nb.cells if "student" in c.metadata.get("tags", [])]
    student.source = source
    return nb


def run(nb, tmp_path, monkeypatch) -> str:
    """Execute a notebook; the check cell's printed output."""
    env = kernel_env(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
    client = nbclient.NotebookClient(
        nb, kernel_name="resnet-multi-lab", timeout=600, resources={"metadata": {"path": str(TESTS)}}
    )
    client.execute(env=env)
    (check,) = [c for c in nb.cells if c.get("id") == "check"]
    return "".join(o.get("text", "") for o in check.outputs if o.output_type == "stream")


def test_lab_notebooks_are_what_the_generator_writes():
    problems = notebooks.stale(LAB_NOTEBOOKS)
    assert not problems, "\n".join(problems) + "\nwrite them again: python -m resnet_multi.lab.notebooks notebooks/lab"


def test_otter_tests_are_what_the_generator_writes():
    for exercise in exercises.EXERCISES:
        path = LAB_NOTEBOOKS / "otter" / f"{exercise}.py"
        assert path.read_text() == report.otter_test(exercise), (
            f"{path} is stale: write it again with resnet_multi.lab.report.write_otter_tests"
        )


def installed(fw):
    return importlib.util.find_spec(FRAMEWORK_PACKAGE.get(fw, fw)) is not None


LABS = [fw for fw in SELECTED if installed(fw)]


@pytest.mark.parametrize("fw", LABS)
def test_lab_notebook_with_the_solution_passes_and_with_a_mistake_names_it(fw, tmp_path, monkeypatch):
    printed = run(filled(fw, solution(fw)), tmp_path / "solution", monkeypatch)
    assert "10 of 10 tests pass" in printed, printed
    source, mistake = planted(fw)
    printed = run(filled(fw, source), tmp_path / "planted", monkeypatch)
    assert "FAIL" in printed and f"hint: {mistakes.describe(mistake, fw)}" in printed, printed


# ---- otter-grader, end to end ---------------------------------------------------------------------
if "numpy" in SELECTED:

    @pytest.fixture(scope="module")
    def autograder(tmp_path_factory):
        if importlib.util.find_spec("otter") is None:
            pytest.skip("otter-grader is not installed here: pip install 'resnet-multi[lab]'")
        folder = tmp_path_factory.mktemp("otter")
        zip_path = folder / "autograder.zip"
        # the committed test file, which finds the framework from the notebook's objects
        tests = LAB_NOTEBOOKS / "otter"
        otter(folder, "generate", "-t", str(tests), "-o", str(zip_path), "--no-requirements", "--no-environment")
        with zipfile.ZipFile(zip_path) as z:
            assert "tests/residual.py" in z.namelist()
        return zip_path

    def otter(folder, *args):
        env = kernel_env(folder)
        done = subprocess.run(
            [sys.executable, "-m", "otter", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    @pytest.mark.parametrize("submission", ["solution", "buggy"])
    def test_otter_grades_the_numpy_lab(autograder, submission, tmp_path):
        source = solution("numpy") if submission == "solution" else planted("numpy")[0]
        path = tmp_path / "lab.ipynb"
        nb = filled("numpy", source)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, path)
        (tmp_path / "out").mkdir()
        otter(tmp_path, "run", "-a", str(autograder), "-o", str(tmp_path / "out"), str(path))
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        (residual,) = [t for t in results["tests"] if t["name"] == "residual"]
        assert residual["max_score"] == 10
        if submission == "solution":
            assert residual["score"] == 10, residual
        else:
            assert 0 < residual["score"] < 10, residual
            assert "hint: no ReLU after the addition" in residual["output"], residual["output"]
