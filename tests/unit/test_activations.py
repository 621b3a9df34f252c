"""Activation extraction: batching, positions, cache hits, corruption and bad input."""

from __future__ import annotations

import os

import pytest
import torch

import refusal_core.activations.extract as activations_module
from refusal_core.activations.cache import entry_path
from refusal_core.activations.extract import default_positions, extract_activations
from refusal_core.model.fingerprint import weights_fingerprint
from tests.tiny import assert_no_hooks, tiny_model

PROMPTS = [
    "Hi",
    "Write a poem about the sea",
    "How do I bake bread at home with flour, water and yeast?",
    "Translate this",
]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen3"])
def test_batched_equals_one_by_one(family):
    loaded = tiny_model(family)
    batched = extract_activations(loaded, PROMPTS, batch_size=4, use_cache=False)
    single = torch.cat([extract_activations(loaded, [p], use_cache=False).acts for p in PROMPTS])
    assert batched.acts.shape == (4, len(batched.positions), 4, 64)
    assert torch.allclose(batched.acts, single, atol=1e-4)
    assert_no_hooks(loaded.model)


def test_layers_match_hidden_states_of_a_bare_forward(tiny_llama):
    from refusal_core.prompts.chat import format_prompts

    acts = extract_activations(tiny_llama, PROMPTS[:1], use_cache=False)
    ids = tiny_llama.tokenizer(
        format_prompts(tiny_llama.tokenizer, PROMPTS[:1]), return_tensors="pt", add_special_tokens=False
    )
    hidden = tiny_llama.model(**ids, output_hidden_states=True).hidden_states
    # hidden_states[l] is the input of block l for l < n_layers (the last entry is after the final norm).
    for layer in range(3):
        assert torch.allclose(acts.block_input(layer, -1), hidden[layer][:, -1], atol=1e-5)
    assert torch.allclose(acts.block_output(1, -2), hidden[2][:, -2], atol=1e-5)


def test_default_positions_are_the_post_instruction_tokens(tiny_llama):
    positions = default_positions(tiny_llama.tokenizer)
    assert positions == tuple(range(-len(positions), 0))
    acts = extract_activations(tiny_llama, PROMPTS[:2], positions=[-1], use_cache=False)
    assert acts.acts.shape[1] == 1


def test_cache_hit_returns_identical_tensors_without_forward(tiny_llama, monkeypatch):
    first = extract_activations(tiny_llama, PROMPTS)
    assert not first.from_cache

    def no_forward(*args, **kwargs):
        raise AssertionError("a cache hit must not run the model")

    monkeypatch.setattr(activations_module, "_forward_batch", no_forward)
    second = extract_activations(tiny_llama, PROMPTS)
    assert second.from_cache and torch.equal(first.acts, second.acts)


def test_cache_key_changes_with_prompts_positions_and_weights(tiny_llama):
    base = extract_activations(tiny_llama, PROMPTS)
    assert extract_activations(tiny_llama, PROMPTS[:3]).key != base.key
    assert extract_activations(tiny_llama, PROMPTS, positions=[-1]).key != base.key
    loaded = tiny_model("llama", seed=3)
    before = weights_fingerprint(loaded.model)
    with torch.no_grad():
        loaded.model.lm_head.weight.add_(1.0)
    assert weights_fingerprint(loaded.model) != before


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_cache_entry_is_recomputed(tiny_llama, damage):
    first = extract_activations(tiny_llama, PROMPTS)
    path = entry_path("activations", first.key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF
    # Damaged as a crash or a bad copy leaves it: a new file under the entry's name. The
    # cache never rewrites a file in place, and the first result is mapped from the old one.
    damaged = path.with_name("damaged.tmp")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, path)
    again = extract_activations(tiny_llama, PROMPTS)
    assert not again.from_cache
    assert torch.equal(first.acts, again.acts)
    assert extract_activations(tiny_llama, PROMPTS).from_cache


def test_progress_reports_every_batch(tiny_llama):
    seen = []
    extract_activations(
        tiny_llama, PROMPTS, batch_size=3, use_cache=False, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(3, 4), (4, 4)]


def test_bad_inputs_raise_clear_errors(tiny_llama):
    with pytest.raises(ValueError, match="No prompts"):
        extract_activations(tiny_llama, [])
    with pytest.raises(ValueError, match="negative offsets"):
        extract_activations(tiny_llama, PROMPTS, positions=[0])
    with pytest.raises(ValueError, match="batch_size"):
        extract_activations(tiny_llama, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="before the start"):
        extract_activations(tiny_llama, ["Hi"], positions=[-500], use_cache=False)
    acts = extract_activations(tiny_llama, PROMPTS[:1], use_cache=False)
    with pytest.raises(ValueError, match="out of range"):
        acts.block_input(3)
    with pytest.raises(ValueError, match="not recorded"):
        acts.block_input(0, position=-99)
    assert_no_hooks(tiny_llama.model)
