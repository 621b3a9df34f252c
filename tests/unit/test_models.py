"""Model family lookup and load-time errors, on tiny random models of each family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from refusal_core.model.families import ModelLoadError, UnknownFamilyError, model_lock, model_parts
from refusal_core.model.loading import BUNDLED_ORGANISM, load_model, resolve_dtype
from tests.tiny import FAMILY_CONFIGS, tiny_model


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_family_lookup_finds_residual_writers(family):
    loaded = tiny_model(family)
    parts = model_parts(loaded.model)
    assert parts.n_layers == 3
    assert len(parts.attn_writes) == len(parts.mlp_writes) == 3
    # Each write module's output must have the residual width: that is what makes it a write.
    captured = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: captured.append(out.shape[-1]))
        for m in parts.attn_writes + parts.mlp_writes
    ]
    try:
        loaded.model(torch.tensor([[5, 6, 7]]))
    finally:
        for handle in handles:
            handle.remove()
    assert captured == [64] * 6
    assert parts.embeddings[0] is loaded.model.get_input_embeddings()


def test_unknown_family_error_names_class_and_fix():
    config = AutoConfig.for_model(
        "llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.config.model_type = "mystery"
    with pytest.raises(UnknownFamilyError, match=r"LlamaForCausalLM.*mystery.*register_family"):
        model_parts(model)


def test_wrong_layout_for_known_family_is_reported():
    loaded = tiny_model("llama")
    loaded.model.config.model_type = "gpt2"
    try:
        with pytest.raises(UnknownFamilyError, match="register_family"):
            model_parts(loaded.model)
    finally:
        loaded.model.config.model_type = "llama"


def test_missing_organism_tells_how_to_build(tmp_path):
    with pytest.raises(ModelLoadError, match="organism build"):
        load_model(BUNDLED_ORGANISM)


def test_unknown_spec_and_dtype_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="bundled:refusal-organism"):
        load_model("bundled:nonsense")
    with pytest.raises(ModelLoadError, match="No model folder at .*no-such-model"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="dtype"):
        resolve_dtype("float7")


def test_local_directory_loads_like_the_original(tmp_path):
    loaded = tiny_model("qwen2")
    loaded.model.save_pretrained(tmp_path / "m")
    loaded.tokenizer.save_pretrained(tmp_path / "m")
    reloaded = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[3, 4, 5, 6]])
    assert torch.allclose(reloaded.model(ids).logits, loaded.model(ids).logits, atol=1e-5)
    assert reloaded.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in reloaded.model.parameters())


def test_model_lock_is_one_per_model_and_reentrant():
    first, second = tiny_model("llama"), tiny_model("llama", seed=1)
    lock = model_lock(first.model)
    assert lock is model_lock(first.model)
    assert lock is not model_lock(second.model)
    with lock, lock:
        pass
