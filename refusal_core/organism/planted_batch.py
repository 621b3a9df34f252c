"""Prompt batches of the planting recipe, with the chat template's shared prefix run once.

Every prompt of the recipe starts with the same template tokens (the system prompt and the
user header: about half of each row). Instead of running them once per row, the prefix runs
once per distinct intervention, and every row's own tokens attend to that prefix's cached
keys and values. The rows' own tokens are left-padded after the prefix, so the last column
is every row's last prompt token and the positions are the full rows' positions: the same
hidden states and gradients as the left-padded full batch, up to float rounding, for about
half the compute.
"""

from __future__ import annotations

from typing import Sequence

import torch

from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.model.forward import block_hooks, left_padded, pad_id
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = ["PromptBatch", "encode", "last_states", "run_rows"]


class PromptBatch:
    """Token ids of chat-formatted prompts split into their shared prefix and their own tails."""

    def __init__(self, rows: Sequence[Sequence[int]], pad: int) -> None:
        shortest = min(len(row) for row in rows)
        length = 0
        while length < shortest - 1 and all(row[length] == rows[0][length] for row in rows):
            length += 1
        self.prefix = torch.tensor(list(rows[0][:length]), dtype=torch.long)
        padded = left_padded([row[length:] for row in rows], pad)
        self.tails, self.mask = padded["input_ids"], padded["attention_mask"]

    def __len__(self) -> int:
        return len(self.tails)


def encode(tokenizer, instructions: Sequence[str]) -> PromptBatch:
    """``instructions`` in the default chat format, split at their shared prefix."""
    texts = format_prompts(tokenizer, list(instructions), ChatFormat())
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return PromptBatch(rows, pad_id(tokenizer))


def run_rows(
    model: torch.nn.Module,
    batch: PromptBatch,
    per_row: Sequence[Intervention] | None = None,
    output_hidden_states: bool = False,
):
    """The base model's output on the tails of ``batch``, each row under its own intervention.

    The prefix runs once per distinct intervention (by identity) under that intervention, so
    an ablation covers every position of a row as it would in the full batch. Returns the
    tails' output (``last_hidden_state[:, -1]`` is each row's last prompt token; hidden states,
    when asked for, cover the tails only).
    """
    per_row = list(per_row) if per_row is not None else [Intervention()] * len(batch)
    if len(per_row) != len(batch):
        raise ValueError(f"{len(per_row)} interventions for a batch of {len(batch)} rows; pass one per row.")
    distinct: list[Intervention] = []
    index_of: dict[int, int] = {}
    for item in per_row:
        if id(item) not in index_of:
            index_of[id(item)] = len(distinct)
            distinct.append(item)
    n_prefix = len(batch.prefix)
    with row_interventions(model, distinct):
        head = model.base_model(input_ids=batch.prefix.expand(len(distinct), -1), use_cache=True)
    cache = head.past_key_values
    cache.batch_select_indices(torch.tensor([index_of[id(item)] for item in per_row]))
    mask = torch.cat([torch.ones(len(batch), n_prefix, dtype=torch.long), batch.mask], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, n_prefix:]
    with row_interventions(model, per_row):
        return model.base_model(
            input_ids=batch.tails,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )


class _Stop(Exception):
    """Raised at the input of the block where a truncated pass has what it needs."""


class _Reader:
    """A block-input hook keeping the last-token input of the tails' pass (the second call:
    the first is the prefix's), and stopping the pass there when ``stop``."""

    def __init__(self, stop: bool) -> None:
        self.stop, self.calls, self.seen = stop, 0, None

    def __call__(self, hidden: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.seen = hidden[:, -1].detach().float()
            if self.stop:
                raise _Stop


def last_states(
    model: torch.nn.Module,
    tokenizer,
    instructions: Sequence[str],
    layer: int | None = None,
    logprobs: bool = True,
    batch_size: int = 32,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """No-grad last-prompt-token readings of ``instructions``: the input of block ``layer``
    ``[n, d]`` (when ``layer`` is given) and the first-reply-token log-probabilities
    ``[n, vocab]`` float32 (when ``logprobs``). Without ``logprobs`` the pass stops at block
    ``layer``: the blocks above it are not run."""
    states, scores = [], []
    for start in range(0, len(instructions), batch_size):
        batch = encode(tokenizer, instructions[start : start + batch_size])
        reader = _Reader(stop=not logprobs)
        out = None
        with torch.no_grad():
            try:
                with block_hooks(model, inputs={layer: reader} if layer is not None else None):
                    out = run_rows(model, batch)
            except _Stop:
                pass
        if layer is not None:
            states.append(reader.seen)
        if out is not None:
            scores.append(model.get_output_embeddings()(out.last_hidden_state[:, -1]).float().log_softmax(-1))
    return (torch.cat(states) if states else None), (torch.cat(scores) if scores else None)
