"""Streaming export: orthogonalize a model straight from its safetensors shards on disk.

The in-memory export (``interventions/export.py``) needs the whole model loaded, and holds
the shared model's lock while it saves. This one never loads the model: it builds the
architecture on the ``meta`` device from ``config.json`` to learn which tensors write to
the residual stream (the one list, ``model/writers.py``), then copies each shard tensor by
tensor into a new shard of the same name, projecting the directions out of the writers as
they pass (in float32 arithmetic, stored back in the stored dtype). Peak memory is the
largest tensor that is not an embedding plus a few chunks; embeddings stream in row chunks.

The folder it writes has the in-memory export's layout: the same shard files and index
(plus an explicit ``lm_head.weight`` where the source tied it to the embedding, with
``tie_word_embeddings: false``), config, generation config, tokenizer, directions, model
card and export marker, moved into place atomically (``export_target``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from refusal_core.directions.base import DirectionSet, validate_vectors
from refusal_core.errors import SettingsError
from refusal_core.exports.experts import expert_keys
from refusal_core.exports.files import INDEX, ModelFiles, WeightFilesError
from refusal_core.exports.safetensors_io import Entry, ShardHeader, ShardWriter, iter_rows, read_header, read_tensor
from refusal_core.interventions.export import model_card, package_version
from refusal_core.interventions.export_target import (
    check_target,
    new_partial_dir,
    recover_leftovers,
    replace_dir,
    write_marker,
)
from refusal_core.interventions.linalg import compute_dtype, orthonormal_basis, project_out
from refusal_core.interventions.spec import as_direction_matrix
from refusal_core.model.families import model_parts, model_width
from refusal_core.model.writers import ResidualWrite, WriterError, residual_writes
from refusal_core.progress import Progress

__all__ = ["ExportPlan", "meta_model", "plan_export", "stream_export"]

_FLOAT_CODES = ("F16", "BF16", "F32", "F64")
# Elements per chunk of a tensor being orthogonalized (float32: 64 MB).
CHUNK_ELEMENTS = 16 << 20


def meta_model(folder: Path, trust_remote_code: bool = False):
    """The model of ``folder``'s config, built on the ``meta`` device (no memory for weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model


@dataclass(frozen=True)
class ExportPlan:
    """What a streaming export will do, worked out from the config and headers before any writing."""

    files: ModelFiles
    config: object
    writes: dict[str, ResidualWrite]  # tensor name on disk -> the edit it gets
    shapes: dict[str, tuple[int, ...]]  # tensor name on disk -> the shape the model expects
    tied_head: tuple[str, str] | None  # (lm_head tensor to add, embedding tensor to copy it from)
    d_model: int


def _similar(name: str, keys: list[str]) -> str:
    stem = name.rsplit(".", 2)[0]
    near = [key for key in keys if key.startswith(stem)][:4]
    return f" The files hold, for instance: {', '.join(near)}." if near else ""


def _missing(name: str, model_type: str, files: ModelFiles) -> WeightFilesError:
    return WeightFilesError(
        f"{files.folder} has no tensor named {name}, which writes to the residual stream of this "
        f"{model_type} model: the checkpoint stores it under another "
        f"name or split up in a way the export cannot map.{_similar(name, sorted(files.weight_map))} Load the model "
        "and save it again with save_pretrained (transformers 5), or export from memory (export-model --in-memory)."
    )


def _disk_writes(
    write: ResidualWrite, aliases: list[str], shape: tuple[int, ...], config, files: ModelFiles
) -> list[tuple[str, ResidualWrite]]:
    """The tensors on disk that hold ``write``: itself, or the per-expert slices of a fused MoE parameter."""
    model_type = getattr(config, "model_type", "")
    if write.norm is not None and write.norm not in files.weight_map:
        raise _missing(write.norm, model_type, files)
    for alias in aliases:  # a tied parameter has several names; the files hold one of them
        if alias in files.weight_map:
            return [(alias, ResidualWrite(alias, write.axis, write.norm, write.norm_offset))]
    axis = write.axis % len(shape) if shape else 0
    keys = expert_keys(write.name, shape[0], model_type, files.weight_map) if len(shape) == 3 and axis > 0 else None
    if keys is None:
        raise _missing(write.name, model_type, files)
    return [(key, ResidualWrite(key, axis - 1, write.norm, write.norm_offset)) for key in keys]


def plan_export(files: ModelFiles, trust_remote_code: bool = False) -> ExportPlan:
    """Check that every residual writer of the model is a tensor in its files, by name.

    transformers 5 may rename or fuse tensors when it loads an older checkpoint (per-expert
    MoE weights into one 3-D tensor, for example); such a checkpoint is refused with the
    name of the tensor that is missing, never exported with a writer left unedited.
    """
    model = meta_model(files.folder, trust_remote_code)
    quantization = getattr(model.config, "quantization_config", None)
    if quantization:
        method = (
            quantization.get("quant_method", "unknown")
            if isinstance(quantization, dict)
            else type(quantization).__name__
        )
        raise WeightFilesError(
            f"{files.folder} holds a quantized checkpoint (quant_method {method}); the streaming export edits "
            "floating-point weights only. Export from the unquantized checkpoint."
        )
    parts = model_parts(model)
    if not getattr(parts.family, "weights_orthogonalizable", True):
        raise SettingsError(
            f"{type(model).__name__} normalises the attention and MLP outputs after their projections, so "
            "editing weights cannot remove a direction exactly. Use the ablate() hooks instead "
            "(orthogonalized weights cannot be made or exported for this family)."
        )
    try:
        writes = residual_writes(model)
    except WriterError as err:
        raise SettingsError(str(err)) from err
    params = dict(model.named_parameters(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}
    for name, param in params.items():
        aliases.setdefault(id(param), []).append(name)
    on_disk: dict[str, ResidualWrite] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for write in writes:
        same = aliases[id(params[write.name])]
        for name, edits in _disk_writes(write, same, tuple(params[write.name].shape), model.config, files):
            on_disk[name] = edits
            shapes[name] = tuple(params[write.name].shape)[1:] if name not in same else tuple(params[write.name].shape)
    head = getattr(parts.lm_head, "weight", None)
    tied = next((emb for emb in parts.embeddings if emb.weight is head), None)
    tied_head = None
    if tied is not None:
        module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        head_name = f"{module_names[id(parts.lm_head)]}.weight"
        stored = next((name for name in aliases[id(tied.weight)] if name in files.weight_map), None)
        if head_name not in files.weight_map and stored is not None:
            tied_head = (head_name, stored)
    return ExportPlan(files, model.config, on_disk, shapes, tied_head, model_width(model))


def _check_directions(directions: DirectionSet, d_model: int) -> torch.Tensor:
    directions.check_width(d_model)
    matrix = as_direction_matrix(directions)
    validate_vectors(matrix)
    return matrix


class _Bases:
    """The orthonormal basis each write is orthogonalized against (scaled by its norm, if any)."""

    def __init__(self, plan: ExportPlan, matrix: torch.Tensor) -> None:
        self.plan, self.matrix = plan, matrix.to(torch.float64)
        self.plain = orthonormal_basis(self.matrix)
        self._scaled: dict[tuple[str, float], torch.Tensor] = {}

    def __call__(self, write: ResidualWrite) -> torch.Tensor:
        if write.norm is None:
            return self.plain
        key = (write.norm, float(write.norm_offset))
        if key not in self._scaled:
            shard = self.plan.files.folder / self.plan.files.weight_map[write.norm]
            header = read_header(shard)
            weight = read_tensor(header, header.entry(write.norm)).to(torch.float64)
            self._scaled[key] = orthonormal_basis(self.matrix * (write.norm_offset + weight))
        return self._scaled[key]


def _orthogonalize_matrices_(tensor: torch.Tensor, basis: torch.Tensor) -> None:
    """In place: ``basis`` projected out of the second-to-last axis of ``tensor`` (``[..., d, n]``).

    ``W - Q (Q^T W)`` on contiguous blocks of columns, in float32 (float64 stays float64):
    the same projection as ``project_out`` on the transposed view, without its strided reads.
    """
    compute = compute_dtype(tensor.dtype)
    q = basis.to(compute)
    matrices = tensor.reshape(-1, *tensor.shape[-2:])  # a view: the tensor is contiguous
    step = max(1, CHUNK_ELEMENTS // max(1, tensor.shape[-2]))
    for matrix in matrices:
        for start in range(0, matrix.shape[-1], step):
            block = matrix[:, start : start + step]
            values = block.to(compute)
            block.copy_(values - q @ (q.T @ values))


def _edited(header: ShardHeader, entry: Entry, write: ResidualWrite, basis: torch.Tensor):
    """The pieces of ``entry`` with ``basis`` projected out of its residual axis."""
    ndim = len(entry.shape)
    axis = write.axis % ndim
    if ndim > 1 and axis == ndim - 1:
        # The residual axis is the last one (embeddings): rows stream through independently.
        per_row = max(1, entry.nbytes // max(entry.shape[0], 1) // entry.torch_dtype.itemsize)
        for piece in iter_rows(header, entry, max(1, CHUNK_ELEMENTS // per_row)):
            yield project_out(piece, basis)
        return
    tensor = read_tensor(header, entry)
    if ndim > 1 and axis == ndim - 2:  # nn.Linear [d_out, d_in], fused experts [E, d_out, d_in]
        _orthogonalize_matrices_(tensor, basis)
    else:  # a bias, or a layout with the residual axis elsewhere
        moved = tensor.movedim(axis, -1)
        moved.copy_(project_out(moved, basis))
    yield tensor


def _write_shard(plan: ExportPlan, bases: _Bases, shard: str, out: Path, edited: dict, tick) -> int:
    """Write ``shard`` into ``out`` with the writers orthogonalized; returns the bytes written."""
    header = read_header(plan.files.folder / shard)
    entries = [(e.name, e.dtype, e.shape) for e in header.entries]
    extra = None
    if plan.tied_head is not None and plan.files.weight_map[plan.tied_head[1]] == shard:
        extra = header.entry(plan.tied_head[1])
        entries.append((plan.tied_head[0], extra.dtype, extra.shape))
    writer = ShardWriter(out / shard, entries, header.metadata)
    written = 0
    try:
        for entry in header.entries:
            write = plan.writes.get(entry.name)
            if write is None:
                writer.copy(entry.name, header, entry)
            else:
                writer.write(entry.name, _edited(header, entry, write, bases(write)))
                edited[entry.name] = edited.get(entry.name, 0) + 1
            written += entry.nbytes
            tick(written, entry.name)
        if extra is not None:
            writer.copy(plan.tied_head[0], header, extra)  # the original, unedited matrix
            written += extra.nbytes
            tick(written, plan.tied_head[0])
    finally:
        writer.close()
    return written


def _write_index(plan: ExportPlan, out: Path, total: int) -> None:
    weight_map = dict(plan.files.weight_map)
    if plan.tied_head is not None:
        weight_map[plan.tied_head[0]] = weight_map[plan.tied_head[1]]
    if plan.files.indexed:
        metadata = {**plan.files.index_metadata, "total_size": total}
        index = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_config_files(plan: ExportPlan, out: Path, trust_remote_code: bool) -> None:
    """config.json (untied), generation_config.json and the tokenizer, as the in-memory export writes them."""
    from transformers import AutoTokenizer, GenerationConfig

    config = plan.config
    config.tie_word_embeddings = False
    config.save_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(plan.files.folder)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(plan.files.folder, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # as loading does: batched work pads with end-of-sequence
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)


def _progress_ticker(progress: Progress | None, total: int, n_shards: int):
    state = {"before": 0, "shard": 0}

    def start(index: int, before: int) -> None:
        state.update(shard=index, before=before)

    def tick(done_in_shard: int, name: str) -> None:  # reported in MiB
        if progress:
            done = (state["before"] + done_in_shard) >> 20
            progress(min(done, total_mib), total_mib, stage=f"shard {state['shard'] + 1}/{n_shards}: {name}")

    total_mib = max(1, total >> 20)

    return start, tick


def _check_shapes(plan: ExportPlan, headers: dict[str, ShardHeader]) -> None:
    """Every writer on disk is a float tensor of the shape the config implies."""
    for name, shape in plan.shapes.items():
        entry = headers[plan.files.weight_map[name]].entry(name)
        found = entry.shape
        if entry.dtype not in _FLOAT_CODES:
            raise WeightFilesError(
                f"Tensor {name} in {plan.files.folder} is stored as {entry.dtype}, not as floating-point values "
                "(a quantized checkpoint?); the export edits float16, bfloat16, float32 or float64 weights only. "
                "Export from the unquantized checkpoint."
            )
        if found != shape:
            raise WeightFilesError(
                f"Tensor {name} in {plan.files.folder} is {list(found)} but the model's config makes it {list(shape)}; "
                "the files and config.json do not belong together."
            )


def stream_export(
    files: ModelFiles,
    directions: DirectionSet,
    out_dir: str | Path,
    spec: str,
    overwrite: bool = False,
    command: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    plan: ExportPlan | None = None,
) -> Path:
    """Write the model in ``files`` with ``directions`` orthogonalized out, shard by shard, to ``out_dir``.

    Everything that can be refused (target folder, directions' width, a writer missing from
    the files, a family whose weights cannot be edited) is checked before the first byte is
    written. ``progress(mib_done, mib_total, stage=...)`` follows the tensors (MiB). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    plan = plan or plan_export(files, trust_remote_code)
    matrix = _check_directions(directions, plan.d_model)
    recover_leftovers(out_dir)
    check_target(out_dir, overwrite)
    version = package_version()
    headers = {shard: read_header(files.folder / shard) for shard in files.shards}
    _check_shapes(plan, headers)
    total = sum(entry.nbytes for header in headers.values() for entry in header.entries)
    if plan.tied_head is not None:
        total += headers[files.weight_map[plan.tied_head[1]]].entry(plan.tied_head[1]).nbytes
    start, tick = _progress_ticker(progress, total, len(files.shards))
    tmp = new_partial_dir(out_dir, version)
    try:
        _write_config_files(plan, tmp, trust_remote_code)
        bases, edited, done = _Bases(plan, matrix), {}, 0
        for index, shard in enumerate(files.shards):
            start(index, done)
            done += _write_shard(plan, bases, shard, tmp, edited, tick)
        if progress:
            progress(max(1, total >> 20), max(1, total >> 20), stage="index, card and marker")
        if edited != {name: 1 for name in plan.writes}:
            missed = sorted(set(plan.writes) - set(edited))
            raise RuntimeError(
                f"Streaming export edited {edited} but the residual writers are {sorted(plan.writes)}; missed {missed}."
            )
        _write_index(plan, tmp, total)
        directions.save(tmp / "directions")
        command = command or f"stream_export({str(files.folder)!r}, <{len(directions)} directions>, {str(out_dir)!r})"
        (tmp / "README.md").write_text(
            model_card(SimpleNamespace(spec=spec, source=str(files.folder)), directions, command)
        )
        write_marker(tmp, complete=True, version=version)
        check_target(out_dir, overwrite)  # Another export may have filled it meanwhile.
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
