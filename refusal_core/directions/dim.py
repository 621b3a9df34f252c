"""Difference-in-means (DIM) directions after Arditi et al. (2024): one candidate per
(post-instruction position, layer), the harmful mean minus the harmless mean of the
residual stream entering the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError, DirectionSet, cosine_matrix
from refusal_core.directions.registry import DirectionMethod, FitInput, register

__all__ = [
    "METHOD",
    "VANISHING",
    "DimSettings",
    "dim_direction_set",
    "dim_directions",
    "dim_from_activations",
    "dim_name",
    "fit",
]


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
        raise DirectionError(
            "Every difference-in-means candidate is zero: the two prompt sets give identical activations."
        )
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
    chosen = list(harmful.block_inputs) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise DirectionError(
            f"Layers {bad or chosen} are not block inputs of this model; use layers in 0..{n_layers - 1}."
        )
    # By layer number: the activations may hold a subset of the layers (``--layers``).
    harmful_at = torch.stack([harmful.residual(layer) for layer in chosen], dim=2)
    harmless_at = torch.stack([harmless.residual(layer) for layer in chosen], dim=2)
    return dim_direction_set(harmful_at, harmless_at, harmful.positions, chosen, provenance)


@dataclass(frozen=True)
class DimSettings:
    """DIM has no settings: every post-instruction position and every block input is a candidate."""


def fit(data: FitInput, settings: DimSettings) -> DirectionSet:
    """Every (position, layer) DIM candidate, ``dim/pos{p}/layer{l}``, from the prompt sets' activations.

    Layers are the block inputs ``0..n_layers-1`` (the residual stream entering each
    block, as in Arditi et al.); the final block output is not a candidate. Cells whose
    difference vanishes are left out and listed in ``meta["dropped"]``: at layer 0 a
    template token's residual is its embedding, identical for every prompt.
    """
    harmful, harmless = data.activations()
    return dim_from_activations(harmful, harmless, data.provenance("dim", settings))


def summary(directions: DirectionSet) -> tuple[dict, list[str]]:
    """The last post-instruction token, layer by layer (the usual place to read a direction):
    each candidate's norm and its cosine to the next layer's."""
    records = [(r["layer"], i) for i, r in enumerate(directions.provenance) if r["position"] == -1]
    vectors = directions.vectors[[index for _, index in records]]
    norms = vectors.norm(dim=-1).tolist()
    cosines = cosine_matrix(vectors)
    adjacent = [float(cosines[i, i + 1]) for i in range(len(records) - 1)] + [None]
    rows = [{"layer": layer, "norm": norm, "cos_next": cos} for (layer, _), norm, cos in zip(records, norms, adjacent)]
    dropped = directions.meta.get("dropped", [])
    positions = sorted({r["position"] for r in directions.provenance})
    layers = sorted({r["layer"] for r in directions.provenance})
    lines = [f"{len(directions)} DIM directions (positions {positions} x layers 0..{layers[-1]})"]
    if dropped:
        lines.append(
            f"Left out {len(dropped)} zero candidates (template tokens at layer 0 are identical for every prompt)."
        )
    lines.append("layer  norm(pos -1)  cos(next layer)")
    lines += [
        f"{row['layer']:5d}  {row['norm']:11.3f}  " + (f"{row['cos_next']:.3f}" if row["cos_next"] is not None else "")
        for row in rows
    ]
    return {"n_directions": len(directions), "dropped": dropped, "pos-1": rows}, lines


METHOD = register(
    DirectionMethod(
        name="dim",
        title="Difference in means",
        help="difference-in-means directions for every (position, layer)",
        settings=DimSettings,
        fit=fit,
        summary=summary,
    )
)
