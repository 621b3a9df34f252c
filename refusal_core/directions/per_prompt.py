"""Input-specific refusal directions (Park, "Explore Input Specific Refusal Directions").

Every harmful prompt gets its own direction, in one of two ways:

- representation: its residual representation minus the harmless centroid (the
  per-prompt term whose average is the difference-in-means direction);
- gradient: the gradient of the log-likelihood of a refusal phrase, taught as the
  assistant's reply, with respect to the residual stream entering one layer at one prompt
  position. It points where a small change of that activation most raises refusal
  (activation maximisation).

Clustering these (``refusal_core.directions.clustering``) gives a finite family of refusal
directions tied to prompt types.
"""

from __future__ import annotations

from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.model.families import model_lock
from refusal_core.model.forward import block_hooks, last_logits, left_padded, pad_id, token_ids
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = [
    "REFUSAL_PHRASE",
    "gradient_directions",
    "per_prompt_direction_set",
    "phrase_log_likelihood",
    "representation_directions",
]

REFUSAL_PHRASE = "I'm sorry, but I can't help with that."


def representation_directions(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` float32: each harmful representation ``[n, d]`` minus the harmless centroid.

    The centroid of ``harmless`` ``[m, d]`` and the differences are computed in float64,
    so the mean of the result is the DIM direction up to float32 rounding.
    """
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if data.dim() != 2 or data.shape[0] == 0:
            raise ValueError(
                f"{name} representations must be a non-empty [n_prompts, d_model] tensor, got {tuple(data.shape)}."
            )
        if not torch.isfinite(data).all():
            raise ValueError(f"{name} representations contain NaN or infinite values; check the model dtype.")
    if harmful.shape[1] != harmless.shape[1]:
        raise ValueError(f"Widths differ: harmful {harmful.shape[1]} vs harmless {harmless.shape[1]}.")
    return (harmful.double() - harmless.double().mean(0)).float()


def _phrase_ids(tokenizer, phrase: str) -> list[int]:
    """The phrase's tokens as the model would emit them right after the generation prompt.

    The phrase is tokenized on its own and appended to the prompt's tokens, rather than
    rendered through the template as an assistant turn: the prompt tokens then match
    ``extract_activations`` exactly (so positions mean the same), and no end-of-turn token
    is scored, since a refusal usually continues after its opening sentence.
    """
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"] if phrase else []
    if not ids:
        raise SettingsError("The refusal phrase is empty; give the reply whose likelihood to maximise.")
    return list(ids)


def _prompt_ids(loaded: LoadedModel, instructions: Sequence[str], chat: ChatFormat | None) -> list[list[int]]:
    return token_ids(loaded, format_prompts(loaded.tokenizer, instructions, chat))


def _residual_edit(column: int, shift: torch.Tensor | None, leaves: list[torch.Tensor], want_grad: bool):
    """A block-input edit that makes the input a grad leaf and/or shifts one column.

    The leaf is detached from everything upstream, so the backward pass stops at this
    layer: the gradient wanted is with respect to this residual, not the embeddings.
    """

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if want_grad:
            hidden = hidden.detach().requires_grad_(True)
            leaves.append(hidden)
        if shift is not None:
            bump = torch.zeros_like(hidden)
            bump[:, column] = shift.to(device=hidden.device, dtype=hidden.dtype)
            hidden = hidden + bump
        return hidden

    return edit


def _phrase_scores(
    loaded: LoadedModel,
    prompts: list[list[int]],
    phrase: list[int],
    layer: int | None,
    position: int,
    shift: torch.Tensor | None = None,
    want_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row ``log p(phrase | prompt)`` ``[b]`` float64 and, if wanted, its gradient ``[b, d]``.

    The loss is the sum over rows of each row's own log-likelihood; rows do not interact
    in a causal LM, so the gradient at row ``b`` is that row's gradient alone.
    """
    # Left padding puts the phrase in the last len(phrase) columns of every row, so a
    # prompt offset p < 0 is column width - len(phrase) + p in all rows.
    batch = left_padded([ids + phrase for ids in prompts], pad_id(loaded.tokenizer), loaded.device)
    column = batch["input_ids"].shape[1] - len(phrase) + position
    leaves: list[torch.Tensor] = []
    edits = {layer: _residual_edit(column, shift, leaves, want_grad)} if layer is not None else {}
    # Model parameters have requires_grad False; grad mode is still needed so the graph
    # from the leaf onward is recorded.
    with block_hooks(loaded.model, edits), torch.set_grad_enabled(want_grad):
        # Only the columns that predict phrase tokens need the vocabulary projection.
        log_probs = torch.log_softmax(last_logits(loaded.model, batch, len(phrase) + 1)[:, :-1].double(), dim=-1)
        targets = torch.tensor(phrase, device=log_probs.device).expand(log_probs.shape[0], -1)
        scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)
        gradient = None
        if want_grad:
            (gradient,) = torch.autograd.grad(scores.sum(), leaves[0])
            gradient = gradient[:, column].detach()
    return scores.detach(), gradient


def _check_request(
    loaded: LoadedModel, instructions: Sequence[str], layer: int | None, position: int, batch_size: int
) -> None:
    if len(instructions) == 0:
        raise SettingsError("No prompts given; pass at least one instruction.")
    if batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {batch_size}.")
    if layer is not None and not 0 <= layer < loaded.n_layers:
        raise SettingsError(f"Layer {layer} is out of range; this model has layers 0..{loaded.n_layers - 1}.")
    if position >= 0:
        raise SettingsError(f"Position must be a negative offset from the end of the prompt (e.g. -1), got {position}.")


def _check_reach(prompts: list[list[int]], position: int) -> None:
    shortest = min(len(ids) for ids in prompts)
    if -position > shortest:
        raise SettingsError(f"Position {position} reaches before the start of a {shortest}-token prompt.")


def _run_batches(
    loaded: LoadedModel,
    instructions: Sequence[str],
    refusal_phrase: str,
    layer: int | None,
    position: int,
    chat: ChatFormat | None,
    batch_size: int,
    progress: Progress | None,
    shift: torch.Tensor | None,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_request(loaded, instructions, layer, position, batch_size)
    prompts = _prompt_ids(loaded, instructions, chat)
    _check_reach(prompts, position)
    phrase = _phrase_ids(loaded.tokenizer, refusal_phrase)
    scores, gradients = [], []
    with model_lock(loaded.model):
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            batch_shift = shift[start:stop] if shift is not None else None
            score, gradient = _phrase_scores(
                loaded, prompts[start:stop], phrase, layer, position, batch_shift, want_grad
            )
            scores.append(score.cpu())
            if gradient is not None:
                gradients.append(gradient.float().cpu())
            if progress:
                progress(min(stop, len(prompts)), len(prompts))
    return torch.cat(scores), (torch.cat(gradients) if gradients else None)


def phrase_log_likelihood(
    loaded: LoadedModel,
    instructions: Sequence[str],
    refusal_phrase: str = REFUSAL_PHRASE,
    layer: int | None = None,
    position: int = -1,
    shift: torch.Tensor | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``[n]`` float64 log-likelihood of ``refusal_phrase`` as the reply to each instruction.

    With ``layer`` and ``shift`` ``[n, d]``, row ``i`` of ``shift`` is added to the residual
    entering block ``layer`` at prompt offset ``position``: how much a direction added there
    raises or lowers the refusal's likelihood.
    """
    if shift is not None:
        if layer is None:
            raise ValueError("A shift needs the layer whose input it is added to.")
        if shift.shape != (len(instructions), loaded.d_model):
            raise ValueError(f"shift must be [{len(instructions)}, {loaded.d_model}], got {tuple(shift.shape)}.")
    scores, _ = _run_batches(
        loaded, instructions, refusal_phrase, layer, position, chat, batch_size, progress, shift, want_grad=False
    )
    return scores


def gradient_directions(
    loaded: LoadedModel,
    instructions: Sequence[str],
    layer: int,
    refusal_phrase: str = REFUSAL_PHRASE,
    position: int = -1,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``[n, d]`` float32: ``d log p(refusal_phrase | prompt) / d h`` for each instruction.

    ``h`` is the residual stream entering block ``layer`` at prompt offset ``position``
    (default -1, the last post-instruction token), the same activation
    ``Activations.block_input(layer, position)`` records. The phrase is teacher-forced after
    the generation prompt. The model is held under its lock; the temporary hook is removed
    even on error, and parameters' ``requires_grad`` is never changed.
    """
    if layer is None:
        raise ValueError("gradient_directions needs a layer.")
    _, gradients = _run_batches(
        loaded, instructions, refusal_phrase, layer, position, chat, batch_size, progress, None, want_grad=True
    )
    return gradients


def per_prompt_direction_set(
    vectors: torch.Tensor,
    instructions: Sequence[str],
    categories: Sequence[str] | None,
    provenance: dict,
) -> DirectionSet:
    """One direction per prompt, ``prompt/{i}``, with its instruction and category.

    ``vectors`` is ``[n, d]`` (from ``representation_directions`` or
    ``gradient_directions``); ``provenance["method"]`` should say which (default
    ``"per_prompt"``). A zero vector cannot be a direction and is left out
    (its index is listed in ``meta["dropped"]``).
    """
    if vectors.dim() != 2 or vectors.shape[0] != len(instructions):
        raise ValueError(
            f"{tuple(vectors.shape)} vectors for {len(instructions)} instructions; pass one [d] row per prompt."
        )
    if categories is not None and len(categories) != len(instructions):
        raise ValueError(f"{len(categories)} categories for {len(instructions)} instructions; they must align.")
    method = provenance.get("method", "per_prompt")
    keep = [i for i in range(len(instructions)) if bool(vectors[i].any())]
    if not keep:
        raise DirectionError("Every per-prompt vector is zero; there is no direction to keep.")
    records = tuple(
        {
            **provenance,
            "method": method,
            "prompt_index": i,
            "instruction": instructions[i],
            "category": categories[i] if categories is not None else None,
        }
        for i in keep
    )
    kept = set(keep)
    dropped = [i for i in range(len(instructions)) if i not in kept]
    return DirectionSet(
        vectors=vectors[keep].float(),
        names=tuple(f"prompt/{i}" for i in keep),
        provenance=records,
        meta={**provenance, "method": method, "dropped": dropped},
    )
