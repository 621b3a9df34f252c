"""Batched chat generation, with several interventions side by side in one ``generate`` call.

Side-by-side generation puts every (prompt, variant) pair in its own batch row and gives
each row its own intervention through ``row_interventions``, so comparing a baseline with
two ablations costs one batched call per chunk instead of three. Greedy results equal
running each variant alone, because left padding, the attention mask and position ids
derived from it make a padded row compute what it computes unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.errors import SettingsError
from refusal_core.interventions.conditional import resolve_rows
from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.model.families import model_lock
from refusal_core.model.forward import encode_prompts, pad_id
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat, format_prompts, format_with_reply
from refusal_core.sampling import SeededSampler

__all__ = [
    "Completion",
    "GenerationSettings",
    "end_of_turn_ids",
    "generate_completions",
    "generate_side_by_side",
]


# A reply whose last character cannot merge with what the template puts after it.
_PROBE_INSTRUCTION = "Say hello."
_PROBE_REPLY = "Hello there."


def end_of_turn_ids(tokenizer, chat: ChatFormat | None = None) -> list[int]:
    """Token ids that end an assistant turn: the template's turn-end token plus EOS.

    A conversation with an assistant reply is rendered through the chat template, and the
    first token that starts after the reply text is taken (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``...). It counts only if it is a special (added) token: templates that
    end a turn with plain text, such as a newline, would otherwise stop every reply at its
    first line break.
    """
    _, full = format_with_reply(tokenizer, _PROBE_INSTRUCTION, _PROBE_REPLY, chat)
    ids: list[int] = []
    turn_end = _first_token_after(tokenizer, full, full.rfind(_PROBE_REPLY))
    if turn_end is not None and _is_special(tokenizer, turn_end):
        ids.append(turn_end)
    eos = tokenizer.eos_token_id
    for token in eos if isinstance(eos, list) else [eos]:
        if token is not None and token not in ids:
            ids.append(int(token))
    if not ids:
        raise ValueError("The tokenizer has no end-of-sequence token and its chat template no turn-end token.")
    return ids


def _first_token_after(tokenizer, text: str, reply_start: int) -> int | None:
    """Id of the first token of ``text`` that starts at or after the end of the reply."""
    if reply_start < 0:
        return None
    end = reply_start + len(_PROBE_REPLY)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if start >= end:
                return int(token)
        return None
    # Slow tokenizers have no offsets; special tokens tokenize the same on their own.
    suffix = tokenizer(text[end:], add_special_tokens=False)["input_ids"]
    return int(suffix[0]) if suffix else None


def _is_special(tokenizer, token_id: int) -> bool:
    if token_id in tokenizer.all_special_ids:
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return bool(added is not None and getattr(added, "special", False))


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are decoded. Greedy by default, so results are reproducible.

    ``max_new_tokens``: cap on generated tokens per reply.
    ``do_sample``: sample instead of taking the most likely token.
    ``temperature``, ``top_p``: sampling only; ``top_p=1`` keeps the whole distribution.
    ``seed``: seeds sampling per chunk (sampled text depends on how rows are chunked).
    ``batch_size``: batch rows per ``generate`` call, counted as (prompt, variant) pairs.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SettingsError(
                f"max_new_tokens must be at least 1, got {self.max_new_tokens}; give 1 or more new tokens (--max-new-tokens)."
            )
        if not self.temperature > 0:
            raise SettingsError(
                f"temperature must be positive, got {self.temperature}; use do_sample=False for greedy."
            )
        if not 0 < self.top_p <= 1:
            raise SettingsError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}.")


@dataclass(frozen=True)
class Completion:
    """One reply. ``n_tokens`` counts reply tokens before the end of turn; ``stopped`` says
    whether the model ended its turn (False: it ran into ``max_new_tokens``); ``token_ids``
    are those reply tokens as generated (what a per-token trace reads)."""

    instruction: str
    variant: str
    text: str
    n_tokens: int
    stopped: bool
    token_ids: tuple[int, ...] = ()


def generate_completions(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention | None = None,
    settings: GenerationSettings = GenerationSettings(),
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
) -> list[Completion]:
    """Replies to ``instructions`` under one intervention (default: none), in input order."""
    variant = intervention or Intervention()
    return generate_side_by_side(loaded, instructions, [variant], settings, chat, progress)[variant.name]


def generate_side_by_side(
    loaded: LoadedModel,
    instructions: Sequence[str],
    variants: Sequence[Intervention],
    settings: GenerationSettings = GenerationSettings(),
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
    first_logprobs: dict[str, torch.Tensor] | None = None,
) -> dict[str, list[Completion]]:
    """Replies to every instruction under every variant: variant name -> completions.

    Rows are (prompt, variant) pairs, prompt-major, cut into chunks of
    ``settings.batch_size`` rows; each chunk is one ``model.generate`` call with row i
    under its own intervention. A conditional variant is resolved per prompt first (its
    condition read on the unmodified model), so it runs only on the prompts that fire.
    ``progress(done, total)`` counts rows. ``first_logprobs``, a dict, receives per variant
    the float64 log-probabilities ``[n, vocab]`` of each prompt's first reply token under that
    variant, read off the generation's own first step (what ``metrics.next_token_logprobs``
    computes with a forward of its own, up to float rounding of the batch composition).
    """
    names = [variant.name for variant in variants]
    if not variants:
        raise SettingsError("Give at least one variant (Intervention() is the unmodified model).")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise SettingsError(f"Variant names must be unique; repeated: {', '.join(duplicates)}.")
    if first_logprobs is not None and settings.do_sample:
        raise SettingsError("First-token log-probabilities are read off greedy decoding only; set do_sample=False.")
    prompts = format_prompts(loaded.tokenizer, instructions, chat)
    per_prompt = [resolve_rows(loaded, instructions, variant, chat) for variant in variants]
    stop_ids = end_of_turn_ids(loaded.tokenizer, chat)
    rows = [(p, v) for p in range(len(prompts)) for v in range(len(variants))]
    results: dict[tuple[int, int], Completion] = {}
    firsts: dict[tuple[int, int], torch.Tensor] = {}
    for start in range(0, len(rows), settings.batch_size):
        chunk = rows[start : start + settings.batch_size]
        capture = _FirstStep() if first_logprobs is not None else None
        replies = _generate_chunk(
            loaded,
            [prompts[p] for p, _ in chunk],
            [per_prompt[v][p] for p, v in chunk],
            settings,
            stop_ids,
            seed=settings.seed + start // settings.batch_size,
            capture=capture,
        )
        for row, ((p, v), (text, n_tokens, stopped, ids)) in enumerate(zip(chunk, replies)):
            results[p, v] = Completion(instructions[p], names[v], text, n_tokens, stopped, ids)
            if capture is not None:
                firsts[p, v] = capture.logprobs[row]
        if progress:
            progress(start + len(chunk), len(rows))
    if first_logprobs is not None:
        first_logprobs.update(
            {name: torch.stack([firsts[p, v] for p in range(len(prompts))]) for v, name in enumerate(names)}
        )
    return {name: [results[p, v] for p in range(len(prompts))] for v, name in enumerate(names)}


class _FirstStep:
    """A logits processor that keeps the log-softmax of the first decoding step's raw scores
    (``logprobs`` ``[rows, vocab]`` float64) and changes nothing. Greedy decoding with
    ``repetition_penalty=1.0`` runs no other processor before it, so those are the model's logits."""

    def __init__(self) -> None:
        self.logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logprobs is None:
            self.logprobs = torch.log_softmax(scores.double(), dim=-1).cpu()
        return scores


def _generate_chunk(
    loaded: LoadedModel,
    prompts: list[str],
    per_row: list[Intervention],
    settings: GenerationSettings,
    stop_ids: list[int],
    seed: int,
    capture: _FirstStep | None = None,
) -> list[tuple[str, int, bool, tuple[int, ...]]]:
    """One batched ``generate`` call; (text, n_tokens, stopped, reply token ids) per row; ``capture`` keeps the first step's log-probs."""
    tokenizer, model = loaded.tokenizer, loaded.model
    batch = encode_prompts(loaded, prompts)
    # The lock spans the whole call: hooks are shared module state, and another session's
    # intervention must never be in place while these rows are decoded.
    # Sampling draws with a generator of this call's own (refusal_core/sampling.py), never the global one.
    sampler = SeededSampler(seed, settings.temperature, settings.top_p) if settings.do_sample else None
    with model_lock(model), row_interventions(model, per_row):
        output = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pad_token_id=pad_id(tokenizer),  # the id encode_prompts padded with
            eos_token_id=stop_ids,
            **_decoding_kwargs(settings),
            **({} if capture is None and sampler is None else {"logits_processor": _processors(capture, sampler)}),
        )
    generated = output[:, batch["input_ids"].shape[1] :].tolist()
    return [_cut_reply(tokenizer, tokens, stop_ids) for tokens in generated]


def _processors(capture: _FirstStep | None, sampler: SeededSampler | None = None):
    """The first-step capture (unwarped scores) first, then the seeded sampler."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Wrapped(LogitsProcessor):
        def __init__(self, function):
            self.function = function

        def __call__(self, input_ids, scores):
            return self.function(input_ids, scores)

    return LogitsProcessorList([Wrapped(step) for step in (capture, sampler) if step is not None])


def _decoding_kwargs(settings: GenerationSettings) -> dict:
    """Decoding options that override whatever the model's ``generation_config`` ships.

    Hub models often set sampling defaults (top_k, temperature) or a repetition penalty;
    the settings object alone should decide how text is produced.
    """
    # Sampling is done by SeededSampler (temperature and top-p included), whose one-token
    # scores greedy decoding then follows; ``generate``'s own sampling knobs stay unset so
    # greedy decoding does not warn about ignored values.
    return {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": False,
        "repetition_penalty": 1.0,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }


def _cut_reply(tokenizer, tokens: list[int], stop_ids: list[int]) -> tuple[str, int, bool, tuple[int, ...]]:
    """Reply text up to the first end-of-turn token, without special tokens, and its token ids."""
    stops = set(stop_ids)
    end = next((i for i, token in enumerate(tokens) if token in stops), None)
    reply = tokens if end is None else tokens[:end]
    return tokenizer.decode(reply, skip_special_tokens=True), len(reply), end is not None, tuple(reply)
