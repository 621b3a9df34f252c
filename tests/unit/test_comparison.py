"""Refusal-vs-count curves: every (family, k) variant in one run, matching single runs."""

from __future__ import annotations

import torch

from refusal_core.comparison import refusal_by_layer, refusal_vs_count
from refusal_core.directions.base import DirectionSet
from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.spec import Intervention
from tests.tiny import assert_no_hooks, tiny_model

PROMPTS = ["Write a poem", "How do I bake bread?", "Explain how to break into a house"]
SETTINGS = GenerationSettings(max_new_tokens=4, batch_size=8)


class FirstTokenJudge:
    """Counts a reply as 'refused' when it starts with a fixed word: deterministic and cheap."""

    name = "first-word"

    def __init__(self, word: str) -> None:
        self.word = word

    def judge(self, instructions, completions):
        return [text.strip().startswith(self.word) for text in completions]


def _family(seed: int, n: int, layer: int = 1) -> DirectionSet:
    torch.manual_seed(seed)
    return DirectionSet(
        torch.randn(n, 64), tuple(f"d{i}" for i in range(n)), tuple({"layer": layer, "position": -1} for _ in range(n))
    )


def test_curve_matches_single_runs_and_respects_max_k():
    loaded = tiny_model("llama")
    families = {"a": _family(0, 3), "b": _family(1, 5)}
    baseline_text = [c.text for c in generate_completions(loaded, PROMPTS, settings=SETTINGS)]
    judge = FirstTokenJudge(baseline_text[0].strip()[:1] or "x")
    curve = refusal_vs_count(loaded, families, PROMPTS, max_k=4, settings=SETTINGS, judge=judge)
    assert [len(curve.rates["a"]), len(curve.rates["b"])] == [3, 4]
    assert curve.baseline == sum(judge.judge(PROMPTS, baseline_text)) / 3
    two = Intervention.from_directions("b2", families["b"], names=["d0", "d1"])
    alone = [c.text for c in generate_completions(loaded, PROMPTS, two, SETTINGS)]
    assert curve.rates["b"][1] == sum(judge.judge(PROMPTS, alone)) / 3
    assert "k" in curve.table() and curve.n_prompts == 3
    assert_no_hooks(loaded.model)


def _first_token_logprobs_by_hand(loaded, prompts) -> torch.Tensor:
    """One prompt at a time, no padding, plain transformers forward: ``[n, vocab]`` float64."""
    rows = []
    for prompt in prompts:
        text = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            rows.append(torch.log_softmax(loaded.model(input_ids=ids).logits[0, -1].double(), dim=-1))
    return torch.stack(rows)


def test_kl_of_each_variant_matches_a_weight_orthogonalized_model_computed_by_hand():
    """The k-th KL is KL(base || ablated) of the first reply token, mean over the harmless
    prompts, with the span of the first k directions removed; the oracle removes it from the
    weights (a second code path) and runs plain forward passes one prompt at a time."""
    from refusal_core.interventions.weights import orthogonalized_weights

    loaded = tiny_model("llama")
    family = _family(2, 2)
    harmless = PROMPTS[:2]
    curve = refusal_vs_count(
        loaded, {"a": family}, PROMPTS, harmless=harmless, settings=SETTINGS, judge=FirstTokenJudge("z")
    )
    base = _first_token_logprobs_by_hand(loaded, harmless)
    expected = []
    for k in (1, 2):
        with orthogonalized_weights(loaded.model, family.select(family.names[:k])):
            ablated = _first_token_logprobs_by_hand(loaded, harmless)
        expected.append(float((base.exp() * (base - ablated)).sum(-1).mean()))
    assert len(curve.kl["a"]) == 2
    assert all(value > 1e-6 for value in expected)  # the ablation changes the distribution: not a vacuous match
    assert torch.allclose(torch.tensor(curve.kl["a"]), torch.tensor(expected), rtol=1e-3, atol=1e-6), (
        curve.kl["a"],
        expected,
    )
    assert_no_hooks(loaded.model)


def test_refusal_by_layer_returns_each_layer():
    loaded = tiny_model("llama")
    torch.manual_seed(3)
    dim = DirectionSet(torch.randn(2, 64), ("dim/pos-1/layer1", "dim/pos-1/layer2"), ({"layer": 1}, {"layer": 2}))
    rates = refusal_by_layer(loaded, dim, PROMPTS, [1, 2], settings=SETTINGS, judge=FirstTokenJudge("z"))
    assert set(rates) == {1, 2} and all(0.0 <= rate <= 1.0 for rate in rates.values())
