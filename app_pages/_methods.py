"""Direction-method controls generated from the engine's registry: every settings field
becomes a widget (numbers, choices, switches), and every registered method that no page
draws by hand gets a generic section, so a new method shows up here with no page code."""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from app_pages import _state
from refusal_core.directions.base import DirectionError
from refusal_core.directions.registry import DirectionMethod, FitInput, Setting, methods, settings_fields
from refusal_core.model.loading import LoadedModel
from refusal_core.selection import optimize  # noqa: F401  (registers the optimize method)
from refusal_core.prompts.sets import PromptSetError

# Methods whose controls a page draws itself (with the widgets below): DIM on the Data page,
# SOM and clusters on the Manifold page, the optimized direction on the Directions page.
DRAWN_BY_PAGES = ("dim", "som", "cluster", "optimize")


def _widget(column, field: Setting, key: str, default: object):
    """One widget for one settings field; returns its value in the field's type."""
    if field.choices:
        choices = list(field.choices)
        return column.selectbox(field.label, choices, index=choices.index(default), key=key, help=field.help)
    if field.kind is bool:
        return column.checkbox(field.label, value=bool(default), key=key, help=field.help)
    if field.kind is str:
        return column.text_input(field.label, value=str(default), key=key, help=field.help)
    cast = int if field.kind is int else float
    bound = {name: cast(value) for name, value in (("min_value", field.minimum), ("max_value", field.maximum)) if value is not None}
    return cast(column.number_input(field.label, value=cast(default), key=key, help=field.help, **bound))


def settings_widgets(settings: type, prefix: str, skip: tuple[str, ...] = (), defaults: Mapping[str, object] | None = None,
                     n_columns: int = 4) -> dict[str, object]:
    """Widgets for the fields of a settings dataclass (keys ``<prefix>_<field>``); returns their values.

    An optional field (default None) gets a switch "<label>: automatic" and a number that
    is used when the switch is off. ``defaults`` overrides a field's default on this page.
    """
    values: dict[str, object] = {}
    columns = st.columns(n_columns)
    fields = [field for field in settings_fields(settings) if field.name not in skip]
    for index, field in enumerate(fields):
        column = columns[index % n_columns]
        default = (defaults or {}).get(field.name, field.default)
        key = f"{prefix}_{field.name}"
        if field.optional:
            auto = column.checkbox(f"{field.label}: automatic", value=default is None, key=f"{key}_auto", help=field.help)
            number = _widget(column, field, key, default if default is not None else field.minimum or 1)
            values[field.name] = None if auto else number
        else:
            values[field.name] = _widget(column, field, key, default)
    return values


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
        data.layer = int(cols[0].number_input("Layer (block input)", 0, loaded.n_layers - 1, loaded.n_layers // 2, key=f"method_{method.name}_layer"))
        data.position = int(cols[1].number_input("Position", -64, -1, -1, key=f"method_{method.name}_position"))
    if method.reads == "init":
        starts = [(set_name, name) for set_name, directions in ws.direction_sets.items() for name in directions.names]
        if not starts:
            st.info("Compute or import a direction to start from first.")
            return None
        set_name, name = st.selectbox("Start from", starts, format_func=lambda pair: f"{pair[0]}:{pair[1]}", key=f"method_{method.name}_init")
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
