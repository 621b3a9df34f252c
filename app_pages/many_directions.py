"""Many directions: a saved `experiments many-directions` result drawn against k. One line per
family (DIM, each SOM seed, clusters, RDO) for coherent compliance, refusal, broken and harmless
KL on the test split, bootstrap intervals as error bars; click a point to read its replies."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app_pages import _charts
from app_pages._clicks import clicked_key
from refusal_core.errors import UserError
from refusal_core.experiments.results import GOAL, goal_check, load_result, saved_results
from refusal_core.judges.verdict import LABEL_COLOURS

PANELS = (
    ("complied", "coherent compliance"),
    ("refused", "refused"),
    ("deflected", "deflected"),
    ("broken", "broken"),
    ("kl", "harmless KL (nats)"),
)
CHART, POINT = "many_chart", "many_point"

st.title("Many directions")
st.caption(
    "One DIM direction against the best k directions of each family, chosen on val by the subset search "
    "(refused or broken replies fail, harmless KL is penalized) and reported on the test split with 95% bootstrap "
    "intervals. Run `python -m refusal_core experiments many-directions` to add a result."
)


@st.cache_data(max_entries=8, show_spinner=False)
def read(path: str, modified: float) -> dict:
    return load_result(path)


def result_label(path: Path) -> str:
    return path.stem.removeprefix("many-directions-")


def results_by_model(paths: list[Path]) -> dict[str, list[Path]]:
    """Saved results grouped by the model they measured (unreadable ones apart, so their error shows)."""
    grouped: dict[str, list[Path]] = {}
    for item in paths:
        try:
            name = read(str(item), item.stat().st_mtime)["model"]
        except (UserError, OSError, KeyError):
            name = "(unreadable results)"
        grouped.setdefault(name, []).append(item)
    return grouped


def recovery_rows(points: list[dict]) -> list[dict]:
    """Per point: the best |cosine| of one of its directions, and of its span, with each planted direction."""
    return [
        {
            "family": p["family"],
            "k": p["k"],
            **{
                f"{name} {kind}": round(values[kind], 3)
                for name, values in p["planted"].items()
                for kind in ("best", "span")
            },
            "complied": round(p["metrics"]["complied"]["value"], 3),
            "refused": round(p["metrics"]["refused"]["value"], 3),
            "KL": round(p["metrics"]["kl"]["value"], 3),
        }
        for p in points
        if "planted" in p
    ]


def point_id(point: dict) -> str:
    return f"{point['family']} k={point['k']}"


def figure(points: list[dict]) -> go.Figure:
    """A grid of panels (two a row), one line per family; customdata carries the point's id.

    Results saved before a metric existed (``deflected``) leave its panel empty."""
    fig = make_subplots(
        rows=(len(PANELS) + 1) // 2,
        cols=2,
        subplot_titles=[title for _, title in PANELS],
        horizontal_spacing=0.08,
        vertical_spacing=0.14,
    )
    families = list(dict.fromkeys(point["family"] for point in points))
    colours = ["black", "royalblue", "darkorange", "seagreen", "purple", "crimson", "teal", "olive"]
    for index, family in enumerate(families):
        rows = sorted((p for p in points if p["family"] == family), key=lambda p: p["k"])
        for panel, (metric, _) in enumerate(PANELS):
            if any(metric not in p["metrics"] for p in rows):
                continue
            values = [p["metrics"][metric] for p in rows]
            fig.add_trace(
                go.Scatter(
                    x=[p["k"] for p in rows],
                    y=[v["value"] for v in values],
                    mode="lines+markers",
                    name=family,
                    legendgroup=family,
                    showlegend=panel == 0,
                    line=dict(color=colours[index % len(colours)]),
                    customdata=[[point_id(p)] for p in rows],
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[v["high"] - v["value"] for v in values],
                        arrayminus=[v["value"] - v["low"] for v in values],
                    ),
                    hovertemplate=f"{family} k=%{{x}}: %{{y:.3f}}<extra>{metric}</extra>",
                ),
                row=panel // 2 + 1,
                col=panel % 2 + 1,
            )
    fig.update_xaxes(title_text="k (directions ablated)", dtick=1)
    fig.update_layout(height=310 * ((len(PANELS) + 1) // 2), margin=dict(t=40), legend=dict(orientation="h", y=-0.12))
    return fig


def clicked(event) -> str | None:
    key = clicked_key(event)
    return None if key is None else str(key)


def show_replies(replies: list[dict], empty: str) -> None:
    if not replies:
        st.info(empty)
    for reply in replies:
        with st.container(border=True):
            why = f" ({reply['why']})" if reply.get("why") else ""
            st.caption(
                f"{reply['instruction'][:160]} — :{LABEL_COLOURS.get(reply['label'], 'blue')}[{reply['label']}]{why}"
            )
            st.text(reply["reply"] or "(empty reply)")


paths = saved_results()
if not paths:
    st.info(
        "No saved many-directions result yet: run `python -m refusal_core experiments many-directions` "
        "(it saves under the cache), then reload this page."
    )
    st.stop()
by_model = results_by_model(paths)
model = st.selectbox(
    "Model",
    list(by_model),
    key="many_model",
    help="e.g. bundled:refusal-organism-two-mechanisms, the planted ground truth whose two harm groups refuse through two known directions",
)
path = st.selectbox("Saved result", by_model[model], format_func=result_label, key="many_result")
try:
    result = read(str(path), path.stat().st_mtime)
except (UserError, OSError) as err:
    st.error(f"{err}")
    st.stop()
settings, counts = result["settings"], result["prompts"]["counts"]
st.markdown(
    f"**{result['model']}**, computed {result['started']} in {result['seconds']:.0f} s: {counts['test_harmful']} harmful and "
    f"{counts['test_harmless']} harmless test prompts, subsets chosen on {counts['val_harmful']} + {counts['val_harmless']} val "
    f"prompts ({settings['trials']} trials per family and k, judge {settings['judge']}, KL penalty {settings['kl_penalty']})."
)
by_layer = {entry["layer"]: entry for entry in result["layers"]}
layer = st.selectbox("Layer", list(by_layer), key="many_layer")
entry = by_layer[layer]
goal, base = goal_check(entry["points"]), entry["baseline"]["metrics"]
best, several = goal["best_som"], goal["best_several"]
verdict = "shown" if goal["pass"] else "not shown"
st.markdown(
    f"Unmodified model: refused {base['refused']['value']:.0%}, complied {base['complied']['value']:.0%}. "
    f"Goal (one DIM direction leaves >= {GOAL['dim_refused']:.0%} refusal; a SOM set complies coherently on >= "
    f"{GOAL['som_complied']:.0%} with KL <= {GOAL['max_kl']} and <= {GOAL['max_broken']:.0%} broken): **{verdict}** at layer {layer}. "
    f"DIM leaves {goal['dim_refused']:.0%}"
    + (
        ""
        if best is None
        else f"; best SOM set {best['family']} k={best['k']}: complied {best['complied']:.0%}, broken "
        f"{best['broken']:.0%}, KL {best['kl']:.3f}"
    )
    + "."
    + (
        ""
        if several is None
        else f" With several SOM directions (k >= 2) the best is {several['family']} k={several['k']}: "
        f"complied {several['complied']:.0%}, broken {several['broken']:.0%}, KL {several['kl']:.3f} "
        f"({'goal met' if goal['several_pass'] else 'goal not met'})."
    )
)
points = entry["points"]
event = _charts.chart(figure(points), width="stretch", on_select="rerun", selection_mode="points", key=CHART)
st.dataframe(
    [
        {
            "family": p["family"],
            "k": p["k"],
            "directions": ", ".join(p["names"]),
            **{metric: round(p["metrics"][metric]["value"], 4) for metric, _ in PANELS if metric in p["metrics"]},
            "harmless refused": round(p["metrics"]["harmless_refused"]["value"], 4),
            "trials": p["search"]["trials"],
            "search s": p["search"]["seconds"],
        }
        for p in points
    ],
    hide_index=True,
    width="stretch",
)
recovered = recovery_rows(points)
if recovered:
    st.subheader("Recovery of the planted directions")
    st.caption(
        "This model holds planted ground-truth directions. best: the largest |cosine| of one of the point's directions "
        "with the planted one; span: the cosine of the planted direction with its projection onto the span of the "
        "point's directions (1: ablating the set removes it whole). The row 'planted' ablates the planted directions themselves."
    )
    st.dataframe(recovered, hide_index=True, width="stretch")
ids = [point_id(p) for p in points]
picked = clicked(event)
if picked in ids:
    st.session_state[POINT] = picked
elif st.session_state.get(POINT) not in ids:
    st.session_state[POINT] = ids[0]
chosen = st.selectbox("Replies of", ids, key=POINT)
point = points[ids.index(chosen)]
st.caption(
    f"{chosen}: ablating {', '.join(point['names'])}. Search: "
    + ", ".join(f"{name} {value}" for name, value in point["search"].items() if name != "study")
)
harmful_tab, harmless_tab = st.tabs(
    [f"Harmful test replies ({len(point['replies'])})", f"Harmless test replies ({len(point['harmless_replies'])})"]
)
with harmful_tab:
    show_replies(point["replies"], "No harmful replies stored.")
with harmless_tab:
    show_replies(point["harmless_replies"], "No harmless replies stored.")
