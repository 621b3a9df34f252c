"""What the model predicts next, under an intervention or none: first-reply-token
log-probabilities and teacher-forced cross-entropy of given replies, and the result record
every metric is reported in.

These are the readouts judges and metrics both take; they sit below both (``judges`` read
them to score replies, ``metrics`` compares them across interventions).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from refusal_core.interventions.conditional import resolve_rows
from refusal_core.interventions.hooks import apply_intervention, row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.model.families import model_lock
from refusal_core.model.forward import encode_prompts, last_token_logprobs, left_padded, pad_id, token_ids
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat, check_pairs, format_prompts

__all__ = [
    "EvalResult",
    "completion_cross_entropy",
    "mean_result",
    "next_token_chunks",
    "next_token_logprobs",
    "result_meta",
]


@contextmanager
def _intervened(
    model: torch.nn.Module, intervention: Intervention | None, rows: Sequence[Intervention] | None = None
) -> Iterator[None]:
    """Hold the model's lock, with ``intervention`` (or none) in place on every row, or with
    ``rows`` (one plain intervention per batch row) when given.

    The lock is taken even without an intervention, so a baseline forward never runs while
    another session's hooks are on the shared model.
    """
    if rows is not None:
        with model_lock(model), row_interventions(model, rows):
            yield
        return
    with model_lock(model), apply_intervention(model, intervention or Intervention()):
        yield


def _per_row(
    loaded: LoadedModel, instructions: Sequence[str], intervention: Intervention | None, chat, batch_size: int
):
    """A conditional intervention resolved to one plain intervention per prompt (it fires on
    some prompts only); None for a plain intervention, which applies to every row alike."""
    if intervention is None or intervention.condition is None:
        return None
    return resolve_rows(loaded, instructions, intervention, chat, batch_size)


def next_token_chunks(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
) -> Iterator[torch.Tensor]:
    """First-reply-token log-probabilities, ``[chunk, vocab]`` float64 on the CPU, chunk by chunk."""
    prompts = format_prompts(loaded.tokenizer, instructions, chat)
    per_row = _per_row(loaded, instructions, intervention, chat, batch_size)
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(loaded, prompts[start : start + batch_size])
        rows = None if per_row is None else per_row[start : start + batch_size]
        with torch.no_grad(), _intervened(loaded.model, intervention, rows):
            logprobs = last_token_logprobs(loaded.model, batch).cpu()
        yield logprobs


def next_token_logprobs(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Log-probabilities of the first reply token, ``[n, vocab]`` float64."""
    chunks = list(next_token_chunks(loaded, instructions, intervention, chat, batch_size))
    return torch.cat(chunks) if chunks else torch.zeros(0, 0, dtype=torch.float64)


def _teacher_forcing_batch(
    loaded: LoadedModel, prompts: Sequence[str], replies: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded prompt+reply ids and a ``[b, seq]`` mask of the reply tokens.

    Prompt and reply are tokenized apart and concatenated, which is how the model saw
    them when it generated the reply after the prompt.
    """
    prompt_ids, reply_ids = token_ids(loaded, prompts), token_ids(loaded, replies)
    batch = left_padded([p + r for p, r in zip(prompt_ids, reply_ids)], pad_id(loaded.tokenizer), loaded.device)
    is_reply = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for row, reply in enumerate(reply_ids):
        is_reply[row, is_reply.shape[1] - len(reply) :] = True
    return batch, is_reply


def _mean_reply_ce(logits: torch.Tensor, input_ids: torch.Tensor, is_reply: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over reply tokens per row, ``[b]`` float64 (NaN: no reply tokens)."""
    targets = is_reply[:, 1:].to(logits.device)  # Position t predicts token t + 1.
    rows = targets.nonzero()[:, 0].cpu()
    # Select reply positions before upcasting: float64 over [batch, seq, vocab] is large.
    predicted = logits[:, :-1][targets].double().log_softmax(-1)
    token_ce = -predicted.gather(-1, input_ids[:, 1:][targets].unsqueeze(-1)).squeeze(-1).cpu()
    totals = torch.zeros(logits.shape[0], dtype=torch.float64).index_add_(0, rows, token_ce)
    counts = targets.sum(-1).cpu()
    return torch.where(counts > 0, totals / counts.clamp(min=1), torch.full_like(totals, math.nan))


def completion_cross_entropy(
    loaded: LoadedModel,
    instructions: Sequence[str],
    completions: Sequence[str],
    intervention: Intervention | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Mean per-token cross-entropy (nats) of each given reply after its prompt, ``[n]`` float64.

    Teacher forcing on prompt + reply; only reply tokens count. An empty reply has no
    tokens to score and gives NaN.
    """
    check_pairs(instructions, completions)
    prompts = format_prompts(loaded.tokenizer, instructions, chat)
    losses = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        batch, is_reply = _teacher_forcing_batch(loaded, prompts[start:stop], completions[start:stop])
        with torch.no_grad(), _intervened(loaded.model, intervention):
            logits = loaded.model(**batch).logits
        losses.append(_mean_reply_ce(logits, batch["input_ids"], is_reply))
    return torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class EvalResult:
    """One metric over a prompt set: per-prompt values, a summary (``n`` plus ``mean`` or
    ``rate``) and ``meta`` saying what was measured (model, intervention, judge...)."""

    metric: str
    per_prompt: list[float | bool]
    summary: dict
    meta: dict = field(default_factory=dict)


def result_meta(loaded: LoadedModel, intervention: Intervention | None, **extra) -> dict:
    return {"model": loaded.spec, "intervention": (intervention or Intervention()).name, **extra}


def mean_result(metric: str, values: torch.Tensor, meta: dict) -> EvalResult:
    """Summary over finite values; NaNs (e.g. empty replies) are counted, not averaged."""
    finite = values[~values.isnan()]
    summary = {
        "mean": float(finite.mean()) if len(finite) else math.nan,
        "n": len(values),
        "n_nan": len(values) - len(finite),
    }
    return EvalResult(metric, [float(value) for value in values], summary, meta)
