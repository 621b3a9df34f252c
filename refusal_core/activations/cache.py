"""The on-disk cache: content-addressed, atomically written safetensors entries that detect
their own corruption, the hash helpers that key them, and what the sidebar shows and clears."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from refusal_core.atomic import FILE_MODE
from refusal_core.paths import cache_dir

__all__ = [
    "CODE_VERSION",
    "atomic_target",
    "atomic_write_text",
    "cache_usage",
    "clear_activation_cache",
    "content_key",
    "entry_path",
    "human_bytes",
    "load_entry",
    "save_entry",
    "try_save_entry",
    "tensor_digest",
]

# Bump when a change alters what cached entries contain, so stale entries are never reused.
CODE_VERSION = "1"
# A temporary file untouched this long belongs to a writer that died; clearing removes it.
STALE_TEMP_SECONDS = 24 * 3600


def content_key(*parts: object) -> str:
    """A stable sha256 key of JSON-serializable parts (lists, dicts, strings, numbers) and
    tensors, which count by their bytes (:func:`tensor_digest`), wherever they are nested."""
    blob = json.dumps([CODE_VERSION, *parts], sort_keys=True, default=_json_part).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _json_part(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return tensor_digest({"tensor": value})
    return str(value)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# mkstemp makes private (0600) files; written files get the mode an ordinary open() gives.


def atomic_target(path: Path) -> str:
    """A new private temporary file beside ``path`` (hidden, ``.NAME.*.tmp``), given the ordinary mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(tmp, FILE_MODE)
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so readers see the old file or the new one, never half of it."""
    tmp = atomic_target(path)
    try:
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def entry_path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{key}.safetensors"


def save_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save tensors with a digest in the header, through a temporary file and ``os.replace``."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header = {**metadata, "digest": tensor_digest(tensors)}
    tmp = atomic_target(path)
    try:
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, FILE_MODE)  # safetensors writes its file 0600 whatever the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def try_save_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str | None:
    """``save_entry`` that never loses the caller's result: None when written, else a warning
    naming the cause (disk full, read-only cache, the folder cleared meanwhile)."""
    try:
        save_entry(path, tensors, metadata)
    except (OSError, SafetensorError) as err:
        cause = getattr(err, "strerror", None) or str(err)
        return (
            f"The result was computed but not cached ({cause}: {getattr(err, 'filename', None) or path.parent}); "
            "it is kept for this session. Free disk space or make the cache folder writable to cache it."
        )
    return None


def load_entry(path: Path, expected: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """Load an entry if it is whole and matches ``expected`` metadata; else None.

    A truncated file, a flipped byte or a key collision all read as a miss, so the caller
    recomputes instead of trusting damaged data.
    """
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    if any(header.get(name) != value for name, value in expected.items()):
        return None
    if header.get("digest") != tensor_digest(tensors):
        return None
    return tensors


def cache_usage() -> dict[str, int]:
    """Bytes used by each subfolder of the cache root (``activations``, ``models``, ...)."""
    root = cache_dir()
    if not root.is_dir():
        return {}
    usage = {}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            usage[child.name] = sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
    return usage


def clear_activation_cache() -> int:
    """Delete the on-disk activation cache; returns the number of files removed.

    Only derived data lives there (content-keyed), so the next extraction recomputes it.
    Results already in a session are not affected.
    """
    folder = cache_dir() / "activations"
    if not folder.is_dir():
        return 0
    count = 0
    # Finished entries only: a hidden ``.NAME.*.tmp`` file is another session's write in
    # progress, and the folder itself stays, so that write can still be moved into place.
    for entry in folder.rglob("*.safetensors"):
        try:
            entry.unlink()
            count += 1
        except FileNotFoundError:
            pass  # removed by a concurrent clear
    stale = time.time() - STALE_TEMP_SECONDS
    for leftover in folder.rglob(".*.tmp"):  # temporary files of writers killed long ago
        try:
            if leftover.stat().st_mtime < stale:
                leftover.unlink()
        except FileNotFoundError:
            pass
    return count


def human_bytes(n: int) -> str:
    """``n`` bytes in B, KiB, MiB or GiB, for the sidebar."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover
