"""``reproduce MANIFEST``: rerun the command a manifest records into a temporary folder and
compare the hash of what it writes with the recorded one.

The recorded ``rerun`` argv is run in this process with its ``--out`` (and, for a saved
selection, ``--save-direction``) pointed into a temporary folder under the same file names,
so the rerun cannot touch the original output; the output hash is then computed over the
same relative names as the manifest lists. A manifest that cannot be read or holds no
command raises ``ManifestError`` (exit code 2).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from refusal_core.exports.manifest import ManifestError, folder_files, output_record, read_manifest

__all__ = ["reproduce"]

_REDIRECTED = ("--out", "--save-direction")


@contextlib.contextmanager
def _working_folder(path: str):
    """Run inside ``path`` (the recorded working folder, for relative paths) and come back."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _redirect(argv: list[str], tmp: Path) -> tuple[list[str], dict[str, Path]]:
    """``argv`` with each output flag's path moved into ``tmp`` (same base name)."""
    moved, out = list(argv), {}
    for index, arg in enumerate(moved[:-1]):
        if arg in _REDIRECTED:
            original = Path(moved[index + 1])
            target = tmp / arg.lstrip("-") / original.name
            target.parent.mkdir(parents=True, exist_ok=True)
            moved[index + 1] = str(target)
            out[arg] = target
    return moved, out


def _rerun_output(document: dict, targets: dict[str, Path]) -> dict:
    out = targets["--out"]
    if document.get("output", {}).get("layout", "folder") == "folder":
        return output_record(folder_files(out), out) if out.is_dir() else output_record([], out)
    names = [item["path"] for item in document["output"].get("files", [])]
    found = [path.parent / name for path in targets.values() for name in names if (path.parent / name).is_file()]
    return output_record(found)


def reproduce(manifest_path: str | Path) -> dict:
    """Rerun ``manifest_path``'s command; ``{"match", "recorded", "rerun", "differ"}``."""
    from refusal_core.cli import main

    document = read_manifest(manifest_path)
    recorded = document["output"]
    rerun_argv = list(document["rerun"])
    if str(document.get("kind", "")).startswith("export:") and "--ablate" in rerun_argv[:-1]:
        # An export reads the directions saved in its own folder: wherever the folder is now.
        rerun_argv[rerun_argv.index("--ablate") + 1] = str(Path(manifest_path).resolve().parent / "directions")
    with tempfile.TemporaryDirectory(prefix="refusal-atlas-reproduce-") as folder:
        argv, targets = _redirect(rerun_argv, Path(folder))
        if "--out" not in targets:
            raise ManifestError(f"{manifest_path}: the recorded command has no --out to redirect.")
        cwd = document.get("cwd")
        where = _working_folder(cwd) if isinstance(cwd, str) and Path(cwd).is_dir() else contextlib.nullcontext()
        with where, contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        if code != 0:
            raise ManifestError(
                f"{manifest_path}: rerunning `{' '.join(argv)}` failed (exit code {code}); see the message above."
            )
        rerun = _rerun_output(document, targets)
    old = {item["path"]: item["sha256"] for item in recorded.get("files", [])}
    new = {item["path"]: item["sha256"] for item in rerun["files"]}
    differ = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    return {
        "match": rerun["sha256"] == recorded["sha256"],
        "recorded": recorded["sha256"],
        "rerun": rerun["sha256"],
        "differ": differ,
    }
