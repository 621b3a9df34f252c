"""Massive activations, and how much of a direction's ablation cost they explain.

Many small chat models (SmolLM2 among them) keep a few residual coordinates thousands of
times larger than the rest, mostly at the first token, which then serves as an attention
sink. A difference-in-means direction that has weight on such a coordinate moves the sink
token by thousands of units when it is projected out, and the harmless next-token
distribution shifts for reasons that have nothing to do with refusal. Two numbers put an
ablation's KL in context:

- ``massive_share``: the fraction of a direction's squared norm on the massive coordinates;
- ``random_direction_kl``: the harmless KL of ablating random unit directions, the floor
  that any single-direction ablation of this model pays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.errors import SettingsError
from refusal_core.interventions.spec import Intervention
from refusal_core.metrics import harmless_kl, next_token_logprobs
from refusal_core.model.families import model_lock
from refusal_core.model.forward import encode_prompts
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = ["MassiveActivations", "massive_activations", "massive_share", "random_direction_kl"]


@dataclass(frozen=True)
class MassiveActivations:
    """Coordinates whose largest magnitude is at least ``ratio`` times the median magnitude.

    ``peak[c]`` is the largest ``|h[..., c]|`` over the prompts' real tokens and every
    residual layer, ``where[c]`` the (layer, token position) of that peak, and ``median``
    the median ``|h|`` over everything looked at.
    """

    coordinates: tuple[int, ...]
    peak: torch.Tensor
    where: tuple[tuple[int, int], ...]
    median: float
    ratio: float

    def as_dict(self) -> dict:
        return {
            "coordinates": list(self.coordinates),
            "peaks": [round(float(self.peak[c]), 2) for c in self.coordinates],
            "where": [list(self.where[c]) for c in self.coordinates],
            "median": self.median,
            "ratio": self.ratio,
        }


@torch.no_grad()
def massive_activations(
    loaded: LoadedModel, instructions: Sequence[str], ratio: float = 1000.0, chat: ChatFormat | None = None
) -> MassiveActivations:
    """Find the massive residual coordinates on ``instructions`` (a handful is enough).

    Every hidden state (embeddings, each block output) at every real token is looked at;
    padding is not. ``ratio`` 1000 follows Sun et al. (2024), who call activations about
    three orders of magnitude above the median "massive".
    """
    if not instructions:
        raise SettingsError("massive_activations needs at least one instruction.")
    if not ratio > 1:
        raise SettingsError(f"ratio must be above 1, got {ratio}.")
    batch = encode_prompts(loaded, format_prompts(loaded.tokenizer, instructions, chat))
    with model_lock(loaded.model):  # never read a forward pass that another session is intervening on
        hidden = loaded.model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool().cpu()
    magnitudes = torch.stack([h.detach().float().abs().cpu() for h in hidden])  # [L+1, b, seq, d]
    magnitudes = magnitudes * real[None, :, :, None]
    values = magnitudes.permute(3, 0, 1, 2).reshape(magnitudes.shape[-1], -1)  # [d, L+1 * b * seq]
    peak, flat = values.max(dim=1)
    median = float(magnitudes[:, real].median())
    n_batch, n_seq = real.shape
    where = []
    for index in flat.tolist():
        layer, rest = divmod(index, n_batch * n_seq)
        row, position = divmod(rest, n_seq)
        first_real = int(real[row].float().argmax())
        where.append((layer, position - first_real))
    coordinates = tuple(int(c) for c in (peak >= ratio * max(median, 1e-12)).nonzero().flatten().tolist())
    return MassiveActivations(coordinates, peak, tuple(where), median, float(ratio))


def massive_share(vectors: torch.Tensor, coordinates: Sequence[int]) -> torch.Tensor:
    """Fraction of each row's squared norm on ``coordinates``, ``[n]`` float64."""
    vectors = torch.as_tensor(vectors).double()
    if vectors.dim() == 1:
        vectors = vectors[None]
    total = vectors.pow(2).sum(-1).clamp_min(1e-300)
    if not len(coordinates):
        return torch.zeros(vectors.shape[0], dtype=torch.float64)
    return vectors[:, list(coordinates)].pow(2).sum(-1) / total


def random_direction_kl(
    loaded: LoadedModel,
    instructions: Sequence[str],
    n_directions: int = 3,
    seed: int = 0,
    chat: ChatFormat | None = None,
    base: torch.Tensor | None = None,
) -> list[float]:
    """Mean harmless first-token KL of ablating each of ``n_directions`` seeded random unit
    directions; ``base`` as in ``refusal_core.metrics.harmless_kl``."""
    if n_directions < 1:
        raise SettingsError("n_directions must be at least 1.")
    width = loaded.d_model
    generator = torch.Generator().manual_seed(seed)
    if base is None:
        base = next_token_logprobs(loaded, instructions, None, chat)
    means = []
    for index in range(n_directions):
        direction = torch.randn(1, width, generator=generator, dtype=torch.float64)
        random = Intervention(name=f"random{index}", ablate=direction)
        means.append(float(harmless_kl(loaded, instructions, random, chat, base=base).mean()))
    return means
