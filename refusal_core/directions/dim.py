"""Difference-in-means (DIM) directions after Arditi et al. (2024): one candidate per
(post-instruction position, layer), the harmful mean minus the harmless mean of the
residual stream entering the block.
"""

from __future__ import annotations

from typing import Sequence

import torch

from refusal_core.activations.extract import Activations
from refusal_core.directions.base import DirectionError, DirectionSet

__all__ = ["VANISHING", "build_dim_set", "dim_direction_set", "dim_directions", "dim_from_activations", "dim_name"]


def build_dim_set(harmful: Activations, harmless: Activations, model: str, hash_of_data: str) -> DirectionSet:
    """Every (position, layer) difference-in-means candidate, ``dim/pos{p}/layer{l}``.

    Layers are the block inputs ``0..n_layers-1`` (the residual stream entering each
    block, as in Arditi et al.); the final block output is not a candidate. Cells whose
    difference vanishes are left out and listed in ``meta["dropped"]``: at layer 0 a
    template token's residual is its embedding, identical for every prompt.
    """
    provenance = {
        "model": model,
        "data_hash": hash_of_data,
        "params": {"n_harmful": int(harmful.acts.shape[0]), "n_harmless": int(harmless.acts.shape[0])},
    }
    return dim_from_activations(harmful, harmless, provenance)


# Relative norm under which a difference in means counts as zero (no direction).
VANISHING = 1e-6


def dim_directions(harmful_acts: torch.Tensor, harmless_acts: torch.Tensor) -> torch.Tensor:
    """Difference in means, ``mean(harmful) - mean(harmless)`` over the first (prompt) axis.

    Inputs are ``[n_prompts, ...trailing]`` with equal trailing shapes (typically
    ``[n_prompts, n_positions, n_layers, d_model]``); the result has the trailing shape.
    Means are accumulated in float64 so a direction that is small against large activations
    is not lost to rounding.
    """
    if harmful_acts.shape[1:] != harmless_acts.shape[1:]:
        raise DirectionError(f"Activation shapes differ: {tuple(harmful_acts.shape)} vs {tuple(harmless_acts.shape)}.")
    if harmful_acts.shape[0] == 0 or harmless_acts.shape[0] == 0:
        raise DirectionError("Both prompt sets need at least one prompt.")
    directions = harmful_acts.double().mean(0) - harmless_acts.double().mean(0)
    if not torch.isfinite(directions).all():
        raise DirectionError("Activations contain NaN or infinite values; check the model dtype (try float32).")
    return directions.float()


def dim_name(position: int, layer: int) -> str:
    """The name of the DIM candidate at ``position`` (offset from the prompt's end) and ``layer``."""
    return f"dim/pos{int(position)}/layer{int(layer)}"


def dim_direction_set(
    harmful_acts: torch.Tensor,
    harmless_acts: torch.Tensor,
    positions: Sequence[int],
    layers: Sequence[int],
    provenance: dict,
) -> DirectionSet:
    """Every (position, layer) DIM candidate as a named set: ``dim/pos{p}/layer{l}``.

    ``harmful_acts`` and ``harmless_acts`` are ``[n_prompts, n_positions, n_layers, d]``;
    ``positions`` and ``layers`` label their axes 1 and 2. A candidate whose norm vanishes
    (at most ``VANISHING`` times the largest) is left out and listed in ``meta["dropped"]``:
    at layer 0 a template token's residual is its embedding alone, the same for every
    prompt, so its difference in means is 0 up to rounding.
    """
    directions = dim_directions(harmful_acts, harmless_acts)
    norms = directions.norm(dim=-1)
    vectors, names, records, dropped = [], [], [], []
    for pos_index, position in enumerate(positions):
        for layer_index, layer in enumerate(layers):
            if not norms[pos_index, layer_index] > VANISHING * norms.max():
                dropped.append(dim_name(position, layer))
                continue
            vectors.append(directions[pos_index, layer_index])
            names.append(dim_name(position, layer))
            records.append({**provenance, "layer": int(layer), "position": int(position), "method": "dim"})
    if not vectors:
        raise DirectionError("Every difference-in-means candidate is zero: the two prompt sets give identical activations.")
    meta = {**provenance, "method": "dim", "dropped": dropped}
    return DirectionSet(vectors=torch.stack(vectors), names=tuple(names), provenance=tuple(records), meta=meta)


def dim_from_activations(harmful, harmless, provenance: dict, layers: Sequence[int] | None = None) -> DirectionSet:
    """DIM candidates from two ``Activations`` (harmful, harmless) taken at the same positions.

    ``layers`` are block inputs (default: every block ``0..n_layers-1``, as in Arditi et
    al.); the final block output that ``Activations`` also records is never a candidate.
    The CLI, the report, the dashboard and the many-directions script all build their
    candidate sets here.
    """
    if tuple(harmful.positions) != tuple(harmless.positions):
        raise DirectionError("Harmful and harmless activations were taken at different positions; recompute both.")
    n_layers = harmful.n_layers
    chosen = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise DirectionError(f"Layers {bad or chosen} are not block inputs of this model; use layers in 0..{n_layers - 1}.")
    return dim_direction_set(harmful.acts[:, :, chosen], harmless.acts[:, :, chosen], harmful.positions, chosen, provenance)
