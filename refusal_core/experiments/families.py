"""The direction families compared at one layer: one DIM direction, the directions of a SOM
per seed, the centroids of clustered per-prompt directions and one optimized (RDO) direction.

Every family is read at the last post-instruction token of the train prompts, so the
families differ only in how they turn the same representations into directions.
"""

from __future__ import annotations

from dataclasses import dataclass

from refusal_core.activations.extract import Activations
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.clustering import cluster_direction_set, cluster_directions
from refusal_core.directions.dim import dim_from_activations, dim_name
from refusal_core.directions.per_prompt import representation_directions
from refusal_core.directions.provenance import build_provenance
from refusal_core.directions.som import SomSettings, som_direction_set, train_som
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.prompts.sets import PromptSet, sample_prompts
from refusal_core.selection.optimize import OptimizeSettings, optimize_direction

__all__ = ["POSITION", "Family", "dim_family", "cluster_family", "rdo_family", "som_family"]

# The last post-instruction token: where Arditi et al. and the SOM paper read directions.
POSITION = -1


@dataclass(frozen=True)
class Family:
    """One family's pool at a layer. ``searched``: subsets of k = 1..K are chosen by the
    subset search; otherwise the pool is a single direction, reported at k = 1 only.
    ``seed`` is the SOM seed (None for the other families)."""

    name: str
    pool: DirectionSet
    searched: bool
    seed: int | None = None


def dim_family(
    harmful: Activations, harmless: Activations, harmful_set: PromptSet, harmless_set: PromptSet, spec: str, layer: int
) -> Family:
    """The single difference-in-means direction of ``layer`` at the last post-instruction token."""
    provenance = build_provenance(spec, harmful_set, harmless_set, "dim")
    candidates = dim_from_activations(harmful, harmless, provenance, layers=[layer])
    return Family("dim", candidates.select([dim_name(POSITION, layer)]), searched=False)


def som_family(
    harmful: Activations,
    harmless: Activations,
    harmful_set: PromptSet,
    harmless_set: PromptSet,
    spec: str,
    layer: int,
    grid: tuple[int, int],
    seed: int,
) -> Family:
    """The directions of one ``grid`` SOM trained with ``seed`` (most-hit neuron first)."""
    settings = SomSettings(x=grid[0], y=grid[1], seed=seed)
    result = train_som(harmful.block_input(layer, POSITION), harmless.block_input(layer, POSITION), settings)
    provenance = build_provenance(spec, harmful_set, harmless_set, "som", layer, POSITION)
    return Family(f"som/seed{seed}", som_direction_set(result, provenance), searched=True, seed=seed)


def cluster_family(
    harmful: Activations,
    harmless: Activations,
    harmful_set: PromptSet,
    harmless_set: PromptSet,
    spec: str,
    layer: int,
    k: int,
    seed: int = 0,
) -> Family:
    """k-means centroids (by angle) of the harmful prompts' own directions (representation
    minus the harmless centroid, Park et al.'s input-specific directions)."""
    vectors = representation_directions(harmful.block_input(layer, POSITION), harmless.block_input(layer, POSITION))
    categories = [category or "none" for category in harmful_set.categories]
    result = cluster_directions(vectors, k=min(k, len(vectors)), seed=seed, categories=categories)
    provenance = build_provenance(spec, harmful_set, harmless_set, "per_prompt_representation", layer, POSITION)
    return Family("clusters", cluster_direction_set(result, provenance), searched=True)


def rdo_family(
    loaded: LoadedModel,
    dim: Family,
    harmful_set: PromptSet,
    harmless_set: PromptSet,
    settings: OptimizeSettings,
    chat: ChatFormat | None,
    progress: Progress | None = None,
) -> Family:
    """One direction learnt from the DIM direction (Wollschläger et al.'s refusal direction
    optimization) on a category-balanced sample of the train prompts."""
    harmful = sample_prompts(harmful_set, settings.max_harmful)
    harmless = sample_prompts(harmless_set, settings.max_harmless)
    result = optimize_direction(loaded, harmful, harmless, dim.pool, settings, chat=chat, progress=progress)
    return Family("rdo", result.directions, searched=False)
