"""What the categories report and the Categories page fit on the train and val splits: the
category directions at the ablation layer, and per category a discriminant condition
direction at the condition layer with its threshold chosen on val.

The condition direction is a linear discriminant, ``(S_w + lambda I)^-1 (mean_c - mean_rest)``:
the category's mean against every other prompt (the other harmful categories and the
harmless set) in the within-group covariance's metric (shrunk towards a multiple of the
identity, since a category has far fewer prompts than the residual has dimensions).
The plain difference in means does not tell one category from another well: its
direction is dominated by features on which prompts of every category vary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.activations.extract import Activations, extract_activations
from refusal_core.errors import SettingsError
from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.directions.category import SHARED, category_direction_set
from refusal_core.directions.provenance import build_provenance
from refusal_core.interventions.conditional import Condition, fires, projection_scores
from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import PromptSet, sample_prompts

__all__ = ["CategoryFit", "choose_threshold", "discriminant_directions", "fit_categories"]


def discriminant_directions(points: torch.Tensor, labels: Sequence[str], targets: Sequence[str], shrinkage: float = 0.1) -> torch.Tensor:
    """``[len(targets), d]`` discriminants of each target label against all other points.

    ``points`` ``[n, d]``; the within-label covariance is shrunk by ``shrinkage`` times its
    mean variance on the diagonal. Computed in float64, returned as float32.
    """
    x = points.double()
    groups = {label: [i for i, other in enumerate(labels) if other == label] for label in dict.fromkeys(labels)}
    means = {label: x[index].mean(0) for label, index in groups.items()}
    centred = x - torch.stack([means[label] for label in labels])
    within = centred.T @ centred / len(x)
    regular = within + shrinkage * within.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    out = []
    for target in targets:
        if target not in groups:
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


@dataclass(frozen=True)
class CategoryFit:
    """Category directions (``directions``: shared, full and specific at ``layer``, last
    post-instruction token) and one condition per category (``conditions``, read at
    ``condition_layer``, averaged over the post-instruction tokens), with the val scores
    behind each threshold (``val_accuracy``: balanced accuracy per category)."""

    directions: DirectionSet
    conditions: dict[str, Condition]
    layer: int
    condition_layer: int
    val_accuracy: dict[str, float]

    @property
    def categories(self) -> list[str]:
        return list(self.conditions)

    def condition_for(self, categories: Sequence[str]) -> Condition:
        """One condition that fires when any of ``categories`` fires."""
        chosen = [self.conditions[c] for c in categories]
        return Condition(torch.cat([c.directions for c in chosen]), tuple(t for c in chosen for t in c.thresholds),
                         self.condition_layer, labels=tuple(categories))

    def switch_off(self, categories: Sequence[str], name: str | None = None) -> Intervention:
        """Ablate the shared refusal direction on the prompts of ``categories`` only."""
        unknown = [c for c in categories if c not in self.conditions]
        if unknown or not categories:
            raise SettingsError(f"Unknown categories {unknown or '(none)'}; choose from {', '.join(self.conditions)}.")
        shared = self.directions.select([SHARED]).vectors
        return Intervention(name=name or "refusal off: " + ", ".join(categories), ablate=shared, condition=self.condition_for(categories))


def _acts(loaded: LoadedModel, prompts: PromptSet, batch_size: int, progress) -> Activations:
    return extract_activations(loaded, prompts.instructions, batch_size=batch_size, progress=progress)


def fit_categories(
    loaded: LoadedModel,
    layer: int,
    condition_layer: int,
    shrinkage: float = 0.1,
    harmful: PromptSet | None = None,
    harmless: PromptSet | None = None,
    batch_size: int = 16,
    progress=lambda label: None,
    max_prompts: int | None = None,
) -> CategoryFit:
    """Fit on the built-in train splits (or the given sets), choose thresholds on val.

    ``max_prompts`` caps every set (train and val), taken round-robin over categories.
    """
    cap = (lambda prompts: sample_prompts(prompts, max_prompts)) if max_prompts else (lambda prompts: prompts)
    harmful = cap(harmful or builtin("harmful", "train"))
    harmless = cap(harmless or builtin("harmless", "train"))
    for which, value in (("layer", layer), ("condition layer", condition_layer)):
        if not 0 <= value < loaded.n_layers:
            raise SettingsError(f"The {which} {value} is out of range; this model has layers 0..{loaded.n_layers - 1}.")
    harmful_acts, harmless_acts = (_acts(loaded, s, batch_size, progress(f"{s.name} activations")) for s in (harmful, harmless))
    provenance = build_provenance(loaded.spec, harmful, harmless, "category", layer=layer, position=-1)
    directions = category_direction_set(harmful_acts.block_input(layer), harmless_acts.block_input(layer), harmful.categories, provenance)
    categories = directions.meta["categories"]
    points = torch.cat([harmful_acts.acts[:, :, condition_layer].mean(1), harmless_acts.acts[:, :, condition_layer].mean(1)])
    labels = [c or "(none)" for c in harmful.categories] + ["(harmless)"] * len(harmless)
    discriminants = discriminant_directions(points, labels, categories, shrinkage)
    val_harmful, val_harmless = cap(builtin("harmful", "val")), cap(builtin("harmless", "val"))
    val_acts = [_acts(loaded, s, batch_size, progress(f"{s.name} activations")) for s in (val_harmful, val_harmless)]
    val_scores = torch.cat([projection_scores(a.acts[:, :, condition_layer], discriminants) for a in val_acts])
    val_labels = list(val_harmful.categories) + [None] * len(val_harmless)
    conditions, accuracy = {}, {}
    for k, category in enumerate(categories):
        mine = torch.tensor([label == category for label in val_labels])
        threshold = choose_threshold(val_scores[mine, k], val_scores[~mine, k])
        conditions[category] = Condition(discriminants[k], (threshold,), condition_layer, labels=(category,))
        fired = torch.tensor(fires(val_scores[:, k : k + 1], (threshold,)))
        accuracy[category] = float((fired[mine].double().mean() + (~fired[~mine]).double().mean()) / 2)
    return CategoryFit(directions, conditions, layer, condition_layer, accuracy)
