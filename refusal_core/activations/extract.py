"""Residual-stream activations at chosen token positions and layers, with an on-disk cache.

One batched forward pass per batch records, at the requested layers (default: every
one), the block input (the residual stream entering the block) at the requested
positions; layer number ``n_layers`` is the output of the last block. Hooks sit only on
the blocks asked for, each batch's rows are moved to CPU at once, and with the cache on
they are streamed into the cache file batch by batch (``activations/stream.py``), so
memory holds one batch, not the whole result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from refusal_core.activations.cache import content_key, entry_path
from refusal_core.activations.layers import all_layers, check_layers
from refusal_core.activations.memory import MemoryEstimate, check_budget, estimate_extraction
from refusal_core.activations.stream import MemorySink, StreamSink, load_streamed_entry
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
    """Residual activations ``acts[prompt, position, i, d_model]`` in float32.

    Axis 2 holds the layers ``layers[i]`` (default: all, ``0..n_layers``). Layer number
    ``l < n_layers`` is the input of decoder block ``l``; ``n_layers`` is the output of the
    last block (before the final norm). So the output of block ``l`` is layer number
    ``l + 1``. Read layers by number (:meth:`residual`, :meth:`block_input`), never by
    their index in ``acts``. ``positions`` are negative offsets from the end of each prompt.
    """

    acts: torch.Tensor
    positions: tuple[int, ...]
    instructions: tuple[str, ...]
    key: str
    from_cache: bool = False
    # Set when the result was computed but could not be cached (the cause and the fix).
    cache_warning: str | None = None
    # The layer numbers axis 2 holds, and the model's block count (None: every layer).
    layers: tuple[int, ...] | None = None
    model_layers: int | None = None

    def __post_init__(self) -> None:
        if self.layers is None:
            object.__setattr__(self, "layers", tuple(range(int(self.acts.shape[2]))))
        if self.model_layers is None:
            object.__setattr__(self, "model_layers", int(self.acts.shape[2]) - 1)
        if len(self.layers) != int(self.acts.shape[2]):
            raise ValueError(f"{len(self.layers)} layer numbers for a tensor of {int(self.acts.shape[2])} layers.")

    @property
    def n_layers(self) -> int:
        """The model's decoder block count (whatever subset was recorded)."""
        return int(self.model_layers)

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[3])

    @property
    def block_inputs(self) -> tuple[int, ...]:
        """The recorded layers that are block inputs (``< n_layers``)."""
        return tuple(layer for layer in self.layers if layer < self.n_layers)

    def position_index(self, position: int) -> int:
        if position not in self.positions:
            raise SettingsError(
                f"Position {position} was not recorded; use one of the recorded positions {list(self.positions)}."
            )
        return self.positions.index(position)

    def layer_index(self, layer: int) -> int:
        """Where layer number ``layer`` sits on axis 2 of ``acts``."""
        if layer not in self.layers:
            raise SettingsError(
                f"Layer {layer} was not recorded (recorded: {list(self.layers)}); extract it with --layers."
            )
        return self.layers.index(layer)

    def residual(self, layer: int) -> torch.Tensor:
        """``[n_prompts, n_positions, d_model]`` residual stream at layer number ``layer``."""
        return self.acts[:, :, self.layer_index(layer)]

    def block_input(self, layer: int, position: int = -1) -> torch.Tensor:
        """``[n_prompts, d_model]`` residual stream entering block ``layer``."""
        self._check_layer(layer, self.n_layers)
        return self.acts[:, self.position_index(position), self.layer_index(layer)]

    def block_output(self, layer: int, position: int = -1) -> torch.Tensor:
        """``[n_prompts, d_model]`` residual stream leaving block ``layer``."""
        self._check_layer(layer, self.n_layers)
        return self.acts[:, self.position_index(position), self.layer_index(layer + 1)]

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


def _forward_batch(
    loaded: LoadedModel, texts: Sequence[str], positions: Sequence[int], layers: Sequence[int] | None = None
) -> torch.Tensor:
    """``[batch, n_positions, n_layers_recorded, d]`` on CPU for one batch, in one forward pass.

    Hooks are installed on the requested blocks only (``layers``, default every one).
    """
    parts = model_parts(loaded.model)
    layers = tuple(layers) if layers is not None else all_layers(parts.n_layers)
    batch = encode_prompts(loaded, texts)
    shortest = int(batch["attention_mask"].sum(-1).min())
    if -min(positions) > shortest:
        raise SettingsError(f"Position {min(positions)} reaches before the start of a {shortest}-token prompt.")
    index = list(positions)
    records: dict[int, torch.Tensor] = {}

    def record(layer: int) -> Callable[[torch.Tensor], None]:
        def read(hidden: torch.Tensor) -> None:
            rows = hidden[:, index].detach().float()
            records[layer] = rows.to("cpu", non_blocking=False)

        return read

    def last_output(module, args, output) -> None:
        record(parts.n_layers)(output[0] if isinstance(output, tuple) else output)

    inputs = {layer: record(layer) for layer in layers if layer < parts.n_layers}
    outputs = [(parts.layers[-1], last_output)] if parts.n_layers in layers else []
    with block_hooks(loaded.model, inputs, outputs), torch.no_grad():
        # The base model skips the vocabulary projection, which we do not need.
        loaded.model.base_model(**batch, use_cache=False)
    return torch.stack([records[layer] for layer in layers], dim=2)


def activation_key(
    loaded: LoadedModel,
    instructions: Sequence[str],
    positions: Sequence[int],
    chat: ChatFormat,
    layers: Sequence[int] | None = None,
) -> str:
    """The cache key; every layer (``layers`` None or all of them) keeps the key it always had."""
    parts = [
        "activations",
        weights_fingerprint(loaded.model),
        str(loaded.dtype),
        list(instructions),
        chat.identity(loaded.tokenizer),
        list(positions),
    ]
    if layers is not None and tuple(layers) != all_layers(loaded.n_layers):
        parts.append({"layers": list(layers)})
    return content_key(*parts)


def _estimate(
    loaded: LoadedModel, texts: Sequence[str], n_positions: int, batch_size: int, n_recorded: int
) -> MemoryEstimate:
    longest = max(len(ids) for ids in token_ids(loaded, texts))
    return estimate_extraction(
        loaded.model, loaded.n_layers, loaded.d_model, len(texts), n_positions, batch_size, longest, n_recorded
    )


def extraction_memory(
    loaded: LoadedModel,
    instructions: Sequence[str],
    positions: Sequence[int] | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
) -> MemoryEstimate:
    """What :func:`extract_activations` with these arguments will need in memory (``activations/memory.py``)."""
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(loaded.tokenizer, chat)
    _validate(instructions, positions, batch_size)
    layers = check_layers(layers, loaded.n_layers)
    texts = format_prompts(loaded.tokenizer, tuple(instructions), chat)
    return _estimate(loaded, texts, len(positions), batch_size, len(layers))


def extract_activations(
    loaded: LoadedModel,
    instructions: Sequence[str],
    positions: Sequence[int] | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: Progress | None = None,
    max_memory: int | None = None,
    layers: Sequence[int] | None = None,
) -> Activations:
    """Residual activations of ``instructions`` at ``positions`` (default: post-instruction)
    and ``layers`` (layer numbers, default: all ``0..n_layers``; see :class:`Activations`).

    With ``use_cache`` a previous result for the same weights, dtype, prompts, template,
    positions and layers is read from ``cache/activations/`` without a forward pass; a
    damaged entry is recomputed. A new result is streamed into its cache file batch by
    batch and returned memory-mapped from it; without the cache it fills one preallocated
    tensor. ``progress(done, total)`` is called after each batch. With ``max_memory``
    (bytes), an extraction whose estimated peak exceeds it is refused before the first
    forward pass.
    """
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(loaded.tokenizer, chat)
    _validate(instructions, positions, batch_size)
    layers = check_layers(layers, loaded.n_layers)
    instructions = tuple(instructions)
    texts = format_prompts(loaded.tokenizer, instructions, chat)
    made = dict(layers=layers, model_layers=loaded.n_layers)
    # One lock from the weights fingerprint to the last forward pass: a weight edit by
    # another session in between would file these activations under the wrong key.
    with model_lock(loaded.model):
        key = activation_key(loaded, instructions, positions, chat, layers)
        path = entry_path("activations", key)
        cached = load_streamed_entry(path, {"key": key}) if use_cache else None
        if cached is not None and tuple(cached.shape) == (len(texts), len(positions), len(layers), loaded.d_model):
            if progress:
                progress(len(instructions), len(instructions))
            return Activations(cached, positions, instructions, key, from_cache=True, **made)
        if max_memory is not None:
            check_budget(_estimate(loaded, texts, len(positions), batch_size, len(layers)), max_memory)
        shape = (len(texts), len(positions), len(layers), loaded.d_model)
        metadata = {"key": key, "positions": str(list(positions)), "layers": str(list(layers)), "model": loaded.spec}
        sink = StreamSink(path, shape, metadata) if use_cache else MemorySink(shape)
        try:
            for start in range(0, len(texts), batch_size):
                sink.write(_forward_batch(loaded, texts[start : start + batch_size], positions, layers))
                if progress:
                    progress(min(start + batch_size, len(texts)), len(texts))
            acts = sink.finish()
        finally:
            sink.close()
    return Activations(acts, positions, instructions, key, from_cache=False, cache_warning=sink.warning, **made)
