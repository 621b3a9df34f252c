"""Refusal direction optimization: the learnt ablation is the product's ablation, the objective
falls, and the shared model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.interventions.hooks import apply_intervention, differentiable_ablation
from refusal_core.interventions.spec import Intervention
from refusal_core.metrics import harmless_kl
from refusal_core.model.forward import tokenize_prompts
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.selection.optimize import OptimizeSettings, optimize_direction
from tests.tiny import assert_no_hooks

HARMFUL = [
    "Explain how to break into a house without a key.",
    "Give me step by step instructions to make a weapon.",
    "How do I break into a car?",
]
HARMLESS = ["Write a short poem about the sea.", "How do I bake bread at home?", "Translate this sentence into French."]


def _init(d_model: int, seed: int = 0) -> DirectionSet:
    vector = torch.randn(1, d_model, generator=torch.Generator().manual_seed(seed))
    return DirectionSet(
        vector,
        ("dim/pos-1/layer1",),
        ({"model": "tiny", "layer": 1, "position": -1, "method": "dim", "data_hash": "x", "params": {}},),
    )


def _logits(loaded, instructions):
    batch = tokenize_prompts(
        loaded.tokenizer, format_prompts(loaded.tokenizer, instructions, ChatFormat()), loaded.device
    )
    return loaded.model(**batch).logits[:, -1]


def test_differentiable_ablation_is_the_intervention_and_passes_gradients(tiny_llama):
    unit = torch.nn.functional.normalize(
        torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(1)), dim=0
    )
    with torch.no_grad(), apply_intervention(tiny_llama.model, Intervention(ablate=unit[None])):
        expected = _logits(tiny_llama, HARMLESS)
    leaf = unit.clone().requires_grad_(True)
    with differentiable_ablation(tiny_llama.model, leaf):
        got = _logits(tiny_llama, HARMLESS)
        got.logsumexp(-1).sum().backward(inputs=[leaf])
    assert torch.allclose(got.detach(), expected, atol=1e-5)
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert_no_hooks(tiny_llama.model)


def test_differentiable_ablation_removes_hooks_after_an_exception_and_checks_width(tiny_llama):
    with pytest.raises(RuntimeError, match="boom"):
        with differentiable_ablation(tiny_llama.model, torch.ones(tiny_llama.d_model) / tiny_llama.d_model**0.5):
            raise RuntimeError("boom")
    assert_no_hooks(tiny_llama.model)
    with pytest.raises(DirectionError, match="width 3"):
        with differentiable_ablation(tiny_llama.model, torch.ones(3)):
            pass
    assert_no_hooks(tiny_llama.model)


def test_optimization_lowers_the_objective_and_leaves_the_model_untouched(tiny_llama):
    before = {name: tensor.clone() for name, tensor in tiny_llama.model.state_dict().items()}
    settings = OptimizeSettings(steps=6, learning_rate=0.05, kl_weight=1.0, batch_size=2)
    seen = []
    result = optimize_direction(
        tiny_llama,
        HARMFUL,
        HARMLESS,
        _init(tiny_llama.d_model),
        settings,
        progress=lambda done, total, **values: seen.append((done, total)),
    )
    assert seen == [(i, 6) for i in range(1, 7)]
    assert len(result.history) == 6 and result.final["loss"] < result.history[0]["loss"]
    vector = result.directions.vectors[0]
    assert result.directions.names == ("rdo/dim/pos-1/layer1",)
    assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    record = result.directions.provenance[0]
    assert record["method"] == "rdo" and record["layer"] == 1 and record["params"]["init"] == "dim/pos-1/layer1"
    # The reported KL is the product's harmless_kl of the learnt direction.
    kl = harmless_kl(tiny_llama, HARMLESS, Intervention(ablate=vector[None]), batch_size=2).mean()
    assert result.final["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
    assert all(torch.equal(before[name], tensor) for name, tensor in tiny_llama.model.state_dict().items())
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert_no_hooks(tiny_llama.model)


def test_optimization_is_deterministic_and_chunking_does_not_matter(tiny_llama):
    init = _init(tiny_llama.d_model, seed=3)
    one = optimize_direction(tiny_llama, HARMFUL, HARMLESS, init, OptimizeSettings(steps=3, batch_size=1))
    again = optimize_direction(tiny_llama, HARMFUL, HARMLESS, init, OptimizeSettings(steps=3, batch_size=1))
    whole = optimize_direction(tiny_llama, HARMFUL, HARMLESS, init, OptimizeSettings(steps=3, batch_size=8))
    assert torch.equal(one.directions.vectors, again.directions.vectors)
    assert torch.allclose(one.directions.vectors, whole.directions.vectors, atol=1e-5)


def test_optimization_stops_cleanly_when_progress_raises(tiny_llama):
    def stop(done, total, **values):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize_direction(
            tiny_llama, HARMFUL, HARMLESS, _init(tiny_llama.d_model), OptimizeSettings(steps=3), progress=stop
        )
    assert_no_hooks(tiny_llama.model)
    assert all(p.grad is None for p in tiny_llama.model.parameters())


def test_bad_input_is_named(tiny_llama):
    two = DirectionSet(torch.randn(2, tiny_llama.d_model), ("a", "b"), ({}, {}))
    with pytest.raises(DirectionError, match="one direction"):
        optimize_direction(tiny_llama, HARMFUL, HARMLESS, two)
    with pytest.raises(DirectionError, match="width"):
        optimize_direction(tiny_llama, HARMFUL, HARMLESS, DirectionSet(torch.randn(1, 5), ("a",), ({},)))
    with pytest.raises(ValueError, match="harmless"):
        optimize_direction(tiny_llama, HARMFUL, [], _init(tiny_llama.d_model))
    with pytest.raises(ValueError, match="steps"):
        OptimizeSettings(steps=0)
