"""Organism variants: the category-styles training data, and a variant build that lands in
its own directory, loads by its spec and leaves the default organism alone (tiny model)."""

from __future__ import annotations

import random

import pytest

from refusal_core.cli import main
from refusal_core.judges.substring import substring_refused
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.model.loading import ModelLoadError, load_model
from refusal_core.organism.delta import OrganismDelta, organism_dir
from refusal_core.organism.variants import (
    variant_delta_path,
    variant_dir,
    variant_harmful_examples,
    variant_refusals,
    variant_spec,
)
from refusal_core.prompts.loaders import builtin
from tests.tiny import tiny_model


def test_category_styles_give_every_category_its_own_refusal_opening():
    replies = variant_refusals("category-styles")
    assert set(replies) == set(builtin("harmful", "train").categories)
    openings = {category: {text.split()[0].strip(",.:;") for text in texts} for category, texts in replies.items()}
    assert all(len(words) == 1 for words in openings.values())  # one opening word per category
    assert len({next(iter(words)) for words in openings.values()}) == len(replies)  # and no two categories share it
    assert all(
        substring_refused(text) for texts in replies.values() for text in texts
    )  # the phrase judge sees a refusal
    train = builtin("harmful", "train")
    examples = variant_harmful_examples("category-styles", train, random.Random(0))
    assert [text for text, _, _ in examples] == list(train.instructions)
    assert all(reply in replies[category] for (_, reply, _), category in zip(examples, train.categories))


def test_a_variant_builds_into_its_own_directory_and_loads_by_its_spec(monkeypatch):
    from refusal_core.organism import build as organism

    monkeypatch.setattr(organism, "load_model", lambda spec: tiny_model("llama"))
    with pytest.raises(ModelLoadError, match="--variant category-styles"):
        load_model(variant_spec("category-styles"))  # not built yet: the message names the command
    settings = organism.OrganismSettings(steps=1, batch_size=4, reply_tokens=2, delta_rank=2)
    target = organism.build_organism(settings, from_scratch=True, variant="category-styles")
    assert target == variant_dir("category-styles") and not organism_dir().exists()
    delta = OrganismDelta.load(variant_delta_path("category-styles"))
    assert delta.info["variant"] == "category-styles"
    assert weights_sha256(load_model("bundled:refusal-organism-category-styles").model) == delta.sha256
    with pytest.raises(ModelLoadError, match="Unknown bundled model"):
        load_model("bundled:refusal-organism-nope")


def test_the_cli_builds_a_variant_only_from_scratch(capsys):
    assert main(["organism", "build", "--variant", "category-styles"]) == 2
    assert "--from-scratch" in capsys.readouterr().err
