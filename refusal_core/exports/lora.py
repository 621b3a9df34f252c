"""An exact PEFT LoRA adapter that turns the base model into the orthogonalized one.

Projecting an orthonormal basis ``U`` ``[d, r]`` out of the residual side of a weight is a
rank-``r`` update. With ``M`` the weight arranged ``[d, n]`` (residual axis first: an
``nn.Linear`` weight as stored, GPT-2's ``Conv1D`` transposed):

    M' = M - U (Uᵀ M)        so   lora_B = -U [d, r],   lora_A = Uᵀ M [r, n]

and for an embedding ``E`` ``[vocab, d]``: ``E' = E - (E U) Uᵀ``, so PEFT's
``lora_embedding_A = (E U)ᵀ`` ``[r, vocab]`` and ``lora_embedding_B = -U``. A writer's bias
``b`` is not low-rank material: the adapter carries the edited bias ``b - U Uᵀ b`` itself
(PEFT's ``bias="lora_only"``, which loads it over the base bias; PEFT's ``lora_bias`` is
refused on embeddings, so it cannot serve GPT-2-like models). ``lora_alpha = r``, so
PEFT's scaling is exactly 1. Where a post-norm sits between the write and the residual
(``ResidualWrite.norm``), ``U`` is the basis of the norm-weighted directions
``d ⊙ (norm_offset + w)``, as the weight edit uses. The factors are computed in float64 and
saved in float32.

Fused Mixture-of-Experts tensors (``experts.down_proj`` ``[E, d, n]``, or ``[E, n, d]``
where the module says ``is_transposed``, and gpt-oss's expert biases ``[E, d]``) are not
modules: PEFT adapts them through ``target_parameters`` (its ``ParamWrapper``), in the same
config as the ``target_modules``. Each expert gets the same kind of rank-``r`` update, laid
out as PEFT reads it (see :func:`_parameter_factors`).

Every residual writer of ``model/writers.py`` is covered or the export refuses, naming the
one it cannot express (a 1-D parameter of a module PEFT does not adapt, a bias of an
embedding, an unknown module kind): a writer is never silently left out. A tied lm_head is
not touched: PEFT's adapter on the embedding changes the lookup only, so the head keeps the
original matrix, exactly as the folder export unties it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.exports import registry
from refusal_core.interventions.linalg import orthonormal_basis
from refusal_core.model.families import model_lock, model_parts
from refusal_core.model.loading import LoadedModel
from refusal_core.model.writers import ResidualWrite, residual_writes

__all__ = ["LoraSettings", "LoraUnsupported", "adapter_tensors", "write_lora"]

PEFT_PREFIX = "base_model.model."


class LoraUnsupported(SettingsError):
    """A residual writer of this model cannot be expressed as a PEFT LoRA update."""


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter has no settings: its rank is the number of independent directions."""


def _module_kind(module: nn.Module) -> str:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return type(module).__name__


def _write_basis(
    params: dict[str, torch.Tensor], write: ResidualWrite, basis: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """The basis this write is projected against: the plain one, or that of the norm-weighted directions."""
    if write.norm is None:
        return basis
    gain = params[write.norm].detach().to(torch.float64) + float(write.norm_offset)
    return orthonormal_basis(directions.detach().to(torch.float64) * gain)


def _writer_name(model: nn.Module, params: dict[str, torch.Tensor], name: str) -> str:
    """The name of parameter ``name`` under the writer module that owns it.

    A tied embedding is one Parameter with two names (the embedding's and the lm_head's);
    the adapter must sit on the embedding, never on the head.
    """
    parts = model_parts(model)
    writers = {id(module) for module in (*parts.embeddings, *parts.attn_writes, *parts.mlp_writes)}
    for other, tensor in params.items():
        if tensor is params[name] and id(model.get_submodule(other.rpartition(".")[0])) in writers:
            return other
    return name


def _is_parameter_target(module: nn.Module, leaf: str, tensor: torch.Tensor) -> bool:
    """A writer PEFT reaches through ``target_parameters``: a 2-D or 3-D Parameter held directly
    by a module that is not a Linear, Conv1D or embedding (fused experts and their biases)."""
    return (
        _module_kind(module) not in ("embedding", "conv1d", "linear")
        and isinstance(module._parameters.get(leaf), nn.Parameter)
        and tensor.dim() in (2, 3)
    )


def _grouped(model: nn.Module) -> tuple[dict[str, dict[str, ResidualWrite]], dict[str, ResidualWrite]]:
    """(module name -> {"weight"/"bias": write}, parameter name -> write), refusing anything
    PEFT's LoRA cannot hold: module targets, and parameters for ``target_parameters``."""
    groups: dict[str, dict[str, ResidualWrite]] = {}
    parameters: dict[str, ResidualWrite] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for write in residual_writes(model):
        module_name, _, leaf = _writer_name(model, params, write.name).rpartition(".")
        module = model.get_submodule(module_name)
        kind = _module_kind(module)
        tensor = params[write.name]
        if module_name and _is_parameter_target(module, leaf, tensor):
            parameters[f"{module_name}.{leaf}"] = write
            continue
        if leaf not in ("weight", "bias") or kind not in ("embedding", "conv1d", "linear") or tensor.dim() > 2:
            raise LoraUnsupported(
                f"The residual writer {write.name} ({kind}, shape {tuple(tensor.shape)}) cannot be expressed as a PEFT "
                "LoRA update (PEFT adapts Linear, Conv1D and embedding modules, and 2-D or 3-D parameters of other "
                "modules); export this model with --format folder (or gguf) instead."
            )
        if kind == "embedding" and leaf == "bias":
            raise LoraUnsupported(f"{write.name}: PEFT cannot add a bias to an embedding; use --format folder.")
        groups.setdefault(module_name, {})[leaf] = write
    return groups, parameters


def _parameter_factors(module: nn.Module, tensor: torch.Tensor, axis: int, u: torch.Tensor):
    """PEFT ``ParamWrapper`` factors (lora_A ``[r E, in]``, lora_B ``[out, r E]``) of ``T - proj``.

    PEFT reads a 3-D parameter as ``[E, out, in]``, or ``[E, in, out]`` when the module says
    ``is_transposed``; a 2-D one as ``[out, in]`` with one "expert". Its per-expert update is
    ``B_e A_e`` (``[out, in]``) with ``A_e`` rows ``e r .. e r + r - 1`` of lora_A (expert-major)
    and ``B_e`` columns ``e, E + e, 2 E + e, ..`` of lora_B (rank-major, interleaved). With
    ``T_e`` a slice arranged ``[out, in]``: where the residual is the out side,
    ``A_e = Uᵀ T_e`` and ``B_e = -U``; where it is the in side, ``A_e = Uᵀ`` and ``B_e = -T_e U``.
    """
    weight = tensor.detach().to(torch.float64)
    axis = axis % weight.dim()
    if weight.dim() == 2:
        weight, axis = weight[None], axis + 1
    transposed = tensor.dim() == 3 and bool(getattr(module, "is_transposed", False))
    slices = weight.transpose(1, 2) if transposed else weight  # [E, out, in]
    residual_is_out = axis == (2 if transposed else 1)
    rank, experts = u.shape[1], slices.shape[0]
    if residual_is_out:
        a = torch.einsum("dr,edn->ern", u, slices)  # [E, r, in]
        b = (-u)[None].expand(experts, -1, -1)  # [E, out, r]
    else:
        a = u.T[None].expand(experts, -1, -1)
        b = -torch.einsum("end,dr->enr", slices, u)
    lora_a = a.reshape(experts * rank, -1)
    lora_b = b.permute(1, 2, 0).reshape(b.shape[1], rank * experts)
    return lora_a, lora_b


def _parameter_keys(model: nn.Module, targets: list[str]) -> dict[str, str]:
    """Parameter name -> PEFT's key stem for its wrapper. PEFT wraps a module's targeted
    parameters one inside the other in the module's parameter order, so the first is the
    innermost: its factors sit under ``base_layer`` once per wrapper around it."""
    keys, by_module = {}, {}
    for name in targets:
        module_name, _, leaf = name.rpartition(".")
        by_module.setdefault(module_name, []).append(leaf)
    for module_name, leaves in by_module.items():
        order = [leaf for leaf in model.get_submodule(module_name)._parameters if leaf in leaves]
        for depth, leaf in enumerate(order):
            keys[f"{module_name}.{leaf}"] = PEFT_PREFIX + module_name + ".base_layer" * (len(order) - 1 - depth)
    return keys


def adapter_tensors(loaded: LoadedModel, directions: DirectionSet) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter's state dict (PEFT's saved key names) and its ``adapter_config.json`` values.

    Reads the model under its lock and never modifies it.
    """
    model = loaded.model
    directions.check_width(loaded.d_model)
    parts = model_parts(model)
    if not parts.family.weights_orthogonalizable:
        raise LoraUnsupported(
            f"{type(model).__name__} normalises after its residual writes, so no weight edit (and no adapter) "
            "removes a direction exactly; use the ablate() hooks."
        )
    vectors = directions.vectors.detach().to(torch.float64)
    basis = orthonormal_basis(vectors)
    tensors: dict[str, torch.Tensor] = {}
    targets, ranks, kinds = [], {}, set()
    with model_lock(model):
        params = dict(model.named_parameters(remove_duplicate=False))
        groups, parameters = _grouped(model)
        stems = _parameter_keys(model, list(parameters))
        for name, write in parameters.items():
            u = _write_basis(params, write, basis, vectors)
            module = model.get_submodule(name.rpartition(".")[0])
            lora_a, lora_b = _parameter_factors(module, params[write.name], write.axis, u)
            tensors[f"{stems[name]}.lora_A.weight"], tensors[f"{stems[name]}.lora_B.weight"] = lora_a, lora_b
            ranks[name] = int(u.shape[1])
        for module_name, group in groups.items():
            kind = _module_kind(model.get_submodule(module_name))
            kinds.add(kind)
            key = PEFT_PREFIX + module_name
            if "weight" in group:
                write = group["weight"]
                u = _write_basis(params, write, basis, vectors)
                weight = params[write.name].detach().to(torch.float64)
                if kind == "embedding":
                    tensors[f"{key}.lora_embedding_A"] = (weight @ u).T
                    tensors[f"{key}.lora_embedding_B"] = -u
                else:
                    residual_first = weight if kind == "linear" else weight.T
                    tensors[f"{key}.lora_A.weight"] = u.T @ residual_first
                    tensors[f"{key}.lora_B.weight"] = -u
            if "bias" in group:
                write = group["bias"]
                u = _write_basis(params, write, basis, vectors)
                bias = params[write.name].detach().to(torch.float64)
                tensors[f"{key}.base_layer.bias"] = bias - u @ (u.T @ bias)
                if "weight" not in group:
                    raise LoraUnsupported(
                        f"{write.name}: a bias without its weight in the writer list cannot be an adapter."
                    )
            targets.append(module_name)
            ranks[module_name] = int(
                tensors[f"{key}.lora_embedding_B" if kind == "embedding" else f"{key}.lora_B.weight"].shape[1]
            )
    if "conv1d" in kinds and (kinds & {"linear"} or parameters):
        raise LoraUnsupported(
            "This model mixes Conv1D with Linear or parameter residual writers; PEFT's fan_in_fan_out is one setting."
        )
    rank = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": loaded.spec,
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": {name: r for name, r in ranks.items() if r != rank},
        "alpha_pattern": {name: r for name, r in ranks.items() if r != rank},
        "target_modules": sorted(targets),
        "target_parameters": sorted(parameters) or None,
        "lora_dropout": 0.0,
        "bias": "lora_only" if any(name.endswith(".base_layer.bias") for name in tensors) else "none",
        "lora_bias": False,
        "fan_in_fan_out": "conv1d" in kinds,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    return {name: tensor.to(torch.float32).contiguous() for name, tensor in tensors.items()}, config


def estimate_size(loaded: LoadedModel, directions: DirectionSet, settings: LoraSettings) -> int:
    """Bytes on disk: float32 factors (rank = number of directions), plus headers and JSON."""
    model = loaded.model
    rank = min(len(directions), loaded.d_model)
    params = dict(model.named_parameters(remove_duplicate=False))
    total = 0
    for write in residual_writes(model):
        tensor = params[write.name]
        if write.name.endswith(".bias"):
            total += tensor.numel() * 4
            continue
        other = tensor.numel() // tensor.shape[write.axis]
        if tensor.dim() == 3:  # fused experts: rank rows per expert on both factors
            other //= tensor.shape[0]
            total += rank * tensor.shape[0] * (other + loaded.d_model) * 4
        else:
            total += rank * (other + loaded.d_model) * 4
    return total + 256 * 2 * len(residual_writes(model)) + 16_384


def write_lora(request: registry.ExportRequest) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT's layout) and the directions."""
    from safetensors.torch import save_file

    from refusal_core.exports.manifest import finish_export

    tensors, config = adapter_tensors(request.loaded, request.directions)  # refuses before any file is written

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        request.directions.save(tmp / "directions")
        finish_export(tmp, request, "lora")

    return registry.staged_export(request.out_dir, request.overwrite, registry.export_version(), fill)


registry.register(
    registry.ExportFormat(
        name="lora",
        title="LoRA adapter (PEFT)",
        help="a PEFT LoRA adapter (rank = number of directions) that turns the base model into the orthogonalized one exactly",
        settings=LoraSettings,
        estimate_size=estimate_size,
        write=write_lora,
        suffix="lora",
    )
)
