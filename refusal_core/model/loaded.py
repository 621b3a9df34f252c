"""A loaded model: the module, its lock-holding tokenizer and where they came from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refusal_core.model.families import ModelParts, model_lock, model_parts, model_width
from refusal_core.model.locked_tokenizer import LockedTokenizer

__all__ = ["LoadedModel"]


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
        """Where inputs go: the embedding's device (its execution device when offloaded)."""
        from refusal_core.model.offload import execution_device

        embeddings = self.model.get_input_embeddings()
        return execution_device(embeddings, embeddings.weight.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype
