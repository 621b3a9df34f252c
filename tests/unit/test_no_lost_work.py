"""Finished work is never thrown away: a failed cache write returns the result with a warning
(engine, CLI, Data page), clearing the cache leaves another session's write in progress
alone, and the CLI refuses an unwritable --out before loading any model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from refusal_core.activations import cache, stream
from refusal_core.activations.extract import extract_activations
from refusal_core.cli import main
from refusal_core.paths import cache_dir
from tests.app_hooks import no_umap_warm_up, use_tiny_models

PROMPTS = ["Write a poem about the sea.", "How do I bake bread?"]


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device", "cache/activations")


def test_a_failed_cache_write_returns_the_activations_with_a_warning(tiny_llama, monkeypatch):
    reference = extract_activations(tiny_llama, PROMPTS, use_cache=False)
    monkeypatch.setattr(stream, "_write_all", _disk_full)  # activations stream into the cache file
    acts = extract_activations(tiny_llama, PROMPTS)
    assert torch.equal(acts.acts, reference.acts) and not acts.from_cache
    assert "No space left on device" in acts.cache_warning and "kept for this session" in acts.cache_warning
    assert not list((cache_dir() / "activations").glob("*")) if (cache_dir() / "activations").exists() else True


def test_the_cli_prints_the_warning_and_exits_0(tiny_llama, tmp_path, monkeypatch, capsys):
    tiny_llama.model.save_pretrained(tmp_path / "model")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.setattr(stream, "_write_all", _disk_full)  # activations stream into the cache file
    assert main(["activations", "--model", str(tmp_path / "model"), "--limit", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: harmful activations" in captured.err and "No space left on device" in captured.err
    assert '"harmful"' in captured.out


def test_the_data_page_shows_the_result_and_a_warning_when_the_cache_is_read_only(monkeypatch):
    from tests.unit import test_app

    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(  # activations stream into the cache file
        stream, "_write_all", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "cache"))
    )
    at = test_app._start()
    at.switch_page("app_pages/data.py").run()
    at.button(key="data_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Permission denied" in w.value for w in at.warning), [w.value for w in at.warning]
    assert test_app._workspace(at).has_activations and "DIM" in test_app._workspace(at).direction_sets


def test_clearing_the_cache_keeps_a_write_in_progress(tiny_llama, monkeypatch):
    """Another session presses "Clear activation cache" while this one is between writing its
    temporary file and moving it into place: the entry still lands, whole."""
    real_replace = os.replace
    cleared = []

    def replace_after_a_clear(src, dst):
        if str(dst).endswith(".safetensors") and not cleared:
            cleared.append(cache.clear_activation_cache())
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace_after_a_clear)
    acts = extract_activations(tiny_llama, PROMPTS)
    assert cleared == [0] and acts.cache_warning is None
    again = extract_activations(tiny_llama, PROMPTS)
    assert again.from_cache and torch.equal(again.acts, acts.acts)
    assert cache.clear_activation_cache() == 1
    assert not extract_activations(tiny_llama, PROMPTS).from_cache


def test_clearing_removes_only_stale_temporary_files(tmp_path):
    folder = cache_dir() / "activations"
    folder.mkdir(parents=True)
    (folder / "done.safetensors").write_bytes(b"x")
    fresh = folder / ".other.safetensors.abc.tmp"
    stale = folder / ".dead.safetensors.def.tmp"
    fresh.write_bytes(b"x"), stale.write_bytes(b"x")
    old = stale.stat().st_mtime - cache.STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    assert cache.clear_activation_cache() == 1
    assert fresh.exists() and not stale.exists() and not (folder / "done.safetensors").exists()


def test_an_unwritable_out_exits_2_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    """A read-only folder: mode 0555; as root (who may write anywhere) the folder refuses new
    files as a read-only mount would. No model may be loaded, and nothing is written there."""
    import importlib

    from refusal_core.model import loading

    preflight = importlib.import_module("refusal_core.cli.preflight")

    folder = tmp_path / "read-only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(13, "Permission denied", str(folder))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)
    loads = []
    monkeypatch.setattr(
        loading, "load_model", lambda *args, **kwargs: loads.append(args) or pytest.fail("model loaded")
    )
    code = main(["directions", "dim", "--model", str(tmp_path / "no-model"), "--out", str(folder / "dim")])
    err = capsys.readouterr().err
    assert code == 2 and loads == [], err
    assert f"--out '{folder / 'dim'}' cannot be written: Permission denied" in err and "nothing was computed yet" in err
    assert list(folder.iterdir()) == []
