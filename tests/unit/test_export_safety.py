"""Export safety: a killed export leaves no broken model, the next one succeeds, and the
default folder lies under cache/exports/."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refusal_core.directions.base import load_direction_set
from refusal_core.interventions.export import ExportError, default_export_dir, export_orthogonalized
from refusal_core.interventions.export_target import MARKER, is_export
from tests.tiny import tiny_model
from tests.unit.test_export import two_directions

ROOT = Path(__file__).resolve().parents[2]

# Run in a child process that kills itself with SIGKILL at one point of an export.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from refusal_core.interventions import export
    from tests.unit.test_export import two_directions
    from tests.tiny import tiny_model

    target, where = sys.argv[1], sys.argv[2]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "writing":  # weights, tokenizer and directions written; the card is next
        export.model_card = die
    else:  # the earlier export moved aside; the new one about to be moved in
        real_replace = os.replace
        def replace(src, dst):
            if os.fspath(dst) == target:
                die()
            real_replace(src, dst)
        os.replace = replace
    export.export_orthogonalized(tiny_model("llama"), two_directions(), target, overwrite=True)
    """
)


def _names(folder: Path) -> tuple[str, ...]:
    return load_direction_set(folder / "directions").names


def test_an_export_killed_mid_write_leaves_no_broken_model_and_the_next_succeeds(tmp_path):
    loaded = tiny_model("llama")
    targets = {where: tmp_path / where / "export" for where in ("writing", "swapping")}
    for target in targets.values():
        export_orthogonalized(loaded, two_directions().select(["som/unit-0"]), target)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen([sys.executable, "-c", _KILLER, str(target), where], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for where, target in targets.items()
    ]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == -9, err.decode()[-2000:]

    writing, swapping = targets["writing"], targets["swapping"]
    # Killed while writing: the earlier export is untouched, a marked partial folder is left.
    assert is_export(writing) and _names(writing) == ("som/unit-0",)
    partial = [p for p in writing.parent.iterdir() if p.name.startswith(".export.tmp-")]
    assert len(partial) == 1 and (partial[0] / MARKER).is_file() and not is_export(partial[0])
    # Killed while swapping: no model at the target at all, the earlier one moved aside.
    assert not swapping.exists()
    assert [p.name.startswith(".export.old-") for p in swapping.parent.iterdir()].count(True) == 1

    # The next export cleans up; without overwrite it finds the earlier export put back.
    with pytest.raises(ExportError, match="--overwrite"):
        export_orthogonalized(loaded, two_directions(), swapping)
    assert _names(swapping) == ("som/unit-0",)
    for target in targets.values():
        export_orthogonalized(loaded, two_directions(), target, overwrite=True)
        assert is_export(target) and _names(target) == two_directions().names
        assert [p.name for p in target.parent.iterdir()] == ["export"]


def test_leftovers_of_a_live_writer_and_unmarked_folders_are_left_alone(tmp_path):
    target = tmp_path / "export"
    live = tmp_path / f".export.tmp-{os.getpid()}-abc"
    unmarked = tmp_path / ".export.tmp-999999999-xyz"
    for folder in (live, unmarked):
        folder.mkdir()
        (folder / "file").write_text("x")
    (live / MARKER).write_text('{"product": "refusal-atlas", "complete": false}')
    export_orthogonalized(tiny_model("llama"), two_directions(), target)
    assert live.is_dir() and unmarked.is_dir()


def test_default_folder_is_under_the_cache(tmp_path):
    loaded = tiny_model("llama")
    out = export_orthogonalized(loaded, two_directions())
    assert out == default_export_dir(loaded.spec)
    assert out.parent == Path(os.environ["REFUSAL_ATLAS_CACHE"]) / "exports"
    assert is_export(out) and out.name == "tiny_llama-orthogonalized"
