"""Comparing a student's observations with the reference's, and naming the mistake that
explains a difference. Framework-free.

Tolerances are the parity suite's (``tests/test_parity.py``): float32 against the float64
reference, 1e-4 relative for inference outputs, 1e-3 for everything a training pass
computes. A difference is *explained* by the smallest set of known mistakes (searched
greedily: first each mistake alone, then combinations of those that helped) whose planted
reference matches the student's numbers in every case; each failing test then names the
mistakes that change its numbers, with the first layer where the outputs part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import mistakes as catalogue
from .observe import Observation, observe_reference

# quantity -> (test title, tolerance)
NUMERIC = {
    "out_train": ("outputs, training mode", 1e-3),
    "out_eval": ("outputs, inference mode", 1e-4),
    "dx": ("input gradient", 1e-3),
    "grads": ("weight gradients", 1e-3),
    "stats": ("BatchNorm running statistics after one step", 1e-3),
}
SHAPE_PENALTY = 10.0  # a case whose shape (or whether it raises) differs
COUNT_PENALTY = 3.0
MAX_EXCESS = 5.0  # a difference counts at most 1e5 times the tolerance


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (b the reference); the absolute difference where b is zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if not np.isfinite(a).all():
        return math.inf
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if a.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


@dataclass
class Difference:
    """One quantity of one case: the relative error, its tolerance, the worst tensor."""

    err: float
    tol: float
    where: str = ""

    @property
    def ok(self) -> bool:
        return self.err <= self.tol

    @property
    def excess(self) -> float:
        if self.ok:
            return 0.0
        if not math.isfinite(self.err):
            return MAX_EXCESS
        return min(MAX_EXCESS, max(0.0, math.log10(self.err / self.tol)))


def _grad_error(name, got, want, want_all, scale) -> float:
    """A conv bias feeding a training-mode BatchNorm has an exactly zero gradient, which
    float32 leaves as rounding noise: compared with the same layer's weight gradient."""
    if np.abs(want).max(initial=0.0) <= 1e-9 * scale:
        weight = want_all.get(name.rpartition(".")[0] + ".weight")
        ref = np.abs(weight).max() if weight is not None else scale
        return float(np.abs(np.asarray(got, np.float64)).max(initial=0.0) / ref) if ref > 0 else 0.0
    return rel_err(got, want)


def difference(quantity: str, got: Observation, want: Observation, weights: dict) -> Difference | None:
    """How far the student's ``quantity`` is from the reference's in one case; None when the
    case has no such numbers on either side."""
    tol = NUMERIC[quantity][1]
    if not (got.numeric and want.numeric):
        return None
    if quantity in ("out_train", "out_eval", "dx"):
        if getattr(got, quantity) is None or getattr(want, quantity) is None:
            return None
        return Difference(rel_err(getattr(got, quantity), getattr(want, quantity)), tol)
    if quantity == "grads" and not want.grads:  # a quick observation: no backward pass
        return None
    worst = Difference(0.0, tol)
    if quantity == "grads":
        scale = max((np.abs(g).max(initial=0.0) for g in want.grads.values()), default=0.0)
        for name, value in got.grads.items():
            # a tensor the reference lacks belongs to a layer it never applies: no gradient
            target = want.grads.get(name, np.zeros_like(value))
            err = _grad_error(name, value, target, want.grads, scale)
            if err > worst.err or (math.isnan(err) and not math.isnan(worst.err)):
                worst = Difference(err, tol, name)
    else:
        for name, value in got.stats.items():
            target = want.stats.get(name, weights.get(name))  # a BatchNorm never applied keeps its statistics
            err = rel_err(value, target) if target is not None else 0.0
            if err > worst.err:
                worst = Difference(err, tol, name)
    return worst


def case_score(got: Observation | None, want: Observation, weights: dict) -> float:
    """How badly a planted reference fails to explain one case: 0 when it explains it."""
    if got is None:  # the module could not be built: nothing to explain
        return 0.0
    score = 0.0
    if got.count is not None and want.count is not None and got.count != want.count:
        score += COUNT_PENALTY
    if (got.error is None) != (want.error is None):
        return score + SHAPE_PENALTY
    if got.error is not None:
        return score
    if got.shape != want.shape:
        return score + SHAPE_PENALTY
    if got.train_error is not None or want.train_error is not None:
        return score  # no numbers to compare on one side
    for quantity in NUMERIC:
        d = difference(quantity, got, want, weights)
        if d is not None:
            score += d.excess
    return score


@dataclass
class Diagnosis:
    mistakes: frozenset  # planted in the reference that explains the student's numbers best
    forced: frozenset  # of those, the ones read off the student's structure
    explained: bool  # whether it explains every case
    search: Search  # the planted references computed on the way


class Search:
    """The planted references, each computed once: ``quick`` ones (forward passes only) for the
    search, full ones (with the backward pass) where gradients are compared."""

    def __init__(self, cases, datas, observed):
        self.cases, self.datas, self.observed = cases, datas, observed
        self.full, self.quick = {}, {}

    def reference(self, mistakes, index, quick: bool = False) -> Observation:
        key = (frozenset(mistakes), index)
        if key in self.full:
            return self.full[key]
        cache = self.quick if quick else self.full
        if key not in cache:
            cache[key] = observe_reference(self.cases[index], self.datas[index], key[0], quick=quick)
        return cache[key]

    def forward_only(self, mistakes, index) -> Observation:
        """The quick reference even where a full one exists: two of these compare alike."""
        key = (frozenset(mistakes), index)
        if key not in self.quick:
            self.quick[key] = observe_reference(self.cases[index], self.datas[index], key[0], quick=True)
        return self.quick[key]

    def score(self, mistakes, indices=None, quick: bool = True, bound: float = math.inf) -> float:
        """The planted reference's misfit over the cases, shape-only cases first (they are
        cheap); once it exceeds ``bound`` the rest is not computed."""
        indices = range(len(self.cases)) if indices is None else indices
        total = 0.0
        for i in sorted(indices, key=lambda i: self.cases[i].numeric):
            total += case_score(self.observed[i], self.reference(mistakes, i, quick), self.datas[i].weights)
            if total > bound:
                break
        return total


def diagnose(cases, datas, observed, candidates, forced=frozenset(), *, rounds: int = 4, consistent=None) -> Diagnosis:
    """The smallest set of known mistakes (beyond ``forced``) whose planted reference best
    explains the student's observations: each candidate tried alone, then those that
    helped combined greedily, the redundant ones dropped; all on forward passes (no known
    mistake shows in the gradients alone), the result then checked with backward passes.
    ``consistent(mistakes)``, when given, rules out sets that contradict what the student's
    layers say of themselves (their strides), so that two mistakes with the same numbers
    are told apart."""
    if consistent is not None:
        candidates = [m for m in candidates if consistent(frozenset(forced) | {m.key})]
    search = Search(cases, datas, observed)
    chosen = frozenset(forced)
    best = search.score(chosen)
    pool = [m.key for m in candidates if m.key not in chosen]
    for _ in range(rounds):
        if best == 0:
            break
        options = [
            (search.score(chosen | {key}, bound=best + SHAPE_PENALTY), key)
            for key in pool
            if catalogue.compatible(chosen, key)
        ]
        if not options:
            break
        # a mistake that changes shapes where the student's do not will not help later either
        pool = [key for s, key in options if s < best + SHAPE_PENALTY / 2]
        s, key = min(options)
        if s >= best - 0.3:
            break
        chosen, best = chosen | {key}, s
        pool.remove(key)
    for key in sorted(chosen - frozenset(forced)):
        s = search.score(chosen - {key})
        if s <= best + 1e-9:
            chosen, best = chosen - {key}, s
    explained = search.score(chosen, quick=False) == 0
    return Diagnosis(chosen, frozenset(forced), explained, search)


def first_parting(a: Observation, b: Observation) -> str | None:
    """The first named layer whose output differs between two reference observations
    (training mode, then inference mode), else the first BatchNorm statistic, else None."""
    for rec_a, rec_b in ((a.record, b.record), (a.record_eval, b.record_eval)):
        if not rec_a or not rec_b:  # that mode did not run on one side
            continue
        outs_b = dict(rec_b)
        for name, value in rec_a:
            other = outs_b.get(name)
            if other is None and b.error is not None:
                continue  # b stopped before this layer
            if other is None or other.shape != value.shape or rel_err(other, value) > 1e-9:
                return name
        extra = [n for n, _ in rec_b if n not in dict(rec_a)]
        if extra:
            return extra[0]
    if a.error is not None or b.error is not None:
        return None
    for name, value in a.stats.items():
        other = b.stats.get(name)
        if other is not None and rel_err(other, value) > 1e-9:
            return name
    return None
