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

from refusal_core.model.families import ModelParts, Writer, model_parts

__all__ = ["ResidualWrite", "WriterError", "layer_writes", "residual_writes"]


class WriterError(ValueError):
    """A module that writes into the residual stream has a layout the edits do not know."""


@dataclass(frozen=True)
class ResidualWrite:
    """One parameter whose values are added into the residual stream.

    ``name`` is the parameter's qualified name, as in ``model.named_parameters()`` and the
    state dict. ``axis`` indexes the residual stream in that tensor (``0`` for an
    ``nn.Linear`` weight ``[d_out, d_in]``, ``-1`` for an embedding ``[vocab, d]``, a bias
    ``[d]`` or GPT-2's ``Conv1D`` ``[d_in, d_out]``; ``1`` or ``-1`` for a fused-experts
    tensor ``[E, d, inter]`` or ``[E, inter, d]``, ``-1`` for expert biases ``[E, d]``).
    Where an elementwise normalisation sits between this write and the residual add
    (Gemma's post-norms), ``norm`` names that norm's weight and ``norm_offset`` is what the
    norm adds to it (Gemma multiplies by ``1 + w``): the write must then be orthogonal to
    ``d * (norm_offset + w)`` for the residual to stay orthogonal to ``d``. ``layer`` is the
    decoder layer it belongs to (None for embeddings and other model-level writes).
    """

    name: str
    axis: int
    norm: str | None = None
    norm_offset: float = 0.0
    layer: int | None = None


def _is_experts(module: nn.Module) -> bool:
    down = getattr(module, "down_proj", None)
    return isinstance(down, nn.Parameter) and down.dim() == 3


def _experts_axis(module: nn.Module, writer: Writer, width: int, where: str) -> int:
    """The residual axis of a fused ``down_proj`` ``[E, ., .]``: transformers' own
    ``is_transposed`` flag, else the family's, else the one axis of the model's width."""
    transposed = getattr(module, "is_transposed", writer.transposed)
    if transposed is not None:
        return 2 if transposed else 1
    shape = tuple(module.down_proj.shape)
    axes = [axis for axis in (1, 2) if shape[axis] == width]
    if len(axes) != 1:
        raise WriterError(
            f"Cannot tell which axis of {where}.down_proj {shape} is the residual stream (width {width}); "
            "register the family with Writer(..., transposed=True/False)."
        )
    return axes[0]


def _module_params(module: nn.Module, writer: Writer, width: int, where: str) -> list[tuple[str, int]]:
    """(parameter attribute, residual axis) of one writer module."""
    from transformers.pytorch_utils import Conv1D

    if _is_experts(module):
        if getattr(module, "has_post_expert_norm", False):
            raise WriterError(
                f"{where} normalises each expert's output; its weights cannot be edited exactly. Use the ablate() hooks."
            )
        return [("down_proj", _experts_axis(module, writer, width, where)), ("down_proj_bias", -1)]
    if isinstance(module, nn.Embedding) or isinstance(module, Conv1D):
        return [("weight", -1), ("bias", -1)]  # [vocab, d]; Conv1D stores [d_in, d_out]
    if isinstance(module, nn.Linear):
        return [("weight", 0), ("bias", -1)]  # [d_out, d_in]
    raise WriterError(
        f"Cannot orthogonalize the weights of {where} ({type(module).__name__}); only nn.Linear, nn.Embedding, "
        "transformers' Conv1D and fused experts are supported. Use the ablate() hooks instead."
    )


def _find(root: nn.Module, dotted: str) -> nn.Module | None:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _layer_writers(parts: ModelParts, layer: int) -> list[tuple[nn.Module, Writer, str]]:
    """The writer modules of one layer, checking that every group has one."""
    block = parts.layers[layer]
    family = parts.family
    writers = family.writers or (Writer(family.attn_write, "attn"), Writer(family.mlp_write, "mlp"))
    found, groups = [], set()
    for writer in writers:
        module = _find(block, writer.path)
        if module is None:
            if writer.optional:
                continue
            raise WriterError(f"Layer {layer} has no module {writer.path}; the family table does not fit this model.")
        found.append((module, writer, writer.path))
        groups.add(writer.group)
    missing = {w.group for w in writers} - groups
    if missing:
        raise WriterError(
            f"Layer {layer} has no writer of group(s) {sorted(missing)}; the family table does not fit this model."
        )
    return found


def layer_writes(model: nn.Module, layer: int) -> tuple[ResidualWrite, ...]:
    """The writes of one decoder layer (see :func:`residual_writes`)."""
    return tuple(write for write in residual_writes(model) if write.layer == layer)


def residual_writes(model: nn.Module) -> tuple[ResidualWrite, ...]:
    """Every parameter that writes into the residual stream of ``model``, each once.

    A parameter shared by two modules (tied weights) appears once, under the first name
    ``model.named_parameters()`` gives it.
    """
    parts = model_parts(model)
    width = int(model.get_input_embeddings().weight.shape[-1])
    names = {id(param): name for name, param in model.named_parameters(remove_duplicate=False)}
    modules = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    writes, seen = [], set()

    def add(param, axis: int, norm: str | None = None, offset: float = 0.0, layer: int | None = None) -> None:
        if param is None or id(param) in seen:
            return
        seen.add(id(param))
        writes.append(ResidualWrite(name=names[id(param)], axis=axis, norm=norm, norm_offset=offset, layer=layer))

    for module in parts.embeddings:
        for attr, axis in _module_params(module, Writer(""), width, modules.get(id(module), "embedding")):
            add(getattr(module, attr, None), axis)
    for layer in range(parts.n_layers):
        block = parts.layers[layer]
        for module, writer, path in _layer_writers(parts, layer):
            where = f"{modules.get(id(block), 'layer')}.{path}"
            norm_name = None
            if writer.norm is not None:
                norm = _find(block, writer.norm)
                weight = getattr(norm, "weight", None) if norm is not None else None
                if weight is None:
                    raise WriterError(f"{where} is followed by {writer.norm}, which this model's layer {layer} lacks.")
                norm_name = names[id(weight)]
            for attr, axis in _module_params(module, writer, width, where):
                add(getattr(module, attr, None), axis, norm_name, writer.norm_offset, layer)
    params = dict(model.named_parameters(remove_duplicate=False))
    for extra in parts.family.model_writes:
        add(params.get(extra.name), extra.axis)
    return tuple(writes)
