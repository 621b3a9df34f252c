"""Streamlit glue shared by every page: the shared model cache, the session's typed
workspace, prompt sets chosen in the sidebar and progress bars.

Session keys (all prefixed ``atlas_``):

- ``atlas_model``: ``(spec, device, dtype)`` of the model the sidebar loaded, or absent;
- ``atlas_model_error``: the last load error message, or absent;
- ``atlas_prompts``: ``{"harmful": PromptSet, "harmless": PromptSet}`` chosen in the sidebar;
- ``atlas_workspaces``: ``{model key: Workspace}``, one per model used in this session,
  so switching models and back keeps what was computed;
- ``atlas_default_<widget key>``: the default a widget was last given by ``follow_default``;
- ``atlas_kept_widgets``: values of the Generate page's widgets, kept while other pages are
  shown (see ``restore_widgets``);
- ``atlas_judge``: the judge chosen in the sidebar (``refusal_core.damage.JUDGE_CHOICES``);
- ``atlas_judge_panels``: ``{judge name: judge}`` built in this session (each remembers
  its broken thresholds per model, read from disk or calibrated once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import streamlit as st
import torch

from refusal_core import damage
from refusal_core.activations.extract import Activations
from refusal_core.activations.separation import LayerSeparation
from refusal_core.categories.fit import CategoryFit
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.clustering import ClusterResult
from refusal_core.directions.som import SomResult
from refusal_core.generation import Completion
from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import LoadedModel, load_model_for_app, model_key
from refusal_core.progress import Progress, ProgressClock, stage_text
from refusal_core.projection import Projection
from refusal_core.prompts.chat import ChatFormat
from refusal_core.prompts.sets import PromptSet
from refusal_core.selection.optimize import OptimizedDirection
from refusal_core.selection.policy import CLOSEST_DIM, SELECTED_DIM
from refusal_core.selection.result import SelectionResult
from refusal_core.selection.search import SearchResult
from refusal_core.sinks import MassiveActivations

SELECTED_SETS = (SELECTED_DIM, CLOSEST_DIM)
# Widget keys of each page whose values survive a visit to another page (buttons cannot be
# assigned through st.session_state, so they are left out).
KEPT_WIDGETS = {"generate": "generate_"}
NOT_ASSIGNABLE = {"generate_run"}
KEPT = "atlas_kept_widgets"
MODEL = "atlas_model"
MODEL_ERROR = "atlas_model_error"
PROMPTS = "atlas_prompts"
WORKSPACES = "atlas_workspaces"
JUDGE = "atlas_judge"
JUDGE_PANELS = "atlas_judge_panels"
CHAT_OPTIONS = "atlas_chat_options"

# What the per-session memo holds: maps, per-layer separations, massive activations.
Memo = Projection | LayerSeparation | MassiveActivations
M = TypeVar("M", Projection, LayerSeparation, MassiveActivations)


@dataclass(frozen=True)
class SomState:
    """The last SOM trained on the Manifold page, where, and the set it added."""

    result: SomResult
    layer: int
    position: int
    set_name: str


@dataclass(frozen=True)
class PerPromptState:
    """The last per-prompt direction set computed on the Manifold page, and where."""

    set_name: str
    layer: int
    position: int


@dataclass(frozen=True)
class ClusterState:
    """The last clustering of per-prompt directions; ``prompt_index`` maps its rows to harmful prompts."""

    result: ClusterResult
    set_name: str
    layer: int
    position: int
    prompt_index: tuple[int, ...]


@dataclass(frozen=True)
class SearchState:
    """The last subset search and the pool it searched."""

    result: SearchResult
    pool: DirectionSet


@dataclass
class Workspace:
    """One session's computed state for one model.

    ``harmful``/``harmless`` are the PromptSets the activations were computed from;
    ``direction_sets`` maps a display name to a DirectionSet; the other fields hold the
    latest result of each page, or None; ``conditionals`` are the conditional interventions
    the Categories page made (refusal off for chosen categories) for the Generate page. It lives in the session (never in a shared
    cache) and holds nothing that other sessions use.
    """

    key: str
    harmful: PromptSet | None = None
    harmless: PromptSet | None = None
    harmful_acts: Activations | None = None
    harmless_acts: Activations | None = None
    direction_sets: dict[str, DirectionSet] = field(default_factory=dict)
    som: SomState | None = None
    per_prompt: PerPromptState | None = None
    clusters: ClusterState | None = None
    selection: SelectionResult | None = None
    search: SearchState | None = None
    optimized: OptimizedDirection | None = None
    categories: CategoryFit | None = None
    category_report: dict | None = None
    conditionals: dict[str, Intervention] = field(default_factory=dict)
    generations: OrderedDict[str, dict[str, list[Completion]]] = field(default_factory=OrderedDict)
    judged: OrderedDict[str, dict[str, damage.ColumnDamage]] = field(default_factory=OrderedDict)
    base_logprobs: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict)
    memo: OrderedDict[str, Memo] = field(default_factory=OrderedDict)
    max_memo: int = 6
    exports: list[str] = field(default_factory=list)  # what this session exported: "zip", "pt", model folders
    # Results of the views of an intervention (manifold shifts, traces, comparisons), by content key.
    views: OrderedDict[str, object] = field(default_factory=OrderedDict)

    @property
    def has_activations(self) -> bool:
        return self.harmful_acts is not None and self.harmless_acts is not None

    def set_activations(
        self, harmful: PromptSet, harmless: PromptSet, harmful_acts: Activations, harmless_acts: Activations
    ) -> None:
        """New activations: results derived from the old ones are dropped, direction sets kept."""
        self.harmful, self.harmless = harmful, harmless
        self.harmful_acts, self.harmless_acts = harmful_acts, harmless_acts
        self.som = self.per_prompt = self.clusters = None
        self.memo.clear()

    def add_set(self, name: str, directions: DirectionSet) -> None:
        """Store (or replace) a named direction set."""
        self.direction_sets[name] = directions

    def free_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``name (3)``, ... when a set of that name exists already."""
        candidate, number = name, 1
        while candidate in self.direction_sets:
            number += 1
            candidate = f"{name} ({number})"
        return candidate

    @property
    def has_ablated(self) -> bool:
        """Whether a generation of this session had a column with directions ablated."""
        return any(name.startswith("ablate") for result in self.generations.values() for name in result)

    def combined(self, names: Sequence[str]) -> DirectionSet:
        """The chosen sets as one set, direction names prefixed with ``<set>:``."""
        chosen = [self.direction_sets[name] for name in names]
        return DirectionSet.concat(chosen, prefixes=[f"{name}:" for name in names])

    def remember(self, key: str, compute: Callable[[], M]) -> M:
        """A small per-session memo (least recently used out), for projections and the like."""
        if key in self.memo:
            self.memo.move_to_end(key)
            return self.memo[key]  # type: ignore[return-value]
        value = compute()
        self.memo[key] = value
        while len(self.memo) > self.max_memo:
            self.memo.popitem(last=False)
        return value

    def store_generation(self, key: str, result: dict[str, list[Completion]], max_entries: int = 8) -> None:
        _store(self.generations, key, result, max_entries)

    def store_judged(self, key: str, columns: dict[str, damage.ColumnDamage], max_entries: int = 16) -> None:
        """Verdicts, shares and KL of a generation under one judge (key: generation key and judge name)."""
        _store(self.judged, key, columns, max_entries)

    def store_view(self, key: str, value: object, max_entries: int = 8) -> None:
        """A manifold shift, a trace or a comparison (key: what it was computed from)."""
        _store(self.views, key, value, max_entries)

    def unmodified_logprobs(self, key: str, compute: Callable[[], torch.Tensor], max_entries: int = 2) -> torch.Tensor:
        """The unmodified first-token log-probs of a harmless prompt list, computed once per list."""
        if key not in self.base_logprobs:
            _store(self.base_logprobs, key, compute(), max_entries)
        return self.base_logprobs[key]


def _store(entries: OrderedDict, key: str, value, max_entries: int) -> None:
    """Insert as the most recent entry and drop the oldest beyond ``max_entries``."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > max_entries:
        entries.popitem(last=False)


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


def chosen_prompts() -> dict[str, PromptSet]:
    """The harmful and harmless PromptSets chosen in the sidebar (possibly empty)."""
    return st.session_state.get(PROMPTS, {})


def judge_name() -> str:
    """The judge chosen in the sidebar (the default judge until the sidebar has run)."""
    return st.session_state.get(JUDGE, damage.DEFAULT_JUDGE)


def judge_panel():
    """This session's judge of the sidebar's choice (``damage.judge_by_name``), built once."""
    name = judge_name()
    panels = st.session_state.setdefault(JUDGE_PANELS, {})
    if name not in panels:
        panels[name] = damage.judge_by_name(name)
    return panels[name]


def chat_format() -> ChatFormat:
    """The chat format of the sidebar's template options (``enable_thinking=false`` ...)."""
    return ChatFormat(template_options=st.session_state.get(CHAT_OPTIONS, ()))


def progress_callback(label: str) -> Progress:
    """A ``Progress`` drawing an ``st.progress`` bar here: the stage, the share done and the time
    left; the bar is removed once ``done`` reaches ``total``, so finished work leaves no bar behind."""
    slot = st.empty()
    bar = slot.progress(0.0, text=label)
    clock = ProgressClock()

    def update(done: int, total: int, **info: object) -> None:
        if done >= total:
            slot.empty()
            return
        stage = stage_text(info) or f"{done}/{total}"
        bar.progress(min(1.0, done / max(total, 1)), text=clock.line(label, done, total, stage))

    return update


def restore_widgets(url_path: str) -> None:
    """Give the widgets of page ``url_path`` back the values they had when the page was left.

    Streamlit drops a page's widget values as soon as another page is shown, so leaving a
    page reset its ticks and choices. ``remember_widgets`` copies them aside after every
    run; this puts them back, before the page draws its widgets, for the keys it has not
    drawn since.
    """
    prefixes = KEPT_WIDGETS.get(url_path)
    if not prefixes:
        return
    for key, value in st.session_state.get(KEPT, {}).items():
        if key.startswith(prefixes) and key not in st.session_state:
            st.session_state[key] = value


def remember_widgets() -> None:
    """Copy the current values of every kept page's widgets aside (see ``restore_widgets``)."""
    kept = st.session_state.setdefault(KEPT, {})
    prefixes = tuple(p for value in KEPT_WIDGETS.values() for p in ((value,) if isinstance(value, str) else value))
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(prefixes) and key not in NOT_ASSIGNABLE:
            kept[key] = st.session_state[key]


def keep_valid(key: str, options) -> None:
    """Drop the choices of multiselect ``key`` that are no longer among its ``options``."""
    if isinstance(st.session_state.get(key), list):
        st.session_state[key] = [value for value in st.session_state[key] if value in options]


def follow_default(key: str, default, options) -> None:
    """Set widget ``key`` to ``default`` whenever the default changes (a Selected DIM appeared,
    say) or its value is no longer one of ``options`` (for a multiselect: holds one that is not);
    leave the user's own choice alone otherwise."""
    marker = f"atlas_default_{key}"
    value = st.session_state.get(key)
    valid = all(v in options for v in value) if isinstance(value, list) else value in options
    if st.session_state.get(marker) != default or not valid:
        st.session_state[marker] = default
        st.session_state[key] = default


def preferred_direction(ws: Workspace) -> tuple[str, str] | None:
    """``(set, name)`` of the direction chosen on the Directions page: Selected DIM, else Closest DIM."""
    for set_name in SELECTED_SETS:
        directions = ws.direction_sets.get(set_name)
        if directions is not None and len(directions):
            return set_name, directions.names[0]
    return None


def default_direction_names(directions: DirectionSet, limit: int = 32) -> list[str]:
    """Directions to preselect: DIM candidates at the last position (at most ``limit``, evenly
    spaced over the layers), else the first ``limit``."""
    records = directions.provenance
    if records and all(r.get("method") == "dim" and "position" in r for r in records):
        last = max(r["position"] for r in records)
        names = [n for n, r in zip(directions.names, records) if r["position"] == last]
        if len(names) > limit:
            names = [names[round(i * (len(names) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else names[:1]
        return names
    return list(directions.names[:limit])


@st.cache_resource
def organism_build_lock() -> threading.Lock:
    """One organism build at a time across all sessions (they would write the same folder)."""
    return threading.Lock()


@st.cache_resource(show_spinner=False)
def umap_warm_up() -> threading.Thread | None:
    """Load (or, without set-up's on-disk cache, compile) UMAP's numba kernels once per server,
    in a background thread started with the app, so that the first UMAP map does not stall."""
    from refusal_core.projection import warm_up_umap

    def run() -> None:
        try:
            warm_up_umap()
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first map compiles
            pass

    thread = threading.Thread(target=run, name="umap-warm-up", daemon=True)
    thread.start()
    return thread
