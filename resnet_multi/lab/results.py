"""What a check returns: one :class:`TestResult` per test, gathered in a :class:`Result`.
Framework-free."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TestResult:
    name: str
    passed: bool
    detail: str = ""  # why it failed (or a note on how it passed), one line
    hint: str = ""  # the known mistake(s) that explain the failure, one line
    mistakes: tuple[str, ...] = ()  # their keys (resnet_multi.lab.mistakes)
    max_score: float = 1.0

    @property
    def score(self) -> float:
        return self.max_score if self.passed else 0.0

    def line(self) -> str:
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if self.hint:
            text += f" -- hint: {self.hint}"
        return text


@dataclass
class Result:
    """The tests of one exercise for one submission."""

    exercise: str
    title: str
    framework: str | None
    source: str  # what was checked: "Residual from lab.py", ...
    tests: list[TestResult] = field(default_factory=list)
    output: str = ""  # what the submission printed while it was imported

    @property
    def passed(self) -> bool:
        return bool(self.tests) and all(t.passed for t in self.tests)

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)

    def test(self, name: str) -> TestResult:
        for t in self.tests:
            if t.name.startswith(name):
                return t
        raise KeyError(f"no test {name!r}; tests: {[t.name for t in self.tests]}")

    @property
    def mistakes(self) -> set[str]:
        """Every known mistake a failing test named."""
        return {m for t in self.tests for m in t.mistakes}

    def header(self) -> str:
        where = f" ({self.framework})" if self.framework else ""
        return f"Exercise {self.exercise}: {self.title}{where} -- {self.source}"

    def report(self) -> str:
        lines = [self.header()]
        lines += [f"  {t.line()}" for t in self.tests]
        passed = sum(t.passed for t in self.tests)
        lines.append(f"  {passed} of {len(self.tests)} tests pass; score {self.score:g}/{self.max_score:g}")
        return "\n".join(lines)

    def summary(self) -> str:
        """'all N tests pass', or the failing tests' lines: what a notebook's check cell shows."""
        failing = [t for t in self.tests if not t.passed]
        if not failing:
            return f"{self.exercise}: all {len(self.tests)} tests pass"
        return "\n".join(
            [f"{self.exercise}: {len(failing)} of {len(self.tests)} tests fail"] + [t.line() for t in failing]
        )

    def __str__(self) -> str:
        return self.report()

    def _repr_pretty_(self, printer, cycle):  # IPython shows the report, not the dataclass
        printer.text(self.report())

    def scale(self, points: float) -> Result:
        """Spread ``points`` evenly over the tests (each is worth 1 otherwise)."""
        for t in self.tests:
            t.max_score = points / len(self.tests)
        return self
