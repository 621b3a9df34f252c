"""Refusal traced token by token: each generated token's residual projection on chosen
directions at one layer, under the intervention that generated it.

The value for reply token ``i`` is read at the position that *chose* it: the block input of
``layer`` at the last prompt token for token 0, at reply token ``i - 1`` after that. So
token 0's value is the state in which the model decided how to begin, and a refusal that
starts late shows where the projection rises before its first word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.generation import Completion
from refusal_core.interventions.conditional import resolve_rows
from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.linalg import orthonormal_basis
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.substring import REFUSAL_PREFIXES
from refusal_core.model.families import model_lock
from refusal_core.model.forward import block_hooks, left_padded, pad_id, token_ids
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = ["TokenTrace", "project", "refusal_start", "token_texts", "trace_completions"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
_PHRASES = re.compile("|".join(re.escape(phrase) for phrase in REFUSAL_PREFIXES), re.IGNORECASE)


@dataclass(frozen=True)
class TokenTrace:
    """One reply's trace: its tokens' texts, one projection per token, and the index of the
    token where a refusal phrase begins (None where the reply has none)."""

    tokens: tuple[str, ...]
    projections: tuple[float, ...]
    refusal_token: int | None

    def as_dict(self) -> dict:
        return {"tokens": list(self.tokens), "projections": list(self.projections), "refusal_token": self.refusal_token}


def project(hidden: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Projection of ``hidden`` ``[..., d]`` on ``directions`` ``[k, d]``, float64 ``[...]``.

    One direction: the signed component along its unit vector. Several: the length of the
    component in their span (never negative), which is what ablating the set removes.
    """
    basis = orthonormal_basis(directions)
    coords = hidden.double() @ basis.to(hidden.device)
    if directions.shape[0] == 1:
        sign = torch.sign(basis[:, 0] @ directions[0].double())
        return coords[..., 0] * sign
    return coords.norm(dim=-1)


def token_texts(tokenizer, ids: Sequence[int]) -> tuple[str, ...]:
    """Each token's text as it appears in the decoded reply (prefix differences), so joining
    them gives the reply text exactly."""
    texts, previous = [], ""
    for end in range(1, len(ids) + 1):
        decoded = tokenizer.decode(list(ids[:end]), skip_special_tokens=True)
        texts.append(decoded[len(previous) :] if decoded.startswith(previous) else decoded)
        previous = decoded
    return tuple(texts)


def refusal_start(tokens: Sequence[str]) -> int | None:
    """Index of the token in which the first refusal phrase (the substring judge's) begins."""
    text = "".join(tokens).translate(_APOSTROPHES)
    found = _PHRASES.search(text)
    if found is None:
        return None
    offset = 0
    for index, token in enumerate(tokens):
        offset += len(token)
        if offset > found.start():
            return index
    return None


def _residuals(
    loaded: LoadedModel, rows: list[list[int]], per_row: list[Intervention], layer: int, n_reads: int
) -> torch.Tensor:
    """``[rows, n_reads, d]`` block inputs of ``layer`` at each row's last ``n_reads`` positions."""
    batch = left_padded(rows, pad_id(loaded.tokenizer), loaded.device)
    seen: list[torch.Tensor] = []

    def read(hidden: torch.Tensor) -> None:
        seen.append(hidden[:, -n_reads:].detach().float().cpu())

    with (
        model_lock(loaded.model),
        row_interventions(loaded.model, per_row),
        block_hooks(loaded.model, {layer: read}),
        torch.no_grad(),
    ):
        loaded.model.base_model(**batch, use_cache=False)
    return seen[0]


def trace_completions(
    loaded: LoadedModel,
    completions: Sequence[Completion],
    intervention: Intervention,
    layer: int,
    directions: torch.Tensor,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
) -> list[TokenTrace]:
    """The trace of each completion (all generated under ``intervention``), in order.

    Completions need their ``token_ids`` (``generate_side_by_side`` records them). A
    conditional intervention is resolved per prompt, as generation resolves it.
    """
    if not 0 <= layer < loaded.n_layers:
        raise ValueError(f"Layer {layer} is out of range; this model has layers 0..{loaded.n_layers - 1}.")
    if directions.dim() != 2 or directions.shape[1] != loaded.d_model:
        raise ValueError(f"Trace directions must be [k, {loaded.d_model}], got {tuple(directions.shape)}.")
    if any(c.n_tokens and len(c.token_ids) != c.n_tokens for c in completions):
        raise ValueError("These completions carry no token ids; generate them with generate_side_by_side.")
    instructions = [c.instruction for c in completions]
    per_prompt = resolve_rows(loaded, instructions, intervention, chat)
    prompt_ids = token_ids(loaded, format_prompts(loaded.tokenizer, instructions, chat or ChatFormat()))
    traces: list[TokenTrace | None] = [None] * len(completions)
    for start in range(0, len(completions), batch_size):
        chunk = [i for i in range(start, min(start + batch_size, len(completions))) if completions[i].n_tokens]
        for i in range(start, min(start + batch_size, len(completions))):
            if not completions[i].n_tokens:
                traces[i] = TokenTrace((), (), None)
        if not chunk:
            continue
        rows = [prompt_ids[i] + list(completions[i].token_ids[:-1]) for i in chunk]
        n_reads = max(completions[i].n_tokens for i in chunk)
        hidden = _residuals(loaded, rows, [per_prompt[i] for i in chunk], layer, n_reads)
        values = project(hidden, directions.detach().cpu())
        for row, i in enumerate(chunk):
            n = completions[i].n_tokens
            tokens = token_texts(loaded.tokenizer, completions[i].token_ids)
            traces[i] = TokenTrace(tokens, tuple(float(v) for v in values[row, -n:]), refusal_start(tokens))
    return traces  # type: ignore[return-value]
