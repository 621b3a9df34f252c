"""What an activation extraction will need, worked out before the model is loaded.

The weights come from the model's safetensors headers (each tensor's element count
times the size of the dtype it will be loaded in; no tensor is read), the sizes from
``config.json``, and the prompts' lengths and the post-instruction positions from the
tokenizer alone. The formula is the one of ``activations/memory.py``, so the estimate
printed before loading and the one checked after agree on everything but the buffers
(rotary tables and the like, which only the loaded model has).

A model without safetensors files here (``tiny:`` models, ``.bin`` checkpoints, a hub id
not in the local cache) gives no estimate: the check after loading still applies.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Sequence

import torch

from refusal_core.activations.layers import check_layers
from refusal_core.activations.memory import MemoryEstimate, estimate_from_sizes
from refusal_core.prompts.chat import ChatFormat, format_prompts

__all__ = ["estimate_before_load", "model_folder", "weight_bytes_on_disk"]

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = ("F64", "F32", "F16", "BF16")
_INDEX, _SINGLE = "model.safetensors.index.json", "model.safetensors"


def model_folder(spec: str) -> Path | None:
    """The local folder a spec's files load from (a folder, a bundled model, a cached hub id), else None."""
    from refusal_core.model.loading import model_source

    source = model_source(spec)
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(source, local_files_only=True))
        except Exception:  # not cached, or no hub client: no estimate before loading
            return None
    return None


def _shards(folder: Path) -> list[Path]:
    if (folder / _INDEX).is_file():
        weight_map = json.loads((folder / _INDEX).read_text())["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    return [folder / _SINGLE] if (folder / _SINGLE).is_file() else []


def _entries(path: Path) -> list[tuple[str, int]]:
    """``(dtype code, element count)`` of every tensor in a safetensors file, from its header."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    entries = []
    for entry in header.values():
        count = 1
        for extent in entry["shape"]:
            count *= int(extent)
        entries.append((entry["dtype"], count))
    return entries


def weight_bytes_on_disk(folder: Path, dtype: torch.dtype | str | None = None) -> tuple[int, int] | None:
    """``(bytes, itemsize)`` the weights of ``folder`` will take once loaded in ``dtype``
    (floating tensors converted to it; ``None``/``"auto"`` keeps the stored dtypes); None
    without safetensors files."""
    shards = _shards(folder)
    if not shards:
        return None
    target = None if dtype in (None, "auto") else torch.empty((), dtype=dtype).element_size()
    total, itemsize = 0, None
    for shard in shards:
        for code, count in _entries(shard):
            size = target if (target is not None and code in _FLOATS) else _ITEMSIZE.get(code, 1)
            if code in _FLOATS and itemsize is None:
                itemsize = size
            total += count * size
    return total, itemsize or 4


def estimate_before_load(
    spec: str,
    dtype: torch.dtype | str | None,
    instructions: Sequence[str],
    chat: ChatFormat | None = None,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    trust_remote_code: bool = False,
) -> MemoryEstimate | None:
    """The estimate of ``activations/memory.py`` from the files alone (no weights loaded);
    None where the spec has no safetensors files to read."""
    from transformers import AutoConfig, AutoTokenizer

    from refusal_core.activations.extract import default_positions

    folder = model_folder(spec)
    sizes = None if folder is None else weight_bytes_on_disk(folder, dtype)
    if sizes is None:
        return None
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_layers = int(getattr(text, "num_hidden_layers", None) or text.n_layer)
        d_model = int(getattr(text, "hidden_size", None) or text.n_embd)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # the load reports what is wrong with the folder; the check after it applies
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(tokenizer, chat)
    texts = format_prompts(tokenizer, tuple(instructions), chat)
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    recorded = len(check_layers(layers, n_layers))
    weights, itemsize = sizes
    return estimate_from_sizes(
        weights, config, itemsize, d_model, len(texts), len(positions), batch_size, longest, recorded
    )
