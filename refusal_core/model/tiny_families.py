"""Tiny random models of every family, built from transformers' own configs and saved as
local model folders with a chat template: the path a researcher's own model takes.

``tiny_family_folder("qwen3_moe", folder)`` writes a 2-layer, width-64 random model and
the tiny ChatML tokenizer there. The family coverage matrix (``experiments/coverage.py``)
and its test load these folders with ``load_model(folder)``, as the CLI does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refusal_core.model.tiny import SPECIAL_TOKEN_IDS

__all__ = ["COVERED", "DISCOVERED", "tiny_config", "tiny_family_folder"]

_COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    **SPECIAL_TOKEN_IDS,
)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# model_type -> config overrides on top of _COMMON (sizes kept tiny; every expert kind present).
_EXTRA: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {},
    "gemma3_text": {},
    "phi3": {},
    "olmo": {},
    "olmo2": {},
    "olmo3": {},
    "granite": {},
    "smollm3": {},
    "glm4": {},
    "cohere": {},
    "cohere2": {},
    "exaone4": {},
    "phi": {},
    "qwen3_moe": dict(_MOE, num_experts=4),
    "qwen2_moe": dict(_MOE, num_experts=4, shared_expert_intermediate_size=32),
    "mixtral": dict(_MOE, num_local_experts=4),
    "olmoe": dict(_MOE, num_experts=4),
    "granitemoe": dict(_MOE, num_local_experts=4),
    "gpt_oss": dict(_MOE, num_local_experts=4, layer_types=["sliding_attention", "full_attention"]),
    # First layer dense, second MoE with a shared expert: both layouts in one model.
    "deepseek_v3": dict(
        _MOE,
        n_routed_experts=4,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        head_dim=8,
        num_key_value_heads=4,
        rope_scaling=None,
    ),
    "glm4_moe": dict(_MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1),
    # Dense and MoE layers interleaved, with a shared expert.
    "llama4_text": dict(
        _MOE, num_local_experts=4, interleave_moe_layer_step=2, intermediate_size_mlp=96, intermediate_size=32
    ),
    "gpt2": {},
    "gemma3": {},
}

COVERED: tuple[str, ...] = tuple(_EXTRA)

# Families the table leaves out on purpose: their layout is discovered (``model/discovery.py``).
DISCOVERED: tuple[str, ...] = ("starcoder2", "stablelm", "falcon")
_DROP = {"falcon": ("head_dim", "num_key_value_heads")}


def tiny_config(model_type: str, vocab: int):
    """A tiny config of ``model_type`` from ``AutoConfig.for_model``."""
    from transformers import AutoConfig

    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            **SPECIAL_TOKEN_IDS,
        )
    if model_type == "gemma3":
        text = dict(_COMMON, vocab_size=vocab, model_type="gemma3_text")
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        return AutoConfig.for_model(
            "gemma3",
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=1,
            boi_token_index=vocab - 3,
            eoi_token_index=vocab - 2,
            image_token_index=vocab - 1,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    settings = {**_COMMON, **_EXTRA.get(model_type, {})}
    for key in _DROP.get(model_type, ()):
        settings.pop(key)
    return AutoConfig.for_model(model_type, vocab_size=vocab, **settings)


def tiny_family_folder(model_type: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a seeded random ``model_type`` model and the tiny chat tokenizer to ``folder``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from refusal_core.model.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = tiny_config(model_type, len(tokenizer))
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if model_type == "gemma3" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
            elif param.dim() == 1 and "norm" in _name_of(model, param):
                param.add_(0.1 * torch.randn_like(param))  # a non-trivial norm weight
    folder = Path(folder)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _name_of(model, param) -> str:
    for name, candidate in model.named_parameters():
        if candidate is param:
            return name
    return ""
