"""Direction sets as downloads and uploads: a zip of safetensors + JSON pairs, a ``.pt`` of
stacked unit vectors, and reading uploaded files back (validated against the model width;
``.pt`` files are loaded with ``weights_only``, never unpickled).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import torch

from refusal_core.activations.cache import human_bytes
from refusal_core.directions.base import DirectionError, DirectionSet, direction_set_from_bytes

__all__ = ["MAX_UPLOAD_BYTES", "direction_sets_zip", "read_direction_uploads", "stacked_unit_pt"]

# Uploaded archives are read in memory; anything larger is not a direction set.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return cleaned or "directions"


def direction_sets_zip(sets: Mapping[str, DirectionSet]) -> bytes:
    """A zip holding ``<name>.safetensors`` + ``<name>.json`` for each named set."""
    if not sets:
        raise DirectionError("Choose at least one direction set to export.")
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        used: set[str] = set()
        for name, directions in sets.items():
            stem = _safe_name(name)
            while stem in used:
                stem += "_"
            used.add(stem)
            tensors_path, json_path = directions.save(Path(tmp) / stem)
            archive.write(tensors_path, tensors_path.name)
            archive.write(json_path, json_path.name)
    return buffer.getvalue()


def stacked_unit_pt(sets: Mapping[str, DirectionSet]) -> bytes:
    """``torch.save`` bytes of every chosen direction as unit vectors, stacked ``[k, d]`` float32.

    For the original refusal_direction scripts, which load a plain tensor; names and
    provenance are only in the zip export.
    """
    if not sets:
        raise DirectionError("Choose at least one direction set to export.")
    widths = {directions.d_model for directions in sets.values()}
    if len(widths) > 1:
        raise DirectionError(f"The chosen sets have different widths {sorted(widths)}; export sets of one model.")
    buffer = io.BytesIO()
    torch.save(torch.cat([directions.unit().float() for directions in sets.values()]).contiguous(), buffer)
    return buffer.getvalue()


def _load_pt(name: str, data: bytes) -> DirectionSet:
    """A ``.pt`` holding one tensor ``[d]`` or ``[k, d]``; loaded with ``weights_only=True``.

    Never unpickles arbitrary objects: ``weights_only`` refuses anything but tensors and
    plain containers.
    """
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a tensor file"
        # PyTorch's own message suggests retrying with weights_only=False, which would run
        # code from the file; it is not shown.
        raise DirectionError(
            f"{name} is not a tensor file that can be loaded safely: it is damaged or holds objects other "
            "than tensors. Save the directions as one tensor of shape [d] or [k, d] (torch.save(vectors, path)), "
            "or upload the .zip or .safetensors + .json export instead."
        ) from err
    if isinstance(loaded, dict) and len(loaded) == 1:
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, torch.Tensor) or loaded.dim() not in (1, 2):
        raise DirectionError(f"{name} must hold one tensor of shape [d] or [k, d].")
    vectors = (loaded[None] if loaded.dim() == 1 else loaded).float()
    stem = Path(name).stem
    record = {"method": "imported-pt", "source": name}
    return DirectionSet(
        vectors=vectors,
        names=tuple(f"{stem}/{i}" for i in range(vectors.shape[0])),
        provenance=tuple(dict(record) for _ in range(vectors.shape[0])),
        meta=dict(record),
    )


def _read_member(name: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """One member's bytes; an encrypted, damaged or unsupported member names the fix."""
    if member.flag_bits & 0x1:
        raise DirectionError(
            f"{name}: {member.filename} is encrypted; upload an unencrypted zip (the Download button's)."
        )
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as err:
        raise DirectionError(
            f"{name}: {member.filename} cannot be unpacked ({err}); the zip is damaged or uses an unsupported "
            "compression. Upload the .zip the Download button gave, whole."
        ) from err


def _expand_zips(files: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Uploaded files with every .zip replaced by its .safetensors/.json/.pt members."""
    out: list[tuple[str, bytes]] = []
    for name, data in files:
        if not name.lower().endswith(".zip"):
            out.append((name, data))
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
                    raise DirectionError(
                        f"{name} unpacks to more than {human_bytes(MAX_UPLOAD_BYTES)}; it is not a direction export."
                    )
                for member in members:
                    # Only the base name is used, so paths inside the archive cannot escape.
                    base = Path(member.filename).name
                    if base.lower().endswith((".safetensors", ".json", ".pt")):
                        out.append((base, _read_member(name, archive, member)))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise DirectionError(
                f"{name} is not a valid zip archive ({err}); upload the .zip the Download button gave, whole."
            ) from err
    return out


def _refuse_duplicates(files: Sequence[tuple[str, bytes]]) -> None:
    """Two files of one name (in one zip's folders, or a zip and a loose file) would replace each other."""
    seen: set[str] = set()
    for name, _ in files:
        if name in seen:
            raise DirectionError(
                f"Two uploaded files are both named {name!r} (in different folders of a zip, or a zip and a loose "
                "file); rename one of them, or upload them separately."
            )
        seen.add(name)
    stems = [Path(name).stem for name, _ in files if name.lower().endswith(".pt")]
    pairs = {Path(name).stem for name, _ in files if not name.lower().endswith(".pt")}
    clash = sorted(set(stems) & pairs) or sorted({stem for stem in stems if stems.count(stem) > 1})
    if clash:
        raise DirectionError(f"Two uploads would both become the set {clash[0]!r}; rename one of them.")


def read_direction_uploads(files: Sequence[tuple[str, bytes]], d_model: int) -> dict[str, DirectionSet]:
    """Direction sets from uploaded files, each validated against the model width.

    Accepts pairs ``<stem>.safetensors`` + ``<stem>.json`` (as written by
    ``DirectionSet.save``), zips of such pairs (the dashboard's export) and ``.pt`` tensor
    files. Returns ``{stem: DirectionSet}``; raises DirectionError naming the fix.
    """
    files = _expand_zips(files)
    _refuse_duplicates(files)
    if not files:
        raise DirectionError("No files given; upload a .safetensors file with its .json, a zip export, or a .pt file.")
    by_stem: dict[str, dict[str, bytes]] = {}
    sets: dict[str, DirectionSet] = {}
    for name, data in files:
        suffix = Path(name).suffix.lower()
        if suffix == ".pt":
            directions = _load_pt(name, data)
            directions.check_width(d_model)
            sets[Path(name).stem] = directions
        elif suffix in (".safetensors", ".json"):
            by_stem.setdefault(Path(name).stem, {})[suffix] = data
        else:
            raise DirectionError(f"{name}: unsupported file type; upload .safetensors + .json, .zip or .pt.")
    for stem, parts in by_stem.items():
        missing = {".safetensors", ".json"} - set(parts)
        if missing:
            raise DirectionError(
                f"{stem}: the {' and '.join(sorted(missing))} file is missing; upload both files of the pair."
            )
        sets[stem] = direction_set_from_bytes(
            parts[".safetensors"], parts[".json"], f"{stem}.safetensors", f"{stem}.json", d_model=d_model
        )
    return sets
