"""Manifold: PCA/UMAP maps of harmful and harmless representations at one layer, a SOM
drawn over them (Piras et al.), and per-prompt directions with their clusters (Park)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from app_pages._methods import settings_widgets
from app_pages._shift import shift_section
from refusal_core.activations.separation import layer_points, stacked_points
from refusal_core.directions.base import DirectionError
from refusal_core.directions.clustering import ClusterSettings, cluster_direction_set, cluster_directions
from refusal_core.directions.per_prompt import gradient_directions, per_prompt_direction_set, representation_directions
from refusal_core.directions.provenance import build_provenance
from refusal_core.directions.som import SomSettings, neuron_prompts, som_direction_set, train_som
from refusal_core.projection import ProjectionError, fit_projection

st.title("Manifold")
loaded = _state.require_model()
ws = _state.workspace()
_state.require_activations(ws)
harmful_set, harmless_set = ws.harmful, ws.harmless
n_layers = ws.harmful_acts.n_layers
positions = list(ws.harmful_acts.positions)
# Set colours chosen here: Streamlit's theme would draw the first two traces in two blues.
SET_COLOURS = {"harmful": "#d62728", "harmless": "#1f77b4", "not clustered": "#bbbbbb"}
PALETTE = px.colors.qualitative.Dark24


def controls() -> tuple[int, int, str, int, str]:
    left, middle, right = st.columns([2, 1, 1])
    layer = left.slider(
        "Layer (block input)", 0, n_layers - 1, value=min(n_layers - 1, int(0.6 * n_layers)), key="manifold_layer"
    )
    position = middle.selectbox("Position", positions, index=len(positions) - 1, key="manifold_position")
    method = right.radio("Map", ["pca", "umap"], horizontal=True, key="manifold_method", format_func=str.upper)
    dims = middle.radio("Dimensions", [2, 3], horizontal=True, key="manifold_dims", format_func=lambda d: f"{d}D")
    colour = right.selectbox("Colour by", ["set", "category", "cluster"], key="manifold_colour")
    return layer, position, method, dims, colour


def provenance(layer: int, position: int, method: str) -> dict:
    return build_provenance(loaded.spec, harmful_set, harmless_set, method, layer, position)


def prompt_table() -> pd.DataFrame:
    """One row per point: harmful prompts first, then harmless, as the map stacks them."""
    return pd.DataFrame(
        {
            "set": ["harmful"] * len(harmful_set) + ["harmless"] * len(harmless_set),
            "category": [c or "uncategorised" for c in harmful_set.categories + harmless_set.categories],
            "prompt": list(harmful_set.instructions + harmless_set.instructions),
        }
    )


def cluster_labels(layer: int, position: int) -> list[str]:
    labels = ["harmless"] * len(harmless_set)
    found = ws.clusters
    if found is None or (found.layer, found.position) != (layer, position):
        return ["not clustered"] * len(harmful_set) + labels
    by_prompt = dict(zip(found.prompt_index, found.result.labels.tolist()))
    return [f"cluster {by_prompt[i]}" if i in by_prompt else "not clustered" for i in range(len(harmful_set))] + labels


def projection_for(
    points: np.ndarray, layer: int, position: int, method: str, dims: int, neighbours: int, min_dist: float
):
    key = f"projection|{layer}|{position}|{method}|{dims}|{neighbours}|{min_dist}"
    return ws.remember(
        key, lambda: fit_projection(points, method, dims, seed=0, n_neighbors=neighbours, min_dist=min_dist)
    )


def scatter_traces(table: pd.DataFrame, embedding: np.ndarray, colour: str, dims: int) -> list:
    traces = []
    for number, (label, rows) in enumerate(table.groupby(colour, sort=True)):
        tint = SET_COLOURS.get(str(label), PALETTE[number % len(PALETTE)])
        index = rows.index.to_numpy()
        hover = ["<br>".join(textwrap.wrap(text, 70)) for text in rows["prompt"]]
        common = dict(
            name=str(label),
            mode="markers",
            text=hover,
            customdata=rows[["set", "category"]].to_numpy(),
            hovertemplate="%{text}<br><i>%{customdata[0]}, %{customdata[1]}</i><extra></extra>",
        )
        if dims == 3:
            traces.append(
                go.Scatter3d(
                    x=embedding[index, 0],
                    y=embedding[index, 1],
                    z=embedding[index, 2],
                    marker=dict(size=4, opacity=0.8, color=tint),
                    **common,
                )
            )
        else:
            # Clicking a SOM node selects it; without `unselected` Plotly would fade every other point.
            traces.append(
                go.Scatter(
                    x=embedding[index, 0],
                    y=embedding[index, 1],
                    marker=dict(size=8, opacity=0.75, color=tint),
                    unselected=dict(marker=dict(opacity=0.75)),
                    **common,
                )
            )
    return traces


def som_traces(projection, dims: int) -> list:
    """Grid edges as one line trace, then neurons as nodes sized by hit count (last trace)."""
    result = ws.som.result
    placed = projection.transform(result.weights)
    edges = dict(zip("xyz", result.edge_paths(placed)[:dims]))
    nodes = dict(zip("xyz", placed.T[:dims]))
    labels = ["{}-{}".format(*result.grid_position(k)) for k in range(result.n_neurons)]
    hover = [f"neuron {label}: {int(h)} prompts" for label, h in zip(labels, result.hits.tolist())]
    if dims == 3:
        return [
            go.Scatter3d(**edges, mode="lines", line=dict(color="black", width=3), name="SOM grid", hoverinfo="skip"),
            go.Scatter3d(
                **nodes,
                mode="markers",
                marker=dict(size=result.node_sizes(5, 15), color="black", symbol="diamond"),
                name="SOM neurons",
                text=hover,
                hoverinfo="text",
            ),
        ]
    return [
        go.Scatter(
            **edges,
            mode="lines",
            line=dict(color="black", width=1.5),
            name="SOM grid",
            hoverinfo="skip",
            unselected=dict(marker=dict(opacity=1.0)),
        ),
        go.Scatter(
            **nodes,
            mode="markers+text",
            name="SOM neurons",
            text=labels,
            textposition="top center",
            marker=dict(size=result.node_sizes(10, 30), color="rgba(0,0,0,0.8)", line=dict(color="white", width=1)),
            hovertext=hover,
            hoverinfo="text",
            # A clicked node turns orange; the others, and the prompts' points, keep their look.
            selected=dict(marker=dict(color="#ff7f0e")),
            unselected=dict(marker=dict(opacity=0.8), textfont=dict(color="black")),
        ),
    ]


def draw_map(layer: int, position: int, method: str, dims: int, colour: str) -> int | None:
    """The scatter (and SOM overlay); returns a neuron clicked in the 2-D map, if any."""
    points = stacked_points(ws.harmful_acts, ws.harmless_acts, layer, position)
    with st.expander("UMAP settings"):
        neighbours = int(st.number_input("n_neighbors", 2, 200, 15, key="manifold_neighbours"))
        min_dist = float(st.number_input("min_dist", 0.0, 1.0, 0.1, step=0.05, key="manifold_min_dist"))
    try:
        warming = method == "umap" and (thread := _state.umap_warm_up()) is not None and thread.is_alive()
        with st.spinner(
            "Fitting the map (UMAP's compiled kernels are still loading in the background)..."
            if warming
            else "Fitting the map..."
        ):
            projection = projection_for(points, layer, position, method, dims, neighbours, min_dist)
    except ProjectionError as err:
        st.error(str(err))
        return None
    table = prompt_table()
    table["cluster"] = cluster_labels(layer, position)
    traces = scatter_traces(table, projection.embedding, colour, dims)
    som_here = ws.som is not None and (ws.som.layer, ws.som.position) == (layer, position)
    if som_here:
        traces += som_traces(projection, dims)
    figure = go.Figure(traces)
    axes = projection.axis_labels()
    if dims == 3:
        figure.update_layout(scene=dict(xaxis_title=axes[0], yaxis_title=axes[1], zaxis_title=axes[2]))
    else:
        figure.update_layout(xaxis_title=axes[0], yaxis_title=axes[1])
    figure.update_layout(height=620, margin=dict(t=30), legend=dict(itemsizing="constant"))
    if dims == 3:
        _charts.chart(figure, width="stretch", key="manifold_chart3d")
        return None
    event = _charts.chart(figure, width="stretch", key="manifold_chart", on_select="rerun", selection_mode="points")
    if som_here:
        node_trace = len(traces) - 1
        for point in (event or {}).get("selection", {}).get("points", []):
            if point.get("curve_number") == node_trace:
                return int(point.get("point_index"))
    return None


def som_section(layer: int, position: int, clicked: int | None) -> None:
    st.subheader("Self-organizing map")
    with st.form("som_form"):
        values = settings_widgets(SomSettings, "som")
        submitted = st.form_submit_button(f"Train SOM at layer {layer}, position {position}")
    if submitted:
        harmful_x, harmless_x = layer_points(ws.harmful_acts, ws.harmless_acts, layer, position)
        try:
            settings = SomSettings(**values)
            with st.spinner("Training the SOM..."):
                result = train_som(harmful_x, harmless_x, settings)
            directions = som_direction_set(result, provenance(layer, position, "som"))
        except (ValueError, DirectionError) as err:
            st.error(f"SOM training failed: {err}")
            return
        name = f"SOM {settings.x}x{settings.y} L{layer} P{position}"
        ws.add_set(name, directions)
        ws.som = _state.SomState(result=result, layer=layer, position=position, set_name=name)
        st.rerun()
    if ws.som is None:
        return
    result = ws.som.result
    som_quality(result)
    if (ws.som.layer, ws.som.position) != (layer, position):
        st.caption("Move the layer/position controls to the SOM's to see it on the map.")
    neurons = list(range(result.n_neurons))
    if clicked is not None and clicked in neurons:
        st.session_state["som_neuron"] = clicked
    label = lambda k: "{}-{}".format(*result.grid_position(k)) + f" ({int(result.hits[k])} prompts)"  # noqa: E731
    neuron = st.selectbox("Neuron (or click a node in the 2-D map)", neurons, format_func=label, key="som_neuron")
    groups = neuron_prompts(result, harmful_set.instructions, [c or "uncategorised" for c in harmful_set.categories])
    members = groups.get(neuron, [])
    st.dataframe(pd.DataFrame(members, columns=["prompt", "category"]), hide_index=True, width="stretch")


def som_quality(result) -> None:
    """The map's two errors beside it, with what they mean."""
    st.caption(f"{ws.som.set_name}: added to the direction sets, one direction per neuron.")
    cols = st.columns(2)
    cols[0].metric(
        "Quantization error",
        f"{result.quantization_error:.3g}",
        help="Mean distance from a prompt to its neuron, in residual-stream units; lower means the neurons are "
        "better prototypes of their prompts.",
    )
    cols[1].metric(
        "Topographic error",
        "n/a" if np.isnan(result.topographic_error) else f"{result.topographic_error:.1%}",
        help="Share of prompts whose two nearest neurons are not neighbours on the grid; 0 means the grid keeps "
        "neighbourhoods, a large share means the grid is folded.",
    )
    folded = result.topographic_error > 0.1
    st.caption(
        f"Quantization error: the mean distance from a prompt to its neuron, {result.quantization_error / result.spread:.0%} "
        f"of the mean distance to the centre of all harmful prompts ({result.spread:.3g}, a 1x1 map's error). "
        "Topographic error: the share of prompts whose nearest and second-nearest neurons are not grid neighbours; "
        + (
            "above 10% the grid is folded over the data, so neighbouring neurons need not hold similar prompts "
            "(try a larger sigma or more iterations)."
            if folded
            else "at or below 10% the grid lies flat over the data, so neighbouring neurons hold similar prompts."
        )
    )


def per_prompt_section(layer: int, position: int) -> None:
    st.subheader("Per-prompt directions and their clusters")
    cols = st.columns([2, 1])
    kind = cols[0].radio(
        "Direction of each harmful prompt",
        ["representation", "gradient"],
        horizontal=True,
        key="per_prompt_kind",
        help="representation: the prompt's activation minus the harmless centroid; "
        "gradient: d log p(refusal) / d activation.",
    )
    if cols[1].button(f"Compute at layer {layer}, position {position}", key="per_prompt_compute"):
        try:
            if kind == "representation":
                harmful_x, harmless_x = layer_points(ws.harmful_acts, ws.harmless_acts, layer, position)
                vectors = representation_directions(harmful_x, harmless_x)
            else:
                update = _state.progress_callback("Refusal gradients")
                vectors = gradient_directions(
                    loaded, harmful_set.instructions, layer, position=position, progress=update
                )
            directions = per_prompt_direction_set(
                vectors,
                harmful_set.instructions,
                list(harmful_set.categories),
                provenance(layer, position, f"per_prompt_{kind}"),
            )
        except (ValueError, DirectionError) as err:
            st.error(f"Per-prompt directions failed: {err}")
            return
        name = f"Per-prompt {kind} L{layer} P{position}"
        ws.add_set(name, directions)
        ws.per_prompt = _state.PerPromptState(set_name=name, layer=layer, position=position)
        ws.clusters = None
    if ws.per_prompt is None:
        st.caption("Compute per-prompt directions to cluster them.")
        return
    directions = ws.direction_sets[ws.per_prompt.set_name]
    st.caption(f"{ws.per_prompt.set_name}: {len(directions)} directions (added to the direction sets).")
    # The source is the per-prompt step above; k and the algorithm come from ClusterSettings.
    values = settings_widgets(ClusterSettings, "cluster", skip=("source",), n_columns=3)
    if st.button("Cluster", key="cluster_run"):
        categories = [record.get("category") or "uncategorised" for record in directions.provenance]
        has_categories = any(record.get("category") for record in directions.provenance)
        try:
            result = cluster_directions(
                directions.vectors,
                values["k"],
                values["method"],
                seed=values["seed"],
                categories=categories if has_categories else None,
            )
            clusters = cluster_direction_set(
                result, {**directions.meta, "layer": ws.per_prompt.layer, "position": ws.per_prompt.position}
            )
        except (ValueError, DirectionError) as err:
            st.error(f"Clustering failed: {err}")
            return
        name = f"Clusters k={result.k} L{ws.per_prompt.layer} P{ws.per_prompt.position}"
        ws.add_set(name, clusters)
        ws.clusters = _state.ClusterState(
            result=result,
            set_name=name,
            layer=ws.per_prompt.layer,
            position=ws.per_prompt.position,
            prompt_index=tuple(int(record["prompt_index"]) for record in directions.provenance),
        )
    show_clusters()


def show_clusters() -> None:
    if ws.clusters is None:
        return
    result = ws.clusters.result
    metrics = st.columns(4)
    metrics[0].metric("k", result.k)
    metrics[1].metric("Silhouette (cosine)", f"{result.silhouette:.3f}")
    if result.adjusted_rand is not None:
        metrics[2].metric("Adjusted Rand vs categories", f"{result.adjusted_rand:.3f}")
        metrics[3].metric("NMI vs categories", f"{result.normalized_mutual_info:.3f}")
    if result.contingency is not None:
        st.markdown("**Category alignment** (prompts per cluster and category)")
        table = pd.DataFrame(result.contingency).T.fillna(0).astype(int).sort_index()
        table.index = [f"cluster {c}" for c in table.index]
        st.dataframe(table, width="stretch")
    if result.silhouettes:
        figure = go.Figure(go.Bar(x=list(result.silhouettes), y=list(result.silhouettes.values())))
        figure.update_layout(xaxis_title="k", yaxis_title="silhouette", height=260, margin=dict(t=20))
        _charts.chart(figure, width="stretch")
    st.caption(
        f"{ws.clusters.set_name} (cluster centroids) was added to the direction sets. "
        "Colour the map by cluster to see them."
    )


def shift_map(layer: int, position: int, method: str) -> None:
    """The "under an intervention" section, drawn in this page's 2-D map of the layer."""
    points = stacked_points(ws.harmful_acts, ws.harmless_acts, layer, position)
    neighbours = int(st.session_state.get("manifold_neighbours", 15))
    min_dist = float(st.session_state.get("manifold_min_dist", 0.1))
    try:
        projection = projection_for(points, layer, position, method, 2, neighbours, min_dist)
    except ProjectionError as err:
        st.error(str(err))
        return
    som_here = ws.som is not None and (ws.som.layer, ws.som.position) == (layer, position)
    shift_section(loaded, ws, layer, position, projection, lambda placed: som_traces(placed, 2) if som_here else [])


layer, position, method, dims, colour = controls()
clicked = draw_map(layer, position, method, dims, colour)
shift_map(layer, position, method)
som_section(layer, position, clicked)
per_prompt_section(layer, position)
