"""The check's results as a grader needs them: Gradescope's ``results.json``, and
otter-grader test files. Framework-free.

Gradescope's autograder runs ``run_autograder``, which writes
``/autograder/results/results.json``: a total ``score`` and one entry per test with ``name``,
``score``, ``max_score``, ``status`` (``passed`` / ``failed``) and ``output``.

An otter-grader test file (the exception-based format, one per exercise) checks the
notebook's objects with :func:`resnet_multi.lab.check` once, and has one test case per line
of the report, so that otter gives a point for each test that passes and shows the failing
line, with its hint, as the case's message.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_bytes, check_output
from .exercises import EXERCISES
from .grade import TEST_NAMES


def gradescope(results, *, output: str = "") -> dict:
    """Gradescope's ``results.json`` for a list of :class:`~resnet_multi.lab.results.Result`."""
    tests = []
    for result in results:
        for number, t in enumerate(result.tests, 1):
            text = t.detail + (f"\nhint: {t.hint}" if t.hint else "")
            tests.append(
                {
                    "name": f"{result.exercise}: {t.name}",
                    "number": f"{result.exercise}.{number}",
                    "score": t.score,
                    "max_score": t.max_score,
                    "status": "passed" if t.passed else "failed",
                    "output": text,
                }
            )
    summary = "\n\n".join(r.report() for r in results)
    return {
        "score": sum(r.score for r in results),
        "output": (output + "\n\n" if output else "") + summary,
        "tests": tests,
    }


def write_gradescope(path, results, *, output: str = "") -> Path:
    path = check_output(Path(path), "results file")
    data = json.dumps(gradescope(results, output=output), indent=2).encode() + b"\n"
    atomic_write_bytes(path, data)
    return path


_OTTER_TEMPLATE = '''"""otter-grader test for the {exercise} exercise, written by resnet_multi.lab.report.otter_test:
each case is one test of `resnet-multi check`, run once on the notebook's objects."""

from otter.test_files import test_case

OK_FORMAT = False
name = {name}
points = {points}
_results = {{}}


def _result(env):
    from resnet_multi import lab

    key = id(env)
    if key not in _results:
        _results[key] = lab.check(env, {exercise_literal}, {framework}, quiet=True)
    return _results[key]
{cases}'''

_CASE = """

@test_case(name={title}, points=1)
def test_{index}(env):
    t = _result(env).tests[{index}]
    assert t.passed, t.line()
"""


def otter_test(exercise: str, framework: str | None = None, name: str | None = None) -> str:
    """The text of an otter-grader test file for ``exercise`` (one case per test); with no
    ``framework``, the check finds it from the notebook's objects."""
    EXERCISES[exercise]  # an unknown exercise is refused here, not when otter runs
    cases = "".join(_CASE.format(title=json.dumps(title), index=i) for i, title in enumerate(TEST_NAMES))
    return _OTTER_TEMPLATE.format(
        exercise=exercise,
        exercise_literal=json.dumps(exercise),
        framework=json.dumps(framework) if framework else "None",
        name=json.dumps(name or exercise),
        points=len(TEST_NAMES),
        cases=cases,
    )


def write_otter_tests(directory, exercises=None, framework: str | None = None) -> list[Path]:
    """Write ``<exercise>.py`` otter test files into ``directory`` (every exercise by default)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for exercise in exercises or list(EXERCISES):
        path = check_output(directory / f"{exercise}.py", "otter test file")
        atomic_write_bytes(path, otter_test(exercise, framework).encode())
        paths.append(path)
    return paths
