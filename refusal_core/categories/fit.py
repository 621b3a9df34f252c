"""What the categories report and the Categories page fit on the train and val splits: the
category directions at the ablation layer, and per category a condition (``conditions``:
by default linear discriminant analysis over the categories and the harmless set, a prompt
firing the one category whose score beats the others') with its layer, shrinkage and
margin chosen on val.

The plain difference in means does not tell one category from another well: its
direction is dominated by features on which prompts of every category vary, so the
conditions are discriminants in the within-group covariance's metric (shrunk towards a
multiple of the identity, since a category has far fewer prompts than the residual has
dimensions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.activations.extract import Activations, extract_activations
from refusal_core.categories.conditions import HARMLESS, KINDS, MARGINS, SHRINKAGES, choose_conditions, default_grid
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.category import SHARED, category_direction_set
from refusal_core.directions.provenance import build_provenance
from refusal_core.errors import SettingsError
from refusal_core.interventions.conditional import Condition
from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import PromptSet, sample_prompts

__all__ = ["CategoryFit", "fit_categories"]


@dataclass(frozen=True)
class CategoryFit:
    """Category directions (``directions``: shared, full and specific at ``layer``, last
    post-instruction token) and one condition per category (``conditions`` of ``condition_kind``,
    read at ``condition_layer``, averaged over the post-instruction tokens), with the val figures
    behind the choice: ``val_accuracy`` balanced accuracy per category, ``val_goal`` the
    categories whose val prompts fire as the goal needs, ``scan`` every setting tried."""

    directions: DirectionSet
    conditions: dict[str, Condition]
    layer: int
    condition_layer: int
    val_accuracy: dict[str, float]
    condition_kind: str = "exclusive"
    shrinkage: float = 1.0
    margin: float | None = 0.0
    val_goal: tuple[str, ...] = ()
    scan: tuple[dict, ...] = ()

    @property
    def categories(self) -> list[str]:
        return list(self.conditions)

    def condition_for(self, categories: Sequence[str]) -> Condition:
        """One condition that fires when any of ``categories`` fires."""
        chosen = [self.conditions[c] for c in categories]
        groups, offset = [], 0
        for condition in chosen:  # each condition's groups, numbered after the ones before it
            groups += [g + offset for g in condition.group_ids]
            offset += max(condition.group_ids) + 1
        labels = tuple(
            label
            for c, condition in zip(categories, chosen)
            for label in (condition.labels or (c,) * len(condition.thresholds))
        )
        return Condition(
            torch.cat([c.directions for c in chosen]),
            tuple(t for c in chosen for t in c.thresholds),
            self.condition_layer,
            labels=labels,
            groups=tuple(groups),
        )

    def switch_off(self, categories: Sequence[str], name: str | None = None) -> Intervention:
        """Ablate the shared refusal direction on the prompts of ``categories`` only."""
        unknown = [c for c in categories if c not in self.conditions]
        if unknown or not categories:
            raise SettingsError(f"Unknown categories {unknown or '(none)'}; choose from {', '.join(self.conditions)}.")
        shared = self.directions.select([SHARED]).vectors
        return Intervention(
            name=name or "refusal off: " + ", ".join(categories),
            ablate=shared,
            condition=self.condition_for(categories),
        )


def _acts(loaded: LoadedModel, prompts: PromptSet, batch_size: int, progress) -> Activations:
    return extract_activations(loaded, prompts.instructions, batch_size=batch_size, progress=progress)


def fit_categories(
    loaded: LoadedModel,
    layer: int,
    condition_layer: int | None = None,
    shrinkage: float | None = None,
    harmful: PromptSet | None = None,
    harmless: PromptSet | None = None,
    batch_size: int = 16,
    progress=lambda label: None,
    max_prompts: int | None = None,
    kind: str = "exclusive",
    margin: float | None = None,
) -> CategoryFit:
    """Fit on the built-in train splits (or the given sets), choose the conditions on val.

    ``condition_layer``, ``shrinkage``, ``margin``: None scans ``conditions.default_grid``,
    ``SHRINKAGES``, ``MARGINS`` and keeps the best on val; a value fixes it. ``kind``: one of
    ``conditions.KINDS``. ``max_prompts`` caps every set (train and val), taken round-robin
    over categories.
    """
    cap = (lambda prompts: sample_prompts(prompts, max_prompts)) if max_prompts else (lambda prompts: prompts)
    harmful = cap(harmful or builtin("harmful", "train"))
    harmless = cap(harmless or builtin("harmless", "train"))
    if kind not in KINDS:
        raise SettingsError(f"Unknown condition kind {kind!r}; use one of {', '.join(KINDS)}.")
    for which, value in (("layer", layer), ("condition layer", condition_layer)):
        if value is not None and not 0 <= value < loaded.n_layers:
            raise SettingsError(f"The {which} {value} is out of range; this model has layers 0..{loaded.n_layers - 1}.")
    if shrinkage is not None and not (math.isfinite(shrinkage) and shrinkage > 0):
        raise SettingsError(f"The shrinkage must be a finite number > 0, got {shrinkage}.")
    if margin is not None and not math.isfinite(margin):
        raise SettingsError(f"The margin must be a finite number, got {margin}.")
    harmful_acts, harmless_acts = (
        _acts(loaded, s, batch_size, progress(f"{s.name} activations")) for s in (harmful, harmless)
    )
    provenance = build_provenance(loaded.spec, harmful, harmless, "category", layer=layer, position=-1)
    directions = category_direction_set(
        harmful_acts.block_input(layer), harmless_acts.block_input(layer), harmful.categories, provenance
    )
    categories = directions.meta["categories"]
    val_harmful, val_harmless = cap(builtin("harmful", "val")), cap(builtin("harmless", "val"))
    val_acts = [_acts(loaded, s, batch_size, progress(f"{s.name} activations")) for s in (val_harmful, val_harmless)]
    layers = default_grid(loaded.n_layers) if condition_layer is None else (condition_layer,)

    def means(acts_pair, at: int) -> torch.Tensor:
        return torch.cat([acts.residual(at).mean(1) for acts in acts_pair])

    choice = choose_conditions(
        {at: means((harmful_acts, harmless_acts), at) for at in layers},
        [c or "(none)" for c in harmful.categories] + [HARMLESS] * len(harmless),
        {at: means(val_acts, at) for at in layers},
        list(val_harmful.categories) + [None] * len(val_harmless),
        categories,
        kind,
        SHRINKAGES if shrinkage is None else (shrinkage,),
        MARGINS if margin is None else (margin,),
    )
    return CategoryFit(
        directions,
        choice.conditions,
        layer,
        choice.layer,
        choice.val_accuracy,
        choice.kind,
        choice.shrinkage,
        choice.margin,
        choice.val_goal,
        choice.scan,
    )
