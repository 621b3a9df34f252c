"""How well each direction family's whole pool recovers a model's planted directions.

No generation: the families of ``experiments many-directions`` (DIM, one SOM per seed, the
clusters of per-prompt directions) are fit at one layer on the train split, exactly as that
comparison fits them, and each pool (and each of its directions) is scored against the planted
directions (``directions.planted.recovery``). The searched subsets and their ablation results
come from ``experiments many-directions``, which adds the same scores to every point.
"""

from __future__ import annotations

import time

from refusal_core.activations.extract import extract_activations
from refusal_core.directions.planted import load_planted, recovery
from refusal_core.errors import UserError
from refusal_core.experiments import families as fam
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.loaders import builtin

__all__ = ["format_pool_recovery", "pool_recovery"]


def pool_recovery(
    loaded: LoadedModel, layer: int | None = None, som_seeds=(0, 1, 2), som_grid=(3, 3), clusters: int = 6
) -> dict:
    """Per family: the pool's size, its best single direction's |cosine| and its span's cosine
    with each planted direction, and which direction is best for each."""
    started = time.perf_counter()
    planted = load_planted(loaded.source)
    if planted is None:
        raise UserError(
            f"{loaded.spec} holds no planted directions; build the planted variant with "
            "python -m refusal_core organism build --variant two-mechanisms"
        )
    layer = int(planted.provenance[0]["layer"]) if layer is None else layer
    if not 0 <= layer < loaded.n_layers:
        raise UserError(f"Layer {layer} does not exist: this model has layers 0..{loaded.n_layers - 1}.")
    harmful_set, harmless_set = builtin("harmful", "train"), builtin("harmless", "train")
    acts = [extract_activations(loaded, s.instructions) for s in (harmful_set, harmless_set)]
    args = (acts[0], acts[1], harmful_set, harmless_set, loaded.spec, layer)
    families = [fam.dim_family(*args)] + [fam.som_family(*args, som_grid, seed) for seed in som_seeds]
    if clusters:
        families.append(fam.cluster_family(*args, clusters))
    rows = []
    for family in families:
        scores = recovery(family.pool.vectors, planted)
        singles = [recovery(vector[None], planted) for vector in family.pool.vectors]
        best_of = {
            name: family.pool.names[max(range(len(singles)), key=lambda i: singles[i][name]["best"])]
            for name in planted.names
        }
        rows.append({"family": family.name, "n": len(family.pool), "recovery": scores, "best_direction": best_of})
    return {
        "model": loaded.spec,
        "layer": layer,
        "planted": list(planted.names),
        "families": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_pool_recovery(result: dict) -> str:
    names = result["planted"]
    lines = [
        f"{result['model']}, layer {result['layer']}: each family's whole pool against the planted directions",
        f"{'family':12s} {'n':>2s}  " + "  ".join(f"{n + ' best':>14s} {n + ' span':>14s}" for n in names),
    ]
    for row in result["families"]:
        lines.append(
            f"{row['family']:12s} {row['n']:2d}  "
            + "  ".join(f"{row['recovery'][n]['best']:14.3f} {row['recovery'][n]['span']:14.3f}" for n in names)
        )
    lines.append(f"({result['seconds']} s)")
    return "\n".join(lines)
