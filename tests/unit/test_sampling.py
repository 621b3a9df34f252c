"""Seeded sampling draws from its own generator: reproducible while other threads use the
global generator and another model samples at the same time; the filtered distribution
matches a hand computation and transformers' own top-p warper."""

from __future__ import annotations

import math
import threading

import torch
from transformers import TopPLogitsWarper

from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.sampling import SeededSampler, filtered_probs
from tests.tiny import tiny_model

PROMPTS = ["Write a poem about the sea.", "How do I bake bread?", "Explain photosynthesis."]


def _texts(completions) -> list[str]:
    return [c.text for c in completions]


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    scores = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    probs = filtered_probs(scores, temperature=1.0, top_p=0.6)  # 0.5 alone < 0.6; 0.5 + 0.3 reaches it
    assert torch.allclose(probs, torch.tensor([[0.0, 0.625, 0.375]]))
    hot = filtered_probs(scores, temperature=2.0, top_p=1.0)
    by_hand = torch.tensor([0.2, 0.5, 0.3]) ** 0.5
    assert torch.allclose(hot[0], by_hand / by_hand.sum())


def test_the_kept_tokens_are_those_transformers_top_p_keeps():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 50, generator=generator) * 3
    for top_p in (0.3, 0.7, 0.95):
        ours = filtered_probs(scores, 1.0, top_p) > 0
        theirs = torch.isfinite(TopPLogitsWarper(top_p=top_p)(None, scores.clone()))
        assert torch.equal(ours, theirs), top_p


def test_draws_follow_the_distribution_and_leave_one_token():
    probs = torch.tensor([0.1, 0.6, 0.3])
    scores = torch.log(probs).expand(20000, 3).clone()
    out = SeededSampler(seed=5)(None, scores)
    assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(20000, dtype=torch.long))
    frequencies = torch.isfinite(out).float().mean(0)
    assert torch.allclose(frequencies, probs, atol=4 * math.sqrt(0.25 / 20000))


def test_two_models_sampling_at_once_while_the_global_generator_churns_stay_reproducible():
    """Two sessions sample on two models (two different model locks) while a third thread
    keeps drawing from torch's global generator; each gets exactly its single-threaded replies."""
    models = [tiny_model("llama", seed=51), tiny_model("qwen2", seed=52)]
    settings = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, seed=11)
    expected = [_texts(generate_completions(m, PROMPTS, None, settings)) for m in models]
    stop = threading.Event()
    results: dict[int, list[list[str]]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def churn() -> None:
        while not stop.is_set():
            torch.rand(64)
            torch.manual_seed(int(torch.randint(0, 1000, ()).item()))
            stop.wait(0.001)  # reseed about a thousand times a second without holding the GIL throughout

    def session(index: int) -> None:
        try:
            for _ in range(3):
                results[index].append(_texts(generate_completions(models[index], PROMPTS, None, settings)))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    churner = threading.Thread(target=churn)
    churner.start()
    sessions = [threading.Thread(target=session, args=(i,)) for i in (0, 1)]
    for thread in sessions:
        thread.start()
    for thread in sessions:
        thread.join(600)
    stop.set()
    churner.join(10)
    assert errors == []
    assert results[0] == [expected[0]] * 3 and results[1] == [expected[1]] * 3
    assert expected[0] != _texts(generate_completions(models[0], PROMPTS, None, GenerationSettings(max_new_tokens=10)))
