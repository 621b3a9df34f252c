"""Which prompts belong to a harm category: the conditions of conditional ablation
(``categories.fit``), read at one layer as the mean residual over the post-instruction tokens.

Two kinds:

- ``exclusive`` (the default): linear discriminant analysis over the 12 categories and the
  harmless set, one shared within-class covariance ``S_w`` shrunk towards ``lambda`` times its
  mean variance. Class ``c`` scores ``g_c(x) = w_c . x + b_c`` with
  ``w_c = (S_w + lambda I)^-1 mean_c`` and ``b_c = -w_c . mean_c / 2`` (equal priors). A prompt
  fires category ``a``'s condition when ``g_a`` beats every other class's score by at least
  ``margin``: one half-space per rival class, ``(w_a - w_c) . x >= margin - (b_a - b_c)``, all
  of which must hold (a ``Condition`` with one group). So a prompt fires at most one
  category's condition, and a prompt that looks most like the harmless set fires none.
- ``ovr`` (one against the rest): per category the discriminant
  ``(S_w + lambda I)^-1 (mean_c - mean_rest)`` with the threshold of best balanced accuracy on
  val. Neighbouring categories' conditions may both fire on one prompt.

:func:`choose_conditions` picks the layer, the shrinkage and (``exclusive``) the margin on the
val split: the most categories whose val prompts fire their own condition at least
``1 - GOAL["own"]`` of the time while every other category's fire it at most
``1 - GOAL["others"]`` (the report's goal, read as firing: a firing prompt loses its refusal),
then the best val accuracy, then the smallest margin, then the grid's order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError
from refusal_core.errors import SettingsError
from refusal_core.interventions.conditional import Condition, projection_scores

__all__ = [
    "GOAL",
    "HARMLESS",
    "KINDS",
    "ConditionChoice",
    "balanced_accuracy",
    "choose_conditions",
    "choose_threshold",
    "default_grid",
    "discriminant_directions",
    "exclusive_conditions",
    "fired_matrix",
    "val_goal",
]

# The report's goal per category: own refusal at most, every other category at least, harmless refusal at most.
GOAL = {"own": 0.20, "others": 0.80, "harmless": 0.05}
KINDS = ("exclusive", "ovr")
HARMLESS = "(harmless)"  # the label of the harmless prompts, a class of their own that gets no condition
# The grids choose_conditions scans when the caller fixes nothing (margins only for ``exclusive``).
SHRINKAGES = (0.3, 1.0, 3.0)
MARGINS = (0.0, 1.0, 2.0)


def default_grid(n_layers: int) -> tuple[int, ...]:
    """Condition layers scanned by default: every other layer from 1/5 to 1/2 of the depth."""
    return tuple(range(max(1, round(0.2 * n_layers)), max(2, round(0.5 * n_layers)) + 1, 2))


def _regularised_within(x: torch.Tensor, labels: Sequence[str], shrinkage: float) -> tuple[torch.Tensor, dict]:
    groups = {label: [i for i, other in enumerate(labels) if other == label] for label in dict.fromkeys(labels)}
    means = {label: x[index].mean(0) for label, index in groups.items()}
    centred = x - torch.stack([means[label] for label in labels])
    within = centred.T @ centred / len(x)
    return within + shrinkage * within.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype), means


def discriminant_directions(
    points: torch.Tensor, labels: Sequence[str], targets: Sequence[str], shrinkage: float = 0.1
) -> torch.Tensor:
    """``[len(targets), d]`` discriminants of each target label against all other points.

    ``points`` ``[n, d]``; the within-label covariance is shrunk by ``shrinkage`` times its
    mean variance on the diagonal. Computed in float64, returned as float32.
    """
    x = points.double()
    regular, means = _regularised_within(x, labels, shrinkage)
    out = []
    for target in targets:
        if target not in means:
            raise DirectionError(f"No point is labelled {target!r}.")
        rest = [i for i, label in enumerate(labels) if label != target]
        out.append(torch.linalg.solve(regular, means[target] - x[rest].mean(0)))
    return torch.stack(out).float()


def choose_threshold(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """The threshold with the best balanced accuracy (``positives >= t`` fire), ties broken
    by the widest gap: each candidate is a midpoint between neighbouring sorted scores."""
    scores = torch.cat([positives, negatives]).double().sort().values
    candidates = torch.cat([scores[:1] - 1, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1])
    best, best_key = float(candidates[0]), None
    for index, threshold in enumerate(candidates.tolist()):
        balanced = float((positives >= threshold).double().mean() + (negatives < threshold).double().mean()) / 2
        gap = float(scores[index] - scores[index - 1]) if 0 < index < len(scores) else 0.0
        if best_key is None or (balanced, gap) > best_key:
            best, best_key = threshold, (balanced, gap)
    return best


def exclusive_conditions(
    points: torch.Tensor,
    labels: Sequence[str],
    categories: Sequence[str],
    layer: int,
    shrinkage: float,
    margin: float = 0.0,
) -> dict[str, Condition]:
    """Per category, the condition "its discriminant score beats every other class's by ``margin``".

    ``labels`` name each point's class: the categories and any others (e.g. the harmless set),
    which compete but get no condition.
    """
    x = points.double()
    regular, means = _regularised_within(x, labels, shrinkage)
    classes = list(means)
    missing = [c for c in categories if c not in means]
    if missing:
        raise DirectionError(f"No point is labelled {missing[0]!r}.")
    centres = torch.stack([means[c] for c in classes])
    weights = torch.linalg.solve(regular, centres.T).T
    biases = -0.5 * (weights * centres).sum(1)
    out = {}
    for category in categories:
        a = classes.index(category)
        rivals = [c for c in range(len(classes)) if c != a]
        directions = torch.stack([weights[a] - weights[c] for c in rivals])
        norms = directions.norm(dim=1)
        thresholds = tuple(float((margin - (biases[a] - biases[c])) / norm) for c, norm in zip(rivals, norms))
        out[category] = Condition(
            directions.float(),
            thresholds,
            layer,
            labels=tuple(f"{category} > {classes[c]}" for c in rivals),
            groups=(0,) * len(rivals),
        )
    return out


def _ovr_conditions(points, labels, categories, layer, shrinkage, val_points, val_labels) -> dict[str, Condition]:
    discriminants = discriminant_directions(points, labels, categories, shrinkage)
    scores = projection_scores(val_points[:, None], discriminants)
    out = {}
    for k, category in enumerate(categories):
        mine = torch.tensor([label == category for label in val_labels])
        out[category] = Condition(
            discriminants[k], (choose_threshold(scores[mine, k], scores[~mine, k]),), layer, labels=(category,)
        )
    return out


def fired_matrix(conditions: dict[str, Condition], points: torch.Tensor) -> torch.Tensor:
    """``[n, n_categories]`` bool: which of ``points`` fire each category's condition; ``points``
    ``[n, n_tokens, d]`` (each condition reads their mean projection) or ``[n, d]``."""
    tokens = points if points.dim() == 3 else points[:, None]
    return torch.tensor([c.fires(projection_scores(tokens, c.directions)) for c in conditions.values()]).T.reshape(
        len(points), -1
    )


def val_goal(fired: torch.Tensor, labels: Sequence[str | None], categories: Sequence[str]) -> list[bool]:
    """Per category: its own prompts fire at least ``1 - GOAL['own']``, each other category's at most ``1 - GOAL['others']``."""

    def rate(k: int, group: str) -> float:
        rows = [i for i, label in enumerate(labels) if label == group]
        return float(fired[rows, k].double().mean()) if rows else 0.0

    return [
        rate(k, c) >= 1 - GOAL["own"] - 1e-9
        and all(rate(k, o) <= 1 - GOAL["others"] + 1e-9 for o in categories if o != c)
        for k, c in enumerate(categories)
    ]


def balanced_accuracy(fired: torch.Tensor, labels: Sequence[str | None], categories: Sequence[str]) -> list[float]:
    """Per category, the mean of its own prompts' firing rate and the other prompts' not-firing rate."""
    out = []
    for k, category in enumerate(categories):
        mine = torch.tensor([label == category for label in labels])
        out.append(float((fired[mine, k].double().mean() + (~fired[~mine, k]).double().mean()) / 2))
    return out


@dataclass(frozen=True)
class ConditionChoice:
    """The chosen conditions and the val figures behind them; ``scan`` one row per setting tried."""

    kind: str
    conditions: dict[str, Condition]
    layer: int
    shrinkage: float
    margin: float | None
    val_goal: tuple[str, ...]
    val_accuracy: dict[str, float]
    scan: tuple[dict, ...]


def choose_conditions(
    train: dict[int, torch.Tensor],
    train_labels: Sequence[str],
    val: dict[int, torch.Tensor],
    val_labels: Sequence[str | None],
    categories: Sequence[str],
    kind: str = "exclusive",
    shrinkages: Sequence[float] = SHRINKAGES,
    margins: Sequence[float] = MARGINS,
) -> ConditionChoice:
    """Scan every layer of ``train`` (``{layer: [n, d]}`` points, labels the categories and
    ``"(harmless)"``) with each shrinkage and margin, judge each on ``val`` (same layers; labels
    the categories or None), keep the best (module docstring)."""
    if kind not in KINDS:
        raise SettingsError(f"Unknown condition kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not shrinkages or min(shrinkages) <= 0 or (kind == "exclusive" and not margins):
        raise SettingsError(
            f"Give shrinkages > 0{' and at least one margin' if kind == 'exclusive' else ''}, got {list(shrinkages)}."
        )
    best, best_key, scan = None, None, []
    for order, (layer, shrinkage, margin) in enumerate(
        (layer, shrinkage, margin)
        for layer in train
        for shrinkage in shrinkages
        for margin in (margins if kind == "exclusive" else (None,))
    ):
        if kind == "exclusive":
            conditions = exclusive_conditions(train[layer], train_labels, categories, layer, shrinkage, margin)
        else:
            conditions = _ovr_conditions(
                train[layer], train_labels, categories, layer, shrinkage, val[layer], val_labels
            )
        fired = fired_matrix(conditions, val[layer])
        met = val_goal(fired, val_labels, categories)
        truth = torch.tensor([[label == c for c in categories] for label in val_labels])
        accuracy = float((fired == truth).all(dim=1).double().mean())
        row = {
            "layer": layer,
            "shrinkage": shrinkage,
            "margin": margin,
            "val_goal": sum(met),
            "val_accuracy": round(accuracy, 4),
        }
        scan.append(row)
        key = (sum(met), accuracy, -(margin or 0.0), -order)
        if best_key is None or key > best_key:
            best_key = key
            best = ConditionChoice(
                kind,
                conditions,
                layer,
                shrinkage,
                margin,
                tuple(c for c, m in zip(categories, met) if m),
                dict(zip(categories, balanced_accuracy(fired, val_labels, categories))),
                (),
            )
    return dataclasses.replace(best, scan=tuple(scan))
