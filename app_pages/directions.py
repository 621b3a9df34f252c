"""Directions: how the found directions relate (cosine similarities, norms), which DIM
candidate Arditi et al.'s selection picks (bypass, induce and KL over position x layer), and
one direction learnt by gradient descent from a chosen one (Wollschläger et al.)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from app_pages._methods import other_methods_section, settings_widgets
from refusal_core.directions.base import DirectionError, DirectionSet, cosine_matrix
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import PromptSetError, sample_prompts
from refusal_core.prompts.validation import ValidationSettings, validation_prompts
from refusal_core.selection.optimize import OptimizeSettings, optimize_direction
from refusal_core.selection.policy import CLOSEST_DIM, DIM_SET, OPTIMIZED_SET, SELECTED_DIM, select_with_fallback
from refusal_core.selection.racing import ScoringMode, race_candidates
from refusal_core.selection.result import SelectionFilters
from refusal_core.sinks import massive_activations, massive_share

# Preselected directions per set: twelve tags fit the multiselect box without clipping.
MAX_DEFAULT = 12
# Plotly's Magma and Inferno start at #000004, which Streamlit's chart theme treats as a
# placeholder and recolours; Plasma starts at #0d0887, so the lowest KL is drawn as such.
KL_COLOURSCALE = "Plasma"

st.title("Directions")
loaded = _state.require_model()
ws = _state.workspace()


def pick_directions() -> tuple[list[str], list[str]]:
    """(set names, display names) of the directions to compare."""
    options = list(ws.direction_sets)
    chosen_sets = st.multiselect("Direction sets", options, default=options[:3], key="directions_sets")
    labels, pairs = [], []
    for set_name in chosen_sets:
        directions = ws.direction_sets[set_name]
        picked = st.multiselect(
            f"Directions from {set_name}",
            list(directions.names),
            default=_state.default_direction_names(directions, MAX_DEFAULT),
            key=f"directions_pick_{set_name}",
        )
        pairs += [(set_name, name) for name in picked]
        labels += [f"{set_name}:{name}" for name in picked]
    return pairs, labels


def comparison() -> None:
    if not ws.direction_sets:
        st.info(
            "No direction sets yet: compute DIM on the Data page, train a SOM or cluster on the Manifold page, "
            "or import a set."
        )
        return
    pairs, labels = pick_directions()
    if not pairs:
        st.caption("Choose at least one direction.")
        return
    chosen = DirectionSet.concat(
        [ws.direction_sets[s].select([n]) for s, n in pairs], prefixes=[f"{s}:" for s, _ in pairs]
    )
    cosines = cosine_matrix(chosen.vectors).tolist()
    _charts.chart(cosine_figure(cosines, labels), width="stretch", key="directions_cosines")
    bars = go.Figure(go.Bar(x=chosen.norms(), y=labels, orientation="h"))
    bars.update_layout(
        height=max(300, 16 * len(labels) + 80),
        margin=dict(t=20),
        xaxis_title="norm",
        yaxis=dict(autorange="reversed", automargin=True, type="category"),
    )
    with st.expander("Norms"):
        _charts.chart(bars, width="stretch")
    massive_section(chosen, labels)


def cosine_figure(cosines: list[list[float]], labels: list[str]) -> go.Figure:
    """The cosine heatmap at full width, tall enough for one readable row per direction; the
    margins grow to fit the longest label (automargin), so no label is cut."""
    heat = go.Figure(
        go.Heatmap(
            z=cosines,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale="RdBu_r",
            colorbar=dict(title="cos"),
            hovertemplate="%{y}<br>%{x}<br>cos %{z:.3f}<extra></extra>",
        )
    )
    side = max(420, 18 * len(labels) + 220)
    heat.update_layout(
        height=side,
        margin=dict(t=20, l=10, r=10, b=10),
        xaxis=dict(automargin=True, tickangle=-45, type="category"),
        yaxis=dict(automargin=True, autorange="reversed", type="category", scaleanchor="x"),
    )
    return heat


def massive_section(chosen: DirectionSet, labels: list[str]) -> None:
    """How much of each direction lies on the model's massive residual coordinates."""
    with st.expander("Massive activations: why ablating a direction can cost more KL than it should"):
        prompts = list(builtin("harmless", "val").instructions[:8])
        massive = ws.remember("massive", lambda: massive_activations(loaded, prompts))
        if not massive.coordinates:
            st.caption(
                f"No residual coordinate reaches {massive.ratio:g} x the median |h| ({massive.median:.2f}) on 8 harmless prompts."
            )
            return
        found = ", ".join(
            f"{c} (peak {float(massive.peak[c]):,.0f} at layer {massive.where[c][0]}, token {massive.where[c][1]})"
            for c in massive.coordinates
        )
        st.caption(
            f"Massive coordinates (>= {massive.ratio:g} x median |h| {massive.median:.2f}): {found}. "
            "Ablation projects a direction out at every token, the attention-sink token included, so a direction "
            "with weight here moves that token by thousands of units. `organism report` also measures the same "
            "direction with these coordinates zeroed, and the KL that random directions cost."
        )
        shares = massive_share(chosen.vectors, massive.coordinates).tolist()
        figure = go.Figure(go.Bar(x=shares, y=labels, orientation="h"))
        figure.update_layout(
            height=max(300, 14 * len(labels) + 120),
            margin=dict(t=20),
            xaxis=dict(title="share of squared norm", range=[0, 1]),
            yaxis=dict(autorange="reversed"),
        )
        _charts.chart(figure, width="stretch")


def grid_figure(result, values, title: str, colorscale: str) -> go.Figure:
    grid = values.tolist()
    text = [[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in grid]
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            x=list(result.layers),
            y=[str(p) for p in result.positions],
            colorscale=colorscale,
            text=text,
            hoverinfo="x+y+z",
            colorbar=dict(title=title),
        )
    )
    eligible = result.eligible()
    failed = [
        (layer, str(p))
        for i, p in enumerate(result.positions)
        for j, layer in enumerate(result.layers)
        if not bool(result.passed[i, j]) and not math.isnan(grid[i][j]) and bool(eligible[i, j])
    ]
    raced_out = [
        (layer, str(p))
        for i, p in enumerate(result.positions)
        for j, layer in enumerate(result.layers)
        if not bool(eligible[i, j]) and not math.isnan(grid[i][j])
    ]
    if raced_out:
        figure.add_trace(
            go.Scatter(
                x=[f[0] for f in raced_out],
                y=[f[1] for f in raced_out],
                mode="markers",
                name="raced out (fewer prompts)",
                marker=dict(symbol="circle-open", size=7, line=dict(width=1, color="grey")),
                hoverinfo="skip",
            )
        )
    if failed:
        figure.add_trace(
            go.Scatter(
                x=[f[0] for f in failed],
                y=[f[1] for f in failed],
                mode="markers",
                marker=dict(symbol="x-thin", size=7, line=dict(width=1, color="grey")),
                name="filtered out",
                hoverinfo="skip",
            )
        )
    if result.chosen is not None:
        position, layer = result.chosen
        figure.add_trace(
            go.Scatter(
                x=[layer],
                y=[str(position)],
                mode="markers",
                marker=dict(symbol="star", size=18, color="gold", line=dict(width=1.5, color="black")),
                name="chosen",
            )
        )
    # Positions are labels, not a numeric axis: with one position a numeric axis would show
    # ticks at -0.6 ... -1.4. Layers are whole numbers.
    figure.update_layout(
        title=title,
        xaxis=dict(title="layer", tickformat="d", dtick=1 if len(result.layers) <= 12 else None),
        yaxis=dict(title="position", type="category"),
        height=220 + 20 * len(result.positions),
        margin=dict(t=40),
        showlegend=False,
    )
    return figure


def selection_section() -> None:
    st.header("Selecting one DIM direction (Arditi et al.)")
    candidates = ws.direction_sets.get(DIM_SET)
    if candidates is None:
        st.info("Compute the DIM candidates on the Data page first.")
        return
    cols = st.columns(4)
    n_val = settings_widgets(ValidationSettings, "selection", columns=cols[:1])["n_val"]
    filter_values = settings_widgets(SelectionFilters, "selection", columns=cols[1:])
    all_positions = sorted({record["position"] for record in candidates.provenance})
    all_layers = sorted({record["layer"] for record in candidates.provenance})
    cols = st.columns([2, 1, 1])
    # The last position alone by default: scoring costs one forward per prompt per candidate,
    # and every extra position multiplies it (add them here when there is time).
    chosen_positions = cols[0].multiselect(
        "Candidate positions", all_positions, default=all_positions[-1:], key="selection_positions"
    )
    first, last = all_layers[0], all_layers[-1]
    low = int(cols[1].number_input("From layer", first, last, first, key="selection_from_layer"))
    high = int(cols[2].number_input("To layer", first, last, last, key="selection_to_layer"))
    names = [
        n
        for n, r in zip(candidates.names, candidates.provenance)
        if r["position"] in chosen_positions and low <= r["layer"] <= high
    ]
    exhaustive = settings_widgets(ScoringMode, "selection", n_columns=1)["exhaustive"]
    st.caption(f"{len(names)} candidates to score, on up to {n_val} harmful and {n_val} harmless validation prompts.")
    if st.button("Score candidates", type="primary", key="selection_run", disabled=not names):
        subset = candidates.select(names)
        try:
            harmful_val, harmless_val = validation_prompts(n_val)
            filters = SelectionFilters(**filter_values)
            update = _state.progress_callback(f"Scoring {len(subset)} candidates")
            ws.selection = race_candidates(
                loaded, subset, harmful_val, harmless_val, filters, exhaustive=exhaustive, progress=update
            )
        except (ValueError, DirectionError, PromptSetError) as err:
            st.error(f"Selection failed: {err}")
            return
        pick = select_with_fallback(ws.selection)
        if pick.name is not None:
            ws.add_set(pick.set_name, candidates.select([pick.name]))
            # One offered direction at a time: the other set would point the defaults elsewhere.
            ws.direction_sets.pop(CLOSEST_DIM if pick.set_name == SELECTED_DIM else SELECTED_DIM, None)
    result = ws.selection
    if result is None:
        st.caption(
            "Scoring ablates every candidate on harmful prompts, adds it on harmless ones and measures the KL cost."
        )
        return
    pick = select_with_fallback(result)
    if pick.chosen:
        st.markdown(f"**Chosen:** `{pick.name}` (added as the set *{pick.set_name}*). {result.reason}")
    else:
        offered = f" {pick.describe()}: `{pick.name}` (added as the set *{pick.set_name}*)." if pick.name else ""
        st.markdown(f"**No candidate chosen.** {result.reason}{offered}")
    st.caption(
        f"Baseline refusal score: harmful {result.baseline_harmful:.2f}, harmless {result.baseline_harmless:.2f}. "
        + scoring_note(result)
    )
    _charts.chart(
        grid_figure(result, result.bypass, "bypass (refusal score after ablation; lower is better)", "Viridis"),
        width="stretch",
        key="selection_bypass_chart",
    )
    _charts.chart(
        grid_figure(result, result.induce, "induce (refusal score after adding; higher is better)", "Viridis"),
        width="stretch",
        key="selection_induce_chart",
    )
    _charts.chart(
        grid_figure(result, result.kl, "KL on harmless prompts (lower is better)", KL_COLOURSCALE),
        width="stretch",
        key="selection_kl_chart",
    )


def scoring_note(result) -> str:
    """How the grids were scored: raced (finalists on every prompt, others on fewer) or exhaustively."""
    timing = result.timing
    if timing.get("mode") != "racing":
        return f"Every candidate scored on every prompt ({timing.get('seconds', 0):.0f} s)."
    return (
        f"Raced in {timing['seconds']:.0f} s: {timing['scored']} candidates scored on a few prompts, the "
        f"{len(timing['finalists'])} finalists on every prompt, and only finalists can be chosen; layers the layer "
        "filter excludes and candidates far from the late-layer refusal signal are left blank."
    )


def optimize_section() -> None:
    st.header("Optimizing one direction (Wollschläger et al.)")
    starts = [
        (set_name, name)
        for set_name, directions in ws.direction_sets.items()
        if set_name != OPTIMIZED_SET
        for name in directions.names
    ]
    if not starts:
        st.info("Compute or import a direction to start from first (the DIM candidates on the Data page, say).")
        return
    preferred = _state.preferred_direction(ws)
    _state.follow_default("optimize_start", preferred if preferred in starts else starts[0], starts)
    start = st.selectbox("Start from", starts, format_func=lambda pair: f"{pair[0]}:{pair[1]}", key="optimize_start")
    values = settings_widgets(OptimizeSettings, "optimize")
    if st.button("Optimize", type="primary", key="optimize_run"):
        harmful = sample_prompts(builtin("harmful", "train"), values["max_harmful"])
        harmless = sample_prompts(builtin("harmless", "train"), values["max_harmless"])
        update = _state.progress_callback(f"Optimizing from {start[1]}")
        try:
            result = optimize_direction(
                loaded,
                harmful,
                harmless,
                ws.direction_sets[start[0]].select([start[1]]),
                OptimizeSettings(**values),
                progress=update,
            )
        except (ValueError, DirectionError, PromptSetError) as err:
            st.error(f"Optimization failed: {err}")
            return
        ws.add_set(OPTIMIZED_SET, result.directions)
        ws.optimized = result
    result = ws.optimized
    if result is None:
        st.caption(
            "Learns the unit direction whose ablation (every layer, every token) pushes the refusal score of harmful "
            "train prompts below zero while keeping the harmless next-token distribution (KL); only the direction is "
            "learnt, the model is never changed."
        )
        return
    final, first = result.final, result.history[0]
    st.markdown(
        f"**{result.directions.names[0]}** (added as the set *{OPTIMIZED_SET}*), {result.seconds:.0f} s: before → after, "
        f"refusal score {first['refusal_score']:+.2f} → {final['refusal_score']:+.2f}, harmless KL {first['kl']:.4f} → "
        f"{final['kl']:.4f} on its train prompts; cosine {final['cosine_to_init']:.2f} to the start. Measure it on "
        "held-out prompts on the Generate page."
    )
    steps_axis = list(range(len(result.history))) + [len(result.history)]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=steps_axis,
            y=[h["refusal_score"] for h in result.history] + [final["refusal_score"]],
            name="refusal score (harmful)",
        )
    )
    figure.add_trace(
        go.Scatter(x=steps_axis, y=[h["kl"] for h in result.history] + [final["kl"]], name="KL (harmless)", yaxis="y2")
    )
    figure.update_layout(
        height=320,
        margin=dict(t=20),
        xaxis_title="step",
        yaxis=dict(title="refusal score"),
        yaxis2=dict(title="KL", overlaying="y", side="right"),
        legend=dict(orientation="h"),
    )
    _charts.chart(figure, width="stretch")


comparison()
selection_section()
optimize_section()
other_methods_section(ws, loaded)
