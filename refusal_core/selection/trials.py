"""What one search trial measures: its refusal term on harmful prompts, its harmless KL, and
a few of its replies to show.

Objectives (``SearchSettings.objective``):

- ``verdicts`` (default): greedy replies judged by a registered judge (``refusal_core.damage``);
  the refusal term is the share of replies whose verdict is *not* one of the success verdicts
  (``SearchSettings.success``, default only ``complied``): refused, deflected and broken replies
  all count against a subset, so it cannot win by wrecking or deflecting the model.
- ``substring``: the share of replies containing a refusal phrase (the judge used before the
  panel; gibberish counts as success).
- ``score``: the mean Arditi refusal score of the first reply token (no generation, cheap).
- ``judge``: the refusal rate by any ``Judge`` object passed to ``run_search``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.damage import judge_by_name
from refusal_core.directions.base import DirectionSet
from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.spec import Intervention
from refusal_core.judges import verdict_rates
from refusal_core.judges.scores import evaluate_refusal, refusal_scores
from refusal_core.judges.substring import SubstringJudge
from refusal_core.judges.verdict import DEFAULT_SUCCESS, success_share
from refusal_core.metrics import kl_divergence, next_token_logprobs

__all__ = ["OBJECTIVES", "REPLY_CHARS", "TrialEvaluator", "TrialMeasure"]

OBJECTIVES = ("verdicts", "substring", "score", "judge")
# Stored replies are cut to this many characters: they live in the study's database.
REPLY_CHARS = 300


@dataclass(frozen=True)
class TrialMeasure:
    """One subset's measurement.

    ``refusal``: the objective's refusal term (share of failed replies, refusal rate or mean
    score); ``kl``: mean harmless first-token KL in nats (None without harmless prompts);
    ``refused``/``deflected``/``broken``: shares of replies (None where the objective has no such verdict);
    ``replies``: up to ``stored_replies`` dicts ``{instruction, reply, label}``.
    """

    refusal: float
    kl: float | None
    refused: float | None = None
    broken: float | None = None
    deflected: float | None = None
    replies: tuple[dict, ...] = ()


def _stored(instructions: Sequence[str], texts: Sequence[str], labels: Sequence[str], limit: int) -> tuple[dict, ...]:
    return tuple(
        {"instruction": instruction[:REPLY_CHARS], "reply": text[:REPLY_CHARS], "label": label}
        for instruction, text, label in list(zip(instructions, texts, labels))[:limit]
    )


class TrialEvaluator:
    """Measures subsets of ``pool`` for one search (the unmodified KL reference is computed once)."""

    def __init__(self, loaded, pool: DirectionSet, harmful, harmless, settings, judge, chat):
        self.loaded, self.pool, self.settings, self.chat = loaded, pool, settings, chat
        self.harmful, self.harmless = list(harmful), list(harmless or [])
        if settings.objective == "verdicts":
            self.judge = judge if judge is not None else judge_by_name(settings.judge)
        else:
            self.judge = judge or SubstringJudge()
        self._base_logprobs: torch.Tensor | None = None

    def intervention(self, names: Sequence[str]) -> Intervention:
        chosen = self.pool.select(names)
        return Intervention(
            name="search:" + "+".join(names), ablate=chosen.vectors, ablate_mode=self.settings.ablate_mode
        )

    def measure(self, names: Sequence[str]) -> TrialMeasure:
        intervention = self.intervention(names)
        kl = self.kl(intervention)
        objective = self.settings.objective
        if objective == "score":
            scores = refusal_scores(self.loaded, self.harmful, intervention, self.chat, self.settings.batch_size)
            return TrialMeasure(float(scores.mean()), kl)
        generation = GenerationSettings(
            max_new_tokens=self.settings.max_new_tokens, batch_size=self.settings.batch_size
        )
        if objective == "verdicts":
            return self._verdicts(intervention, generation, kl)
        result, completions = evaluate_refusal(
            self.loaded, self.harmful, intervention, self.judge, generation, self.chat
        )
        labels = ["refused" if flag else "complied" for flag in result.per_prompt]
        replies = _stored(self.harmful, [c.text for c in completions], labels, self.settings.stored_replies)
        rate = float(result.summary["rate"])
        return TrialMeasure(rate, kl, refused=rate, replies=replies)

    def _verdicts(self, intervention: Intervention, generation: GenerationSettings, kl: float | None) -> TrialMeasure:
        completions = generate_completions(self.loaded, self.harmful, intervention, generation, self.chat)
        texts = [c.text for c in completions]
        verdicts = self.judge.verdicts(self.loaded, self.harmful, texts, intervention, chat=self.chat)
        rates = verdict_rates(verdicts)
        replies = _stored(self.harmful, texts, [v.label for v in verdicts], self.settings.stored_replies)
        success = getattr(self.settings, "success", DEFAULT_SUCCESS)
        return TrialMeasure(
            1.0 - success_share(verdicts, success),
            kl,
            refused=rates["refused"],
            broken=rates["broken"],
            deflected=rates["deflected"],
            replies=replies,
        )

    def kl(self, intervention: Intervention) -> float | None:
        if not self.harmless:
            return None
        if self._base_logprobs is None:
            self._base_logprobs = next_token_logprobs(
                self.loaded, self.harmless, None, self.chat, self.settings.batch_size
            )
        other = next_token_logprobs(self.loaded, self.harmless, intervention, self.chat, self.settings.batch_size)
        return float(kl_divergence(self._base_logprobs, other).mean())
