"""A GGUF written from scratch for a Llama-layout model (no template file): hyperparameters,
the byte-level BPE tokenizer and chat template as metadata, every tensor named through gguf's
``TensorNameMap`` and stored in one type (``gguf_tensors`` has the layout rules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refusal_core.errors import SettingsError
from refusal_core.exports.gguf_tensors import hf_to_gguf_names, permute_qk, quantized
from refusal_core.model.loading import LoadedModel

__all__ = ["write_from_scratch"]


def _tokenizer_metadata(writer, tokenizer) -> None:
    import gguf

    document = json.loads(tokenizer.backend_tokenizer.to_str())
    model = document.get("model", {})
    if model.get("type") != "BPE":
        raise SettingsError(
            f"Only byte-level BPE tokenizers can be written without a template (this one is "
            f"{model.get('type')!r}); give --source MODEL.gguf."
        )
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)]
    merges = [" ".join(pair) if isinstance(pair, list) else str(pair) for pair in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(kind) for kind in types])
    writer.add_token_merges(merges)
    for key, value in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(int(value))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _hyperparameters(writer, loaded: LoadedModel) -> tuple[int, int]:
    config = loaded.model.config
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise SettingsError(
            f"RoPE scaling {rope.get('rope_type')!r} is not written without a template; give --source MODEL.gguf."
        )
    heads, kv_heads = (
        int(config.num_attention_heads),
        int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
    )
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_block_count(loaded.n_layers)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(loaded.d_model)
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    return heads, kv_heads


def write_from_scratch(loaded: LoadedModel, arrays: dict[str, np.ndarray], target: Path, tensor_type: str) -> dict:
    """Write the edited ``arrays`` of a Llama-layout model as a GGUF at ``target``."""
    import gguf

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(loaded.spec)
    heads = _hyperparameters(writer, loaded)
    _tokenizer_metadata(writer, loaded.tokenizer)
    mapping = hf_to_gguf_names("llama", loaded.n_layers, list(arrays))
    missing = sorted(set(arrays) - set(mapping.values()) - {"lm_head.weight", "model.embed_tokens.weight"})
    if missing:
        raise SettingsError(
            f"gguf's name map has no place for {', '.join(missing[:4])}; this model is not Llama-layout."
        )
    report = {"written": {}}
    head, embed = arrays.get("lm_head.weight"), arrays.get("model.embed_tokens.weight")
    if head is not None and embed is not None and np.array_equal(head, embed):
        mapping.pop("output.weight", None)  # tied and unedited: llama.cpp reuses token_embd
    for gguf_name, hf_name in sorted(mapping.items()):
        value = arrays[hf_name]
        if gguf_name.endswith("attn_q.weight"):
            value = permute_qk(value, heads[0])
        elif gguf_name.endswith("attn_k.weight"):
            value = permute_qk(value, heads[1])
        kind = tensor_type if value.ndim == 2 else "F32"  # norms stay float32, as llama.cpp expects
        data, written = quantized(value, kind)
        writer.add_tensor(
            gguf_name, data, raw_dtype=gguf.GGMLQuantizationType[written] if written not in ("F32", "F16") else None
        )
        report["written"][gguf_name] = written
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report
