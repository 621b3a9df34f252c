"""The Generate page's per-token refusal trace: each generated token's residual projection on
chosen directions at a chosen layer, drawn under the reply (tokens shaded by projection) and
as one line per reply, the refusal phrase's first token marked where the judge says refused."""

from __future__ import annotations

import dataclasses

import streamlit as st

from app_pages import _charts, _state
from refusal_core.activations.cache import content_key
from refusal_core.directions.base import DirectionError
from refusal_core.views import figures
from refusal_core.views.trace import trace_completions

__all__ = ["trace_section"]


def _directions(ws):
    """The directions to project on: a set and (optionally) some of its directions."""
    sets = list(ws.direction_sets)
    if not sets:
        st.caption("Tracing needs a direction set to project on (none yet).")
        return None, None
    cols = st.columns([2, 3, 1])
    set_name = cols[0].selectbox("Project on the set", sets, key="trace_set")
    directions = ws.direction_sets[set_name]
    # Another set starts at its first direction (not at an empty choice); a choice within the set is kept.
    _state.follow_default("trace_dirs", list(directions.names[:1]), directions.names)
    picked = cols[1].multiselect(
        "Directions (several: the length in their span)", list(directions.names), key="trace_dirs"
    )
    if not picked:
        st.caption("Pick at least one direction to trace.")
        return None, None
    own = directions.provenance[directions.names.index(picked[0])].get("layer")
    return directions.select(picked), own


def trace_section(loaded, ws, key: str, results: dict, variants: list, judged: dict | None) -> None:
    """Trace the replies of the generation ``key`` (``variants`` made its columns)."""
    if not st.checkbox(
        "Trace refusal token by token",
        key="trace_on",
        help="Each generated token's residual projection on chosen directions at one layer.",
    ):
        return
    chosen, own_layer = _directions(ws)
    if chosen is None:
        return
    default = (
        int(own_layer)
        if isinstance(own_layer, int) and 0 <= own_layer < loaded.n_layers
        else int(0.6 * loaded.n_layers)
    )
    layer = int(st.slider("Layer (block input)", 0, loaded.n_layers - 1, default, key="trace_layer"))
    trace_key = content_key("trace", key, layer, chosen.names, chosen.vectors)
    if trace_key not in ws.views:
        by_name = {variant.name: variant for variant in variants}
        try:
            with st.spinner("Reading the residual stream under each column's intervention..."):
                traced = {
                    name: trace_completions(loaded, completions, by_name[name], layer, chosen.vectors)
                    for name, completions in results.items()
                }
        except (ValueError, DirectionError) as err:
            st.error(f"Tracing failed: {err}")
            return
        ws.store_view(trace_key, traced)
    traced = ws.views[trace_key]
    rows = []
    for name, traces in traced.items():
        labels = [v.label for v in judged[name].verdicts] if judged else [None] * len(traces)
        for completion, trace, label in zip(results[name], traces, labels):
            # The mark is where the judge puts the refusal: only on replies it calls refused.
            shown = trace if label in (None, "refused") else dataclasses.replace(trace, refusal_token=None)
            rows.append(
                {
                    "variant": name,
                    "instruction": completion.instruction,
                    "label": label,
                    "trace": shown.as_dict(),
                    "trace_layer": layer,
                }
            )
    _charts.chart(figures.trace_figure(rows, layer), width="stretch", key="trace_chart")
    scale = max((abs(v) for row in rows for v in row["trace"]["projections"]), default=1.0) or 1.0
    for name in traced:
        with st.expander(f"{name}: tokens shaded by projection (red +, blue -; underlined: the refusal begins)"):
            for row in (r for r in rows if r["variant"] == name):
                st.caption(f"{row['instruction'][:120]} ({row['label'] or 'not judged'})")
                st.html(figures.trace_html(row["trace"], scale))
    ws.store_view("last_trace", rows)
