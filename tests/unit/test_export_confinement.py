"""Dashboard export folders stay inside the export root (``~`` expanded, ``..`` and other
folders refused), and every file an export writes has the mode an ordinary file gets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from refusal_core.interventions.export import export_orthogonalized
from refusal_core.interventions.export_target import ExportError, confined_export_dir, export_root
from tests.app_hooks import no_umap_warm_up, use_tiny_models
from tests.tiny import tiny_model
from tests.unit.test_export import two_directions


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_relative_names_land_inside_the_root_and_tilde_is_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", "~")
    assert export_root() == home.resolve()
    assert confined_export_dir("~/x") == home.resolve() / "x"  # not a folder named "~" in the working directory
    assert confined_export_dir("runs/first") == home.resolve() / "runs" / "first"
    assert not (Path.cwd() / "~").exists()


@pytest.mark.parametrize("typed", ["../escape", "/etc/refusal-atlas", "~/elsewhere", "inside/../../out", ".", "  "])
def test_paths_leaving_the_root_are_refused_naming_the_root(tmp_path, monkeypatch, typed):
    root = tmp_path / "exports"
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", str(root))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ExportError) as caught:
        confined_export_dir(typed)
    assert str(root) in str(caught.value)


def test_a_symlink_out_of_the_root_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "exports"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", str(root))
    with pytest.raises(ExportError, match="outside the export folder"):
        confined_export_dir("link/model")


def test_the_default_root_is_the_caches_exports_folder(monkeypatch):
    monkeypatch.delenv("REFUSAL_ATLAS_EXPORT_ROOT", raising=False)
    from refusal_core.paths import cache_dir

    assert export_root() == (cache_dir() / "exports").resolve()
    assert confined_export_dir("m") == (cache_dir() / "exports" / "m").resolve()


def test_every_exported_file_has_the_ordinary_mode(tmp_path):
    """directions.* used to be 0600 (private temporary files moved into place) inside a 0755 export."""
    loaded = tiny_model("llama", seed=41)
    out = export_orthogonalized(loaded, two_directions(), tmp_path / "export")
    expected = 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert {"directions.safetensors", "directions.json", "README.md", "config.json"} <= set(modes)
    assert set(modes.values()) == {expected}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()


def test_the_export_page_refuses_a_folder_outside_the_root(monkeypatch, tmp_path):
    from tests.unit import test_app

    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", str(tmp_path / "exports"))
    monkeypatch.chdir(tmp_path)
    at = test_app._with_activations()
    at.switch_page("app_pages/export.py").run()
    at.text_input(key="export_model_dir_folder").set_value("~/somewhere").run()
    at.button(key="export_model_run").click().run()
    assert not at.exception
    assert any("outside the export folder" in e.value and str(tmp_path / "exports") in e.value for e in at.error)
    assert not (tmp_path / "~").exists() and not (tmp_path / "exports").exists()  # no folder named "~", nothing written
    at.text_input(key="export_model_dir_folder").set_value("mine").run()
    at.button(key="export_model_run").click().run()
    assert not at.exception and not at.error
    assert (tmp_path / "exports" / "mine" / "directions.json").is_file()
