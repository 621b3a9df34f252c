"""Start: the guided first path through the dashboard, each step linking to its page and
showing whether this session has done it yet."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from app_pages import _state

st.title("Start")
st.markdown(
    "Refusal Atlas finds the directions in a chat model's residual stream through which it refuses, "
    "shows them, switches them off and exports them. The four steps below take a few minutes on the bundled "
    "refusal organism with the default settings; each opens the page where it happens."
)
ws = _state.workspace()


@dataclass(frozen=True)
class Step:
    title: str
    page: str
    page_title: str
    how: str
    done: bool


def steps() -> list[Step]:
    selected = _state.preferred_direction(ws)
    return [
        Step(
            "Compute activations",
            "app_pages/data.py",
            "Data & activations",
            "Press **Compute activations and DIM directions**: the residual stream of the harmful and harmless "
            "prompts chosen in the sidebar, and one difference-in-means (DIM) candidate per position and layer.",
            ws.has_activations,
        ),
        Step(
            "Find a direction",
            "app_pages/directions.py",
            "Directions",
            "Press **Score candidates**: each candidate is ablated on harmful prompts and added on harmless ones; "
            "the best becomes the set *Selected DIM* (or *Closest DIM* when none passes the filters).",
            selected is not None,
        ),
        Step(
            "See it switched off",
            "app_pages/generate.py",
            "Generate",
            "Tick the selected direction under *Selected DIM* (or *Closest DIM*) and press **Generate**: the "
            "baseline replies next to the replies with the direction ablated at every layer.",
            ws.has_ablated,
        ),
        Step(
            "Export",
            "app_pages/export.py",
            "Export",
            "Download the direction (safetensors with its provenance, or a .pt tensor), or write a model with "
            "it projected out of the weights.",
            bool(ws.exports),
        ),
    ]


for number, step in enumerate(steps(), start=1):
    with st.container(border=True, key=f"guide_step_{number}"):
        left, right = st.columns([4, 1])
        left.markdown(f"**{number}. {step.title}**")
        left.markdown(step.how)
        left.page_link(step.page, label=f"Open {step.page_title}", icon=":material/arrow_forward:")
        if step.done:
            right.markdown(":green[:material/check_circle: Done]")
        else:
            right.markdown(":gray[:material/radio_button_unchecked: Not done yet]")
st.caption(
    "Done marks what this browser session has computed for the model chosen in the sidebar. "
    "The other pages (Manifold, Search) go further: many directions from a self-organizing map, and the best "
    "subset of them."
)
