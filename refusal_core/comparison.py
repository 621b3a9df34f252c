"""Refusal left after ablating 1..k directions of several families (DIM, SOM, clusters).

This is the measurement behind the SOM paper's claim that several directions suppress
refusal better than one: every (family, k) variant is generated in the same batched
side-by-side run, so the comparison shares prompts, decoding and judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.dim import dim_name
from refusal_core.generation import GenerationSettings, generate_side_by_side
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.substring import Judge, SubstringJudge, judged_rates
from refusal_core.metrics import harmless_kl, next_token_logprobs
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress

__all__ = ["CountCurve", "refusal_by_layer", "refusal_vs_count"]


@dataclass(frozen=True)
class CountCurve:
    """``rates[family][k-1]``: refusal rate with the family's first k directions ablated.

    ``kl[family][k-1]`` is the mean first-token KL on harmless prompts for the same variant
    (present when harmless prompts were given); ``baseline`` is the unablated rate.
    """

    baseline: float
    rates: dict[str, list[float]]
    kl: dict[str, list[float]] = field(default_factory=dict)
    n_prompts: int = 0

    def table(self) -> str:
        """Rows k = 1..max, one column per family (blank where a family has fewer)."""
        families = list(self.rates)
        depth = max(len(values) for values in self.rates.values())
        lines = [f"{'k':>3s}  " + "  ".join(f"{name:>14s}" for name in families)]
        for k in range(depth):
            cells = [f"{self.rates[name][k]:14.1%}" if k < len(self.rates[name]) else " " * 14 for name in families]
            lines.append(f"{k + 1:3d}  " + "  ".join(cells))
        return "\n".join([f"baseline refusal {self.baseline:.1%} on {self.n_prompts} prompts", *lines])


def refusal_vs_count(
    loaded: LoadedModel,
    families: dict[str, DirectionSet],
    harmful: Sequence[str],
    harmless: Sequence[str] | None = None,
    max_k: int | None = None,
    settings: GenerationSettings = GenerationSettings(max_new_tokens=24, batch_size=32),
    judge: Judge | None = None,
    progress: Progress | None = None,
) -> CountCurve:
    """Ablate the span of each family's first k directions (in set order), k = 1..max_k."""
    judge = judge or SubstringJudge()
    variants = [Intervention()]
    for family, directions in families.items():
        depth = len(directions) if max_k is None else min(max_k, len(directions))
        variants += [
            Intervention.from_directions(f"{family}/{k}", directions, names=directions.names[:k])
            for k in range(1, depth + 1)
        ]
    rates = judged_rates(harmful, generate_side_by_side(loaded, harmful, variants, settings, progress=progress), judge)
    curves = {family: [rates[v.name] for v in variants if v.name.startswith(f"{family}/")] for family in families}
    kl = {}
    if harmless:
        base = next_token_logprobs(loaded, harmless)  # once, not once per variant
        kl = {
            family: [
                float(harmless_kl(loaded, harmless, v, base=base).mean())
                for v in variants
                if v.name.startswith(f"{family}/")
            ]
            for family in families
        }
    return CountCurve(baseline=rates["baseline"], rates=curves, kl=kl, n_prompts=len(harmful))


def refusal_by_layer(
    loaded: LoadedModel,
    dim: DirectionSet,
    harmful: Sequence[str],
    layers: Sequence[int],
    position: int = -1,
    settings: GenerationSettings = GenerationSettings(max_new_tokens=24, batch_size=32),
    judge: Judge | None = None,
    progress: Progress | None = None,
) -> dict[int, float]:
    """Refusal rate with the single DIM direction of each layer ablated (one batched run)."""
    judge = judge or SubstringJudge()
    variants = [
        Intervention.from_directions(f"layer{layer}", dim, names=[dim_name(position, layer)]) for layer in layers
    ]
    rates = judged_rates(harmful, generate_side_by_side(loaded, harmful, variants, settings, progress=progress), judge)
    return {layer: rates[f"layer{layer}"] for layer in layers}
