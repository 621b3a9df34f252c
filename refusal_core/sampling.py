"""Seeded sampling with a generator of its own, for reproducible replies under concurrency.

``transformers`` samples with ``torch.multinomial`` on the process-wide generator; two
sessions sampling on two models (each under its own model lock) would interleave their
draws on it and lose reproducibility. Here a logits processor draws each next token with a
``torch.Generator`` made for the one call, after temperature and nucleus (top-p)
filtering, and returns scores that leave only the drawn token; the caller decodes greedily,
so ``generate`` itself never touches the global generator.
"""

from __future__ import annotations

import torch

__all__ = ["SeededSampler", "filtered_probs"]


def filtered_probs(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``[batch, vocab]`` sampling probabilities: softmax of ``scores / temperature``,
    restricted to the smallest set of most likely tokens whose mass reaches ``top_p``."""
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(dim=-1) - ordered  # mass of the more likely tokens
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(dim=-1, keepdim=True)


class SeededSampler:
    """A ``LogitsProcessor``-compatible callable: draws one token per row with its own generator."""

    def __init__(self, seed: int, temperature: float = 1.0, top_p: float = 1.0) -> None:
        self.seed, self.temperature, self.top_p = seed, temperature, top_p
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        probs = filtered_probs(scores, self.temperature, self.top_p)
        drawn = torch.multinomial(probs, num_samples=1, generator=self.generator)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter(-1, drawn, 0.0)
