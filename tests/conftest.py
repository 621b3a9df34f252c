"""Shared fixtures: tiny random models (fast) and an isolated cache directory per test."""

from __future__ import annotations

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
