"""Streamlit glue shared by every page: the shared model cache, the session's workspace,
prompt sets chosen in the sidebar, progress bars and optional engine modules.

Session keys (all prefixed ``atlas_``):

- ``atlas_model``: ``(spec, device, dtype)`` of the model the sidebar loaded, or absent;
- ``atlas_model_error``: the last load error message, or absent;
- ``atlas_prompts``: ``{"harmful": PromptSet, "harmless": PromptSet}`` chosen in the sidebar;
- ``atlas_workspaces``: ``{model key: Workspace}``, one per model used in this session,
  so switching models and back keeps what was computed.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Callable

import streamlit as st

from refusal_core.models import LoadedModel
from refusal_core.workspace import Workspace, load_model_for_app, model_key

MODEL = "atlas_model"
MODEL_ERROR = "atlas_model_error"
PROMPTS = "atlas_prompts"
WORKSPACES = "atlas_workspaces"


@st.cache_resource(max_entries=2, show_spinner="Loading the model (shared by all sessions)...")
def shared_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """One loaded model per (spec, device, dtype), shared by every session.

    Never mutate it: interventions go through refusal_core context managers, which hold
    the model lock and remove their hooks or restore weights on exit.
    """
    return load_model_for_app(spec, device, dtype)


def loaded_model() -> LoadedModel | None:
    """The model the sidebar loaded for this session, or None (the sidebar shows why)."""
    choice = st.session_state.get(MODEL)
    if choice is None:
        return None
    return shared_model(*choice)


def require_model() -> LoadedModel:
    """The loaded model, or stop the page with a hint."""
    loaded = loaded_model()
    if loaded is None:
        st.info("No model is loaded. Choose one in the sidebar; its error message there says how to fix a failed load.")
        st.stop()
    return loaded


def workspace() -> Workspace:
    """This session's workspace for the current model (created on first use)."""
    choice = st.session_state.get(MODEL) or ("none", "cpu", "float32")
    key = model_key(*choice)
    spaces = st.session_state.setdefault(WORKSPACES, {})
    if key not in spaces:
        spaces[key] = Workspace(key=key)
    return spaces[key]


def require_activations(ws: Workspace) -> None:
    """Stop the page with a hint when no activations have been computed yet."""
    if not ws.has_activations:
        st.info("Compute activations first on the **Data & activations** page.")
        st.stop()


def chosen_prompts() -> dict:
    """The harmful and harmless PromptSets chosen in the sidebar (possibly empty)."""
    return st.session_state.get(PROMPTS, {})


def progress_callback(label: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback drawing an ``st.progress`` bar here."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label} ({done}/{total})")

    return update


def engine(module: str) -> ModuleType | None:
    """Import ``refusal_core.<module>``; when it is missing, say so with st.info and return None."""
    try:
        return importlib.import_module(f"refusal_core.{module}")
    except ImportError as err:
        st.info(f"This feature needs `refusal_core.{module}`, which is not available yet ({err}).")
        return None


def default_direction_names(directions, limit: int = 32) -> list[str]:
    """Directions to preselect: DIM candidates at the last position, else the first ``limit``."""
    records = directions.provenance
    if records and all(r.get("method") == "dim" and "position" in r for r in records):
        last = max(r["position"] for r in records)
        return [n for n, r in zip(directions.names, records) if r["position"] == last][:limit]
    return list(directions.names[:limit])


@st.cache_resource
def organism_build_lock() -> threading.Lock:
    """One organism build at a time across all sessions (they would write the same folder)."""
    return threading.Lock()
