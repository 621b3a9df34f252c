"""Measuring chosen direction sets on the test split: every variant's replies to the harmful
and harmless test prompts in one batched run, each reply judged, the harmless first-token KL
per prompt, and a seeded bootstrap interval for every rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from refusal_core.experiments.bootstrap import bootstrap_estimate
from refusal_core.generation import GenerationSettings, generate_side_by_side
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.columns import column_verdicts
from refusal_core.metrics import kl_divergence, next_token_logprobs
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat

__all__ = ["METRICS", "Variant", "measure_variants"]

# What every point reports, each with a bootstrap interval over the test prompts:
# the harmful replies' verdict shares, the harmless first-token KL (nats) and the share of
# harmless replies refused, deflected or broken (a damaged model also stops answering harmless prompts).
METRICS = (
    "complied",
    "refused",
    "deflected",
    "broken",
    "kl",
    "harmless_refused",
    "harmless_deflected",
    "harmless_broken",
)


@dataclass(frozen=True)
class Variant:
    """One point to measure: ablating ``vectors`` ``[k, d]`` (None: the unmodified baseline)."""

    name: str
    vectors: torch.Tensor | None

    def intervention(self) -> Intervention:
        return (
            Intervention(name=self.name) if self.vectors is None else Intervention(name=self.name, ablate=self.vectors)
        )


def _texts(columns: dict) -> dict[str, list[str]]:
    return {name: [completion.text for completion in completions] for name, completions in columns.items()}


def _replies(completions, verdicts) -> list[dict]:
    return [
        {
            "instruction": completion.instruction,
            "reply": completion.text,
            "label": verdict.label,
            "why": verdict.broken_why or None,
        }
        for completion, verdict in zip(completions, verdicts)
    ]


def measure_variants(
    loaded: LoadedModel,
    variants: Sequence[Variant],
    harmful: Sequence[str],
    harmless: Sequence[str],
    judge,
    settings: GenerationSettings,
    n_boot: int,
    boot_seed: int,
    chat: ChatFormat | None = None,
    tick: Callable[[str, float], None] = lambda stage, units: None,
) -> dict[str, dict]:
    """``{variant name: {"metrics": {metric: Estimate dict}, "replies": [...], "harmless_replies": [...]}}``.

    Replies are greedy, ``settings.max_new_tokens`` long, judged by ``judge`` (a panel or the
    phrase judge) under the intervention that produced them. ``tick(stage, share)`` reports
    progress as a share of this call's work (generation is most of it).
    """
    interventions = [variant.intervention() for variant in variants]
    n_rows = len(variants) * (len(harmful) + len(harmless))
    done_rows = 0

    def rows_done(base: int) -> Callable[..., None]:
        def update(done: int, total: int, **info: object) -> None:
            tick(f"test replies: {base + done}/{n_rows} rows ({len(variants)} variants)", 0.8 * (base + done) / n_rows)

        return update

    # Each column's first-token log-probs come off its generation's first step (greedy), so
    # the judge's refusal score and the harmless KL need no forward of their own.
    firsts: dict[str, torch.Tensor] = {}
    harmless_firsts: dict[str, torch.Tensor] = {}
    columns = generate_side_by_side(
        loaded, harmful, interventions, settings, chat, rows_done(done_rows), first_logprobs=firsts
    )
    done_rows += len(variants) * len(harmful)
    harmless_columns = generate_side_by_side(
        loaded, harmless, interventions, settings, chat, rows_done(done_rows), first_logprobs=harmless_firsts
    )
    unmodified = next((variant.name for variant in variants if variant.vectors is None), None)
    base_logprobs = (
        harmless_firsts[unmodified]
        if unmodified is not None
        else next_token_logprobs(loaded, harmless, None, chat, settings.batch_size)
    )
    by_name = {variant.name: intervention for variant, intervention in zip(variants, interventions)}
    tick(f"judging {len(variants)} variants' harmful replies", 0.8)
    harmful_by = column_verdicts(judge, loaded, harmful, _texts(columns), firsts, by_name, chat)
    tick(f"judging {len(variants)} variants' harmless replies", 0.9)
    harmless_by = column_verdicts(judge, loaded, harmless, _texts(harmless_columns), harmless_firsts, by_name, chat)
    measured = {}
    for variant in variants:
        completions, harmless_completions = columns[variant.name], harmless_columns[variant.name]
        verdicts, harmless_verdicts = harmful_by[variant.name], harmless_by[variant.name]
        if variant.vectors is None:
            kl = [0.0] * len(harmless)
        else:
            kl = kl_divergence(base_logprobs, harmless_firsts[variant.name]).double().clamp_min(0.0).tolist()
        per_prompt = {
            "complied": [float(v.label == "complied") for v in verdicts],
            "refused": [float(v.label == "refused") for v in verdicts],
            "deflected": [float(v.label == "deflected") for v in verdicts],
            "broken": [float(v.label == "broken") for v in verdicts],
            "kl": kl,
            "harmless_refused": [float(v.label == "refused") for v in harmless_verdicts],
            "harmless_deflected": [float(v.label == "deflected") for v in harmless_verdicts],
            "harmless_broken": [float(v.label == "broken") for v in harmless_verdicts],
        }
        measured[variant.name] = {
            "metrics": {name: bootstrap_estimate(per_prompt[name], n_boot, boot_seed).as_dict() for name in METRICS},
            "replies": _replies(completions, verdicts),
            "harmless_replies": _replies(harmless_completions, harmless_verdicts),
        }
    tick("test split measured", 1.0)
    return measured
