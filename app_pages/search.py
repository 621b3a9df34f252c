"""Search: which k directions of a pool, ablated together, best stop refusal (Piras et al.)?
An Optuna study proposes subsets; each trial is scored on harmful validation prompts. By
default a broken reply counts as a failure and harmless KL is penalized; the trials are
drawn as refusal vs KL (colour: broken share) with the Pareto front, and a chosen trial's
replies are shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from app_pages._search_front import show_front
from app_pages._settings import settings_widgets
from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.model.families import ModelLoadError
from refusal_core.prompts.sets import PromptSetError
from refusal_core.prompts.validation import ValidationSettings, validation_prompts
from refusal_core.selection.search import SearchSettings, best_direction_set, run_search

MAX_DEFAULT = 32

st.title("Search")
loaded = _state.require_model()
ws = _state.workspace()


def pick_pool():
    """The pool: chosen directions of chosen sets, names prefixed ``<set>:``."""
    options = list(ws.direction_sets)
    if not options:
        st.info("No direction sets yet: compute DIM, train a SOM or cluster per-prompt directions first.")
        st.stop()
    preferred = [name for name in options if name.startswith(("SOM", "Clusters"))] or options[:1]
    chosen = st.multiselect("Pool: direction sets", options, default=preferred, key="search_sets")
    parts, prefixes = [], []
    for set_name in chosen:
        directions = ws.direction_sets[set_name]
        if len(directions) > MAX_DEFAULT:
            names = st.multiselect(
                f"Directions from {set_name}",
                list(directions.names),
                default=_state.default_direction_names(directions, MAX_DEFAULT),
                key=f"search_pick_{set_name}",
            )
            if not names:
                continue
            directions = directions.select(names)
        parts.append(directions)
        prefixes.append(f"{set_name}:")
    if not parts:
        return None
    return DirectionSet.concat(parts, prefixes=prefixes), " + ".join(p.rstrip(":") for p in prefixes)


# The search's fields the page does not offer: the judge is the sidebar's, the study's name,
# storage and bookkeeping keep their defaults.
NOT_ON_PAGE = ("judge", "stored_replies", "storage", "study_name", "study_label", "batch_size", "heartbeat_seconds")


def settings_form(pool_size: int, pool_label: str):
    """The search's settings from controls generated from ``SearchSettings`` (and the validation
    prompts' count); None while no verdict counts as success."""
    cols = st.columns(4)
    values = settings_widgets(
        SearchSettings,
        "search",
        skip=NOT_ON_PAGE,
        defaults={"k": min(SearchSettings.k, pool_size)},
        columns=cols,
        bounds={"k": (1, max(1, pool_size))},
        disabled={
            "max_new_tokens": lambda chosen: chosen["objective"] == "score",
            "success": lambda chosen: chosen["objective"] != "verdicts",
        },
    )
    n_val = settings_widgets(ValidationSettings, "search", columns=cols[len(values) % len(cols) :])["n_val"]
    if not values["success"]:
        st.error(
            "Choose at least one verdict that counts as success (complied is the usual choice); the search is off until then."
        )
        return None, n_val
    return SearchSettings(**values, judge=_state.judge_name(), study_label=pool_label), n_val


def trial_figure(trials) -> go.Figure:
    rows = [t for t in trials if t["value"] is not None]
    numbers = [t["number"] for t in rows]
    values = np.array([t["value"] for t in rows], dtype=float)
    figure = go.Figure()
    hover = [", ".join(t["names"]) for t in rows]
    figure.add_trace(
        go.Scatter(
            x=numbers,
            y=values,
            mode="markers",
            name="trial value",
            text=hover,
            hovertemplate="trial %{x}: %{y:.3f}<br>%{text}<extra></extra>",
        )
    )
    if len(values):
        figure.add_trace(
            go.Scatter(
                x=numbers, y=np.minimum.accumulate(values), mode="lines", name="best so far", line=dict(shape="hv")
            )
        )
    figure.update_layout(
        xaxis_title="trial", yaxis_title="objective (lower = less refusal)", height=360, margin=dict(t=20)
    )
    return figure


def live_figure(best: list[float]) -> go.Figure:
    figure = go.Figure(
        go.Scatter(
            x=list(range(1, len(best) + 1)), y=best, mode="lines+markers", name="best so far", line=dict(shape="hv")
        )
    )
    figure.update_layout(xaxis_title="trials this run", yaxis_title="best value so far", height=300, margin=dict(t=20))
    return figure


def run(pool, settings, n_val: int) -> None:
    try:
        harmful_val, harmless_val = validation_prompts(n_val)
    except PromptSetError as err:
        st.error(str(err))
        return
    slot = st.empty()
    bar = slot.progress(0.0, text="Starting the study")
    chart = st.empty()
    best_so_far: list[float] = []

    def update(done: int, total: int, best: float | None = None, **info: object) -> None:
        bar.progress(
            min(1.0, done / max(total, 1)),
            text=f"Trial {done}/{total}, best {best if best is None else round(best, 4)}",
        )
        if best is not None:
            best_so_far.append(best)
            _charts.chart(live_figure(best_so_far), container=chart, width="stretch")

    try:
        judge = _state.judge_panel() if settings.objective == "verdicts" else None
        result = run_search(loaded, pool, harmful_val, harmless_val, settings, judge=judge, progress=update)
    except (ValueError, DirectionError, ImportError, ModelLoadError, OSError) as err:
        st.error(f"Search failed: {err}")
        return
    chart.empty()
    slot.empty()
    ws.search = _state.SearchState(result=result, pool=pool)
    if result.ran == 0:
        st.success(f"Study {result.study_name} already held {len(result.trials)} trials; shown without recomputing.")


def show_result() -> None:
    if ws.search is None:
        return
    result, pool = ws.search.result, ws.search.pool
    st.subheader(f"Study {result.study_name}")
    scored = [t for t in result.trials if t["value"] is not None]
    skipped = sum(t["state"] == "PRUNED" for t in result.trials)
    reused = sum(t["reused_from"] is not None for t in scored)
    other = len(result.trials) - len(scored) - skipped
    parts = [f"{len(scored)} scored trials (all in the chart, the best {min(len(scored), 10)} in the table)"]
    if reused:
        parts.append(f"{reused} of them reused the score of an earlier trial with the same directions")
    if skipped:
        parts.append(f"{skipped} pruned")
    if other:
        parts.append(f"{other} failed or still running")
    started = f"; started {result.started.replace('T', ' ')}" if result.started else ""
    st.caption(
        "; ".join(parts) + f". {result.ran} trials run now in {result.seconds:.1f} s{started}. "
        f"Stored in {result.storage}; running the same search again resumes it."
    )
    _charts.chart(trial_figure(result.trials), width="stretch", key="search_trials_chart")
    if result.best_names is None:
        st.info("No trial completed yet; run more trials.")
        return
    show_front(result)
    st.markdown(f"**Best value {result.best_value:.4g}** with " + ", ".join(f"`{n}`" for n in result.best_names))
    table = (
        pd.DataFrame([{**t, "names": ", ".join(t["names"])} for t in result.trials if t["value"] is not None])
        .sort_values("value")
        .head(10)
    )
    st.dataframe(table, hide_index=True, width="stretch")
    name = st.text_input(
        "Name for the adopted set", value=f"Search best k={len(result.best_names)}", key="search_adopt_name"
    )
    if st.button("Adopt the best subset as a direction set", key="search_adopt"):
        try:
            ws.add_set(name.strip() or "Search best", best_direction_set(result, pool))
        except (ValueError, DirectionError) as err:
            st.error(str(err))
        else:
            st.success(f"Added '{name}' to this session's direction sets.")


picked = pick_pool()
if picked is None:
    st.info("Choose at least one direction for the pool.")
    st.stop()
pool, pool_label = picked
st.caption(f"Pool of {len(pool)} directions.")
settings, n_val = settings_form(len(pool), pool_label)
if st.button("Run search", type="primary", key="search_run", disabled=settings is None):
    run(pool, settings, n_val)
show_result()
