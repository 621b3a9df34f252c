"""Data & activations: compute residual activations of the chosen prompt sets, see how
well each layer separates harmful from harmless prompts, and build the DIM candidates."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app_pages import _charts, _state
from refusal_core.activations.extract import default_positions, extract_activations
from refusal_core.activations.separation import layer_separation
from refusal_core.directions import dim
from refusal_core.directions.base import DirectionError
from refusal_core.directions.registry import FitInput
from refusal_core.errors import UserError
from refusal_core.prompts.chat import TemplateError
from refusal_core.selection.policy import DIM_SET

REPORT = "data_compute_report"

st.title("Data & activations")
loaded = _state.require_model()
ws = _state.workspace()
prompts = _state.chosen_prompts()


def describe_sets() -> None:
    columns = st.columns(2)
    for column, kind in zip(columns, ("harmful", "harmless")):
        with column:
            chosen = prompts.get(kind)
            if chosen is None:
                st.warning(f"No {kind} prompt set; choose one in the sidebar.")
                continue
            st.subheader(f"{kind.capitalize()}: {len(chosen)} prompts")
            counts = {str(k or "uncategorised"): v for k, v in chosen.category_counts().items()}
            st.dataframe(
                pd.DataFrame({"category": list(counts), "prompts": list(counts.values())}), hide_index=True, height=180
            )


def compute_activations() -> None:
    """Both sets at every post-instruction position, then the DIM candidates.

    Keeps a report of what came from the cache and what was computed, and how long each
    took, for ``show_report``.
    """
    try:
        positions = default_positions(loaded.tokenizer)
    except TemplateError as err:
        st.error(f"{err}")
        return
    results, started = {}, time.perf_counter()
    for kind in ("harmful", "harmless"):
        update = _state.progress_callback(f"Activations of the {kind} prompts")
        try:
            results[kind] = extract_activations(loaded, prompts[kind].instructions, positions, progress=update)
        except UserError as err:
            st.error(f"Could not compute {kind} activations: {err}")
            return
        if results[kind].cache_warning:
            st.warning(f"{kind.capitalize()} activations: {results[kind].cache_warning}")
    seconds = time.perf_counter() - started
    cached = all(result.from_cache for result in results.values())
    same = ws.has_activations and (ws.harmful_acts.key, ws.harmless_acts.key) == (
        results["harmful"].key,
        results["harmless"].key,
    )
    if not same:  # unchanged activations keep what this session derived from them
        ws.set_activations(prompts["harmful"], prompts["harmless"], results["harmful"], results["harmless"])
    started = time.perf_counter()
    try:
        data = FitInput(loaded, prompts["harmful"], prompts["harmless"], results["harmful"], results["harmless"])
        ws.add_set(DIM_SET, dim.fit(data, dim.DimSettings()))
    except DirectionError as err:
        st.error(f"Activations are ready, but the DIM directions failed: {err}")
    how = (
        "loaded from the activation cache (same model, prompts and positions as before; the model did not run)"
        if cached
        else "computed by the model and saved to the activation cache (the next time they load from it)"
    )
    st.session_state[REPORT] = [
        f"Activations: {how}, {seconds:.1f} s.",
        f"DIM candidates: computed from them, {time.perf_counter() - started:.1f} s.",
    ]


def show_report() -> None:
    """What the last compute took from the cache and what it computed, with the separation below."""
    report = st.session_state.get(REPORT)
    if report and ws.has_activations:
        st.success("  \n".join(report))


def stale() -> bool:
    """Whether the sidebar's sets differ from those the activations were computed on."""
    return ws.has_activations and (ws.harmful != prompts.get("harmful") or ws.harmless != prompts.get("harmless"))


def separation_figure(separation) -> go.Figure:
    figure = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            "DIM norm",
            f"Linear-probe accuracy ({separation.folds}-fold CV)"
            if separation.folds
            else "Linear-probe accuracy (off)",
            "Silhouette (harmful vs harmless)",
        ),
    )
    layers = list(separation.layers)
    for row, values in enumerate((separation.dim_norm, separation.probe_accuracy, separation.silhouette), start=1):
        figure.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", showlegend=False), row=row, col=1)
    figure.update_xaxes(title_text="layer (block input)", row=3, col=1)
    figure.update_layout(height=620, margin=dict(t=40, b=40))
    return figure


@st.cache_resource
def separation_store() -> tuple[OrderedDict, threading.Lock]:
    """Per-layer separations shared by every session, keyed by the activations' content keys
    (the results are frozen and never changed, so sharing them is safe)."""
    return OrderedDict(), threading.Lock()


def separation_for(position: int, probe: bool):
    """The separation at ``position`` and how it was obtained: ``(separation, how)``."""
    key = (ws.harmful_acts.key, ws.harmless_acts.key, position, probe)
    store, lock = separation_store()
    with lock:
        found = store.get(key)
    if found is not None:
        return found, "kept from an earlier run on the same activations"
    started = time.perf_counter()
    separation = layer_separation(
        ws.harmful_acts,
        ws.harmless_acts,
        position,
        probe=probe,
        progress=_state.progress_callback("Separation per layer"),
    )
    with lock:
        store[key] = separation
        while len(store) > 32:
            store.popitem(last=False)
    what = "the cross-validated probe is the slow part" if probe else "no probe"
    return separation, f"computed now, {time.perf_counter() - started:.1f} s ({what})"


def show_separation() -> None:
    st.subheader("Which layer separates harmful from harmless?")
    positions = list(ws.harmful_acts.positions)
    cols = st.columns(2)
    position = cols[0].selectbox(
        "Position (offset from the end of the prompt)", positions, index=len(positions) - 1, key="data_position"
    )
    probe = cols[1].checkbox("Linear-probe accuracy (cross-validated; the slow part)", value=True, key="data_probe")
    separation, how = separation_for(position, probe)
    _charts.chart(separation_figure(separation), width="stretch")
    best = int(separation.layers[int(separation.silhouette.argmax())])
    st.caption(
        f"Per-layer separation: {how}. Highest silhouette at layer {best}. Probe and silhouette near their plateau "
        "mark the layers where refusal is decided."
    )


def show_dim() -> None:
    candidates = ws.direction_sets.get(DIM_SET)
    if candidates is None:
        return
    st.subheader(f"DIM candidates: {len(candidates)} directions")
    table = pd.DataFrame(
        {
            "name": candidates.names,
            "position": [p["position"] for p in candidates.provenance],
            "layer": [p["layer"] for p in candidates.provenance],
            "norm": candidates.norms(),
        }
    )
    grid = table.pivot(index="position", columns="layer", values="norm")
    figure = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=list(grid.columns),
            y=[str(p) for p in grid.index],
            colorscale="Viridis",
            colorbar=dict(title="norm"),
        )
    )
    figure.update_layout(xaxis_title="layer", yaxis_title="position", height=300, margin=dict(t=20))
    _charts.chart(figure, width="stretch")


describe_sets()
ready = "harmful" in prompts and "harmless" in prompts
if st.button("Compute activations and DIM directions", type="primary", disabled=not ready, key="data_compute"):
    compute_activations()
show_report()
if stale():
    st.warning("The sidebar's prompt sets changed since these activations were computed; press compute to update them.")
if ws.has_activations:
    acts = ws.harmful_acts
    st.caption(
        f"{acts.acts.shape[0]} harmful and {ws.harmless_acts.acts.shape[0]} harmless prompts, "
        f"positions {list(acts.positions)}, "
        f"{acts.n_layers} layers, width {acts.d_model}."
    )
    show_separation()
    show_dim()
