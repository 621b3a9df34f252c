"""Compare: two models' refusal geometry side by side (the base SmolLM2 against the organism,
a model against its export, any two local folders of the same width): the cosine of their DIM
directions layer by layer, their selection scores, and the same prompts' maps."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from refusal_core.activations.cache import content_key
from refusal_core.activations.separation import stacked_points
from refusal_core.errors import UserError
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM
from refusal_core.projection import fit_projection
from refusal_core.views import figures
from refusal_core.views.compare import compare_models

st.title("Compare")
loaded = _state.require_model()
ws = _state.workspace()
choice = st.session_state.get(_state.MODEL) or (loaded.spec, "cpu", "float32")
OTHERS = {
    "SmolLM2-135M-Instruct (bundled)": BUNDLED_BASE,
    "Refusal organism (bundled)": BUNDLED_ORGANISM,
    "A local folder or hub id": None,
}


def other_model():
    """Model B, loaded through the shared cache with the sidebar's device and dtype."""
    labels = [label for label, spec in OTHERS.items() if spec != loaded.spec]
    label = st.radio("Model B", labels, horizontal=True, key="compare_other")
    spec = OTHERS[label] or st.text_input("Folder or hub id of model B", key="compare_path").strip()
    if not spec:
        st.info("Type a folder or hub id for model B.")
        return None
    try:
        other = _state.shared_model(spec, choice[1], choice[2])
    except UserError as err:
        st.error(str(err))
        return None
    except Exception as err:  # noqa: BLE001 - any failure must leave the page usable
        st.error(f"Loading {spec!r} failed: {err}. Check the folder or id.")
        return None
    if other.d_model != loaded.d_model:
        st.error(
            f"{spec} has width {other.d_model} and {loaded.spec} width {loaded.d_model}; choose a model of the same width "
            "(a fine-tune or an export of this one)."
        )
        return None
    return other


def prompts() -> tuple[list[str], list[str]] | None:
    chosen = _state.chosen_prompts()
    harmful = ws.harmful or chosen.get("harmful")
    harmless = ws.harmless or chosen.get("harmless")
    if harmful is None or harmless is None:
        st.info("Choose harmful and harmless prompts in the sidebar.")
        return None
    return list(harmful.instructions), list(harmless.instructions)


def maps(acts: dict, layer: int) -> None:
    """The same prompts' PCA maps at one layer, model A beside model B."""
    for column, key in zip(st.columns(2), ("a", "b")):
        points = stacked_points(*acts[key], layer, -1)
        projection = fit_projection(points, "pca", 2)
        n = acts[key][0].acts.shape[0]
        figure = go.Figure(
            [
                go.Scatter(
                    x=projection.embedding[:n, 0],
                    y=projection.embedding[:n, 1],
                    mode="markers",
                    name="harmful",
                    marker=dict(color=figures.COLOURS["harmful"]),
                ),
                go.Scatter(
                    x=projection.embedding[n:, 0],
                    y=projection.embedding[n:, 1],
                    mode="markers",
                    name="harmless",
                    marker=dict(color=figures.COLOURS["harmless"]),
                ),
            ]
        )
        axes = projection.axis_labels()
        figure.update_layout(
            title=f"{'A' if key == 'a' else 'B'}: layer {layer}",
            xaxis_title=axes[0],
            yaxis_title=axes[1],
            height=420,
            margin=dict(t=40),
        )
        _charts.chart(container=column, figure=figure, width="stretch", key=f"compare_map_{key}")


other = other_model()
chosen_prompts = prompts()
if other is not None and chosen_prompts is not None:
    score = st.checkbox(
        "Also score each model's DIM candidates (bypass, induce, KL) on 8 val prompts per set", key="compare_score"
    )
    key = content_key("compare", loaded.spec, other.spec, chosen_prompts, score)
    if st.button(
        f"Compare {loaded.spec} (A) with {other.spec} (B) on {len(chosen_prompts[0])} + {len(chosen_prompts[1])} prompts",
        key="compare_run",
    ):
        from refusal_core.prompts.loaders import builtin

        val = (
            (builtin("harmful", "val").instructions[:8], builtin("harmless", "val").instructions[:8]) if score else None
        )
        try:
            result = compare_models(
                loaded, other, *chosen_prompts, val=val, progress=_state.progress_callback("Comparing")
            )
        except UserError as err:
            st.error(str(err))
        else:
            ws.store_view(key, result)
            ws.store_view("last_compare", result[0].as_dict())
    if key in ws.views:
        comparison, acts = ws.views[key]
        data = comparison.as_dict()
        _charts.chart(figures.compare_figure(data), width="stretch", key="compare_cosine")
        if comparison.scores:
            _charts.chart(figures.scores_figure(data), width="stretch", key="compare_scores")
            st.caption(
                " · ".join(
                    f"{k.upper()}: selection chose layer {v['chosen_layer']}" for k, v in comparison.scores.items()
                )
            )
        layer = st.slider("Layer of the maps", 1, min(loaded.n_layers, other.n_layers) - 1, key="compare_layer")
        if loaded.n_layers == other.n_layers:
            maps(acts, layer)
        else:
            st.caption("The two models differ in depth; maps are drawn for models of equal depth only.")
