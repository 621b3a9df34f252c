"""Input limits (refusal_core/prompts/limits.py): file size, prompts per set, characters and
tokens per prompt, each refused with a message naming the limit and its variable before any
model work; parsed uploads cached by content in a bounded cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refusal_core.activations.extract import extract_activations
from refusal_core.cli import main
from refusal_core.errors import SettingsError
from refusal_core.prompts import uploads
from refusal_core.prompts.limits import DEFAULTS, InputLimitError, limits
from refusal_core.prompts.loaders import load_prompt_file
from tests.app_hooks import no_umap_warm_up, use_tiny_models

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_leave_room_for_ordinary_sets():
    current = limits()
    assert current.max_file_mb == 20 and current.max_prompts == 20_000
    assert current.max_prompt_chars == 16_000 and current.max_prompt_tokens == 4_096


def test_a_five_megabyte_line_exits_2_in_seconds_naming_the_limit_before_any_model_loads(tmp_path):
    """As a new user would: one 5 MB line, the real CLI in a fresh process, a model that does
    not exist (so a model load would fail with another message)."""
    path = tmp_path / "one-line.txt"
    path.write_text("spam " * (1024 * 1024))
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "refusal_core",
            "activations",
            "--model",
            str(tmp_path / "no-model"),
            "--harmful",
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        "one-line.txt" in done.stderr
        and "16000 characters" in done.stderr
        and "REFUSAL_ATLAS_MAX_PROMPT_CHARS" in done.stderr
    )
    assert "no-model" not in done.stderr
    assert elapsed < 60


def test_each_limit_is_settable_and_names_its_variable(tmp_path, monkeypatch):
    path = tmp_path / "three.txt"
    path.write_text("first prompt\nsecond prompt\nthird prompt\n")
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_PROMPTS", "2")
    with pytest.raises(InputLimitError, match="3 prompts, over the limit of 2.*REFUSAL_ATLAS_MAX_PROMPTS"):
        load_prompt_file(path)
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_PROMPTS", "3")
    assert len(load_prompt_file(path)) == 3
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_FILE_MB", "0.00001")  # about 10 bytes
    with pytest.raises(InputLimitError, match="three.txt.*REFUSAL_ATLAS_MAX_FILE_MB"):
        load_prompt_file(path)
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_FILE_MB", "lots")
    with pytest.raises(SettingsError, match="REFUSAL_ATLAS_MAX_FILE_MB='lots'"):
        load_prompt_file(path)


def test_the_file_size_is_checked_before_the_file_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("x\n" * 100)
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_FILE_MB", "0.0001")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read before the size check"))
    with pytest.raises(InputLimitError):
        load_prompt_file(path)


def test_token_limit_is_checked_before_the_forward_pass(tiny_llama, monkeypatch):
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_PROMPT_TOKENS", "12")
    calls = []
    handle = tiny_llama.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(InputLimitError, match="over the limit of 12 tokens.*REFUSAL_ATLAS_MAX_PROMPT_TOKENS"):
            extract_activations(
                tiny_llama, ["a prompt long enough to pass twelve tokens once the template is added"], use_cache=False
            )
    finally:
        handle.remove()
    assert calls == []  # the model never ran


def test_an_unreadable_prompt_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / "locked.txt"
    path.write_text("a prompt\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # as a file without read permission (tests may run as root)
    assert main(["activations", "--model", str(tmp_path / "none"), "--harmful", str(path)]) == 2
    err = capsys.readouterr().err
    assert "locked.txt" in err and "Permission denied" in err and "Check its permissions" in err


def test_uploads_are_checked_for_size_and_cached_by_content_with_a_bound(monkeypatch):
    uploads.clear_upload_cache()
    first = uploads.parse_prompt_upload("a.txt", b"one\ntwo\n")
    assert uploads.parse_prompt_upload("a.txt", b"one\ntwo\n") is first  # same content: parsed once
    assert uploads.parse_prompt_upload("a.txt", b"one\nthree\n") is not first
    for index in range(uploads.MAX_CACHED + 5):
        uploads.parse_prompt_upload(f"f{index}.txt", f"prompt {index}\n".encode())
    assert uploads.cached_count() == uploads.MAX_CACHED
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_FILE_MB", "0.000001")
    with pytest.raises(InputLimitError, match="huge.txt"):
        uploads.parse_prompt_upload("huge.txt", b"x" * 100)
    uploads.clear_upload_cache()


def test_the_upload_widget_limit_matches_the_engine_default():
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {int(DEFAULTS['max_file_mb'])}" in config


def test_an_oversized_upload_in_the_sidebar_shows_st_error(monkeypatch):
    from tests.unit import test_app

    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REFUSAL_ATLAS_MAX_PROMPT_CHARS", "1000")
    at = test_app._start()
    at.radio(key="atlas_harmful_source").set_value("Upload").run()
    at.file_uploader(key="atlas_harmful_file").set_value(("long.txt", ("word " * 400).encode(), "text/plain")).run()
    assert not at.exception
    assert any("long.txt" in e.value and "REFUSAL_ATLAS_MAX_PROMPT_CHARS" in e.value for e in at.error)
    assert "harmful" not in at.session_state["atlas_prompts"]
