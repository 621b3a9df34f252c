"""What an activation extraction will need in memory, worked out before it starts.

Three parts, each from sizes known before the first forward pass:

- ``weights``: the bytes of every parameter held in memory (offloaded ones excluded);
- ``activations``: the result, ``n_prompts x n_positions x n_recorded_layers x d_model``
  float32 values (``n_layers + 1`` layers unless a subset is asked for). Streamed into
  the cache, the result is a memory-mapped file rather than resident memory, but its
  pages count once read, so it is counted whole (an upper estimate);
- ``forward``: one batch's transient memory, the hidden states and MLP activations of the
  longest batch (``batch x tokens x (4 d + 3 d_ff)``, in the model's dtype), attention
  scores (``batch x heads x tokens^2``) and that batch's recorded rows (float32).

``peak`` is their sum. The forward term is an upper estimate (it assumes eager attention
and every intermediate alive at once), so a budget that the peak fits is a safe one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refusal_core.errors import SettingsError
from refusal_core.model.placement import format_bytes

__all__ = ["MemoryEstimate", "check_budget", "estimate_extraction", "estimate_from_sizes", "resident_weight_bytes"]

_RECORD_BYTES = 4  # activations are recorded in float32


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    activations: int
    forward: int

    @property
    def peak(self) -> int:
        return self.weights + self.activations + self.forward

    def line(self) -> str:
        return (
            f"weights {format_bytes(self.weights)}, activations {format_bytes(self.activations)}, "
            f"forward pass {format_bytes(self.forward)}: peak about {format_bytes(self.peak)}"
        )


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers held in memory (each shared tensor once; meta excluded)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or tensor.device.type == "meta":
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def estimate_extraction(
    model: nn.Module,
    n_layers: int,
    d_model: int,
    n_prompts: int,
    n_positions: int,
    batch_size: int,
    max_tokens: int,
    n_recorded: int | None = None,
) -> MemoryEstimate:
    """The memory an extraction of ``n_prompts`` prompts (the longest ``max_tokens`` tokens)
    recording ``n_recorded`` layers (default all ``n_layers + 1``) will need."""
    itemsize = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    return estimate_from_sizes(
        resident_weight_bytes(model),
        getattr(model, "config", None),
        itemsize,
        d_model,
        n_prompts,
        n_positions,
        batch_size,
        max_tokens,
        n_layers + 1 if n_recorded is None else n_recorded,
    )


def estimate_from_sizes(
    weights: int,
    config,
    itemsize: int,
    d_model: int,
    n_prompts: int,
    n_positions: int,
    batch_size: int,
    max_tokens: int,
    n_recorded: int,
) -> MemoryEstimate:
    """The estimate from sizes alone (no model needed): ``weights`` bytes, the model's
    ``config`` (MLP width, heads), its dtype's ``itemsize`` and the extraction's sizes."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_ff = int(getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * d_model)
    heads = int(getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None) or 1)
    batch = min(batch_size, n_prompts)
    per_position = n_recorded * d_model * _RECORD_BYTES
    forward = (
        batch * max_tokens * (4 * d_model + 3 * d_ff) * itemsize
        + batch * heads * max_tokens * max_tokens * itemsize
        + batch * n_positions * per_position
    )
    return MemoryEstimate(weights, n_prompts * n_positions * per_position, forward)


def check_budget(estimate: MemoryEstimate, budget: int | None, label: str = "--max-memory") -> None:
    """Refuse, before any work, an extraction whose estimated peak exceeds ``budget`` bytes."""
    if budget is None or estimate.peak <= budget:
        return
    raise SettingsError(
        f"Activation extraction would need about {format_bytes(estimate.peak)} ({estimate.line()}), more than "
        f"{label} {format_bytes(budget)}. Use fewer prompts (--limit), a smaller --batch-size (shrinks the "
        "forward pass), fewer layers (--layers, e.g. --layers 10,12,14-18), fewer positions, or load the weights offloaded (--device-map auto with --max-memory) "
        "or in a smaller dtype."
    )
