"""The interventions the labelled reference set and the judge checks are generated under.

One function builds them all from a model's own train-split activations, so the script that
regenerates the reference replies and the slow check on the test split use the same
directions: the last-token difference in means at a layer, the 3x3 SOM at a layer (all nine
directions), random directions, and activation addition at a normal and a huge coefficient.
"""

from __future__ import annotations

import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.dim import dim_from_activations, dim_name
from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import LoadedModel

__all__ = ["DIM_LAYER", "SOM_LAYER", "reference_interventions", "train_directions"]

# The organism report's selected candidate (README: position -1, layer 22) and the SOM layer
# of the reproduction (`directions som --layer 18`).
DIM_LAYER = 22
SOM_LAYER = 18
PARTIAL_SOM_LAYER = 20
N_RANDOM = 64
HUGE_COEFF = 8.0


def train_directions(loaded: LoadedModel) -> tuple[DirectionSet, DirectionSet, DirectionSet]:
    """(DIM at (-1, DIM_LAYER), 3x3 SOM at SOM_LAYER, 3x3 SOM at PARTIAL_SOM_LAYER) from the train splits."""
    from refusal_core.activations.extract import extract_activations
    from refusal_core.directions.som import SomSettings, som_direction_set, train_som
    from refusal_core.prompts.loaders import builtin

    harmful, harmless = builtin("harmful", "train"), builtin("harmless", "train")
    harmful_acts = extract_activations(loaded, harmful.instructions)
    harmless_acts = extract_activations(loaded, harmless.instructions)
    provenance = {
        "model": loaded.spec,
        "data_hash": f"{harmful.content_hash()[:16]}:{harmless.content_hash()[:16]}",
        "params": {},
    }
    dim = dim_from_activations(harmful_acts, harmless_acts, provenance, [DIM_LAYER]).select([dim_name(-1, DIM_LAYER)])
    soms = []
    for layer in (SOM_LAYER, PARTIAL_SOM_LAYER):
        result = train_som(
            harmful_acts.block_input(layer, -1), harmless_acts.block_input(layer, -1), SomSettings(x=3, y=3, seed=0)
        )
        soms.append(som_direction_set(result, {**provenance, "layer": layer, "position": -1}))
    return dim, soms[0], soms[1]


def reference_interventions(loaded: LoadedModel) -> dict[str, Intervention]:
    """Name -> intervention: baseline, dim-ablate, som-all, som-top2, random-64, actadd, actadd-huge."""
    dim, som, partial_som = train_directions(loaded)
    random_directions = torch.randn(N_RANDOM, loaded.d_model, generator=torch.Generator().manual_seed(0))
    variants = [
        Intervention(),
        Intervention.from_directions("dim-ablate", dim),
        Intervention.from_directions("som-all", som),
        Intervention.from_directions("som-top2", partial_som, names=list(partial_som.names[:2])),
        Intervention(name=f"random-{N_RANDOM}", ablate=random_directions),
        Intervention.from_direction_addition("actadd", dim, dim.names[0], 1.0, DIM_LAYER),
        Intervention.from_direction_addition("actadd-huge", dim, dim.names[0], HUGE_COEFF, DIM_LAYER),
    ]
    return {variant.name: variant for variant in variants}
