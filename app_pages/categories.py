"""Categories: one refusal direction per harm category, how they relate, how well each
category's condition tells its prompts apart, the ablation matrices, and a control that
switches refusal off for chosen categories only (a conditional intervention for the
Generate page)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from refusal_core.activations.extract import extract_activations
from refusal_core.categories.conditions import KINDS, MARGINS, SHRINKAGES, default_grid
from refusal_core.categories.fit import fit_categories
from refusal_core.categories.matrix import categories_report
from refusal_core.directions.base import DirectionError, cosine_matrix
from refusal_core.directions.category import category_name
from refusal_core.interventions.conditional import projection_scores
from refusal_core.prompts.loaders import builtin

SET_NAME = "Category directions"

st.title("Categories")
st.caption(
    "Directions from the built-in harmful set's 12 categories (train split) against the harmless train split; "
    "each category's condition threshold is chosen on the val split, measurements use the test split."
)
loaded = _state.require_model()
ws = _state.workspace()


def fit_controls() -> None:
    cols = st.columns(4)
    layer = int(
        cols[0].number_input(
            "Direction layer", 0, loaded.n_layers - 1, round(0.75 * loaded.n_layers), key="categories_layer"
        )
    )
    kind = cols[1].radio(
        "Conditions",
        KINDS,
        key="categories_condition_kind",
        horizontal=True,
        help="exclusive: a prompt fires the one category whose discriminant scores highest (over the categories "
        "and the harmless set); ovr: each category against the rest, several may fire",
    )
    auto = cols[2].checkbox(
        "Choose condition layer and shrinkage on val",
        True,
        key="categories_condition_auto",
        help=f"scan layers {', '.join(map(str, default_grid(loaded.n_layers)))} and shrinkages "
        f"{', '.join(map(str, SHRINKAGES))} (and margins {', '.join(map(str, MARGINS))}), keep the best on val",
    )
    max_prompts = int(
        cols[3].number_input(
            "Prompts per set",
            24,
            1000,
            1000,
            key="categories_max_prompts",
            help="cap on the train and val sets, taken evenly over the categories",
        )
    )
    condition_layer = shrinkage = None
    if not auto:
        fixed = st.columns(2)
        condition_layer = int(
            fixed[0].number_input(
                "Condition layer",
                0,
                loaded.n_layers - 1,
                round(0.4 * loaded.n_layers),
                key="categories_condition_layer",
                help="the layer whose post-instruction tokens the conditions read",
            )
        )
        shrinkage = float(
            fixed[1].number_input(
                "Shrinkage",
                0.001,
                10.0,
                1.0,
                key="categories_shrinkage",
                help="covariance shrinkage of the condition discriminants",
            )
        )
    if st.button("Fit category directions", type="primary", key="categories_fit"):
        try:
            fitted = fit_categories(
                loaded,
                layer,
                condition_layer,
                shrinkage,
                progress=_state.progress_callback,
                max_prompts=max_prompts,
                kind=kind,
            )
        except (ValueError, DirectionError) as err:
            st.error(f"Fitting failed: {err}")
            return
        ws.categories, ws.category_report = fitted, None
        ws.add_set(SET_NAME, fitted.directions)
        st.success(
            f"Added the set '{SET_NAME}' ({len(fitted.directions)} directions) for the Generate and Directions pages."
        )


def cosine_heatmap(fitted) -> None:
    part = st.radio(
        "Directions compared",
        ["full", "specific"],
        horizontal=True,
        key="categories_cos_part",
        help="full: each category's difference in means; specific: its part orthogonal to the shared direction",
    )
    names = [category_name(c, part) for c in fitted.categories]
    cosines = cosine_matrix(fitted.directions.select(names).vectors).numpy()
    figure = go.Figure(
        go.Heatmap(
            z=cosines,
            x=fitted.categories,
            y=fitted.categories,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            text=cosines.round(2),
            texttemplate="%{text}",
        )
    )
    figure.update_layout(height=520, margin=dict(t=20), yaxis=dict(autorange="reversed"))
    _charts.chart(figure, width="stretch", key="categories_cosines")


def projections(fitted) -> None:
    category = st.selectbox("Condition of category", fitted.categories, key="categories_projection_of")
    condition = fitted.conditions[category]
    harmful, harmless = builtin("harmful", "test"), builtin("harmless", "test")
    figure = go.Figure()
    for prompts, label in ((harmful, None), (harmless, "(harmless)")):
        acts = extract_activations(loaded, prompts.instructions)
        scores = condition.margins(
            projection_scores(acts.residual(fitted.condition_layer), condition.directions)
        ).tolist()
        groups = prompts.categories if label is None else [label] * len(prompts)
        figure.add_trace(
            go.Box(
                x=groups,
                y=scores,
                boxpoints="all",
                text=list(prompts.instructions),
                name=label or "harmful",
                hovertemplate="%{text}<br>%{y:.2f}<extra></extra>",
            )
        )
    figure.add_hline(y=0.0, line_dash="dash", annotation_text="fires above (chosen on val)")
    figure.update_layout(
        height=420, margin=dict(t=20), yaxis_title=f"condition margin at layer {fitted.condition_layer}"
    )
    _charts.chart(figure, width="stretch", key="categories_projections")
    settings = f"shrinkage {fitted.shrinkage:g}" + (f", margin {fitted.margin:g}" if fitted.margin is not None else "")
    st.caption(
        f"{fitted.condition_kind} conditions at layer {fitted.condition_layer}, {settings}. Margin: how far a prompt is inside "
        f"the condition's region (for exclusive conditions, the smallest lead of this category's score over another class's, "
        f"in residual units). Val balanced accuracy of this condition: {fitted.val_accuracy[category]:.2f}; the val goal "
        f"holds for {len(fitted.val_goal)} categories. Test split prompts."
    )


def matrices() -> None:
    cols = st.columns(3)
    per_category = int(cols[0].number_input("Test prompts per category", 1, 5, 2, key="categories_per_category"))
    max_new = int(cols[1].number_input("Max new tokens", 8, 256, 32, key="categories_max_new"))
    part = cols[2].radio("Ablate", ["full", "specific"], horizontal=True, key="categories_part")
    if st.button(
        "Run the matrix",
        key="categories_run",
        help="12 columns of generation over every category's test prompts; minutes on a CPU",
    ):
        fitted = ws.categories
        update = _state.progress_callback("Generating (one batch for all columns)")
        ws.category_report = categories_report(
            loaded,
            layer=fitted.layer,
            condition_layer=fitted.condition_layer,
            part=part,
            per_category=per_category,
            n_harmless=8,
            max_new_tokens=max_new,
            progress=update,
            judge=_state.judge_name(),
            shrinkage=fitted.shrinkage,
            condition_kind=fitted.condition_kind,
            margin=fitted.margin,
        )
    report = ws.category_report
    if report is None:
        return
    for block, title in (
        ("ablation", f"Ablating each category's {report['part']} direction"),
        ("conditional", "Conditional ablation"),
    ):
        st.subheader(title)
        figure = go.Figure(
            go.Heatmap(
                z=report[block]["matrix"],
                x=report["categories"],
                y=report["categories"],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                texttemplate="%{z:.0%}",
            )
        )
        figure.update_layout(
            height=520,
            margin=dict(t=20),
            yaxis=dict(autorange="reversed", title="refusal switched off for"),
            xaxis_title="refusal measured on",
        )
        _charts.chart(figure, width="stretch", key=f"categories_matrix_{block}")
        met = [c for c, s in zip(report["categories"], report[block]["selectivity"]) if s["meets_goal"]]
        st.caption(
            f"Goal (own <= 20%, every other >= 80%, harmless <= 5%) met for {len(met)} categories: {', '.join(met) or 'none'}."
        )
        broken = report[block].get("broken_harmful")
        deflected = report[block].get("deflected_harmful")
        if deflected is not None:
            most = max(range(len(deflected)), key=deflected.__getitem__)
            st.caption(
                f"Deflected (fluent, neither refused nor did the task) replies to harmful prompts: at most "
                f"{deflected[most]:.0%} (row {report['categories'][most]}); they count as neither refusal nor compliance."
            )
        if broken is not None:
            worst = max(range(len(broken)), key=broken.__getitem__)
            st.caption(
                f"Judge: {report['judge']}. Broken (not fluent) replies to harmful prompts: at most {broken[worst]:.0%} "
                f"(row {report['categories'][worst]}); refusal counts fluent refusals only."
            )


def switch_off(fitted) -> None:
    chosen = st.multiselect("Switch refusal off for", fitted.categories, key="categories_off")
    if st.button("Add to the Generate page", disabled=not chosen, key="categories_add"):
        intervention = fitted.switch_off(chosen)
        ws.conditionals[intervention.name] = intervention
        st.success(f"Added '{intervention.name}': tick it on the Generate page.")
    if ws.conditionals:
        st.caption("On the Generate page: " + "; ".join(ws.conditionals))


fit_controls()
if ws.categories is None:
    st.info("Fit the category directions to see them.")
    st.stop()
fitted = ws.categories
st.header("Switch refusal off by category")
st.caption(
    "The shared refusal direction is ablated, for the whole reply, only on prompts whose representation fires "
    "a chosen category's condition (conditional activation steering, Lee et al.)."
)
switch_off(fitted)
st.header("Cosine similarity of the category directions")
cosine_heatmap(fitted)
st.header("Projections onto a category's condition")
projections(fitted)
st.header("Refusal matrices")
matrices()
