"""The ``folder`` format: a full Hugging Face model folder with the directions edited out of its
weights. A thin adapter over ``interventions.export.export_orthogonalized``; the streaming
shard-by-shard writer (``exports/folder.py``) can take its place behind the same entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.registry import setting
from refusal_core.exports import registry
from refusal_core.model.loading import LoadedModel

__all__ = ["FolderSettings", "stream_folder", "write_folder"]


@dataclass(frozen=True)
class FolderSettings:
    mode: str = setting(
        "orthogonal",
        "orthogonal: project the directions out; norm-preserving: then restore each "
        "residual-side column's (or row's) norm",
        choices=("orthogonal", "norm-preserving"),
    )


def estimate_size(loaded: LoadedModel, directions: DirectionSet, settings: FolderSettings) -> int:
    """Every parameter in its dtype, the tied head counted twice (it is saved untied), plus tokenizer and JSON."""
    model = loaded.model
    total = sum(param.numel() * param.element_size() for param in model.parameters())
    head = getattr(model.get_output_embeddings(), "weight", None) if hasattr(model, "get_output_embeddings") else None
    if head is not None and any(head is param for param in model.get_input_embeddings().parameters()):
        total += head.numel() * head.element_size()
    return total + 4 * 1024 * 1024


def write_folder(request: registry.ExportRequest) -> Path:
    from refusal_core.exports.manifest import (
        MANIFEST,
        directions_record,
        folder_files,
        output_record,
        rerun_command,
        write_manifest,
    )
    from refusal_core.interventions.export import export_orthogonalized

    out = export_orthogonalized(
        request.loaded,
        request.directions,
        request.out_dir,
        overwrite=request.overwrite,
        command=request.command,
        mode=request.settings.mode,
    )
    write_manifest(
        out / MANIFEST,
        kind="export:folder",
        output=output_record(folder_files(out), out),
        invoked=request.command or "export-model --format folder (called from Python)",
        rerun=rerun_command(request, "folder"),
        loaded=request.loaded,
        directions=directions_record(request.directions),
    )
    return out


def stream_folder(
    files, directions: DirectionSet, out_dir, *, spec: str, overwrite: bool, command: str, **options
) -> Path:
    """The ``folder`` format streamed from the model's files shard by shard (``exports.folder``),
    without loading the model, and its manifest, as every export writes one; ``options`` go to
    ``stream_export`` (plan, progress, trust_remote_code)."""
    from refusal_core.exports.folder import stream_export
    from refusal_core.exports.manifest import MANIFEST, folder_files, output_record, write_manifest

    out = Path(stream_export(files, directions, out_dir, spec=spec, overwrite=overwrite, command=command, **options))
    rerun = [
        "export-model",
        "--model",
        spec,
        "--ablate",
        str(out / "directions"),
        "--format",
        "folder",
        "--out",
        str(out),
    ]
    write_manifest(
        out / MANIFEST,
        kind="export:folder",
        output=output_record(folder_files(out), out),
        invoked=command,
        rerun=rerun,
        extra={"streamed_from": str(files.folder), "model_spec": spec},
        directions={"names": list(directions.names)},
    )
    return out


registry.register(
    registry.ExportFormat(
        name="folder",
        title="Full model folder (safetensors)",
        help="a complete Hugging Face model folder with the directions orthogonalized out of its weights",
        settings=FolderSettings,
        estimate_size=estimate_size,
        write=write_folder,
        suffix="orthogonalized",
    )
)
