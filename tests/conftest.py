"""Shared fixtures: tiny random models (fast) and an isolated cache directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_model


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch, request):
    """Each fast test gets its own cache root; slow tests share the real one (built models)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("REFUSAL_ATLAS_CACHE", str(tmp_path / "cache"))
        # The app's background UMAP warm-up would compile numba kernels during the fast tests.
        monkeypatch.setenv("REFUSAL_ATLAS_UMAP_WARM_UP", "0")
    yield


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the tiny model gains nothing from more, and on a shared
    machine competing threads made these tests several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium (never a downloaded browser); skip without it."""
    from tests.app_server import CHROMIUM, chromium_launch_options

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return {**browser_type_launch_args, **chromium_launch_options()}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    """A desktop-sized window, so the wide layout and its charts are drawn as a user sees them."""
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


@pytest.fixture
def navigation_only(monkeypatch):
    """Make AppTest run app.py on every rerun, as a real server does.

    AppTest resets ``PagesManager.uses_pages_directory`` to None before each run, and the
    ``pages/`` folder beside app.py then sets it True, so a rerun on a page executes that
    page file alone through Streamlit's legacy multipage path, without app.py's sidebar.
    A server sets the flag False at the first ``st.navigation`` call and keeps it.
    """
    from streamlit.runtime import pages_manager
    from streamlit.testing.v1 import app_test

    class NavigationPagesManager(pages_manager.PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pages_manager.PagesManager.uses_pages_directory = False

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)
