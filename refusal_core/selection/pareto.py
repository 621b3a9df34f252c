"""The Pareto front of search trials: subsets that no other subset beats on both failure and KL.

A single objective value ``failure + kl_penalty * kl`` hides the trade-off it makes; the front
shows it. A trial is on the front when no other trial is at least as good on every measure
and strictly better on one (all measures are minimised).
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["dominates", "pareto_front", "trial_front", "trial_point"]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when point ``a`` is no worse than ``b`` on every measure and better on one (minimising)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Equal points do not dominate each other, so both stay on the front. Points holding a
    NaN are never on it (a measurement failed) and dominate nothing.
    """
    usable = [i for i, point in enumerate(points) if not any(math.isnan(value) for value in point)]
    return [i for i in usable if not any(dominates(points[j], points[i]) for j in usable if j != i)]


def trial_point(trial: dict) -> tuple[float, float] | None:
    """(failure, kl) of a completed, evaluated trial row, or None for pruned and reused ones.

    ``failure`` is the trial's refusal term (with the default ``verdicts`` objective the share
    of replies refused or broken); a missing KL (no harmless prompts) counts as 0.
    """
    if trial.get("state") != "COMPLETE" or trial.get("reused_from") is not None or trial.get("refusal") is None:
        return None
    kl = trial.get("kl")
    return float(trial["refusal"]), 0.0 if kl is None else float(kl)


def trial_front(trials: Sequence[dict]) -> list[dict]:
    """The trial rows (as in ``SearchResult.trials``) on the (failure, KL) Pareto front, lowest failure first."""
    rows = [(trial, trial_point(trial)) for trial in trials]
    rows = [(trial, point) for trial, point in rows if point is not None]
    front = pareto_front([point for _, point in rows])
    return sorted((rows[i][0] for i in front), key=lambda trial: (trial_point(trial), trial["number"]))
