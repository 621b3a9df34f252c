"""Data & activations: compute residual activations of the chosen prompt sets, see how
well each layer separates harmful from harmless prompts, and build the DIM candidates."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages import _state
from refusal_core.activations.extract import default_positions, extract_activations
from refusal_core.activations.separation import layer_separation
from refusal_core.directions import dim
from refusal_core.directions.base import DirectionError
from refusal_core.directions.registry import FitInput
from refusal_core.prompts.chat import TemplateError
from refusal_core.selection.policy import DIM_SET

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
    """Both sets at every post-instruction position, then the DIM candidates."""
    try:
        positions = default_positions(loaded.tokenizer)
    except TemplateError as err:
        st.error(f"{err}")
        return
    results = {}
    for kind in ("harmful", "harmless"):
        update = _state.progress_callback(f"Activations of the {kind} prompts")
        try:
            results[kind] = extract_activations(loaded, prompts[kind].instructions, positions, progress=update)
        except ValueError as err:
            st.error(f"Could not compute {kind} activations: {err}")
            return
    ws.set_activations(prompts["harmful"], prompts["harmless"], results["harmful"], results["harmless"])
    try:
        data = FitInput(loaded, prompts["harmful"], prompts["harmless"], results["harmful"], results["harmless"])
        ws.add_set(DIM_SET, dim.fit(data, dim.DimSettings()))
    except DirectionError as err:
        st.error(f"Activations are ready, but the DIM directions failed: {err}")
    if all(result.from_cache for result in results.values()):
        st.success("Loaded from the activation cache instantly (same model, prompts and positions as before).")
    else:
        st.success("Activations computed and cached; the next time they load instantly.")


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


def show_separation() -> None:
    st.subheader("Which layer separates harmful from harmless?")
    positions = list(ws.harmful_acts.positions)
    cols = st.columns(2)
    position = cols[0].selectbox(
        "Position (offset from the end of the prompt)", positions, index=len(positions) - 1, key="data_position"
    )
    probe = cols[1].checkbox("Linear-probe accuracy (cross-validated; the slow part)", value=True, key="data_probe")
    separation = ws.remember(
        f"separation|{position}|{probe}",
        lambda: layer_separation(
            ws.harmful_acts,
            ws.harmless_acts,
            position,
            probe=probe,
            progress=_state.progress_callback("Separation per layer"),
        ),
    )
    st.plotly_chart(separation_figure(separation), width="stretch")
    best = int(separation.layers[int(separation.silhouette.argmax())])
    st.caption(
        f"Highest silhouette at layer {best}. Probe and silhouette near their plateau mark the layers "
        "where refusal is decided."
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
    st.plotly_chart(figure, width="stretch")


describe_sets()
ready = "harmful" in prompts and "harmless" in prompts
if st.button("Compute activations and DIM directions", type="primary", disabled=not ready, key="data_compute"):
    compute_activations()
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
