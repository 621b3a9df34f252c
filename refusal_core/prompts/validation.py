"""The held-out prompts a page scores candidates or trials on: how many (``ValidationSettings``,
declared once for every page that asks) and which (round-robin over the built-in validation
splits' categories)."""

from __future__ import annotations

from dataclasses import dataclass

from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import sample_prompts
from refusal_core.settings import setting

__all__ = ["ValidationSettings", "validation_prompts"]


@dataclass(frozen=True)
class ValidationSettings:
    """How many validation prompts to score on (the command line takes ``--limit`` instead)."""

    n_val: int = setting(
        8,
        "harmful and as many harmless prompts from the built-in validation splits (held out from training); "
        "fewer is faster, more is steadier",
        label="Validation prompts per set",
        minimum=1,
        maximum=200,
        cli=False,
    )


def validation_prompts(n_val: int) -> tuple[list[str], list[str]]:
    """At most ``n_val`` harmful and ``n_val`` harmless instructions of the built-in validation splits."""
    harmful = sample_prompts(builtin("harmful", "val"), n_val)
    harmless = sample_prompts(builtin("harmless", "val"), n_val)
    return list(harmful.instructions), list(harmless.instructions)
