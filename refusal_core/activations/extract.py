"""Residual-stream activations at chosen token positions, with an on-disk cache.

One batched forward pass per batch records, at every decoder layer, the block input (the
residual stream before the layer) at the requested positions; the output of the last
block is recorded too, so block outputs are available for every layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from refusal_core.activations.cache import content_key, entry_path, load_entry, try_save_entry
from refusal_core.activations.memory import MemoryEstimate, check_budget, estimate_extraction
from refusal_core.errors import SettingsError
from refusal_core.model.families import model_lock, model_parts
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.forward import block_hooks, encode_prompts, token_ids
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat, format_prompts, post_instruction_count

__all__ = ["Activations", "default_positions", "extract_activations", "extraction_memory", "weights_fingerprint"]


@dataclass(frozen=True)
class Activations:
    """Residual activations ``acts[prompt, position, layer, d_model]`` in float32.

    Layer index ``l < n_layers`` is the input of decoder block ``l``; index ``n_layers`` is
    the output of the last block (before the final norm). So the output of block ``l`` is
    index ``l + 1``. ``positions`` are negative offsets from the end of each prompt.
    """

    acts: torch.Tensor
    positions: tuple[int, ...]
    instructions: tuple[str, ...]
    key: str
    from_cache: bool = False
    # Set when the result was computed but could not be cached (the cause and the fix).
    cache_warning: str | None = None

    @property
    def n_layers(self) -> int:
        return int(self.acts.shape[2]) - 1

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[3])

    def position_index(self, position: int) -> int:
        if position not in self.positions:
            raise SettingsError(
                f"Position {position} was not recorded; use one of the recorded positions {list(self.positions)}."
            )
        return self.positions.index(position)

    def block_input(self, layer: int, position: int = -1) -> torch.Tensor:
        """``[n_prompts, d_model]`` residual stream entering block ``layer``."""
        self._check_layer(layer, self.n_layers)
        return self.acts[:, self.position_index(position), layer]

    def block_output(self, layer: int, position: int = -1) -> torch.Tensor:
        """``[n_prompts, d_model]`` residual stream leaving block ``layer``."""
        self._check_layer(layer, self.n_layers)
        return self.acts[:, self.position_index(position), layer + 1]

    @staticmethod
    def _check_layer(layer: int, n_layers: int) -> None:
        if not 0 <= layer < n_layers:
            raise SettingsError(f"Layer {layer} is out of range; this model has layers 0..{n_layers - 1}.")


def default_positions(tokenizer, chat: ChatFormat | None = None) -> tuple[int, ...]:
    """All post-instruction positions, as negative offsets: ``(-n, ..., -1)``."""
    count = post_instruction_count(tokenizer, chat)
    return tuple(range(-count, 0))


def _validate(instructions: Sequence[str], positions: Sequence[int], batch_size: int) -> None:
    if len(instructions) == 0:
        raise SettingsError("No prompts given; pass at least one instruction.")
    if batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {batch_size}.")
    if not positions or any(p >= 0 for p in positions):
        raise SettingsError(f"Positions must be negative offsets from the end (e.g. -1), got {list(positions)}.")


def _forward_batch(loaded: LoadedModel, texts: Sequence[str], positions: Sequence[int]) -> torch.Tensor:
    """``[batch, n_positions, n_layers + 1, d]`` for one batch, in one forward pass."""
    parts = model_parts(loaded.model)
    batch = encode_prompts(loaded, texts)
    shortest = int(batch["attention_mask"].sum(-1).min())
    if -min(positions) > shortest:
        raise SettingsError(f"Position {min(positions)} reaches before the start of a {shortest}-token prompt.")
    index = list(positions)
    records: list[torch.Tensor | None] = [None] * (parts.n_layers + 1)

    def record(layer: int) -> Callable[[torch.Tensor], None]:
        def read(hidden: torch.Tensor) -> None:
            records[layer] = hidden[:, index].detach().float().cpu()

        return read

    def last_output(module, args, output) -> None:
        record(parts.n_layers)(output[0] if isinstance(output, tuple) else output)

    inputs = {layer: record(layer) for layer in range(parts.n_layers)}
    with block_hooks(loaded.model, inputs, [(parts.layers[-1], last_output)]), torch.no_grad():
        # The base model skips the vocabulary projection, which we do not need.
        loaded.model.base_model(**batch, use_cache=False)
    return torch.stack(records, dim=2)


def activation_key(loaded: LoadedModel, instructions: Sequence[str], positions: Sequence[int], chat: ChatFormat) -> str:
    return content_key(
        "activations",
        weights_fingerprint(loaded.model),
        str(loaded.dtype),
        list(instructions),
        chat.identity(loaded.tokenizer),
        list(positions),
    )


def _estimate(loaded: LoadedModel, texts: Sequence[str], n_positions: int, batch_size: int) -> MemoryEstimate:
    longest = max(len(ids) for ids in token_ids(loaded, texts))
    return estimate_extraction(
        loaded.model, loaded.n_layers, loaded.d_model, len(texts), n_positions, batch_size, longest
    )


def extraction_memory(
    loaded: LoadedModel,
    instructions: Sequence[str],
    positions: Sequence[int] | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
) -> MemoryEstimate:
    """What :func:`extract_activations` with these arguments will need in memory (``activations/memory.py``)."""
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(loaded.tokenizer, chat)
    _validate(instructions, positions, batch_size)
    return _estimate(loaded, format_prompts(loaded.tokenizer, tuple(instructions), chat), len(positions), batch_size)


def extract_activations(
    loaded: LoadedModel,
    instructions: Sequence[str],
    positions: Sequence[int] | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: Progress | None = None,
    max_memory: int | None = None,
) -> Activations:
    """Residual activations of ``instructions`` at ``positions`` (default: post-instruction).

    With ``use_cache`` a previous result for the same weights, dtype, prompts, template and
    positions is read from ``cache/activations/`` without a forward pass; a damaged entry is
    recomputed. ``progress(done, total)`` is called after each batch. With ``max_memory``
    (bytes), an extraction whose estimated peak exceeds it is refused before the first
    forward pass. Each batch's rows go to CPU into one preallocated result tensor.
    """
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(loaded.tokenizer, chat)
    _validate(instructions, positions, batch_size)
    instructions = tuple(instructions)
    texts = format_prompts(loaded.tokenizer, instructions, chat)
    # One lock from the weights fingerprint to the last forward pass: a weight edit by
    # another session in between would file these activations under the wrong key.
    with model_lock(loaded.model):
        key = activation_key(loaded, instructions, positions, chat)
        path = entry_path("activations", key)
        expected = {"key": key}
        cached = load_entry(path, expected) if use_cache else None
        if cached is not None:
            if progress:
                progress(len(instructions), len(instructions))
            return Activations(cached["acts"], positions, instructions, key, from_cache=True)
        if max_memory is not None:
            check_budget(_estimate(loaded, texts, len(positions), batch_size), max_memory)
        acts = torch.empty(len(texts), len(positions), loaded.n_layers + 1, loaded.d_model)
        for start in range(0, len(texts), batch_size):
            acts[start : start + batch_size] = _forward_batch(loaded, texts[start : start + batch_size], positions)
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    warning = None
    if use_cache:  # a failed write loses nothing: the result is returned with the warning
        warning = try_save_entry(
            path, {"acts": acts}, {**expected, "positions": json.dumps(list(positions)), "model": loaded.spec}
        )
    return Activations(acts, positions, instructions, key, from_cache=False, cache_warning=warning)
