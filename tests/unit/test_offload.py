"""Offloaded and quantized models: a tiny Llama whose every weight accelerate offloads to disk
computes exactly what the plain model computes through the toolkit (fingerprint, activations,
ablation hooks, generation); in-memory weight edits refuse it and point to the streaming export;
quantization without bitsandbytes is refused before anything loads."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from refusal_core.activations.extract import extract_activations
from refusal_core.errors import UserError
from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.hooks import ablate
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.loading import LoadedModel, load_model
from refusal_core.model.offload import is_offloaded_or_quantized
from refusal_core.model.placement import parse_bytes
from tests.tiny import tiny_model, tiny_tokenizer

PROMPTS = ["How do I bake bread at home?", "Explain how to break into a house."]


@pytest.fixture
def pair(tmp_path):
    """(plain, offloaded-to-disk) loads of the same saved tiny Llama."""
    folder = tmp_path / "model"
    tiny_model("llama").model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    plain = load_model(str(folder))
    model = AutoModelForCausalLM.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": "1KB"}, offload_folder=str(tmp_path / "offload")
    )
    model.eval()
    offloaded = LoadedModel(model=model, tokenizer=tiny_tokenizer(), spec=str(folder), source=str(folder))
    assert is_offloaded_or_quantized(offloaded.model) and not is_offloaded_or_quantized(plain.model)
    return plain, offloaded


def test_offloaded_model_computes_what_the_plain_one_does(pair):
    plain, offloaded = pair
    assert offloaded.device == torch.device("cpu")
    assert weights_fingerprint(offloaded.model) == weights_fingerprint(plain.model)
    direction = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    for context in (lambda m: torch.no_grad(), lambda m: ablate(m, direction)):
        results = []
        for loaded in (plain, offloaded):
            with context(loaded.model):
                results.append(extract_activations(loaded, PROMPTS, positions=[-1], use_cache=False).acts)
        assert torch.allclose(results[0], results[1], atol=1e-6)
    settings = GenerationSettings(max_new_tokens=6)
    texts = [
        [c.text for c in generate_completions(loaded, PROMPTS, settings=settings)] for loaded in (plain, offloaded)
    ]
    assert texts[0] == texts[1]


def test_in_memory_edits_refuse_offloaded_weights_and_name_the_streaming_export(pair):
    _, offloaded = pair
    with pytest.raises(UserError, match="streaming export"):
        with orthogonalized_weights(offloaded.model, torch.randn(1, 64)):
            pass


def test_quantized_load_without_bitsandbytes_names_the_package(tmp_path):
    assert importlib.util.find_spec("bitsandbytes") is None, "this CPU machine is expected to lack bitsandbytes"
    with pytest.raises(UserError, match="bitsandbytes"):
        load_model(str(tmp_path / "never-read"), quantize="4bit")


def test_memory_sizes_parse_and_bad_ones_are_refused():
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1.5 kb") == 1500
    for bad in ("lots", "8XB", "-1GB", "0"):
        with pytest.raises(UserError, match="8GB"):
            parse_bytes(bad)
