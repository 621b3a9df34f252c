"""Next-token log-probabilities of many (prompt, intervention) rows, sharing what they share.

Candidate scoring runs the same validation prompts under many interventions. Two things do
not depend on the row and are computed once instead of once per row:

- the **chat-template prefix** (system prompt and user header, the same first tokens of
  every prompt): it runs once per *intervention*, as one row, and every prompt row under that
  intervention attends to its cached keys and values. Causal attention makes this the same
  computation as the whole row (up to float rounding); on SmolLM2 the prefix is 24 of ~45
  tokens, so a row costs about half.
- **padding**: rows are sorted by length before they are cut into forward passes, and each
  pass drops the columns that are padding in all its rows.

A model whose cache cannot be re-indexed over the batch runs whole rows instead.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.model.families import model_lock
from refusal_core.model.forward import keep_last, left_padded, pad_id
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = ["PromptRows", "prefix_last_logits", "prompt_rows", "rows_logprobs"]


@dataclass(frozen=True)
class PromptRows:
    """Tokenized prompts split into the shared ``prefix`` ``[P]`` and each prompt's ``suffixes``."""

    prefix: torch.Tensor
    suffixes: tuple[tuple[int, ...], ...]
    pad_id: int

    def __len__(self) -> int:
        return len(self.suffixes)

    def tokens(self, prompt: int) -> int:
        """Tokens a row of ``prompt`` runs beyond the shared prefix."""
        return len(self.suffixes[prompt])


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix of every row, leaving each row at least one token."""
    limit = min(len(row) for row in rows) - 1
    length = 0
    while length < limit and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def _cache_reindexable(loaded: LoadedModel) -> bool:
    return "past_key_values" in inspect.signature(loaded.model.forward).parameters


def prompt_rows(
    loaded: LoadedModel, instructions: Sequence[str], chat: ChatFormat | None, share_prefix: bool = True
) -> PromptRows:
    """Tokenize ``instructions`` in the chat template, finding the prefix they all share."""
    texts = format_prompts(loaded.tokenizer, list(instructions), chat)
    ids = [loaded.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    shared = _common_prefix(ids) if share_prefix and _cache_reindexable(loaded) else 0
    return PromptRows(
        torch.tensor(ids[0][:shared], dtype=torch.long),
        tuple(tuple(row[shared:]) for row in ids),
        pad_id(loaded.tokenizer),
    )


def _prefix_cache(loaded: LoadedModel, rows: PromptRows, interventions: Sequence[Intervention]):
    """The key/value cache of the shared prefix under each intervention (one batch row each)."""
    ids = rows.prefix.to(loaded.device)[None].expand(len(interventions), -1)
    with torch.no_grad(), row_interventions(loaded.model, list(interventions)):
        return loaded.model(input_ids=ids, use_cache=True, **keep_last(loaded.model)).past_key_values


def _suffix_inputs(loaded: LoadedModel, rows: PromptRows, prompts: Sequence[int], cache) -> dict:
    """Model inputs for the rows of ``prompts`` after the prefix held in ``cache`` (None: no prefix)."""
    batch = left_padded([rows.suffixes[p] for p in prompts], rows.pad_id, loaded.device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shared = len(rows.prefix)
    kwargs: dict = {"use_cache": False}
    if shared:
        mask = torch.cat([torch.ones(len(prompts), shared, dtype=mask.dtype, device=mask.device), mask], dim=1)
        kwargs = {"past_key_values": cache, "use_cache": True}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **kwargs, **keep_last(loaded.model)}


def _suffix_logprobs(
    loaded: LoadedModel,
    rows: PromptRows,
    prompts: Sequence[int],
    interventions: Sequence[Intervention],
    cache,
    cache_rows: Sequence[int],
) -> torch.Tensor:
    if len(rows.prefix):
        cache = copy.deepcopy(cache)  # the forward appends to it; the original serves other chunks
        cache.reorder_cache(torch.tensor(list(cache_rows), dtype=torch.long, device=loaded.device))
    with torch.no_grad(), row_interventions(loaded.model, list(interventions)):
        logits = loaded.model(**_suffix_inputs(loaded, rows, prompts, cache)).logits[:, -1]
    return torch.log_softmax(logits.double(), dim=-1).cpu()


def prefix_last_logits(loaded: LoadedModel, rows: PromptRows, prompts: Sequence[int]) -> torch.Tensor:
    """``[len(prompts), vocab]`` next-token logits under whatever hooks are on the model now
    (the same for every row), the prefix run once; gradients flow if enabled."""
    cache = None
    if len(rows.prefix):
        head = loaded.model(input_ids=rows.prefix.to(loaded.device)[None], use_cache=True, **keep_last(loaded.model))
        cache = head.past_key_values
        cache.batch_repeat_interleave(len(prompts))
    return loaded.model(**_suffix_inputs(loaded, rows, prompts, cache)).logits[:, -1]


def rows_logprobs(
    loaded: LoadedModel,
    rows: PromptRows,
    prompts: Sequence[int],
    interventions: Sequence[Intervention],
    rows_per_forward: int = 32,
    on_forward=None,
) -> torch.Tensor:
    """``[len(prompts), vocab]`` float64 next-token log-probabilities: row ``i`` is prompt
    ``prompts[i]`` under ``interventions[i]`` (rows sharing an Intervention object share its
    prefix pass). ``on_forward(n_rows)`` is called after each forward pass.
    """
    order = sorted(range(len(prompts)), key=lambda i: (rows.tokens(prompts[i]), i))
    out = torch.empty(0)
    results: dict[int, torch.Tensor] = {}
    # Interventions are handled in groups so that at most ``rows_per_forward`` prefix caches
    # are alive at once; within a group, rows run in order of length.
    distinct: dict[int, int] = {}
    for item in interventions:
        distinct.setdefault(id(item), len(distinct))
    objects = {id(item): item for item in interventions}
    keys = list(distinct)
    for start in range(0, len(keys), rows_per_forward):
        group = keys[start : start + rows_per_forward]
        where = {key: index for index, key in enumerate(group)}
        with model_lock(loaded.model):
            cache = _prefix_cache(loaded, rows, [objects[key] for key in group]) if len(rows.prefix) else None
        if on_forward and cache is not None:
            on_forward(len(group))
        members = [i for i in order if id(interventions[i]) in where]
        for chunk_start in range(0, len(members), rows_per_forward):
            chunk = members[chunk_start : chunk_start + rows_per_forward]
            with model_lock(loaded.model):
                logprobs = _suffix_logprobs(
                    loaded,
                    rows,
                    [prompts[i] for i in chunk],
                    [interventions[i] for i in chunk],
                    cache,
                    [where[id(interventions[i])] for i in chunk],
                )
            for i, row in zip(chunk, logprobs):
                results[i] = row
            if on_forward:
                on_forward(len(chunk))
    if results:
        out = torch.stack([results[i] for i in range(len(prompts))])
    return out
