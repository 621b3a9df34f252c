"""What an intervention costs: how far it moves the model from its unmodified self.

Two costs say how much an intervention disturbs harmless behaviour: the KL divergence of
the first-reply-token distribution, and the cross-entropy of the model's own baseline
replies under the intervention. Refusal itself is read by ``refusal_core.judges``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat
from refusal_core.readouts import (
    EvalResult,
    completion_cross_entropy,
    mean_result,
    next_token_chunks,
    next_token_logprobs,
    result_meta,
)

# The readouts (first-token log-probabilities, cross-entropy, EvalResult) live in
# refusal_core.readouts, below the judges; they are re-exported here for callers.
__all__ = [
    "completion_cross_entropy",
    "EvalResult",
    "evaluate_ce",
    "evaluate_kl",
    "harmless_kl",
    "kl_divergence",
    "mean_result",
    "next_token_chunks",
    "next_token_logprobs",
    "result_meta",
]


def kl_divergence(base_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(base || other) per row of two ``[n, vocab]`` log-probability tensors, ``[n]``.

    Terms where the base probability is exactly zero contribute zero (not NaN), by the
    convention ``0 log 0 = 0``.
    """
    if base_logprobs.shape != other_logprobs.shape:
        raise ValueError(f"Shapes differ: {tuple(base_logprobs.shape)} vs {tuple(other_logprobs.shape)}.")
    base_probs = base_logprobs.exp()
    terms = torch.where(base_probs > 0, base_probs * (base_logprobs - other_logprobs), torch.zeros_like(base_probs))
    return terms.sum(-1)


def harmless_kl(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(unmodified || intervened) of the first-token distribution per prompt, ``[n]``.

    ``base``: the unmodified ``next_token_logprobs`` of the same prompts, when a caller
    compares several interventions and has computed them once already.
    """
    if base is None:
        base = next_token_logprobs(loaded, instructions, None, chat, batch_size)
    other = next_token_logprobs(loaded, instructions, intervention, chat, batch_size)
    return kl_divergence(base, other)


def evaluate_kl(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    base: torch.Tensor | None = None,
) -> EvalResult:
    """First-token KL(unmodified || intervened) per prompt and its mean (nats); ``base`` as in harmless_kl."""
    divergences = harmless_kl(loaded, instructions, intervention, chat, batch_size, base)
    return mean_result("kl", divergences, result_meta(loaded, intervention))


def evaluate_ce(
    loaded: LoadedModel,
    instructions: Sequence[str],
    completions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
) -> EvalResult:
    """Cross-entropy of given replies (e.g. the baseline's own) per prompt and its mean."""
    losses = completion_cross_entropy(loaded, instructions, completions, intervention, chat, batch_size)
    return mean_result("cross_entropy", losses, result_meta(loaded, intervention))
