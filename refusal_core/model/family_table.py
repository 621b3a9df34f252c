"""The family table's entries, keyed by ``config.model_type`` (the name Hugging Face itself
dispatches on). ``families.py`` reads them; ``register_family`` adds more at run time.

Every entry is checked by ``tests/unit/test_family_matrix.py`` on a tiny random model built
from transformers' own config: the hooks and the exported weights must leave the residual
stream orthogonal to the removed direction after the embedding and after every block.
"""

from __future__ import annotations

from dataclasses import replace

from refusal_core.model.family_spec import Family, ModelWrite, Writer

__all__ = ["TABLE"]

_ATTN = Writer("self_attn.o_proj", group="attn")
_DOWN = Writer("mlp.down_proj", group="mlp")

LLAMA_LIKE = Family(
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    attn_write="self_attn.o_proj",
    mlp_write="mlp.down_proj",
    final_norm="model.norm",
)


def _post_norm(attn_norm: str, mlp_norm: str, offset: float) -> Family:
    """A family that normalises the attention and MLP outputs before the residual add."""
    return replace(
        LLAMA_LIKE,
        attn_write=attn_norm,
        mlp_write=mlp_norm,
        writers=(
            Writer("self_attn.o_proj", group="attn", norm=attn_norm, norm_offset=offset),
            Writer("mlp.down_proj", group="mlp", norm=mlp_norm, norm_offset=offset),
        ),
    )


def _moe(block: str, experts: str = "experts", shared: tuple[str, ...] = (), transposed: bool | None = None) -> Family:
    """A mixture-of-experts family: the hooks project the whole block's output; the edits
    change every expert's fused output tensor, any shared expert, and the dense MLP of
    layers that have one instead of experts."""
    return replace(
        LLAMA_LIKE,
        mlp_write=block,
        writers=(
            _ATTN,
            Writer(f"{block}.{experts}", group="mlp", optional=True, transposed=transposed),
            *(Writer(f"{block}.{name}.down_proj", group="mlp", optional=True) for name in shared),
            Writer(f"{block}.down_proj", group="mlp", optional=True),
        ),
    )


GEMMA2_LIKE = _post_norm("post_attention_layernorm", "post_feedforward_layernorm", offset=1.0)
OLMO2_LIKE = _post_norm("post_attention_layernorm", "post_feedforward_layernorm", offset=0.0)
GLM4 = _post_norm("post_self_attn_layernorm", "post_mlp_layernorm", offset=0.0)

GEMMA3_MULTIMODAL = replace(
    GEMMA2_LIKE,
    layers="model.language_model.layers",
    embeddings=("model.language_model.embed_tokens",),
    final_norm="model.language_model.norm",
    # Image features are projected straight into the residual stream at image positions.
    model_writes=(ModelWrite("model.multi_modal_projector.mm_input_projection_weight", axis=-1),),
)

GPT2 = Family(
    layers="transformer.h",
    embeddings=("transformer.wte", "transformer.wpe"),
    attn_write="attn.c_proj",
    mlp_write="mlp.c_proj",
    final_norm="transformer.ln_f",
)

PHI = replace(LLAMA_LIKE, attn_write="self_attn.dense", mlp_write="mlp.fc2", final_norm="model.final_layernorm")

TABLE: dict[str, Family] = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo", "granite", "smollm3", "cohere", "cohere2"),
        LLAMA_LIKE,
    ),
    "gemma2": GEMMA2_LIKE,
    "gemma3_text": GEMMA2_LIKE,
    "gemma3": GEMMA3_MULTIMODAL,
    "olmo2": OLMO2_LIKE,
    "olmo3": OLMO2_LIKE,
    "exaone4": OLMO2_LIKE,
    "glm4": GLM4,
    "phi": PHI,
    "gpt2": GPT2,
    "qwen3_moe": _moe("mlp"),
    "mixtral": _moe("mlp"),
    "olmoe": _moe("mlp"),
    "gpt_oss": _moe("mlp"),
    "qwen2_moe": _moe("mlp", shared=("shared_expert",)),
    "deepseek_v3": _moe("mlp", shared=("shared_experts",)),
    "glm4_moe": _moe("mlp", shared=("shared_experts",)),
    "granitemoe": _moe("block_sparse_moe"),
    "llama4_text": _moe("feed_forward", shared=("shared_expert",), transposed=True),
}
