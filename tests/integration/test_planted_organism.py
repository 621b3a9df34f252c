"""The planted two-mechanisms organism, built from its shipped delta, holds the issue's
properties on held-out test prompts, and the shipped organism is left as it was."""

from __future__ import annotations

import pytest
import torch

from refusal_core.directions.planted import load_planted
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.model.loading import BUNDLED_ORGANISM, load_model
from refusal_core.organism.delta import SHIPPED_DELTA, OrganismDelta, delta_sha256, organism_dir
from refusal_core.organism.planted_build import SHIPPED_PLANTED_DELTA, planted_from_delta
from refusal_core.organism.planted_check import check_planted

# Not part of -m slow until the variant's delta ships (docs/results/planted-organism.md): run it
# with -m planted once `organism build --variant two-mechanisms --from-scratch` has written one.
pytestmark = pytest.mark.planted


def test_the_planted_variant_refuses_through_two_directions_that_one_dim_direction_cannot_remove():
    organism_before = weights_sha256(load_model(BUNDLED_ORGANISM).model)
    target = planted_from_delta(SHIPPED_PLANTED_DELTA, force=True)
    # The shipped organism and its delta are untouched; the variant is organism + its own delta.
    assert weights_sha256(load_model(BUNDLED_ORGANISM).model) == organism_before == delta_sha256(SHIPPED_DELTA)
    assert target != organism_dir()
    loaded = load_model(f"{BUNDLED_ORGANISM}-two-mechanisms")
    delta = OrganismDelta.load(SHIPPED_PLANTED_DELTA)
    assert delta.base_sha256 == organism_before and weights_sha256(loaded.model) == delta.sha256
    planted = load_planted(loaded.source)
    a, b = planted.vectors.double()
    assert abs(float(a @ b)) < 1e-6 and torch.allclose(planted.vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    layer = int(planted.provenance[0]["layer"])
    # A category-balanced sample of the test split (3 harmful prompts per category), replies as long as on the page.
    result = check_planted(
        loaded, planted.vectors, layer, split="test", max_new_tokens=32, max_harmful=36, max_harmless=24
    )
    m = result["metrics"]
    assert m["group_cosine"] <= 0.3, result
    assert m["harmful_refused"] >= 0.9 and m["harmless_refused"] <= 0.05, result
    assert m["dim_refused"] >= 0.4, result
    assert m["planted_refused"] <= 0.1 and m["planted_broken"] <= 0.1 and m["planted_kl"] <= 0.2, result
