"""Which candidate to take: Arditi et al.'s filters, the lowest bypass among candidates that
pass them, and, when none passes, the closest one with the rule that found it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.selection.result import SelectionFilters, SelectionResult

__all__ = [
    "CLOSEST_DIM",
    "DIM_SET",
    "OPTIMIZED_SET",
    "SELECTED_DIM",
    "apply_filters",
    "lowest_bypass",
    "Pick",
    "select_direction",
    "select_with_fallback",
    "why_none",
]

# The dashboard's names for the direction sets the policy and the methods make.
DIM_SET = "DIM"
SELECTED_DIM = "Selected DIM"
CLOSEST_DIM = "Closest DIM"
OPTIMIZED_SET = "Optimized"


def apply_filters(
    bypass: torch.Tensor,
    induce: torch.Tensor,
    kl: torch.Tensor,
    layers: Sequence[int],
    n_layers: int,
    filters: SelectionFilters = SelectionFilters(),
) -> torch.Tensor:
    """Boolean ``[n_positions, n_layers_scored]`` mask of candidates that pass every filter.

    Score grids are ``[n_positions, len(layers)]``; ``layers`` labels their second axis and
    ``n_layers`` is the model's depth. A NaN in any score fails the candidate.
    """
    layer_values = torch.tensor(list(layers), dtype=torch.float64).expand_as(bypass)
    early = layer_values < filters.max_layer_fraction * n_layers
    # Comparisons with NaN are False, so missing scores fail without a separate check.
    calm = kl.double() <= filters.max_kl
    inducing = induce.double() >= filters.min_induce
    return early & calm & inducing & ~torch.isnan(bypass.double())


def why_none(
    bypass: torch.Tensor,
    induce: torch.Tensor,
    kl: torch.Tensor,
    layers: Sequence[int],
    n_layers: int,
    filters: SelectionFilters,
) -> str:
    """A sentence counting the candidates each filter removed, for when none passes."""
    scored = ~torch.isnan(bypass.double())
    layer_values = torch.tensor(list(layers), dtype=torch.float64).expand_as(bypass)
    counts = {
        f"layer >= {filters.max_layer_fraction:g} * {n_layers}": scored
        & ~(layer_values < filters.max_layer_fraction * n_layers),
        f"KL > {filters.max_kl:g} (or missing)": scored & ~(kl.double() <= filters.max_kl),
        f"induce < {filters.min_induce:g} (or missing)": scored & ~(induce.double() >= filters.min_induce),
    }
    parts = [f"{int(mask.sum())} by {label}" for label, mask in counts.items() if mask.any()]
    detail = "; ".join(parts) if parts else "no candidate was scored"
    return f"No candidate passed the filters out of {int(scored.sum())} ({detail}). Relax SelectionFilters or add candidates."


def lowest_bypass(
    bypass: torch.Tensor, passed: torch.Tensor, positions: Sequence[int], layers: Sequence[int]
) -> tuple[int, int] | None:
    """(position, layer) with the lowest bypass among passing cells; ties go to the lower layer."""
    best: tuple[float, int, int] | None = None
    for i, position in enumerate(positions):
        for j, layer in enumerate(layers):
            if not passed[i, j]:
                continue
            key = (float(bypass[i, j]), int(layer), int(position))
            if best is None or key < best:
                best = key
    return None if best is None else (best[2], best[1])


def select_direction(result: SelectionResult) -> tuple[int, int] | None:
    """The ``(position, layer)`` with the lowest bypass score among passing candidates.

    Ties go to the lower layer (then the earlier position). None when nothing passes;
    ``result.reason`` then says which filters removed the candidates.
    """
    return lowest_bypass(result.bypass, result.passed, result.positions, result.layers)


@dataclass(frozen=True)
class Pick:
    """The candidate the policy takes, and the rule that found it.

    ``rule`` is ``"all filters"`` when a candidate passed Arditi et al.'s filters; else
    ``"KL filter dropped"`` (the lowest bypass among candidates that still pass the layer
    and induce filters: a direction that removes refusal and also induces it, whatever it
    costs in KL); else ``"no filter"`` (the lowest bypass of all); ``"no candidate"`` with
    ``cell`` None when nothing was scored. ``name`` is the candidate's name in the scored set.
    """

    cell: tuple[int, int] | None
    rule: str
    name: str | None

    @property
    def chosen(self) -> bool:
        """Whether the candidate passed every filter (else it is only the closest one)."""
        return self.rule == "all filters"

    @property
    def set_name(self) -> str:
        """The dashboard set the candidate goes into: *Selected DIM* or *Closest DIM*."""
        return SELECTED_DIM if self.chosen else CLOSEST_DIM

    def describe(self) -> str:
        """How the candidate was found, as the start of a sentence."""
        if self.chosen:
            return "Chosen"
        if self.rule == "no filter":
            return "The lowest bypass of all, ignoring every filter"
        return f"The closest, with the {self.rule}"


def select_with_fallback(result: SelectionResult) -> Pick:
    """Arditi et al.'s choice, or, when no candidate passes, the closest one to it (see :class:`Pick`).

    The CLI's ``directions select --save-direction``, the organism report and the
    Directions page all take their direction here.
    """
    cell, rule = select_direction(result), "all filters"
    eligible = result.eligible()
    if cell is None:
        relaxed = dataclasses.replace(result.filters, max_kl=math.inf)
        passed = (
            apply_filters(result.bypass, result.induce, result.kl, result.layers, result.n_layers, relaxed) & eligible
        )
        cell, rule = lowest_bypass(result.bypass, passed, result.positions, result.layers), "KL filter dropped"
    if cell is None:
        scored = ~torch.isnan(result.bypass.double()) & eligible
        cell, rule = lowest_bypass(result.bypass, scored, result.positions, result.layers), "no filter"
    if cell is None:
        return Pick(None, "no candidate", None)
    return Pick(cell, rule, result.names[result.positions.index(cell[0])][result.layers.index(cell[1])])
