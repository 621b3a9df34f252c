"""Bounds on user input: file size, prompts per set, characters and tokens per prompt.

A single multi-megabyte line would otherwise become one prompt of millions of tokens,
tokenized and run under the shared model lock while every other session waits. Each bound
has a default far above what a prompt set written for refusal research holds, and can be
changed with an environment variable (an empty or unset variable keeps the default):

* ``REFUSAL_ATLAS_MAX_FILE_MB``: size of one prompt file or upload (default 20 MB),
* ``REFUSAL_ATLAS_MAX_PROMPTS``: prompts in one set (default 20,000),
* ``REFUSAL_ATLAS_MAX_PROMPT_CHARS``: characters in one prompt (default 16,000),
* ``REFUSAL_ATLAS_MAX_PROMPT_TOKENS``: tokens in one formatted prompt (default 4,096).

File size, prompt count and characters are checked while loading, before any model work;
tokens are checked right after tokenizing, before the forward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from refusal_core.errors import SettingsError
from refusal_core.prompts.sets import PromptSetError

__all__ = ["InputLimitError", "Limits", "check_file_size", "check_prompts", "check_token_counts", "limits"]

DEFAULTS = {"max_file_mb": 20.0, "max_prompts": 20_000, "max_prompt_chars": 16_000, "max_prompt_tokens": 4_096}
ENV = {
    "max_file_mb": "REFUSAL_ATLAS_MAX_FILE_MB",
    "max_prompts": "REFUSAL_ATLAS_MAX_PROMPTS",
    "max_prompt_chars": "REFUSAL_ATLAS_MAX_PROMPT_CHARS",
    "max_prompt_tokens": "REFUSAL_ATLAS_MAX_PROMPT_TOKENS",
}


class InputLimitError(PromptSetError):
    """An input is larger than a configured limit; the message names the limit and its variable."""


@dataclass(frozen=True)
class Limits:
    max_file_mb: float
    max_prompts: int
    max_prompt_chars: int
    max_prompt_tokens: int

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


def _read(name: str) -> float:
    raw = os.environ.get(ENV[name], "").strip()
    if not raw:
        return DEFAULTS[name]
    kind = type(DEFAULTS[name])
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or value != value or value == float("inf"):
        raise SettingsError(
            f"{ENV[name]}={raw!r} is not a positive number; set it to e.g. {DEFAULTS[name]} or unset it."
        )
    return value


def limits() -> Limits:
    """The limits in force now (read from the environment on each call)."""
    return Limits(**{name: _read(name) for name in DEFAULTS})


def check_file_size(size: int, label: str) -> None:
    """Refuse a file of ``size`` bytes above the file limit, before it is read."""
    limit = limits()
    if size > limit.max_file_bytes:
        raise InputLimitError(
            f"{label!r} is {size / 1024 / 1024:.1f} MB, over the {limit.max_file_mb:g} MB limit for prompt files; "
            f"split it into smaller files, or raise the limit with {ENV['max_file_mb']}."
        )


def check_prompts(texts: Sequence[str], label: str) -> None:
    """Refuse too many prompts, or one prompt over the character limit."""
    limit = limits()
    if len(texts) > limit.max_prompts:
        raise InputLimitError(
            f"{label!r} holds {len(texts)} prompts, over the limit of {limit.max_prompts} per set; "
            f"use a smaller file, or raise the limit with {ENV['max_prompts']}."
        )
    for index, text in enumerate(texts):
        if len(text) > limit.max_prompt_chars:
            raise InputLimitError(
                f"Prompt {index + 1} of {label!r} is {len(text)} characters long, over the limit of "
                f"{limit.max_prompt_chars} characters per prompt (is the file one prompt per line?); shorten it, "
                f"or raise the limit with {ENV['max_prompt_chars']}."
            )


def check_token_counts(counts: Sequence[int]) -> None:
    """Refuse a tokenized prompt longer than the token limit, before the forward pass."""
    limit = limits().max_prompt_tokens
    for index, count in enumerate(counts):
        if count > limit:
            raise InputLimitError(
                f"Formatted prompt {index + 1} is {count} tokens long, over the limit of {limit} tokens per prompt; "
                f"shorten it, or raise the limit with {ENV['max_prompt_tokens']}."
            )
