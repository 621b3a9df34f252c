"""Which candidate to take: Arditi et al.'s filters, the lowest bypass among candidates that
pass them, and, when none passes, the closest one with the rule that found it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from refusal_core.selection.result import SelectionFilters, SelectionResult

__all__ = ["apply_filters", "select_direction", "select_relaxing"]


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


def _why_none(
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
        f"layer >= {filters.max_layer_fraction:g} * {n_layers}": scored & ~(layer_values < filters.max_layer_fraction * n_layers),
        f"KL > {filters.max_kl:g} (or missing)": scored & ~(kl.double() <= filters.max_kl),
        f"induce < {filters.min_induce:g} (or missing)": scored & ~(induce.double() >= filters.min_induce),
    }
    parts = [f"{int(mask.sum())} by {label}" for label, mask in counts.items() if mask.any()]
    detail = "; ".join(parts) if parts else "no candidate was scored"
    return f"No candidate passed the filters out of {int(scored.sum())} ({detail}). Relax SelectionFilters or add candidates."


def _choose(
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
    return _choose(result.bypass, result.passed, result.positions, result.layers)


def select_relaxing(result: SelectionResult) -> tuple[tuple[int, int] | None, str]:
    """Arditi et al.'s choice, or, when no candidate passes, the closest one to it.

    Returns ``((position, layer), rule)``. ``rule`` is ``"all filters"`` when a candidate
    passed them; else ``"KL filter dropped"``: the lowest bypass among candidates that
    still pass the layer and induce filters (a direction that removes refusal and also
    induces it, whatever it costs in KL); else ``"no filter"``: the lowest bypass of all.
    ``(None, "no candidate")`` when nothing was scored.
    """
    chosen = select_direction(result)
    if chosen is not None:
        return chosen, "all filters"
    relaxed = dataclasses.replace(result.filters, max_kl=math.inf)
    passed = apply_filters(result.bypass, result.induce, result.kl, result.layers, result.n_layers, relaxed)
    chosen = _choose(result.bypass, passed, result.positions, result.layers)
    if chosen is not None:
        return chosen, "KL filter dropped"
    chosen = _choose(result.bypass, ~torch.isnan(result.bypass.double()), result.positions, result.layers)
    return (chosen, "no filter") if chosen is not None else (None, "no candidate")
