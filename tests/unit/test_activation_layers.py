"""Extraction of a subset of layers: the same numbers as a full extraction and as plain
transformers' ``output_hidden_states`` (independent oracle), layer numbers kept, hooks only
on the blocks asked for, and the ``--layers`` flag."""

from __future__ import annotations

import pytest
import torch

import refusal_core.activations.extract as extract
from refusal_core.activations.extract import extract_activations
from refusal_core.errors import SettingsError
from refusal_core.model.tiny_families import tiny_family_folder
from refusal_core.prompts.chat import format_prompts
from tests.tiny import assert_no_hooks, tiny_model

PROMPTS = [
    "Hi",
    "Write a poem about the sea",
    "How do I bake bread at home with flour, water and yeast?",
    "Translate this",
    "Explain how to break into a house.",
]


def _loaded(family: str, tmp_path):
    if family == "qwen3_moe":
        from refusal_core.model.loading import load_model

        return load_model(str(tiny_family_folder("qwen3_moe", tmp_path / "moe")))
    return tiny_model(family)


def _hidden_states(loaded, prompt: str) -> tuple[torch.Tensor, ...]:
    """Plain transformers, one prompt (no padding): ``hidden_states[l]`` enters block ``l``."""
    ids = loaded.tokenizer(format_prompts(loaded.tokenizer, [prompt]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return loaded.model(**ids, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3_moe"])
def test_subset_equals_full_extraction_and_hidden_states(family, tmp_path):
    loaded = _loaded(family, tmp_path)
    n = loaded.n_layers
    chosen = (1, n - 1) if n > 2 else (1,)
    positions = (-3, -1)
    full = extract_activations(loaded, PROMPTS, positions=positions, batch_size=2, use_cache=False)
    subset = extract_activations(loaded, PROMPTS, positions=positions, batch_size=2, use_cache=False, layers=chosen)
    assert subset.layers == chosen and subset.n_layers == n and full.layers == tuple(range(n + 1))
    assert subset.acts.shape == (len(PROMPTS), len(positions), len(chosen), loaded.d_model)
    for layer in chosen:
        # Exactly the same numbers as the full extraction's layer (same forward, same batches).
        assert torch.equal(subset.residual(layer), full.residual(layer))
        for row, prompt in enumerate(PROMPTS):
            hidden = _hidden_states(loaded, prompt)
            for position in positions:
                expected = hidden[layer][0, position]
                got = subset.block_input(layer, position)[row]
                assert torch.allclose(got, expected, atol=1e-4), (family, layer, prompt, position)
    assert_no_hooks(loaded.model)


def test_layer_numbers_are_kept_and_unrecorded_layers_are_refused():
    loaded = tiny_model("llama")  # 3 blocks: layer numbers 0..3, 3 = the last block's output
    full = extract_activations(loaded, PROMPTS[:2], positions=[-1], use_cache=False)
    subset = extract_activations(loaded, PROMPTS[:2], positions=[-1], use_cache=False, layers=[3, 1, 1])
    assert subset.layers == (1, 3)  # sorted, once each
    assert torch.equal(subset.block_input(1), full.block_input(1))
    assert torch.equal(subset.block_output(2), full.block_output(2))  # layer 3: output of block 2
    assert subset.block_inputs == (1,)
    with pytest.raises(SettingsError, match="Layer 2 was not recorded"):
        subset.block_input(2)
    with pytest.raises(SettingsError, match="layer numbers 0..3"):
        extract_activations(loaded, PROMPTS[:2], positions=[-1], use_cache=False, layers=[4])


def test_hooks_sit_only_on_the_requested_blocks(monkeypatch):
    loaded = tiny_model("llama")
    seen = []
    real = extract.block_hooks

    def spy(model, inputs, outputs=()):
        seen.append((sorted(inputs), len(list(outputs))))
        return real(model, inputs, outputs)

    monkeypatch.setattr(extract, "block_hooks", spy)
    extract_activations(loaded, PROMPTS[:2], positions=[-1], use_cache=False, layers=[2])
    extract_activations(loaded, PROMPTS[:2], positions=[-1], use_cache=False, layers=[0, 3])
    assert seen == [([2], 0), ([0], 1)]


def test_subset_and_full_are_cached_apart_and_full_keeps_its_key(tiny_llama):
    full = extract_activations(tiny_llama, PROMPTS, positions=[-1])
    subset = extract_activations(tiny_llama, PROMPTS, positions=[-1], layers=[1, 2])
    assert subset.key != full.key
    assert extract_activations(tiny_llama, PROMPTS, positions=[-1], layers=[0, 1, 2, 3]).key == full.key
    again = extract_activations(tiny_llama, PROMPTS, positions=[-1], layers=[1, 2])
    assert again.from_cache and again.layers == (1, 2) and torch.equal(again.acts, subset.acts)


def test_dim_candidates_from_a_subset_equal_those_from_all_layers(tiny_llama):
    from refusal_core.directions.dim import dim_from_activations

    harmful, harmless = PROMPTS[:3], PROMPTS[3:]
    full = [extract_activations(tiny_llama, p, positions=[-1], use_cache=False) for p in (harmful, harmless)]
    part = [
        extract_activations(tiny_llama, p, positions=[-1], use_cache=False, layers=[2]) for p in (harmful, harmless)
    ]
    from_full = dim_from_activations(*full, {}, layers=[2])
    from_part = dim_from_activations(*part, {})
    assert from_part.names == from_full.names == ("dim/pos-1/layer2",)
    assert torch.equal(from_part.vectors, from_full.vectors)


def test_cli_layers_flag_records_only_those_layers(tiny_model_dir, capsys):
    import json

    from refusal_core.cli import main

    args = ["activations", "--model", tiny_model_dir, "--limit", "2", "--json"]
    assert main([*args, "--layers", "0,2-3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["harmful"]["layers"] == [0, 2, 3] and out["harmful"]["shape"][2] == 3
    assert main([*args, "--layers", "3-1"]) == 2
    assert "not a layer number or a range" in capsys.readouterr().err


def test_cli_refuses_a_layer_outside_layers_before_loading(tiny_model_dir, monkeypatch, capsys):
    import refusal_core.model.loading as loading
    from refusal_core.cli import main
    from refusal_core.directions.registry import methods

    method = next(m for m in methods().values() if m.reads == "layer")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    args = ["directions", method.name, "--model", tiny_model_dir, "--layer", "2", "--layers", "0,1"]
    assert main([*args, "--out", "/tmp/never"]) == 2
    assert "--layer 2 is not among --layers 0,1" in capsys.readouterr().err
