"""Massive-activation diagnostics and the random-direction KL floor, on a tiny model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.organism import report
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.sinks import massive_activations, massive_share, random_direction_kl
from tests._targets import ACCEPTANCE, missed_targets
from tests.tiny import assert_no_hooks
from tests.unit.test_comparison import _first_token_logprobs_by_hand

PROMPTS = ["Name a colour.", "Give me one short tip for sleeping better tonight, please.", "Count to three."]


@contextlib.contextmanager
def _planted(model, token_id: int, coordinate: int, value: float):
    """Give token ``token_id`` a huge ``coordinate`` in its embedding (restored afterwards)."""
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[token_id, coordinate] += value
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def _first_token(loaded, instruction: str) -> int:
    text = format_prompts(loaded.tokenizer, [instruction], ChatFormat())[0]
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"][0]


def test_planted_massive_coordinate_is_found_at_the_first_token(tiny_llama):
    with _planted(tiny_llama.model, _first_token(tiny_llama, PROMPTS[0]), coordinate=5, value=1e5):
        found = massive_activations(tiny_llama, PROMPTS)
    assert found.coordinates == (5,)
    layer, token = found.where[5]
    assert token == 0 and layer < 3  # the first token, carried by the residual stream (hidden_states[3] is normed)
    assert found.peak[5] > 1e4
    assert 5 not in massive_activations(tiny_llama, PROMPTS).coordinates


def test_padding_is_never_counted(tiny_llama):
    short, long = "Hi.", PROMPTS[1]
    assert len(tiny_llama.tokenizer(short)["input_ids"]) < len(tiny_llama.tokenizer(long)["input_ids"])
    with _planted(tiny_llama.model, tiny_llama.tokenizer.pad_token_id, coordinate=7, value=1e5):
        found = massive_activations(tiny_llama, [short, long])  # the short prompt is left-padded
    assert 7 not in found.coordinates


def test_massive_activations_rejects_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="at least one"):
        massive_activations(tiny_llama, [])
    with pytest.raises(ValueError, match="ratio"):
        massive_activations(tiny_llama, PROMPTS, ratio=0.5)


def test_massive_share_by_hand():
    vectors = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    assert massive_share(vectors, [0]).tolist() == pytest.approx([9 / 25, 0.0])
    assert massive_share(vectors, [0, 1, 2]).tolist() == pytest.approx([1.0, 1.0])
    assert massive_share(vectors[0], []).tolist() == [0.0]


def test_random_direction_kl_is_seeded_and_matches_an_orthogonalized_model_by_hand(tiny_llama):
    """Each value is the mean first-token KL(base || ablated) of one random direction (drawn
    with ``torch.randn`` from a generator seeded with ``seed``, the documented seeding). The
    oracle does not reuse the metric's code: it removes the direction from the weights and
    runs plain forward passes one prompt at a time (no padding, no hooks)."""
    first = random_direction_kl(tiny_llama, PROMPTS, n_directions=2, seed=3)
    assert first == random_direction_kl(tiny_llama, PROMPTS, n_directions=2, seed=3)
    assert first != random_direction_kl(tiny_llama, PROMPTS, n_directions=2, seed=4)
    generator = torch.Generator().manual_seed(3)
    base = _first_token_logprobs_by_hand(tiny_llama, PROMPTS)
    for value in first:
        direction = torch.randn(1, tiny_llama.model.config.hidden_size, generator=generator, dtype=torch.float64)
        directions = DirectionSet(direction.float(), ("r",), ({},))
        with orthogonalized_weights(tiny_llama.model, directions):
            ablated = _first_token_logprobs_by_hand(tiny_llama, PROMPTS)
        expected = float((base.exp() * (base - ablated)).sum(-1).mean())
        assert expected > 1e-6 and value == pytest.approx(expected, rel=1e-3)
    assert_no_hooks(tiny_llama.model)


def test_organism_report_on_a_tiny_model(tiny_llama, monkeypatch):
    monkeypatch.setattr(report, "load_model", lambda spec: tiny_llama)
    result = report.organism_report(spec="tiny", n_select=3, max_new_tokens=3, layer_step=1)
    assert {name: (op, threshold) for name, op, threshold in report.TARGETS} == ACCEPTANCE  # the targets, pinned
    for target in result["targets"]:
        assert target["pass"] == (target["metric"] not in missed_targets(result["metrics"]))
    diagnostics = result["diagnostics"]
    assert 0.0 <= diagnostics["selected_massive_share"] <= 1.0
    assert len(diagnostics["random_direction_kl"]) == 3
    text = report.format_report(result)
    assert "Diagnostics" in text and "random unit direction" in text
    assert_no_hooks(tiny_llama.model)


def test_organism_report_measures_an_optimized_direction_when_asked(tiny_llama, monkeypatch):
    monkeypatch.setattr(report, "load_model", lambda spec: tiny_llama)
    monkeypatch.setattr(report, "OPTIMIZE_PROMPTS", {"harmful": 3, "harmless": 3})
    result = report.organism_report(spec="tiny", n_select=3, max_new_tokens=3, layer_step=1, optimize_steps=2)
    optimized = result["diagnostics"]["optimized"]
    assert optimized["steps"] == 2 and optimized["n_train"] == {"harmful": 3, "harmless": 3}
    assert 0.0 <= optimized["harmful_refusal"] <= 1.0 and optimized["harmless_kl"] >= 0.0
    assert -1.0 <= optimized["cosine_to_selected"] <= 1.0
    assert "optimized from the selected one" in report.format_report(result)
    assert (
        "optimized"
        not in report.organism_report(spec="tiny", n_select=3, max_new_tokens=3, layer_step=1)["diagnostics"]
    )
    assert_no_hooks(tiny_llama.model)
