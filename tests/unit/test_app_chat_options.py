"""The sidebar's chat-template options: parsed like the CLI's, a bad one shown as an error
with the app still running, a good one handed to the pages as a ChatFormat."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing import v1 as streamlit_testing

from tests.app_hooks import no_umap_warm_up, use_tiny_models

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def tiny_app(monkeypatch):
    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_sidebar_template_options():
    at = streamlit_testing.AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    at.text_area(key="atlas_chat_options_text").set_value("enable_thinking=false\nreasoning_effort=low").run()
    assert not at.error and not at.exception
    assert at.session_state["atlas_chat_options"] == (("enable_thinking", False), ("reasoning_effort", "low"))
    at.text_area(key="atlas_chat_options_text").set_value("enable_thinking").run()
    assert not at.exception
    assert any("key=value" in error.value for error in at.error)
    assert at.session_state["atlas_chat_options"] == ()
    at.switch_page("app_pages/generate.py").run()  # the pages still run
    assert not at.exception
