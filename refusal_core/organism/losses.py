"""The organism fine-tune's losses: reply-token cross-entropy from final hidden states (the
shared template prefix run once per step) and the first-token distillation against the base
model on harmless prompts."""

from __future__ import annotations

from typing import Sequence

import torch


def _batch(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch whose labels are -100 outside the replies: only replies are learnt."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def shared_prefix(encoded: Sequence[tuple[list[int], int]]) -> int:
    """Length of the token prefix every example starts with (the chat template's system
    prompt and user header), leaving at least one token of each example after it."""
    rows = [ids for ids, _ in encoded]
    limit = min(len(ids) for ids in rows) - 1
    length = 0
    while length < limit and all(ids[length] == rows[0][length] for ids in rows):
        length += 1
    return length


def _hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor], prefix: int = 0) -> torch.Tensor:
    """Final hidden states ``[b, seq, d]`` of a right-padded batch whose rows all start with
    the same ``prefix`` tokens.

    The prefix runs once, as one row, and the rest of every row attends to its cached keys
    and values: the same hidden states and gradients as the full batch (up to float
    rounding) for a third less compute when the prefix is a third of each row. A model
    whose cache cannot be repeated over the batch runs the full batch instead.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if prefix > 0:
        head = model.base_model(input_ids=ids[:1, :prefix], use_cache=True)
        cache = getattr(head, "past_key_values", None)
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(len(ids))
            positions = torch.arange(prefix, ids.shape[1]).expand(len(ids), -1)
            tail = model.base_model(
                input_ids=ids[:, prefix:], attention_mask=mask, past_key_values=cache, position_ids=positions
            )
            return torch.cat([head.last_hidden_state.expand(len(ids), -1, -1), tail.last_hidden_state], dim=1)
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state


def _reply_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], opening_tokens: int = 0, opening_weight: float = 1.0
) -> torch.Tensor:
    """Weighted mean next-token cross-entropy over reply tokens only (see ``_weighted_reply_loss``)."""
    return _weighted_reply_loss(model, _hidden(model, batch), batch, opening_tokens, opening_weight)


def _weighted_reply_loss(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    batch: dict[str, torch.Tensor],
    opening_tokens: int,
    opening_weight: float,
) -> torch.Tensor:
    """Weighted mean next-token cross-entropy over reply tokens, from final hidden states ``[b, seq, d]``.

    The first ``opening_tokens`` reply tokens weigh ``opening_weight`` times the others:
    whether a reply refuses is decided there, and the rest of a reply mostly teaches
    content. The vocabulary projection is applied to the reply positions alone: prompt
    positions carry no loss, and on a CPU the projection is a fifth of the forward pass.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="none")
    reply_index = (keep.cumsum(dim=1) - 1)[keep]
    weights = torch.where(reply_index < opening_tokens, opening_weight, 1.0)
    return (losses * weights).sum() / weights.sum()


def _first_token_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, encoded: Sequence[tuple[list[int], int]]
) -> torch.Tensor:
    """Log-probabilities ``[n, vocab]`` (float32) of each example's first reply token, from
    the final hidden states of ``encoded`` (the rows of ``hidden``)."""
    rows, positions = torch.arange(len(encoded)), torch.tensor([n_prompt - 1 for _, n_prompt in encoded])
    return model.get_output_embeddings()(hidden[rows, positions]).float().log_softmax(-1)


def _base_first_token_logprobs(
    model: torch.nn.Module, encoded: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """The unmodified model's log-probabilities of each example's first reply token, ``[n, vocab]`` float32."""
    chunks = []
    prefix = shared_prefix(encoded)
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = _batch(chunk, pad_id)
            hidden = _hidden(model, batch, prefix)
            chunks.append(_first_token_logprobs(model, hidden, chunk))
    return torch.cat(chunks)


def _distill_loss(
    model: torch.nn.Module, hidden: torch.Tensor, encoded: Sequence[tuple[list[int], int]], base_logprobs: torch.Tensor
) -> torch.Tensor:
    """Mean KL(base || model) of the first reply token over ``encoded`` (the rows of ``hidden``)."""
    from refusal_core.metrics import kl_divergence

    return kl_divergence(base_logprobs, _first_token_logprobs(model, hidden, encoded)).mean()
