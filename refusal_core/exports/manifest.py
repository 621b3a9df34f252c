"""``manifest.json``: what was made, from what, by which command, and the hash of the result.

Every export and every result the CLI saves gets one. It records the model (spec, source,
exact weights sha256), the directions (their own content hash, their names, and the sha256
of the direction files named on the command line), the command exactly as invoked (argv or
the dashboard's action) and, for exports, the canonical CLI command that redoes it, the
package versions, any seeds, and the output: each file's size and sha256 and one ``sha256``
over all of them (relative names and contents, in sorted order; the manifest itself, the
export marker and the model card, which holds a timestamp, are left out).

``reproduce`` (``exports/reproduce.py``) reruns the canonical command into a temporary
folder and compares that hash.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Iterable, Sequence

import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import UserError
from refusal_core.interventions.export_target import MARKER
from refusal_core.model.loading import LoadedModel

__all__ = [
    "MANIFEST",
    "ManifestError",
    "SCHEMA",
    "direction_files",
    "directions_digest",
    "file_sha256",
    "finish_export",
    "output_record",
    "read_manifest",
    "rerun_command",
    "result_manifest_path",
    "seeds_of",
    "write_manifest",
    "write_result_manifest",
]

MANIFEST = "manifest.json"
SCHEMA = "refusal-atlas-manifest/1"
# Never part of the output hash: the manifest itself, the export marker (it holds a pid),
# the model card (it holds the export's time).
UNHASHED = frozenset({MANIFEST, MARKER, "README.md"})
_PACKAGES = ("refusal-atlas", "torch", "transformers", "safetensors", "peft", "gguf", "numpy", "tokenizers")


class ManifestError(UserError):
    """A manifest that cannot be read or rerun; the message says what is wrong."""


def file_sha256(path: Path) -> str:
    """sha256 of a file; for ``.safetensors``, of its header with keys sorted, then its data.

    safetensors writes its ``__metadata__`` map in no fixed order, so the same tensors saved
    twice can differ in their header bytes; the canonical header makes the hash stable.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if Path(path).suffix == ".safetensors":
            size = int.from_bytes(handle.read(8), "little")
            try:
                header = json.loads(handle.read(size))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
            if header is None:
                handle.seek(0)
            else:
                digest.update(json.dumps(header, sort_keys=True).encode())
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directions_digest(directions: DirectionSet) -> str:
    """sha256 of the directions' float32 values, shape and names (independent of any file)."""
    digest = hashlib.sha256()
    vectors = directions.vectors.detach().to(torch.float32).contiguous().cpu()
    digest.update(json.dumps({"shape": list(vectors.shape), "names": list(directions.names)}).encode())
    digest.update(vectors.numpy().tobytes())
    return digest.hexdigest()


def output_record(paths: Iterable[Path], root: Path | None = None) -> dict:
    """Sizes and hashes of ``paths`` and one sha256 over them all.

    Files are named relative to ``root`` (``layout: folder``), or by their base names when
    ``root`` is None (``layout: files``: a saved result, e.g. ``dim.safetensors`` + ``dim.json``).
    """
    files = []
    for path in sorted(Path(p) for p in paths):
        rel = path.relative_to(root).as_posix() if root is not None else path.name
        if path.name in UNHASHED or not path.is_file():
            continue
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
    files.sort(key=lambda item: item["path"])
    total = hashlib.sha256()
    for item in files:
        total.update(f"{item['path']}\0{item['sha256']}\n".encode())
    return {
        "sha256": total.hexdigest(),
        "files": files,
        "bytes": sum(item["bytes"] for item in files),
        "layout": "folder" if root is not None else "files",
    }


def folder_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "refusal-atlas":
                from refusal_core.interventions.export import package_version

                found[name] = package_version()
    return found


def model_record(loaded: LoadedModel) -> dict:
    from refusal_core.model.fingerprint import weights_sha256

    return {
        "spec": loaded.spec,
        "source": str(loaded.source),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "weights_sha256": weights_sha256(loaded.model),
    }


def directions_record(directions: DirectionSet, files: Sequence[str | Path] = ()) -> dict:
    record = {"sha256": directions_digest(directions), "names": list(directions.names), "width": directions.d_model}
    hashed = {}
    for name in files:
        path = Path(name)
        if path.is_file():
            hashed[str(path)] = file_sha256(path)
    if hashed:
        record["files"] = hashed
    return record


def write_manifest(
    path: Path,
    *,
    kind: str,
    output: dict,
    invoked: Sequence[str] | str | None,
    rerun: Sequence[str] | None = None,
    loaded: LoadedModel | None = None,
    directions: dict | None = None,
    seeds: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the manifest document to ``path`` (JSON, keys sorted) and return ``path``."""
    document = {
        "schema": SCHEMA,
        "kind": kind,
        "invoked": list(invoked) if isinstance(invoked, (list, tuple)) else invoked,
        "rerun": list(rerun) if rerun is not None else None,
        "model": model_record(loaded) if loaded is not None else None,
        "directions": directions,
        "versions": _versions(),
        "seeds": seeds or {},
        "output": output,
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def rerun_command(request, fmt_name: str) -> list[str]:
    """The CLI command that redoes this export; its directions come from the copy saved in the output."""
    from dataclasses import asdict

    argv = [
        "export-model",
        "--model",
        request.loaded.spec,
        "--dtype",
        str(request.loaded.dtype).removeprefix("torch."),
        "--ablate",
        str(Path(request.out_dir) / "directions"),
        "--format",
        fmt_name,
    ]
    for name, value in asdict(request.settings).items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return [*argv, "--out", str(request.out_dir)]


def finish_export(tmp: Path, request, fmt_name: str) -> Path:
    """Write the manifest of a staged export (``tmp``, moved to ``request.out_dir`` afterwards)."""
    command = request.command
    invoked = command if command is not None else f"export-model --format {fmt_name} (called from Python)"
    return write_manifest(
        tmp / MANIFEST,
        kind=f"export:{fmt_name}",
        output=output_record(folder_files(tmp), tmp),
        invoked=invoked,
        rerun=rerun_command(request, fmt_name),
        loaded=request.loaded,
        directions=directions_record(request.directions),
    )


def result_manifest_path(stem: str | Path) -> Path:
    """Where the manifest of a result saved at ``stem`` (a path stem or file) goes: ``<stem>.manifest.json``."""
    path = Path(stem)
    base = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return base.with_name(base.name + ".manifest.json")


def read_manifest(path: str | Path) -> dict:
    """The manifest at ``path``, checked for the fields ``reproduce`` needs."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} not found; give the manifest.json of an export or a saved result.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not a readable JSON manifest ({err}).") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ManifestError(f"{path} is not a Refusal Atlas manifest (schema {SCHEMA!r} expected).")
    rerun = document.get("rerun")
    if (
        not isinstance(rerun, list)
        or not rerun
        or not all(isinstance(arg, str) for arg in rerun)
        or "--out" not in rerun
    ):
        raise ManifestError(f"{path} records no command that can be rerun (its 'rerun' must be a CLI argv with --out).")
    output = document.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("sha256"), str):
        raise ManifestError(f"{path} records no output hash ('output.sha256').")
    return document


def write_result_manifest(
    stem: str | Path,
    written: Sequence[str | Path],
    argv: Sequence[str],
    loaded: LoadedModel | None,
    directions: DirectionSet | None = None,
    inputs: Sequence[str | Path] = (),
    seeds: dict | None = None,
) -> Path:
    """``<stem>.manifest.json`` for a result the CLI saved (direction files, a selection table...).

    ``argv`` is the command's own arguments, rerun as they are by ``reproduce`` (from the
    recorded working folder); ``inputs`` are files it read (their sha256 is recorded).
    """
    import os

    path = result_manifest_path(stem)
    return write_manifest(
        path,
        kind=f"result:{' '.join(argv[:2])}",
        output=output_record([Path(p) for p in written]),
        invoked=["python", "-m", "refusal_core", *argv],
        rerun=list(argv),
        loaded=loaded,
        directions=directions_record(directions, inputs) if directions is not None else None,
        seeds=seeds,
        extra={"cwd": os.getcwd(), "inputs": {str(p): file_sha256(Path(p)) for p in inputs if Path(p).is_file()}},
    )


def direction_files(stem: str | Path) -> list[Path]:
    """The two files ``DirectionSet.save(stem)`` writes."""
    path = Path(stem)
    base = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return [base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")]


def seeds_of(args) -> dict:
    """Every ``*seed*`` argument of a parsed command line."""
    return {name: value for name, value in vars(args).items() if "seed" in name and not callable(value)}
