"""The GGUF side of the GGUF export: names, layouts and quantization of tensors.

A GGUF tensor's ``shape`` lists its dimensions fastest-first (ggml's ``ne``), so as a
NumPy array it is the reverse: ``token_embd.weight`` with ggml shape ``[d, vocab]`` is the
``[vocab, d]`` matrix a Hugging Face embedding stores, and ``blk.N.ffn_down.weight`` with
``[d_ff, d]`` is the ``[d, d_ff]`` of ``down_proj``. Names are mapped with gguf's own
``TensorNameMap``. llama.cpp stores the query and key projections of Llama-layout models
with each head's rotary halves interleaved (``permute_qk``); every other tensor is stored
as the model holds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refusal_core.errors import SettingsError

__all__ = [
    "QUANTIZABLE",
    "copy_metadata",
    "dequantized",
    "hf_to_gguf_names",
    "permute_qk",
    "quantized",
]

# The types gguf-py can quantize in NumPy (k-quants it can only read).
QUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF ``q_proj``/``k_proj`` ``[n_head * head_dim, d]`` in llama.cpp's rotary layout.

    Within each head, HF keeps the two rotary halves one after the other; llama.cpp wants
    the pairs interleaved: row ``h*hd + 2*i + j`` holds HF row ``h*hd + j*hd/2 + i``.
    """
    rows, rest = weight.shape[0], weight.shape[1:]
    head_dim = rows // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def hf_to_gguf_names(arch: str, n_layers: int, hf_names: list[str]) -> dict[str, str]:
    """``{gguf name: hf parameter name}`` for every HF parameter gguf's name map knows."""
    import gguf

    try:
        model_arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    except StopIteration:
        raise SettingsError(f"gguf does not know the architecture {arch!r}.") from None
    name_map = gguf.get_tensor_name_map(model_arch, n_layers)
    mapped = {}
    for hf_name in hf_names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            mapped[gguf_name] = hf_name
    return mapped


def dequantized(tensor) -> np.ndarray:
    """A ``GGUFReader`` tensor as float32 in NumPy layout."""
    import gguf

    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def quantized(values: np.ndarray, type_name: str) -> tuple[np.ndarray, str]:
    """``values`` (float32) quantized to ``type_name``; types gguf-py cannot make fall back to
    Q8_0 (or F16 where a row is not a multiple of 32). Returns (data, the type written)."""
    import gguf

    chosen = type_name
    if chosen not in QUANTIZABLE:
        chosen = "Q8_0" if values.shape[-1] % 32 == 0 else "F16"
    qtype = gguf.GGMLQuantizationType[chosen]
    if chosen == "F32":
        return np.ascontiguousarray(values, dtype=np.float32), chosen
    if chosen == "F16":
        return np.ascontiguousarray(values, dtype=np.float16), chosen
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype), chosen


def copy_metadata(reader, writer) -> None:
    """Every key/value of ``reader`` except the header fields and the architecture (the writer sets those)."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)


def tensor_bytes(path: Path) -> dict[str, bytes]:
    """The raw bytes of each tensor of a GGUF file (for tests and checks)."""
    import gguf

    return {
        tensor.name: bytes(np.ascontiguousarray(tensor.data).view(np.uint8)) for tensor in gguf.GGUFReader(path).tensors
    }
