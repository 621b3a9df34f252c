"""Plotly figures of what an intervention does, shared by the dashboard and the HTML report,
so a chart in a report is the chart the page drew.

Every figure is drawn from the plain-data form of a result (``LayerShift.as_dict()``,
``ModelComparison.as_dict()``, ``TokenTrace.as_dict()``), which is also what the CLI writes
with ``--json``: a report made later from saved files draws the same charts.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = ["compare_figure", "scores_figure", "shift_animation", "shift_figure", "trace_figure", "trace_html"]

COLOURS = {"harmful": "#d62728", "harmless": "#1f77b4"}


def _segments(before: np.ndarray, after: np.ndarray) -> tuple[list, list]:
    """x and y of one line trace joining each before point to its after point (None breaks)."""
    xs, ys = [], []
    for (x0, y0), (x1, y1) in zip(before[:, :2], after[:, :2]):
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


def _shift_traces(shift: dict, prompts: Sequence[str] | None) -> list:
    n = shift["n_harmful"]
    traces = []
    for kind, rows in (("harmful", slice(0, n)), ("harmless", slice(n, None))):
        before, after = np.asarray(shift["before"])[rows], np.asarray(shift["after"])[rows]
        text = list(prompts[rows]) if prompts is not None else None
        xs, ys = _segments(before, after)
        tint = COLOURS[kind]
        traces += [
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color=tint, width=0.7),
                opacity=0.35,
                hoverinfo="skip",
                name=f"{kind}: move",
                showlegend=False,
            ),
            go.Scatter(
                x=before[:, 0],
                y=before[:, 1],
                mode="markers",
                name=f"{kind}, before",
                text=text,
                marker=dict(color=tint, size=7, opacity=0.35, symbol="circle-open"),
                hovertemplate="%{text}<extra>before</extra>",
            ),
            go.Scatter(
                x=after[:, 0],
                y=after[:, 1],
                mode="markers",
                name=f"{kind}, after",
                text=text,
                marker=dict(color=tint, size=8, opacity=0.85),
                hovertemplate="%{text}<extra>after</extra>",
            ),
        ]
    return traces


def shift_figure(shift: dict, prompts: Sequence[str] | None = None, extra: Sequence = ()) -> go.Figure:
    """Each prompt before (open marker) and after (filled), joined by a line; ``extra``
    traces (a SOM grid placed with the same projection) are drawn on top."""
    figure = go.Figure([*_shift_traces(shift, prompts), *extra])
    axes = shift.get("axes") or ("axis 1", "axis 2")
    figure.update_layout(
        xaxis_title=axes[0],
        yaxis_title=axes[1],
        height=560,
        margin=dict(t=40),
        title=f"Layer {shift['layer']}: before and after, in the map of the unmodified points",
    )
    return figure


def shift_animation(shifts: Sequence[dict], prompts: Sequence[str] | None = None) -> go.Figure:
    """The same view for every layer, one animation frame per layer, with a layer slider."""
    frames = [go.Frame(data=_shift_traces(s, prompts), name=str(s["layer"])) for s in shifts]
    figure = go.Figure(frames[0].data, frames=frames)
    steps = [
        dict(
            method="animate",
            label=str(s["layer"]),
            args=[
                [str(s["layer"])],
                dict(mode="immediate", frame=dict(duration=300, redraw=True), transition=dict(duration=0)),
            ],
        )
        for s in shifts
    ]
    figure.update_layout(
        height=560,
        margin=dict(t=40),
        title="Every layer (PCA fitted per layer on the unmodified points)",
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="Layer "))],
        updatemenus=[
            dict(
                type="buttons",
                showactive=False,
                x=0,
                y=-0.12,
                xanchor="left",
                buttons=[
                    dict(
                        label="Play",
                        method="animate",
                        args=[None, dict(frame=dict(duration=400, redraw=True), fromcurrent=True)],
                    ),
                    dict(
                        label="Pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0))]
                    ),
                ],
            )
        ],
    )
    return figure


def trace_figure(rows: Sequence[dict], layer: int) -> go.Figure:
    """One line per reply (``rows``: ``variant``, ``instruction``, ``trace``): projection
    against token index; a star where a refusal phrase begins."""
    figure = go.Figure()
    for row in rows:
        trace = row["trace"]
        label = f"{row['variant']}: {row['instruction'][:40]}"
        figure.add_trace(
            go.Scatter(
                y=list(trace["projections"]),
                mode="lines",
                name=label,
                text=list(trace["tokens"]),
                hovertemplate="token %{x}: %{text}<br>projection %{y:.3f}<extra>" + html.escape(label) + "</extra>",
            )
        )
        start = trace.get("refusal_token")
        if start is not None:
            figure.add_trace(
                go.Scatter(
                    x=[start],
                    y=[trace["projections"][start]],
                    mode="markers",
                    marker=dict(symbol="star", size=13, color="black"),
                    showlegend=False,
                    hovertemplate="refusal phrase begins<extra></extra>",
                )
            )
    figure.update_layout(
        xaxis_title="generated token", yaxis_title=f"projection at layer {layer}", height=420, margin=dict(t=30)
    )
    return figure


def trace_html(trace: dict, scale: float | None = None) -> str:
    """The reply's tokens shaded by projection (red positive, blue negative), the refusal's
    first token underlined; ``scale`` is the projection drawn at full colour."""
    scale = scale or max((abs(v) for v in trace["projections"]), default=1.0) or 1.0
    spans = []
    for index, (token, value) in enumerate(zip(trace["tokens"], trace["projections"])):
        share = min(abs(value) / scale, 1.0)
        rgb = "214,39,40" if value >= 0 else "31,119,180"
        mark = "border-bottom:2px solid black;" if index == trace.get("refusal_token") else ""
        spans.append(
            f'<span title="{value:.3f}" style="background:rgba({rgb},{share:.2f});{mark}">{html.escape(token)}</span>'
        )
    return '<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">' + "".join(spans) + "</div>"


def compare_figure(comparison: dict) -> go.Figure:
    """Cosine of the two models' DIM directions per layer, and each model's DIM norm."""
    rows = comparison["layers"]
    layers = [row["layer_a"] for row in rows]
    figure = go.Figure(
        [
            go.Scatter(x=layers, y=[row["cosine"] for row in rows], name="cosine(DIM A, DIM B)", mode="lines+markers"),
            go.Scatter(
                x=layers,
                y=[row["norm_a"] for row in rows],
                name=f"DIM norm, A: {comparison['model_a']}",
                yaxis="y2",
                mode="lines",
                line=dict(dash="dot"),
            ),
            go.Scatter(
                x=layers,
                y=[row["norm_b"] for row in rows],
                name=f"DIM norm, B: {comparison['model_b']}",
                yaxis="y2",
                mode="lines",
                line=dict(dash="dash"),
            ),
        ]
    )
    figure.update_layout(
        xaxis_title="layer of model A (block input)",
        yaxis=dict(title="cosine", range=[-1, 1]),
        yaxis2=dict(title="DIM norm", overlaying="y", side="right"),
        height=420,
        margin=dict(t=30),
        legend=dict(orientation="h", y=-0.25),
    )
    return figure


def scores_figure(comparison: dict) -> go.Figure:
    """Each model's selection scores per layer (bypass, induce, KL), side by side."""
    figure = go.Figure()
    for key, dash in (("a", "solid"), ("b", "dash")):
        scores = (comparison.get("scores") or {}).get(key)
        if not scores:
            continue
        for metric in ("bypass", "induce", "kl"):
            figure.add_trace(
                go.Scatter(
                    x=scores["layers"],
                    y=scores[metric],
                    name=f"{metric} ({key.upper()})",
                    mode="lines",
                    line=dict(dash=dash),
                )
            )
    figure.update_layout(xaxis_title="layer (block input)", yaxis_title="score", height=420, margin=dict(t=30))
    return figure
