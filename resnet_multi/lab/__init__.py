"""A lab kit for the chapter: check a student's ResNet in any of the six frameworks.

    from resnet_multi import lab
    lab.check(Residual, exercise="residual", framework="torch")   # prints the report
    lab.check_file("submission.py")                                # every exercise it defines

``check`` builds the student's module over a grid of cases, loads the spec's canonical
weights into it by the book's attribute names, and compares it with the NumPy reference:
shapes, parameter count, outputs in training and inference mode, gradients, BatchNorm
statistics, one SGD step. Where numbers differ, it names the known mistake that explains
them. ``report.gradescope`` writes Gradescope's ``results.json``; ``report.otter_tests``
writes otter-grader test files.

The student's code runs with the caller's rights: graders run it inside the lab's sandbox.
Only :mod:`resnet_multi.lab.adapters` imports a framework, when a check needs it.
"""

from __future__ import annotations

from .exercises import EXERCISES
from .grade import check, check_file, detect_framework
from .results import Result, TestResult
from .submission import load_file

__all__ = ["EXERCISES", "Result", "TestResult", "check", "check_file", "detect_framework", "load_file"]
