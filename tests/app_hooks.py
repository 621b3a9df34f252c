"""Test stand-ins for the dashboard, applied with a monkeypatch (in-process AppTest) or by
``tests/patched_app.py`` (a ``streamlit run`` server in its own process).

- ``use_tiny_models``: the bundled specs load the tiny random Llama, and the organism counts
  as built, so the app runs headless in seconds; other specs still load for real, so load
  failures can be tested too.
- ``no_umap_warm_up``: the app's background UMAP warm-up (numba compilation) is not started.
"""

from __future__ import annotations

from typing import Protocol

from refusal_core.model.loading import load_model
from refusal_core.model.tiny import TINY_PREFIX

TINY_SPEC = f"{TINY_PREFIX}llama"


class Patcher(Protocol):
    def setattr(self, target: object, name: str, value: object) -> None: ...


def use_tiny_models(patch: Patcher) -> None:
    from app_pages import _state
    from refusal_core.model import loading

    real = _state.load_model_for_app

    def load_for_app(spec: str, device: str = "cpu", dtype: str = "float32"):
        return load_model(TINY_SPEC) if spec.startswith("bundled:") else real(spec, device, dtype)

    patch.setattr(_state, "load_model_for_app", load_for_app)
    patch.setattr(loading, "organism_built", lambda: True)


def no_umap_warm_up(patch: Patcher) -> None:
    from app_pages import _state

    patch.setattr(_state, "umap_warm_up", lambda: None)


class Permanent:
    """A Patcher for a process of its own: plain ``setattr``, never undone."""

    def setattr(self, target: object, name: str, value: object) -> None:
        setattr(target, name, value)
