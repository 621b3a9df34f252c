"""The memory estimate of an activation extraction (activations/memory.py) against the sizes
of the tensors it describes, measured, and the --max-memory refusal before any forward pass."""

from __future__ import annotations

import pytest

import refusal_core.activations.extract as extract
from refusal_core.activations.extract import extract_activations, extraction_memory
from refusal_core.errors import SettingsError
from refusal_core.exports.safetensors_io import read_header
from refusal_core.model.forward import token_ids
from refusal_core.prompts.chat import ChatFormat, format_prompts
from tests.tiny import tiny_model, tiny_tokenizer

PROMPTS = [
    "Write a short poem about the sea.",
    "How do I bake bread?",
    "Explain how to break into a house.",
    "Translate this sentence into French, please.",
    "What is the capital of France?",
]


@pytest.mark.parametrize("tie", [False, True])
def test_weights_estimate_is_the_bytes_the_files_hold_plus_buffers(tmp_path, tie):
    loaded = tiny_model("llama", tie=tie)
    loaded.model.save_pretrained(tmp_path)
    stored = sum(entry.nbytes for entry in read_header(tmp_path / "model.safetensors").entries)
    buffers = sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    estimate = extraction_memory(loaded, PROMPTS, positions=[-1], batch_size=2)
    assert estimate.weights == stored + buffers


def test_activations_estimate_is_the_result_and_a_batch_record_fits_the_forward_term():
    loaded = tiny_model("llama")
    positions = [-2, -1]
    estimate = extraction_memory(loaded, PROMPTS, positions=positions, batch_size=2)
    acts = extract_activations(loaded, PROMPTS, positions=positions, batch_size=2, use_cache=False).acts
    assert estimate.activations == acts.numel() * acts.element_size()
    texts = format_prompts(loaded.tokenizer, PROMPTS[:2], ChatFormat())
    batch = extract._forward_batch(loaded, texts, positions)
    longest = max(len(ids) for ids in token_ids(loaded, format_prompts(loaded.tokenizer, PROMPTS, ChatFormat())))
    d_ff, heads = loaded.model.config.intermediate_size, loaded.model.config.num_attention_heads
    hand = 2 * longest * (4 * 64 + 3 * d_ff) * 4 + 2 * heads * longest**2 * 4 + batch.numel() * 4
    assert estimate.forward == hand  # the formula of the module's docstring, by hand
    assert estimate.peak == estimate.weights + estimate.activations + estimate.forward


def test_a_budget_below_the_estimate_is_refused_before_any_forward_pass(monkeypatch):
    loaded = tiny_model("llama")
    estimate = extraction_memory(loaded, PROMPTS, positions=[-1], batch_size=2)
    calls = []
    real = extract._forward_batch
    monkeypatch.setattr(extract, "_forward_batch", lambda *a: calls.append(1) or real(*a))
    with pytest.raises(SettingsError, match="--max-memory"):
        extract_activations(loaded, PROMPTS, positions=[-1], batch_size=2, max_memory=estimate.peak - 1)
    assert calls == []
    result = extract_activations(loaded, PROMPTS, positions=[-1], batch_size=2, max_memory=estimate.peak)
    assert result.acts.shape == (len(PROMPTS), 1, loaded.n_layers + 1, loaded.d_model) and len(calls) == 3


def test_cli_prints_the_estimate_and_refuses_an_exceeded_budget(tmp_path, capsys):
    from refusal_core.cli import main

    folder = tmp_path / "model"
    tiny_model("llama").model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    code = main(["activations", "--model", str(folder), "--limit", "3", "--max-memory", "1MB"])
    err = capsys.readouterr().err
    assert code == 2 and "more than --max-memory 1.00 MB" in err
    assert main(["activations", "--model", str(folder), "--limit", "3", "--max-memory", "1GB"]) == 0
    assert "peak about" in capsys.readouterr().err
