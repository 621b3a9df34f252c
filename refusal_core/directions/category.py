"""Category directions: one difference in means per harm category, split into the part
every category shares and the part that is the category's own.

For category ``c`` with harmful representations ``H_c`` and the harmless ones ``B`` (block
input at one layer and post-instruction position):

- ``full_c = mean(H_c) - mean(B)``, the category's own difference in means;
- ``shared = mean_c(full_c)``, the mean over categories (each category weighs the same, so
  a category with more prompts does not pull the shared direction its way); with balanced
  categories it is the ordinary pooled DIM direction;
- ``specific_c = full_c - (full_c . s) s`` with ``s`` the unit shared direction: what is
  left of the category's direction once the common refusal direction is projected out.

The decomposition is the one that matches how the parts are used: ablating ``shared``
is ordinary single-direction ablation, and ``specific_c`` is orthogonal to it, so ablating
it alone tests whether a category has refusal of its own beyond the common direction, and
projecting onto it tells a category's prompts from the others' (conditional ablation's
condition, ``refusal_core.categories``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError, DirectionSet, cosine_matrix
from refusal_core.directions.dim import VANISHING
from refusal_core.directions.registry import DirectionMethod, FitInput, register, setting

__all__ = [
    "METHOD",
    "SHARED",
    "CategorySettings",
    "category_direction_set",
    "category_directions",
    "category_name",
    "fit",
]

SHARED = "category/shared"
PARTS = ("full", "specific")


def category_name(category: str, part: str = "full") -> str:
    """``category/<name>`` (its full difference in means) or ``category/<name>/specific``."""
    return f"category/{category}" if part == "full" else f"category/{category}/{part}"


def category_directions(
    harmful_points: torch.Tensor, harmless_points: torch.Tensor, categories: Sequence[str | None], min_prompts: int = 2
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """``(full, shared, specific)`` from ``[n_harmful, d]`` and ``[n_harmless, d]`` points.

    ``full`` and ``specific`` map each category with at least ``min_prompts`` prompts (in
    first-seen order; unlabelled prompts are skipped) to a ``[d]`` float32 vector; ``shared``
    is ``[d]``. Means are taken in float64.
    """
    if harmful_points.dim() != 2 or harmless_points.dim() != 2 or harmful_points.shape[1] != harmless_points.shape[1]:
        raise DirectionError(
            f"Need [n, d] points of equal width; got {tuple(harmful_points.shape)} and {tuple(harmless_points.shape)}."
        )
    if len(categories) != harmful_points.shape[0]:
        raise DirectionError(f"{harmful_points.shape[0]} harmful points but {len(categories)} category labels.")
    rows: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        if category is not None:
            rows.setdefault(category, []).append(index)
    kept = {category: index for category, index in rows.items() if len(index) >= min_prompts}
    if not kept:
        raise DirectionError(
            f"No category has {min_prompts} or more labelled harmful prompts; category directions need a harmful set "
            "with categories (e.g. builtin:harmful)."
        )
    harmless_mean = harmless_points.double().mean(0)
    full = {category: harmful_points[index].double().mean(0) - harmless_mean for category, index in kept.items()}
    shared = torch.stack(list(full.values())).mean(0)
    if not shared.norm() > 0:
        raise DirectionError("The shared direction is zero: harmful and harmless activations have the same mean.")
    unit = shared / shared.norm()
    specific = {category: vector - (vector @ unit) * unit for category, vector in full.items()}
    as_float = lambda vectors: {category: vector.float() for category, vector in vectors.items()}  # noqa: E731
    return as_float(full), shared.float(), as_float(specific)


def category_direction_set(
    harmful_points: torch.Tensor,
    harmless_points: torch.Tensor,
    categories: Sequence[str | None],
    provenance: dict,
    min_prompts: int = 2,
) -> DirectionSet:
    """``category/shared``, then per category ``category/<c>`` and ``category/<c>/specific``.

    Each direction's provenance is ``provenance`` (the one builder's record) plus
    ``category`` (None for the shared one), ``part`` (``shared``, ``full`` or ``specific``)
    and ``n_category`` (its prompt count). A specific part that vanishes (one category
    only) is left out and listed in ``meta["dropped"]``.
    """
    full, shared, specific = category_directions(harmful_points, harmless_points, categories, min_prompts)
    counts = {category: sum(1 for label in categories if label == category) for category in full}
    vectors, names, records = (
        [shared],
        [SHARED],
        [{**provenance, "category": None, "part": "shared", "n_category": sum(counts.values())}],
    )
    dropped = []
    for category in full:
        if not full[category].norm() > 0:
            raise DirectionError(f"Category {category!r} has a zero direction; its prompts match the harmless mean.")
        for part, vector in (("full", full[category]), ("specific", specific[category])):
            if not vector.norm() > VANISHING * full[category].norm():
                # With one category (or one that lies along the shared direction) nothing is left.
                dropped.append(category_name(category, part))
                continue
            vectors.append(vector)
            names.append(category_name(category, part))
            records.append({**provenance, "category": category, "part": part, "n_category": counts[category]})
    meta = {**provenance, "categories": list(full), "dropped": dropped}
    return DirectionSet(vectors=torch.stack(vectors), names=tuple(names), provenance=tuple(records), meta=meta)


@dataclass(frozen=True)
class CategorySettings:
    """Which categories get a direction."""

    min_prompts: int = setting(
        2, "categories with fewer labelled harmful prompts than this get no direction", minimum=1
    )


def fit(data: FitInput, settings: CategorySettings) -> DirectionSet:
    """The shared direction and every category's full and specific direction at ``layer``/``position``."""
    harmful_points, harmless_points = data.layer_points()
    provenance = data.provenance("category", settings, at_layer=True)
    return category_direction_set(
        harmful_points, harmless_points, data.harmful.categories, provenance, settings.min_prompts
    )


def summary(directions: DirectionSet) -> tuple[dict, list[str]]:
    """Each category's norms and the cosine of its full direction to the shared one."""
    shared = directions.vectors[directions.names.index(SHARED)]
    rows = []
    for name, record in zip(directions.names, directions.provenance):
        if record["part"] != "full":
            continue
        vector = directions.vectors[directions.names.index(name)]
        specific_name = category_name(record["category"], "specific")
        specific = (
            directions.vectors[directions.names.index(specific_name)]
            if specific_name in directions.names
            else torch.zeros(1)
        )
        cosine = float(cosine_matrix(torch.stack([vector, shared]))[0, 1])
        rows.append(
            {
                "category": record["category"],
                "n": record["n_category"],
                "norm": float(vector.norm()),
                "specific_norm": float(specific.norm()),
                "cos_shared": cosine,
            }
        )
    lines = [
        f"{len(rows)} categories; shared direction norm {float(shared.norm()):.3f}",
        f"{'category':24s} {'n':>3s} {'norm':>8s} {'specific':>8s} {'cos(shared)':>11s}",
    ]
    lines += [
        f"{r['category']:24s} {r['n']:3d} {r['norm']:8.3f} {r['specific_norm']:8.3f} {r['cos_shared']:11.3f}"
        for r in rows
    ]
    return {"shared_norm": float(shared.norm()), "categories": rows}, lines


METHOD = register(
    DirectionMethod(
        name="category",
        title="Category directions",
        help="per harm category: its difference in means, the shared part and its category-specific part (one layer)",
        settings=CategorySettings,
        fit=fit,
        reads="layer",
        summary=summary,
    )
)
