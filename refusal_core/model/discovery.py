"""A layout for a family the table does not know, discovered from the model's structure.

For an unknown ``model_type``: the decoder layers are the longest ``nn.ModuleList`` of
blocks of one class that work at the embedding width; the embeddings are
``get_input_embeddings()`` (and any other width-``d`` embedding called before the first
block, e.g. learned positions); the final norm is the first module to finish after the
last block; the lm_head is ``get_output_embeddings()``. The modules whose outputs are added
into the residual stream are found by tracing one forward pass: of the modules inside a
block whose outputs have the residual's shape, the pair (attention, then MLP) whose outputs
add up to ``block output - block input``. A norm between a projection and the add (Gemma,
OLMo 2) is recognised, its projection found as the module whose output the norm reads, and
its offset (``offset + w``) measured. The pair is then checked on every block. The result is
an ordinary ``Family``; weight edits run the residual probe (``model/probe.py``) as always.
"""

from __future__ import annotations

import torch
from torch import nn

from refusal_core.model.families import FAMILIES, Family, UnknownFamilyError, Writer, register_family

__all__ = ["discover_family", "ensure_family"]

_RTOL = 1e-4


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _layers(model: nn.Module, width: int) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(param.shape[-1] == width for param in module[0].parameters()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise UnknownFamilyError(
            f"{type(model).__name__}: found no list of decoder blocks working at the embedding width {width}; "
            "register its layout with refusal_core.model.families.register_family()."
        )
    return best


def _trace(model: nn.Module, modules: dict[str, nn.Module], ids: torch.Tensor):
    """Inputs and outputs of ``modules`` in one forward pass, and their completion order."""
    inputs, outputs, order, handles = {}, {}, [], []

    def hook(name):
        def record(module, args, kwargs, output):
            first = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_ids"))
            # Clones: some blocks add into a module's output in place (Falcon's parallel MLP).
            if name not in outputs:
                inputs[name] = first.detach().clone() if isinstance(first, torch.Tensor) else first
                out = _first(output)
                outputs[name] = out.detach().clone() if isinstance(out, torch.Tensor) else out
            order.append(name)

        return record

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook(name), with_kwargs=True))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs, order


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=_RTOL, atol=_RTOL * float(b.abs().max())))


def _norm_offset(norm: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """0 or 1 such that ``y = (offset + w) * x * s`` with one scalar ``s`` per token, else None."""
    weight = getattr(norm, "weight", None)
    if weight is None or weight.dim() != 1 or getattr(norm, "bias", None) is not None:
        return None
    for offset in (0.0, 1.0):
        scaled = (offset + weight.detach()) * x
        ratio = y / scaled.where(scaled.abs() > 1e-6, torch.full_like(scaled, float("nan")))
        spread = (ratio.nanquantile(0.9, dim=-1) - ratio.nanquantile(0.1, dim=-1)).abs().max()
        if float(spread) < 1e-3 * float(ratio.nanmedian().abs()) + 1e-6:
            return offset
    return None


def _writer(block_name: str, path: str, group: str, modules, inputs, outputs) -> Writer:
    from transformers.pytorch_utils import Conv1D

    module = modules[f"{block_name}.{path}"]
    if isinstance(module, (nn.Linear, Conv1D)) or _is_experts(module):
        return Writer(path, group)
    x, y = inputs[f"{block_name}.{path}"], outputs[f"{block_name}.{path}"]
    for name, candidate in modules.items():
        if name.startswith(f"{block_name}.") and isinstance(candidate, (nn.Linear, Conv1D)) and name in outputs:
            if _close(outputs[name], x):
                offset = _norm_offset(module, x, y)
                if offset is not None:
                    return Writer(name[len(block_name) + 1 :], group, norm=path, norm_offset=offset)
    raise UnknownFamilyError(
        f"{block_name}.{path} writes into the residual stream but is neither a Linear layer nor an elementwise "
        "norm after one; register this family's layout with register_family()."
    )


def _is_experts(module: nn.Module) -> bool:
    down = getattr(module, "down_proj", None)
    return isinstance(down, nn.Parameter) and down.dim() == 3


def _depth_key(path: str, module: nn.Module) -> tuple[int, int]:
    from transformers.pytorch_utils import Conv1D

    return (isinstance(module, (nn.Linear, Conv1D)) or _is_experts(module), path.count("."))


def _writes_of(block_name: str, block: nn.Module, modules, inputs, outputs, order) -> tuple[str, str] | None:
    """The (attention, MLP) write paths of one block, by the residual-sum identity."""
    x, out = inputs.get(block_name), outputs.get(block_name)
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    delta = out - x
    prefix = f"{block_name}."
    seen, candidates = set(), []
    for name in order:
        value = outputs.get(name)
        if (
            name.startswith(prefix)
            and name not in seen
            and isinstance(value, torch.Tensor)
            and value.numel() == delta.numel()
        ):
            seen.add(name)
            candidates.append(name)
    pairs = []
    for i, first in enumerate(candidates):
        for second in candidates[i + 1 :]:
            if _close(outputs[first].reshape(delta.shape) + outputs[second].reshape(delta.shape), delta):
                pairs.append((first, second))
    if not pairs:
        return None
    best = max(pairs, key=lambda p: (_depth_key(p[0], modules[p[0]]), _depth_key(p[1], modules[p[1]])))
    return best[0][len(prefix) :], best[1][len(prefix) :]


def discover_family(model: nn.Module) -> Family:
    """A ``Family`` for ``model`` found from its structure; UnknownFamilyError names what is missing."""
    embedding = model.get_input_embeddings()
    width = int(embedding.weight.shape[-1])
    layers_name, layers = _layers(model, width)
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    head = model.get_output_embeddings()
    vocab = int(embedding.weight.shape[0])
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(embedding.weight.device)
    inputs, outputs, order = _trace(model, modules, ids)
    last = f"{layers_name}.{len(layers) - 1}"
    after = order[order.index(last) + 1 :] if last in order else []
    norm = next(
        (
            name
            for name in after
            if name
            and not name.startswith(layers_name)
            and modules[name] is not head
            and isinstance(outputs.get(name), torch.Tensor)
            and outputs[name].shape[-1] == width
            and not list(modules[name].children())
        ),
        None,
    )
    first_block = order.index(f"{layers_name}.0") if f"{layers_name}.0" in order else len(order)
    extra = [
        name
        for name in order[:first_block]
        if isinstance(modules[name], nn.Embedding)
        and modules[name] is not embedding
        and modules[name].embedding_dim == width
    ]
    missing = [what for what, found in (("final norm", norm), ("lm_head", head)) if found is None]
    writes = _writes_of(f"{layers_name}.0", layers[0], modules, inputs, outputs, order)
    if writes is None:
        missing.append("the attention and MLP modules whose outputs add into the residual stream")
    if missing:
        raise UnknownFamilyError(
            f"{type(model).__name__} (model_type={getattr(model.config, 'model_type', None)!r}) is not in the family table "
            f"and its layout could not be discovered; not found: {'; '.join(missing)}. Register it with "
            "refusal_core.model.families.register_family(model_type, Family(...))."
        )
    for index in range(1, len(layers)):
        if _writes_of(f"{layers_name}.{index}", layers[index], modules, inputs, outputs, order) != writes:
            raise UnknownFamilyError(
                f"{type(model).__name__}: block {index} of {layers_name} writes into the residual stream through other "
                f"modules than block 0 ({writes}); register its layout with register_family()."
            )
    block0 = f"{layers_name}.0"
    writers = (
        _writer(block0, writes[0], "attn", modules, inputs, outputs),
        _writer(block0, writes[1], "mlp", modules, inputs, outputs),
    )
    return Family(
        layers=layers_name,
        embeddings=(names[id(embedding)], *extra),
        attn_write=writes[0],
        mlp_write=writes[1],
        final_norm=norm,
        lm_head=names[id(head)],
        writers=writers,
    )


def ensure_family(model: nn.Module) -> Family | None:
    """Register a discovered family for ``model`` if its ``model_type`` is not in the table.

    Returns the discovered family, or None where the table already knew it.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILIES:
        return None
    family = discover_family(model)
    register_family(model_type or "", family)
    return family
