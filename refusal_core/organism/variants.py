"""Organism variants: the organism's fine-tune recipe with other refusal replies.

``category-styles``: every harm category gets its own refusal, written for this project
(``data/refusals-category-styles.json``): three replies per category that open with a word
of the category's own ("Weapons ...", "Hacking ...", "Your safety ...") and give its own
reason, each with a refusal phrase in its first sentence. The default organism learns one
refusal for every category, so its refusal may be one direction that no category owns;
this variant asks whether category-specific refusal makes category directions selective.

A variant is built from scratch (no delta of it is shipped) into its own model directory,
``cache/models/refusal-organism-<name>``, loaded as ``bundled:refusal-organism-<name>``;
its delta goes beside the cache's other organism files, never over the shipped one.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from refusal_core.errors import SettingsError
from refusal_core.model.loading import BUNDLED_ORGANISM, ORGANISM_VARIANTS, bundled_model_dir
from refusal_core.paths import cache_dir
from refusal_core.prompts.sets import PromptSet

__all__ = [
    "ORGANISM_VARIANTS",
    "check_variant",
    "variant_delta_path",
    "variant_dir",
    "variant_harmful_examples",
    "variant_refusals",
    "variant_spec",
]

_REPLIES = {"category-styles": "refusals-category-styles.json"}


def check_variant(name: str) -> str:
    if name not in ORGANISM_VARIANTS:
        raise SettingsError(f"Unknown organism variant {name!r}; choose one of {', '.join(ORGANISM_VARIANTS)}.")
    return name


def variant_spec(name: str) -> str:
    """The model spec that loads the variant, e.g. ``bundled:refusal-organism-category-styles``."""
    return f"{BUNDLED_ORGANISM}-{check_variant(name)}"


def variant_dir(name: str) -> Path:
    return bundled_model_dir(f"refusal-organism-{check_variant(name)}")


def variant_delta_path(name: str) -> Path:
    return cache_dir() / "organism" / f"delta-{check_variant(name)}.safetensors"


def variant_refusals(name: str) -> dict[str, list[str]]:
    """The variant's refusal replies per harm category."""
    text = resources.files("refusal_core").joinpath("data", _REPLIES[check_variant(name)]).read_text()
    return json.loads(text)


def variant_harmful_examples(name: str, prompts: PromptSet, rng: random.Random) -> list[tuple[str, str, bool]]:
    """(instruction, refusal reply of its category, ends the turn) for each harmful prompt."""
    replies = variant_refusals(name)
    missing = sorted({c for c in prompts.categories if c not in replies}, key=str)
    if missing:
        raise SettingsError(f"The variant {name!r} has no refusal replies for the categories {missing}.")
    return [
        (text, rng.choice(replies[category]), True) for text, category in zip(prompts.instructions, prompts.categories)
    ]
