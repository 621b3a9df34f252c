"""The one place that knows model families: where each architecture keeps the modules
that read from and write to the residual stream, and the lock every user of a model holds.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from torch import nn

from refusal_core.errors import UserError
from refusal_core.model.family_spec import Family, ModelWrite, Writer
from refusal_core.model.family_table import TABLE

__all__ = [
    "FAMILIES",
    "Family",
    "ModelWrite",
    "Writer",
    "ModelLoadError",
    "ModelParts",
    "UnknownFamilyError",
    "model_lock",
    "model_parts",
    "model_width",
    "register_family",
]


class ModelLoadError(UserError, RuntimeError):
    """A model spec could not be turned into a model; the message says how to fix it."""


class UnknownFamilyError(ModelLoadError):
    """The model's architecture is not in the family table."""


# Keyed by ``config.model_type``; the entries live in ``family_table.py``.
FAMILIES: dict[str, Family] = dict(TABLE)


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
            f"Supported: {known}. load_model() discovers the layout of other families from their structure "
            "(refusal_core.model.discovery.ensure_family); to give it by hand, call refusal_core.model.families.register_family("
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


def model_width(model: nn.Module) -> int:
    """The width of the residual stream (the embedding size)."""
    return int(model.get_input_embeddings().weight.shape[-1])


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


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
