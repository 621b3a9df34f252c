"""Where an exported model may be written, and how a folder is replaced without losing anything.

Every export writes a marker file, ``.refusal-atlas-export``, into its folder. Overwriting
is allowed only for an empty folder or one that holds this marker, so ``--overwrite`` can
never delete a folder of someone else's files. An export is written into a temporary folder
beside the target (``.NAME.tmp-PID-...``, marked as partial) and moved into place with
``os.replace``; an earlier export is first moved aside (``.NAME.old-PID``) and deleted only
after the new one is in place. A process killed at any point therefore leaves the target
absent, the old export, or the complete new one, never half a model; the next export
deletes the leftovers of dead writers and, if the target went missing while moved aside,
puts the old export back first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from refusal_core.atomic import normalize_modes
from refusal_core.errors import UserError
from refusal_core.paths import cache_dir

__all__ = [
    "MARKER",
    "ExportError",
    "check_target",
    "confined_export_dir",
    "default_export_dir",
    "export_root",
    "is_export",
    "new_partial_dir",
    "recover_leftovers",
    "replace_dir",
    "write_marker",
]

MARKER = ".refusal-atlas-export"
PRODUCT = "refusal-atlas"


class ExportError(UserError, FileExistsError):
    """The export target is in the way; the message says how to proceed."""


def default_export_dir(spec: str) -> Path:
    """``cache/exports/<model spec>-orthogonalized``: inside the cache, never the project's source."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("._") or "model"
    return cache_dir() / "exports" / f"{safe}-orthogonalized"


def export_root() -> Path:
    """The folder dashboard exports are confined to: ``$REFUSAL_ATLAS_EXPORT_ROOT`` (``~`` expanded)
    if set, else ``cache/exports``."""
    configured = os.environ.get("REFUSAL_ATLAS_EXPORT_ROOT", "").strip()
    return Path(configured).expanduser().resolve() if configured else (cache_dir() / "exports").resolve()


def confined_export_dir(text: str, root: Path | None = None) -> Path:
    """The folder a dashboard user typed, inside the export root: ``~`` expanded, a relative
    path taken inside the root, and a path that leaves the root (``..``, another absolute
    folder, a symlink out) refused with the way to allow it."""
    root = (root or export_root()).resolve()
    typed = text.strip()
    if not typed:
        raise ExportError(f"No output folder given; type a folder name (it is created inside {root}).")
    path = Path(typed).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ExportError(
            f"{typed!r} is outside the export folder {root}; type a folder inside it (a plain name like "
            "'my-export' is created there), or start the app with REFUSAL_ATLAS_EXPORT_ROOT set to a folder that contains it."
        )
    if resolved == root:
        raise ExportError(f"{typed!r} is the export folder {root} itself; type the name of a folder inside it.")
    return resolved


def write_marker(folder: Path, complete: bool, version: str) -> None:
    record = {"product": PRODUCT, "version": version, "complete": complete, "pid": os.getpid()}
    (folder / MARKER).write_text(json.dumps(record) + "\n")


def _marker(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("product") == PRODUCT else None


def is_export(folder: Path) -> bool:
    """True when ``folder`` holds a complete export written by this product."""
    record = _marker(folder)
    return bool(record and record.get("complete"))


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Raise ExportError unless ``out_dir`` is new, empty, or (with ``overwrite``) an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another output folder.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not is_export(out_dir):
        raise ExportError(
            f"{out_dir} is not empty and holds no earlier Refusal Atlas export (no {MARKER} file), so it is "
            f"never replaced, with or without overwrite. Choose a new or empty folder, such as "
            f"{default_export_dir('model').parent}/<name>."
        )
    if not overwrite:
        raise ExportError(
            f"{out_dir} holds an earlier export; choose another folder, or allow overwriting "
            "(--overwrite, or the dashboard's overwrite box) to replace it."
        )


def new_partial_dir(out_dir: Path, version: str) -> Path:
    """An empty folder beside ``out_dir``, marked as a partial export of this process."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-{os.getpid()}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is an ordinary folder.
    write_marker(tmp, complete=False, version=version)
    return tmp


def _writer_alive(path: Path) -> bool:
    match = re.search(r"\.(?:tmp|old)-(\d+)", path.name)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_leftovers(out_dir: Path) -> None:
    """Clean up after exports to ``out_dir`` that were killed, touching only marked folders.

    A moved-aside earlier export whose target is missing is moved back; partial folders and
    moved-aside exports of dead processes are deleted. Folders of live writers are left alone.
    """
    if not out_dir.parent.is_dir():
        return
    for leftover in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        if _writer_alive(leftover) or _marker(leftover) is None:
            continue
        if not out_dir.exists() and is_export(leftover):
            os.replace(leftover, out_dir)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        if not _writer_alive(leftover) and _marker(leftover) is not None:
            shutil.rmtree(leftover, ignore_errors=True)


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an earlier export is moved aside, then deleted."""
    normalize_modes(tmp)  # every file of the export gets one ordinary mode (no private 0600 weights)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
