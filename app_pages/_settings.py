"""Controls generated from a settings dataclass (``refusal_core.settings``): a widget per
field, numbers bounded by the field's minimum and maximum, choices as a select box, switches
for bools; the field's help is the widget's help. Every page that shows settings draws them here."""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from refusal_core.settings import Setting, settings_fields

__all__ = ["settings_widgets"]


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
    bound = {
        name: cast(value)
        for name, value in (("min_value", field.minimum), ("max_value", field.maximum))
        if value is not None
    }
    return cast(column.number_input(field.label, value=cast(default), key=key, help=field.help, **bound))


def settings_widgets(
    settings: type,
    prefix: str,
    skip: tuple[str, ...] = (),
    defaults: Mapping[str, object] | None = None,
    n_columns: int = 4,
) -> dict[str, object]:
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
            auto = column.checkbox(
                f"{field.label}: automatic", value=default is None, key=f"{key}_auto", help=field.help
            )
            number = _widget(column, field, key, default if default is not None else field.minimum or 1)
            values[field.name] = None if auto else number
        else:
            values[field.name] = _widget(column, field, key, default)
    return values
