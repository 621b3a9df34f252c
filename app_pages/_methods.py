"""Direction-method controls generated from the engine's registry: every settings field
becomes a widget (numbers, choices, switches), and every registered method that no page
draws by hand gets a generic section, so a new method shows up here with no page code."""

from __future__ import annotations

import streamlit as st

from app_pages import _state
from app_pages._settings import settings_widgets
from refusal_core.directions.base import DirectionError
from refusal_core.directions.registry import DirectionMethod, FitInput, methods
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.sets import PromptSetError
from refusal_core.selection import optimize  # noqa: F401  (registers the optimize method)

# Methods whose controls a page draws itself (with the widgets below): DIM on the Data page,
# SOM and clusters on the Manifold page, the optimized direction on the Directions page.
DRAWN_BY_PAGES = ("dim", "som", "cluster", "optimize")


def _fit_input(method: DirectionMethod, ws: _state.Workspace, loaded: LoadedModel) -> FitInput | None:
    """What the method reads, from this session: its activations and, as the method needs, a layer or a start."""
    chosen = _state.chosen_prompts()
    harmful, harmless = ws.harmful or chosen.get("harmful"), ws.harmless or chosen.get("harmless")
    if harmful is None or harmless is None:
        st.info("Choose a harmful and a harmless prompt set in the sidebar first.")
        return None
    data = FitInput(loaded, harmful, harmless, ws.harmful_acts, ws.harmless_acts)
    if method.reads == "layer":
        cols = st.columns(2)
        data.layer = int(
            cols[0].number_input(
                "Layer (block input)", 0, loaded.n_layers - 1, loaded.n_layers // 2, key=f"method_{method.name}_layer"
            )
        )
        data.position = int(cols[1].number_input("Position", -64, -1, -1, key=f"method_{method.name}_position"))
    if method.reads == "init":
        starts = [(set_name, name) for set_name, directions in ws.direction_sets.items() for name in directions.names]
        if not starts:
            st.info("Compute or import a direction to start from first.")
            return None
        set_name, name = st.selectbox(
            "Start from", starts, format_func=lambda pair: f"{pair[0]}:{pair[1]}", key=f"method_{method.name}_init"
        )
        data.init = ws.direction_sets[set_name].select([name])
    return data


def other_methods_section(ws: _state.Workspace, loaded: LoadedModel) -> None:
    """A section for every registered method that no page draws by hand (added ones included)."""
    others = {name: method for name, method in methods().items() if name not in DRAWN_BY_PAGES}
    if not others:
        return
    st.header("More direction methods")
    name = st.selectbox("Method", list(others), format_func=lambda key: others[key].title, key="method_choice")
    method = others[name]
    st.caption(method.help)
    data = _fit_input(method, ws, loaded)
    values = settings_widgets(method.settings, f"method_{name}")
    if data is None or not st.button(f"Fit {method.title}", type="primary", key=f"method_fit_{name}"):
        return
    data.progress = _state.progress_callback
    try:
        directions = method.fit(data, method.settings(**values))
    except (ValueError, DirectionError, PromptSetError) as err:
        st.error(f"{method.title} failed: {err}")
        return
    ws.add_set(method.title, directions)
    st.success(f"Added the set *{method.title}* ({len(directions)} directions).")
