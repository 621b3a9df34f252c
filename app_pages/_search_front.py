"""The Search page's trade-off view: trials as refusal vs harmless KL, coloured by their broken
share, the Pareto front marked, and the replies of a chosen trial (click a point or pick one)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts
from app_pages._clicks import clicked_key
from refusal_core.judges.verdict import LABEL_COLOURS, LABELS
from refusal_core.selection.pareto import trial_front, trial_point
from refusal_core.selection.search import SearchResult

FRONT = "Pareto front"
PICK = "search_trial_pick"
CHART = "search_pareto_chart"


def _refusal_title(result: SearchResult) -> str:
    objective = result.settings.objective
    if objective == "verdicts":
        failed = ", ".join(label for label in LABELS if label not in result.settings.success)
        return f"{failed} (share of replies, {result.settings.judge} judge)"
    return "mean refusal score" if objective == "score" else "refusal rate"


def pareto_figure(result: SearchResult) -> go.Figure:
    """Evaluated trials at (KL, refusal term); colour and size grow with the broken share."""
    rows = [trial for trial in result.trials if trial_point(trial) is not None]
    front = trial_front(result.trials)
    broken = [trial["broken"] or 0.0 for trial in rows]
    hover = [
        f"trial {t['number']}: {', '.join(t['names'])}<br>refused {_share(t['refused'])}, deflected {_share(t.get('deflected'))}, "
        f"broken {_share(t['broken'])}"
        for t in rows
    ]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[trial_point(t)[1] for t in rows],
            y=[trial_point(t)[0] for t in rows],
            mode="markers",
            name="trials",
            customdata=[[t["number"]] for t in rows],
            text=hover,
            hovertemplate="%{text}<br>KL %{x:.4f}, refusal %{y:.3f}<extra></extra>",
            marker=dict(
                color=broken,
                cmin=0.0,
                cmax=1.0,
                colorscale="Reds",
                size=[9 + 14 * b for b in broken],
                colorbar=dict(title="broken"),
                line=dict(width=1, color="black"),
            ),
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[trial_point(t)[1] for t in front],
            y=[trial_point(t)[0] for t in front],
            mode="lines+markers",
            name=FRONT,
            customdata=[[t["number"]] for t in front],
            line=dict(shape="hv", dash="dot", color="royalblue"),
            marker=dict(symbol="circle-open", size=18, color="royalblue", line=dict(width=2)),
            hoverinfo="skip",
        )
    )
    figure.update_layout(
        xaxis_title="harmless first-token KL (nats)",
        yaxis_title=_refusal_title(result),
        height=380,
        margin=dict(t=20),
    )
    return figure


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _clicked(event) -> int | None:
    """The trial number of the first point selected on the chart, if any."""
    key = clicked_key(event)
    return None if key is None else int(key)


def show_front(result: SearchResult) -> None:
    """The trade-off chart, the front as a table and the chosen trial's replies."""
    st.markdown("**Refusal vs harmless KL** (click a trial to read its replies; circled: the Pareto front)")
    event = _charts.chart(pareto_figure(result), width="stretch", on_select="rerun", selection_mode="points", key=CHART)
    front = trial_front(result.trials)
    st.dataframe(
        [{k: (", ".join(v) if k == "names" else v) for k, v in t.items() if k != "replies"} for t in front],
        hide_index=True,
        width="stretch",
    )
    evaluated = [trial for trial in result.trials if trial_point(trial) is not None]
    if not evaluated:
        return
    numbers = [trial["number"] for trial in evaluated]
    clicked = _clicked(event)
    if clicked in numbers:
        st.session_state[PICK] = clicked
    elif st.session_state.get(PICK) not in numbers:
        st.session_state[PICK] = front[0]["number"] if front else numbers[0]
    by_number = {trial["number"]: trial for trial in evaluated}
    number = st.selectbox(
        "Replies of trial", numbers, key=PICK, format_func=lambda n: f"trial {n}: {', '.join(by_number[n]['names'])}"
    )
    show_replies(by_number[number])


def show_replies(trial: dict) -> None:
    replies = trial.get("replies") or []
    if not replies:
        st.info("This trial stored no replies (the score objective generates none).")
        return
    st.caption(f"The first {len(replies)} replies of trial {trial['number']}, as stored in the study.")
    for reply in replies:
        with st.container(border=True):
            st.caption(f"{reply['instruction'][:120]} — :{LABEL_COLOURS.get(reply['label'], 'blue')}[{reply['label']}]")
            st.text(reply["reply"] or "(empty reply)")
