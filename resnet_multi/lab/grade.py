"""Checking a student's module: build it over the exercise's cases, compare it with the
reference, name the mistakes that explain what differs. Framework-free: the framework's
adapter is imported by name, once the submission's framework is known.

The tests, in order (each one line of the report, each worth one point):

1. it builds with the framework's chapter signature, in every case;
2. the output shapes;
3. the number of trainable parameters;
4. the weights load by the book's attribute names;
5.-9. against the NumPy reference with the spec's weights loaded: outputs in training and in
   inference mode, the gradient of the input, the gradients of the weights, the BatchNorm
   running statistics after one training step;
10. one SGD step with the framework's optimizer moves every parameter by -lr x its gradient.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass

import numpy as np

from . import exercises, hints, observe, structure
from . import mistakes as catalogue
from .results import Result, TestResult
from .submission import DEFAULT_TIME_LIMIT, StudentError, Submission, from_namespace, student_code

# a framework's top-level package -> the package's name for it
PACKAGES = {
    "torch": "torch",
    "tensorflow": "tf",
    "keras": "tf",
    "mxnet": "mxnet",
    "paddle": "paddle",
    "mindspore": "mindspore",
    "flax": "jax",
    "jax": "jax",
}
TEST_NAMES = (
    "builds with the chapter's signature",
    "output shapes",
    "parameter count",
    "weights load by the book's attribute names",
    *(title for title, _ in hints.NUMERIC.values()),
    "one SGD step moves every parameter",
)
STEP_TOLERANCE = 1e-3
# what the search's forward-only references can tell (the rest needs the backward pass, or
# an inference-mode pass)
QUICK_TESTS = ("shape", "count", "out_train", "stats")


def detect_framework(obj, modules=()) -> str | None:
    """The framework a class, module or function belongs to, from its bases' packages, or
    from the frameworks its module imported; None if that does not settle it."""
    cls = obj if isinstance(obj, type) else type(obj)
    for base in getattr(cls, "__mro__", ()):
        module = getattr(base, "__module__", "") or ""
        if module == "resnet_multi.numpy":  # built on the reference's layers: from scratch
            return "numpy"
        if module.split(".")[0] in PACKAGES:
            return PACKAGES[module.split(".")[0]]
    if isinstance(obj, type) and callable(getattr(obj, "backward", None)) and callable(getattr(obj, "forward", None)):
        return "numpy"  # a block with its own backward: written from scratch
    found = set()
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("resnet_multi.") and module.split(".")[-1] in {*PACKAGES.values(), "numpy"}:
        return module.split(".")[-1]
    namespace = getattr(obj, "__globals__", None) or {}
    for value in namespace.values():
        if isinstance(value, types.ModuleType):
            found.add(value.__name__.split(".")[0])
    found |= set(modules)
    names = {PACKAGES[m] for m in found if m in PACKAGES}
    return names.pop() if len(names) == 1 else None


def _parameters(obj):
    """The parameters a class's ``__init__`` or a function takes (a framework's metaclass may
    hide a class's own signature behind ``*args, **kwargs``)."""
    try:
        if isinstance(obj, type):
            params = list(inspect.signature(obj.__init__).parameters.items())[1:]  # without self
            return dict(params)
        return inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None


def _explicit(adapter, params) -> bool:
    names = [n for n, p in (params or {}).items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return adapter.BLOCK_STYLE == "explicit" or bool(names and names[0] in ("input_channels", "in_channels"))


def build(adapter, obj, exercise: exercises.Exercise, case: exercises.Case):
    """The student's module for one case, called as the framework's chapter code calls it."""
    if exercise.target == "net":
        if adapter.is_module(obj):
            return obj
        return adapter.instantiate(obj, (), {})
    if adapter.is_module(obj):
        raise StudentError(f"{exercise.names[0]} is a module already built; hand in the class or function", "type")
    params = _parameters(obj)
    takes_any = params is None or any(p.kind == p.VAR_KEYWORD for p in params.values())
    if exercise.target == "block":
        cin, cout, projection, strides = case.args
        args = [cin, cout] if _explicit(adapter, params) else [cout]
        kwargs = {}
        for key, value in (("use_1x1conv", projection), ("strides", strides)):
            if takes_any or key in params:
                kwargs[key] = value
            else:
                args.append(value)
        return adapter.instantiate(obj, tuple(args), kwargs)
    cin, cout, residuals, first = case.args
    known = {"input_channels": cin, "num_channels": cout, "num_residuals": residuals, "first_block": first}
    if params is not None and {"num_channels", "num_residuals"} <= set(params):
        result = adapter.instantiate(obj, (), {k: v for k, v in known.items() if k in params})
    else:
        args = (cin, cout, residuals) if _explicit(adapter, params) else (cout, residuals)
        result = adapter.instantiate(obj, args, {"first_block": first})
    if isinstance(result, (list, tuple)):
        result = adapter.sequential(list(result))
    return result


@dataclass
class CaseRun:
    build_error: str | None = None
    observation: observe.Observation | None = None
    mapping: structure.Mapping | None = None
    step_error: str | None = None  # an error after the weights were loaded
    not_run: str | None = None  # why there are no numbers
    before: dict | None = None


def run_case(adapter, obj, exercise, case, data, seconds, built=None) -> CaseRun:
    """Build, run and measure the student's module for one case; whatever the student's code
    raises is caught and said in one line. ``built`` (arguments -> model) reuses a module built
    for an earlier case with the same arguments: every case loads its own weights."""
    run = CaseRun()
    call = case.label(exercise)
    built = {} if built is None else built
    try:
        if case.args not in built:
            with student_code(f"building {exercise.call(case.args)}", seconds):
                built[case.args] = adapter.wrap(build(adapter, obj, exercise, case))
        model = built[case.args]
    except StudentError as e:
        run.build_error = e.message
        return run
    obs = run.observation = observe.Observation()
    try:
        with student_code(f"the forward pass of {call}", seconds):
            obs.shape = tuple(model.forward(data.x, False).shape)
    except StudentError as e:
        obs.error = e.message
    try:
        with student_code(f"reading the layers of {exercise.call(case.args)}", seconds):
            root = adapter.tree(model)
            obs.count = int(adapter.count(model))
    except StudentError as e:
        run.not_run = e.message
        return run
    run.mapping = structure.map_module(root, case.spec)
    if obs.error is not None:
        run.not_run = "the forward pass raised"
        return run
    if not run.mapping.ok:
        run.not_run = "the weights did not load"
        return run
    if not case.numeric:
        return run
    if obs.shape != data.cotangent.shape:
        run.not_run = "the output shape differs"
        return run
    probes = [(name, node, leaf) for name, (node, leaf) in run.mapping.tensors.items()]
    assignments = [(node, leaf, data.weights[name]) for name, node, leaf in probes]
    run.before = {name: data.weights[name] for name, _, _ in probes}
    try:
        with student_code(f"loading weights into {exercise.call(case.args)}", seconds):
            adapter.load(model, assignments)
        with student_code(f"the inference-mode forward pass of {call}", seconds):
            obs.out_eval = model.forward(data.x, False)
        with student_code(f"the training step of {call}", seconds):
            step = adapter.train_step(model, data.x, data.cotangent, data.lr, probes)
    except StudentError as e:
        run.step_error = run.not_run = e.message
        obs.out_eval, obs.train_error = None, e.message
        return run
    obs.out_train, obs.dx = step["out_train"], step["dx"]
    trainable = {name for name in run.before if not name.endswith(("running_mean", "running_var"))}
    obs.grads = {k: v for k, v in step["grads"].items() if k in trainable}
    obs.stats = {k: v for k, v in step["stats"].items() if k not in trainable}
    obs.after = {k: v for k, v in step["after"].items() if k in trainable}
    return run


# ---- from the runs to the tests ---------------------------------------------------------------------
def _block_kind(spec) -> str:
    block = spec if hasattr(spec, "kind") else (spec.blocks[0] if hasattr(spec, "blocks") else spec.stages[0].blocks[0])
    return "preact" if block.preact else block.kind


def _display(name: str, spec) -> str:
    """A canonical layer or tensor name as the student's code spells it."""
    layer, _, leaf = name.rpartition(".") if name.endswith(("running_mean", "running_var")) else (name, "", "")
    for canonical, attribute in (("shortcut.conv", "conv3"), ("shortcut.bn", "bn3")):
        if _block_kind(spec) != "bottleneck":
            layer = layer.replace(canonical, attribute)
    if layer.endswith("output"):
        layer = (layer[: -len("output")] or "the block's ") + "output (after the addition)"
    if leaf:
        return f"{layer}'s running statistics"
    return layer


class Grader:
    def __init__(self, exercise, framework, cases, datas, runs):
        self.exercise, self.framework, self.cases, self.datas, self.runs = exercise, framework, cases, datas, runs
        self.expected = [_expected(c, d) for c, d in zip(cases, datas)]
        self._accepted = {}  # case index -> the reference with the biased running variance
        self._differ = set()  # the tests in which some case ran and differs
        self.diagnosis = None
        self.search = None

    # -- per-test scores, for which planted mistakes explain which test -----------------------------
    def test_score(self, test: str, mistakes) -> float:
        total = 0.0
        for i, run in enumerate(self.runs):
            got = run.observation
            if got is None:
                continue
            want = self.search.reference(mistakes, i, quick=test in QUICK_TESTS)
            if test == "shape":
                if (got.error is None) != (want.error is None) or (got.error is None and got.shape != want.shape):
                    total += hints.SHAPE_PENALTY
            elif test == "count":
                if got.count is not None and got.count != want.count:
                    total += hints.COUNT_PENALTY
            elif got.error is None and want.error is None and got.shape == want.shape:
                if got.train_error is not None or want.train_error is not None:
                    continue
                d = hints.difference(test, got, want, self.datas[i].weights)
                total += d.excess if d is not None else 0.0
        return total

    def diagnose(self):
        observed = [run.observation for run in self.runs]
        forced = set()
        for run in self.runs:
            if run.mapping is not None:
                forced |= run.mapping.forced
        kind = _block_kind(self.cases[0].spec)
        candidates = catalogue.candidates(kind, self.exercise.target)

        def consistent(mistakes) -> bool:
            return all(
                structure.strides_agree(run.mapping, case.spec, mistakes)
                for run, case in zip(self.runs, self.cases)
                if run.mapping is not None
            )

        self.diagnosis = hints.diagnose(
            self.cases, self.datas, observed, candidates, frozenset(forced), consistent=consistent
        )
        self.search = self.diagnosis.search

    def hint(self, test: str) -> tuple[str, tuple[str, ...]]:
        """The mistakes that explain a failing test, named, with where the outputs part."""
        if self.diagnosis is None:
            self.diagnose()
        chosen = self.diagnosis.mistakes
        full = self.test_score(test, chosen)
        # gradients are compared with full references only where it matters: a mistake that
        # explains the training-mode outputs explains their gradients
        probe = "out_train" if test in ("dx", "grads") else test  # out_eval: full references
        base = self.test_score(probe, chosen)
        keys = [
            key
            for key in sorted(chosen, key=self._order)
            if not catalogue.BY_KEY.get(key, catalogue.Mistake(key, "", ())).accepted
            and self.test_score(probe, chosen - {key}) > base + 1e-9
        ]
        if not keys and self._unregistered():
            return (
                "modules held in a plain list or dict are not the module's: switching it to training or "
                "inference mode does not reach them, and its optimizer does not see their parameters; "
                "keep them in the framework's container (nn.Sequential, nn.ModuleList...)",
                (),
            )
        if not keys:
            return ("no known mistake explains it", ()) if full > 0 else ("", ())
        texts = [catalogue.describe(k, self.framework, self.exercise.block_class) + self._where(k) for k in keys]
        text = "; and ".join(texts)
        if full > 0:
            text = f"partly explained by: {text}; what remains matches no known mistake"
        return text, tuple(keys)

    def _unregistered(self) -> bool:
        return any("register" in n for r in self.runs if r.mapping for n in r.mapping.notes)

    def _order(self, key):
        return [m.key for m in catalogue.CATALOGUE].index(key) if key in catalogue.BY_KEY else -1

    def _where(self, key) -> str:
        for i, case in enumerate(self.cases):
            a = self.search.forward_only(frozenset(), i)
            b = self.search.forward_only(frozenset({key}), i)
            name = hints.first_parting(a, b)
            if name and name.endswith(("running_mean", "running_var")):
                return f" (first in {_display(name, case.spec)})"
            if name:
                return f" (the outputs part from the reference at {_display(name, case.spec)})"
        return ""

    # -- the tests ---------------------------------------------------------------------------------------
    def tests(self) -> list[TestResult]:
        out = [self._builds(), self._shapes(), self._count(), self._loads()]
        out += [self._numeric(q) for q in hints.NUMERIC]
        out.append(self._step())
        failing = {"output shapes": "shape", "parameter count": "count"}
        failing.update({title: q for q, (title, _) in hints.NUMERIC.items()})
        for t in out:
            # a hint where numbers (or shapes, or counts) differ; not where a test did not run
            if not t.passed and t.name in failing and t.name in self._differ:
                t.hint, t.mistakes = self.hint(failing[t.name])
        return out

    def _label(self, i) -> str:
        return self.cases[i].label(self.exercise)

    def _builds(self) -> TestResult:
        errors = [(i, r.build_error) for i, r in enumerate(self.runs) if r.build_error]
        name = TEST_NAMES[0]
        if not errors:
            return TestResult(name, True, f"{len(self.runs)} cases")
        i, message = errors[0]
        sig = exercises.signature(self.exercise, self.framework)
        detail = f"{len(errors)} of {len(self.runs)} cases fail; {message}; the chapter's signature: {sig}"
        return TestResult(name, False, detail)

    def _shapes(self) -> TestResult:
        bad, total = [], 0
        for i, (run, want) in enumerate(zip(self.runs, self.expected)):
            got = run.observation
            if got is None:
                bad.append(f"{self._label(i)}: not built")
                continue
            total += 1
            if got.error is not None:
                bad.append(got.error)
            elif got.shape != want.shape:
                bad.append(f"{self._label(i)} gives {got.shape}, the spec {want.shape}")
        if total and len(bad) > len(self.runs) - total:
            self._differ.add(TEST_NAMES[1])
        if not bad:
            return TestResult(TEST_NAMES[1], True, f"{total} cases")
        return TestResult(TEST_NAMES[1], False, f"{len(bad)} of {len(self.runs)} cases differ; {bad[0]}")

    def _count(self) -> TestResult:
        bad, counted_wrong = [], False
        for i, (run, want) in enumerate(zip(self.runs, self.expected)):
            got = run.observation
            if got is None or got.count is None:
                bad.append(f"{self._label(i)}: not counted ({_why_not(run)})")
            elif got.count != want.count:
                counted_wrong = True
                bad.append(f"{self.exercise.call(self.cases[i].args)} has {got.count:,}, the spec {want.count:,}")
        notes = [n for r in self.runs if r.mapping for n in r.mapping.notes]
        if counted_wrong and not any("register" in n for n in notes):
            self._differ.add(TEST_NAMES[2])  # the note says why, where parameters are not registered
        if not bad:
            counts = sorted({w.count for w in self.expected})
            return TestResult(TEST_NAMES[2], True, f"{', '.join(f'{c:,}' for c in counts)}")
        detail = f"{len(bad)} of {len(self.runs)} cases differ; {bad[0]}" + (f"; {notes[0]}" if notes else "")
        return TestResult(TEST_NAMES[2], False, detail)

    def _loads(self) -> TestResult:
        problems = [p for r in self.runs if r.mapping for p in r.mapping.problems]
        unread = [r.not_run for r in self.runs if r.mapping is None and r.observation is not None]
        if any(r.observation is None for r in self.runs) and not problems:
            return TestResult(TEST_NAMES[3], False, "not run: the module was not built in every case")
        if problems or unread:
            return TestResult(TEST_NAMES[3], False, (problems or unread)[0])
        names = sorted({a for r in self.runs if r.mapping for a in r.mapping.attributes})
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return TestResult(TEST_NAMES[3], True, shown)

    def _numeric(self, quantity: str) -> TestResult:
        title, tol = hints.NUMERIC[quantity]
        bad, not_run, compared, notes = [], [], 0, set()
        for i, (run, want) in enumerate(zip(self.runs, self.expected)):
            if not self.cases[i].numeric:
                continue
            got = run.observation
            if got is None or not got.numeric:
                not_run.append(f"{self._label(i)}: {_why_not(run)}")
                continue
            compared += 1
            d = hints.difference(quantity, got, want, self.datas[i].weights)
            if quantity == "stats" and not d.ok:
                if i not in self._accepted:
                    self._accepted[i] = observe.observe_reference(self.cases[i], self.datas[i], {"biased_running_var"})
                d_alt = hints.difference(quantity, got, self._accepted[i], self.datas[i].weights)
                if d_alt.ok:
                    notes.add(catalogue.describe("biased_running_var", self.framework))
                    continue
            if not d.ok:
                what = f" ({_display_tensor(d.where, self.cases[i].spec)})" if d.where else ""
                bad.append((d.err, f"{self._label(i)}{what}: {d.err:.1e} > {tol:.0e}"))
        if not bad and not not_run:
            return TestResult(title, True, f"{compared} cases" + (f"; {sorted(notes)[0]}" if notes else ""))
        parts = []
        if bad:
            self._differ.add(title)
            parts.append(f"{len(bad)} of {compared} cases differ; worst {max(bad, key=lambda b: b[0])[1]}")
        if not_run:
            parts.append(f"{len(not_run)} case(s) not run: {not_run[0]}")
        return TestResult(title, False, "; ".join(parts))

    def _step(self) -> TestResult:
        name = TEST_NAMES[-1]
        stuck, compared, missing = [], 0, []
        for i, run in enumerate(self.runs):
            if not self.cases[i].numeric:
                continue
            got = run.observation
            if got is None or not got.numeric:
                missing.append(f"{self._label(i)}: not run ({_why_not(run)})")
                continue
            compared += 1
            lr = self.datas[i].lr
            scale = max((np.abs(g).max(initial=0.0) for g in got.grads.values()), default=0.0)
            for tensor, grad in got.grads.items():
                before = run.before[tensor].astype(np.float64)
                step = lr * np.abs(grad).max(initial=0.0)
                if step <= 1e-6 * lr * scale:  # a gradient that is zero but for rounding (a bias before BN)
                    continue
                # float32 rounds the new value to about 6e-8 of its size
                allowed = STEP_TOLERANCE * step + 4 * np.finfo(np.float32).eps * np.abs(before).max(initial=0.0)
                if np.abs(got.after[tensor] - (before - lr * grad)).max(initial=0.0) > allowed:
                    stuck.append(_display_tensor(tensor, self.cases[i].spec))
        notes = [n for r in self.runs if r.mapping for n in r.mapping.notes if "register" in n]
        if missing and not compared:
            return TestResult(name, False, missing[0])
        if stuck:
            shown = ", ".join(sorted(set(stuck))[:4])
            detail = f"the optimizer does not move {shown} by -lr x its gradient"
            detail += f"; {notes[0]}" if notes else "; are they registered with the module?"
            return TestResult(name, False, detail)
        if missing:
            return TestResult(name, False, missing[0])
        return TestResult(name, True, f"{compared} cases")


# A grader checks many submissions of one exercise in one process: a case's weights, input and
# reference observation are the same for each, and computed once (there are at most two nets'
# cases among them, whose weights and gradients take hundreds of MB).
@functools.lru_cache(maxsize=32)
def _case_data(case, seed) -> observe.CaseData:
    return observe.case_data(case, seed)


def _expected(case, data) -> observe.Observation:
    if data.expected is None:
        data.expected = observe.observe_reference(case, data)
    return data.expected


def _why_not(run: CaseRun) -> str:
    """Why a case has no numbers, short where the first test already says it in full."""
    if run.build_error:
        return "not built (see the first test)"
    return run.not_run or "no numbers"


def _display_tensor(name: str, spec) -> str:
    layer, _, leaf = name.rpartition(".")
    return f"{_display(layer, spec)}.{leaf}"


# ---- the entry points ----------------------------------------------------------------------------
def _failed(result: Result, first: str, detail: str) -> Result:
    """Every test failed, the first with ``detail``, the others not run."""
    for i, name in enumerate(TEST_NAMES):
        result.tests.append(TestResult(name, False, detail if i == 0 else f"not run: {first}"))
    return result


def check(
    obj,
    exercise: str = "residual",
    framework: str | None = None,
    *,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    options: dict | None = None,
    seed: int = 0,
    quiet: bool = False,
    points: float | None = None,
) -> Result:
    """Check a student's class, function or module for ``exercise`` (see
    :data:`resnet_multi.lab.exercises.EXERCISES`) and print the report unless ``quiet``.

    ``obj`` may also be a namespace (a notebook's ``globals()``) or a loaded
    :class:`~resnet_multi.lab.submission.Submission`, in which the exercise's object is looked
    up by its names (``Residual``...). ``framework`` is found from ``obj`` when not given.
    ``options`` changes the spec's block options (``conv_bias=False``...). ``time_limit``:
    seconds for each call into the student's code. ``points``: spread over the tests.
    Executes the student's code with the caller's rights: run it inside a sandbox.
    """
    ex = exercises.get(exercise)
    result = _check(obj, ex, framework, time_limit, options, seed)
    if points is not None:
        result.scale(points)
    if not quiet:
        print(result.report())
    return result


def _check(obj, ex, framework, seconds, options, seed) -> Result:
    submission = obj if isinstance(obj, Submission) else from_namespace(obj) if isinstance(obj, dict) else None
    source, modules = "the object passed", ()
    result = Result(ex.name, ex.title, framework, source)
    if submission is not None:
        result.output = submission.output
        source = result.source = submission.source
        if submission.problem is not None:
            return _failed(result, "the submission did not load", submission.problem.message)
        found = submission.find(ex.names)
        if found is None:
            names = " or ".join(ex.names)
            return _failed(result, f"no {names}", f"{source} defines no {names}")
        name, obj = found
        result.source = f"{name} from {source}" if source != "objects" else name
        modules = submission.modules
    else:
        result.source = getattr(obj, "__name__", type(obj).__name__)
    framework = framework or detect_framework(obj, modules)
    result.framework = framework
    if framework is None:
        return _failed(result, "no framework", "cannot tell which framework it is written in: pass framework=")
    from . import adapters

    try:
        adapter = adapters.load(framework)
    except ImportError as e:
        return _failed(result, "framework missing", f"{framework} is not installed here ({e})")
    except Exception as e:  # a framework that fails to import
        return _failed(result, "framework broken", f"{framework} does not import here: {type(e).__name__}: {e}")
    cases = ex.cases(options)
    datas = [_case_data(case, seed + i) for i, case in enumerate(cases)]
    built = {}
    runs = [run_case(adapter, obj, ex, case, data, seconds, built) for case, data in zip(cases, datas)]
    result.tests = Grader(ex, framework, cases, datas, runs).tests()
    return result


def check_file(path, exercises_=None, framework=None, **kwargs) -> list[Result]:
    """Load a submitted file once (under the time limit) and check each exercise it defines
    (or ``exercises_``); a file that does not load fails every exercise asked for."""
    from .submission import load_file

    seconds = kwargs.get("time_limit", DEFAULT_TIME_LIMIT)
    submission = load_file(path, seconds)
    if exercises_ is None:
        exercises_ = [e.name for e in exercises.EXERCISES.values() if submission.find(e.names)]
        if not exercises_:
            exercises_ = ["residual"]
    return [check(submission, name, framework, **kwargs) for name in exercises_]
