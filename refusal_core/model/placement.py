"""Where a model's weights go when it is loaded: ``device_map``, a memory budget with
offloading to disk, and 4-/8-bit quantization (bitsandbytes), as ``from_pretrained`` arguments.

Bad settings are refused here, before any weight is read: an unreadable size, or
quantization without the bitsandbytes package (which needs a CUDA GPU and is not installed
on CPU-only machines).
"""

from __future__ import annotations

import importlib.util
import re

from refusal_core.model.families import ModelLoadError
from refusal_core.paths import cache_dir

__all__ = ["QUANTIZE_CHOICES", "format_bytes", "parse_bytes", "placement_kwargs"]

QUANTIZE_CHOICES = ("4bit", "8bit")
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str) -> int:
    """``"8GB"`` -> 8e9 bytes, ``"512MiB"`` -> 512 * 2**20; a plain number is bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ModelLoadError(f"Cannot read the memory size {text!r}; write it like 8GB, 512MB or 16GiB.")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(count: float) -> str:
    """``1.23 GB`` style (decimal units, as parse_bytes reads them)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


def _quantization(quantize: str):
    if quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"Unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE_CHOICES)}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"Loading a model in {quantize} needs the bitsandbytes package, which is not installed (it needs a "
            "CUDA GPU): pip install bitsandbytes on a GPU machine, or load without --quantize. "
            "To export an orthogonalized model, no quantized load is needed: export-model streams the original files."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=quantize == "4bit", load_in_8bit=quantize == "8bit")


def placement_kwargs(spec: str, device_map: str | None, quantize: str | None, max_memory: str | None) -> dict:
    """The ``from_pretrained`` arguments placing the weights, checked before anything loads.

    ``max_memory`` caps the CPU memory the weights may take; with ``device_map`` the rest is
    offloaded to ``cache/offload/<spec>`` (computed layer by layer, slower but bounded).
    Quantization places the model with ``device_map="auto"`` unless one is given.
    """
    kwargs: dict = {}
    if quantize:
        kwargs["quantization_config"] = _quantization(quantize)
        device_map = device_map or "auto"
    if max_memory is not None:
        budget = parse_bytes(max_memory)
        if device_map:
            kwargs["max_memory"] = {"cpu": budget}
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("._") or "model"
            kwargs["offload_folder"] = str(cache_dir() / "offload" / safe)
    if device_map:
        kwargs["device_map"] = device_map
    return kwargs
