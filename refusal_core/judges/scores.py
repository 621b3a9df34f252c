"""Refusal read from the first-token distribution (Arditi et al.'s refusal score), and the
refusal rate of generated replies under a judge, as results.
"""

from __future__ import annotations

from typing import Sequence

import torch

from refusal_core.generation import Completion, GenerationSettings, generate_completions
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.substring import REFUSAL_PREFIXES, Judge, SubstringJudge, refusal_rate
from refusal_core.model.forward import refusal_log_odds
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.readouts import EvalResult, mean_result, next_token_chunks, result_meta

__all__ = ["evaluate_refusal", "evaluate_scores", "refusal_scores", "refusal_token_ids"]


def refusal_token_ids(tokenizer, phrases: Sequence[str] = REFUSAL_PREFIXES) -> list[int]:
    """First token of each phrase as a reply would start it, with and without a leading space.

    Tokens that decode to whitespace only are skipped: some tokenizers split a leading
    space into its own token, which says nothing about refusing.
    """
    ids: list[int] = []
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if encoded and tokenizer.decode(encoded[:1]).strip() and encoded[0] not in ids:
                ids.append(int(encoded[0]))
    if not ids:
        raise ValueError("None of the refusal phrases starts with a non-whitespace token for this tokenizer.")
    return ids


def refusal_scores(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    refusal_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """Arditi et al.'s refusal score ``log p - log(1 - p)``, ``[n]`` float64.

    ``p`` is the first-token probability mass on ``refusal_ids`` (default: derived by
    refusal_token_ids); see ``forward.refusal_log_odds``.
    """
    ids = list(refusal_ids) if refusal_ids is not None else refusal_token_ids(loaded.tokenizer)
    if not ids:
        raise ValueError("refusal_ids is empty; give at least one token id.")
    scores = []
    for logprobs in next_token_chunks(loaded, instructions, intervention, chat, batch_size):
        if max(ids) >= logprobs.shape[-1] or min(ids) < 0:
            raise ValueError(f"refusal_ids must lie in [0, {logprobs.shape[-1]}), the model's vocabulary.")
        scores.append(refusal_log_odds(logprobs, ids))
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def evaluate_refusal(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    judge: Judge | None = None,
    settings: GenerationSettings | None = None,
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
) -> tuple[EvalResult, list[Completion]]:
    """Generate replies, judge them (default: SubstringJudge) and report the refusal rate."""
    judge = judge or SubstringJudge()
    settings = settings or GenerationSettings()
    completions = generate_completions(loaded, instructions, intervention, settings, chat, progress)
    refused = judge.judge(list(instructions), [c.text for c in completions])
    summary = {"rate": refusal_rate(refused), "n": len(refused)}
    return EvalResult(
        "refusal_rate", refused, summary, result_meta(loaded, intervention, judge=judge.name)
    ), completions


def evaluate_scores(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    refusal_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Refusal scores per prompt and their mean."""
    scores = refusal_scores(loaded, instructions, intervention, chat, batch_size, refusal_ids)
    return mean_result("refusal_score", scores, result_meta(loaded, intervention))
