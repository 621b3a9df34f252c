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
    yield


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """The tiny random Llama saved as a local model folder, as a user's model would be."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    loaded = tiny_model("llama")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pool():
    """Five random width-64 directions, a search pool for the tiny models."""
    from refusal_core.directions.base import DirectionSet

    generator = torch.Generator().manual_seed(0)
    return DirectionSet(
        vectors=torch.randn(5, 64, generator=generator),
        names=tuple(f"random{i}" for i in range(5)),
        provenance=tuple(
            {"model": "tiny:llama", "layer": 1, "position": -1, "method": "random", "params": {"i": i}}
            for i in range(5)
        ),
    )


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
