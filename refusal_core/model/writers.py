"""The one list of parameters that write into the residual stream.

Every weight edit reads it: the in-memory orthogonalization (``interventions/weights.py``),
the streaming export straight from safetensors shards, and the adapter and GGUF exports.
It is derived from the family table (``model/families.py``) and works on a model whose
parameters are on the ``meta`` device, so a model larger than memory can be listed from
its config alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refusal_core.model.families import ModelParts, model_parts

__all__ = ["ResidualWrite", "WriterError", "residual_writes"]


class WriterError(ValueError):
    """A module that writes into the residual stream has a layout the edits do not know."""


@dataclass(frozen=True)
class ResidualWrite:
    """One parameter whose values are added into the residual stream.

    ``name`` is the parameter's qualified name, as in ``model.named_parameters()`` and the
    state dict. ``axis`` indexes the residual stream in that tensor (``0`` for an
    ``nn.Linear`` weight ``[d_out, d_in]``, ``-1`` for an embedding ``[vocab, d]``, a bias
    ``[d]`` or GPT-2's ``Conv1D`` ``[d_in, d_out]``). Where an elementwise normalisation sits
    between this write and the residual add (Gemma's post-norms), ``norm`` names that norm's
    weight and ``norm_offset`` is what the norm adds to it (Gemma multiplies by ``1 + w``):
    the write must then be orthogonal to ``d * (norm_offset + w)`` for the residual to stay
    orthogonal to ``d``.
    """

    name: str
    axis: int
    norm: str | None = None
    norm_offset: float = 0.0


def _output_axis(module: nn.Module) -> int:
    """Which axis of ``module.weight`` indexes the residual stream it writes to."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Embedding):
        return -1  # [vocab, d]
    if isinstance(module, Conv1D):
        return -1  # GPT-2's Conv1D stores [d_in, d_out]
    if isinstance(module, nn.Linear):
        return 0  # [d_out, d_in]
    raise WriterError(
        f"Cannot orthogonalize the weights of a {type(module).__name__}; only nn.Linear, nn.Embedding and "
        "transformers' Conv1D are supported. Use the ablate() hooks instead."
    )


def _writer_modules(parts: ModelParts) -> list[nn.Module]:
    return [*parts.embeddings, *parts.attn_writes, *parts.mlp_writes]


def residual_writes(model: nn.Module) -> tuple[ResidualWrite, ...]:
    """Every parameter that writes into the residual stream of ``model``, each once.

    A parameter shared by two modules (tied weights) appears once, under the first name
    ``model.named_parameters()`` gives it.
    """
    parts = model_parts(model)
    names = {id(param): name for name, param in model.named_parameters(remove_duplicate=False)}
    writes, seen = [], set()
    for module in _writer_modules(parts):
        axis = _output_axis(module)
        for param_name, param_axis in (("weight", axis), ("bias", -1)):
            param = getattr(module, param_name, None)
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            writes.append(ResidualWrite(name=names[id(param)], axis=param_axis))
    return tuple(writes)
