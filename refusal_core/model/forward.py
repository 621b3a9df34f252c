"""The forward-pass steps every caller shares, written once.

- Batches are padded on the left, with position ids that ignore the padding: the last
  prompt token sits at index -1 of every row, and a padded row computes exactly what it
  computes alone.
- Tokenizing holds the model lock: a loaded model's tokenizer is shared by every
  dashboard session, and setting its padding side is not thread-safe.
- The next-token log-probabilities after each prompt come from one function, which asks
  for the last position's logits only where the model's forward accepts ``logits_to_keep``
  (checked once per model class), and Arditi et al.'s refusal log-odds from another.
- Decoder-block inputs are read and replaced through one hook installer, which holds the
  model lock and removes every hook in ``finally``.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from refusal_core.model.families import ModelParts, model_lock, model_parts
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.limits import check_token_counts

__all__ = [
    "Batch",
    "block_hooks",
    "block_input",
    "encode_prompts",
    "last_logits",
    "token_ids",
    "input_pre_hook",
    "keep_last",
    "last_token_logprobs",
    "left_padded",
    "pad_id",
    "refusal_log_odds",
    "replace_block_input",
    "tokenize_prompts",
]

Batch = dict[str, torch.Tensor]
# Reads a block's input ``[batch, seq, d]``; returning a tensor replaces it.
BlockHook = Callable[[torch.Tensor], "torch.Tensor | None"]


def pad_id(tokenizer) -> int:
    """The padding token, else end-of-sequence, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def left_padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu") -> Batch:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of token rows padded on the left."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids.to(device),
    }


def tokenize_prompts(tokenizer, texts: Sequence[str], device: torch.device | str = "cpu") -> Batch:
    """Formatted prompts as a left-padded batch (see :func:`left_padded`).

    Formatted texts already contain the template's special tokens, so none are added.
    Callers that share the tokenizer with other threads use :func:`encode_prompts`.
    """
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return left_padded(rows, pad_id(tokenizer), device)


def token_ids(loaded: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """The token ids of each text (no special tokens added), tokenized under the model lock."""
    with model_lock(loaded.model):
        return [list(ids) for ids in loaded.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode_prompts(loaded: LoadedModel, texts: Sequence[str]) -> Batch:
    """Formatted prompts as a left-padded batch on the model's device, tokenized under the model lock."""
    ids = token_ids(loaded, texts)
    check_token_counts([len(row) for row in ids])  # before any forward pass (prompts/limits.py)
    return left_padded(ids, pad_id(loaded.tokenizer), loaded.device)


@functools.cache
def _keeps_logits(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def keep_last(model: nn.Module, n: int = 1) -> dict:
    """``{"logits_to_keep": n}`` where the model's forward takes it (the vocabulary projection of
    the other positions is then skipped), else no keyword."""
    return {"logits_to_keep": n} if _keeps_logits(type(model)) else {}


def last_logits(model: nn.Module, batch: Batch, n: int) -> torch.Tensor:
    """``[batch, n, vocab]`` logits of the last ``n`` positions (``logits_to_keep`` where the
    model takes it, so the vocabulary projection of the other positions is skipped)."""
    return model(**batch, use_cache=False, **keep_last(model, n)).logits[:, -n:]


def last_token_logprobs(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``[batch, vocab]`` float64 log-probabilities of the token after each (left-padded)
    prompt, under the caller's grad mode and on the model's device."""
    return torch.log_softmax(last_logits(model, batch, 1)[:, -1].double(), dim=-1)


def refusal_log_odds(logprobs: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """Arditi et al.'s refusal score ``log p - log(1 - p)`` of ``[n, vocab]`` log-probabilities, ``[n]``.

    ``p`` is the next-token mass on ``refusal_ids``; both terms are log-sum-exps, so the
    score stays exact where ``p`` is within rounding of 0 or 1.
    """
    is_refusal = torch.zeros(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
    is_refusal[list(refusal_ids)] = True
    return logprobs[:, is_refusal].logsumexp(-1) - logprobs[:, ~is_refusal].logsumexp(-1)


def block_input(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder block was called with, passed positionally or by keyword."""
    hidden = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise RuntimeError(f"{type(module).__name__} was called without hidden_states; cannot read its input.")
    return hidden


def replace_block_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the block input replaced, where the caller passed it."""
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def input_pre_hook(read: BlockHook) -> Callable:
    """A ``with_kwargs`` forward pre-hook that hands the block input to ``read`` and uses what it returns."""

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        replaced = read(block_input(module, args, kwargs))
        return None if replaced is None else replace_block_input(args, kwargs, replaced)

    return hook


@contextmanager
def block_hooks(
    model: nn.Module,
    inputs: Mapping[int, BlockHook] | None = None,
    outputs: Sequence[tuple[nn.Module, Callable]] = (),
) -> Iterator[ModelParts]:
    """The one hook installer: ``inputs[layer]`` sees (and may replace) the input of block
    ``layer``; each ``(module, hook)`` of ``outputs`` is a forward hook on that module.

    Holds the model lock for the whole block, registers inside ``try`` and removes every
    hook in ``finally``, so the model is never left hooked, not even after an exception.
    """
    with model_lock(model):
        handles: list = []
        try:
            parts = model_parts(model)
            for layer, read in sorted((inputs or {}).items()):
                handles.append(parts.layers[layer].register_forward_pre_hook(input_pre_hook(read), with_kwargs=True))
            for module, hook in outputs:
                handles.append(module.register_forward_hook(hook))
            yield parts
        finally:
            for handle in handles:
                handle.remove()
