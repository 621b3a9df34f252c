"""Controls generated from a settings dataclass (``refusal_core.settings``): a widget per
field, numbers bounded by the field's minimum and maximum, choices as a select box (a
multiselect for a tuple of choices), switches for bools; the field's help is the widget's
help. Every page that shows settings draws them here."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import streamlit as st

from refusal_core.settings import Setting, settings_fields

__all__ = ["settings_widgets"]


def _widget(
    column, field: Setting, key: str, default: object, bounds: tuple[float | None, float | None], disabled: bool
):
    """One widget for one settings field; returns its value in the field's type."""
    common = {"key": key, "help": field.help, "disabled": disabled}
    if field.choices and field.kind is tuple:
        return tuple(column.multiselect(field.label, list(field.choices), default=list(default), **common))
    if field.choices:
        choices = list(field.choices)
        return column.selectbox(field.label, choices, index=choices.index(default), **common)
    if field.kind is bool:
        return column.checkbox(field.label, value=bool(default), **common)
    if field.kind is str:
        return column.text_input(field.label, value=str(default), **common)
    cast = int if field.kind is int else float
    bound = {
        name: cast(value) for name, value in zip(("min_value", "max_value"), bounds, strict=True) if value is not None
    }
    if field.step is not None:
        bound["step"] = cast(field.step)
    return cast(column.number_input(field.label, value=cast(default), **bound, **common))


def settings_widgets(
    settings: type,
    prefix: str,
    skip: tuple[str, ...] = (),
    defaults: Mapping[str, object] | None = None,
    n_columns: int = 4,
    columns: Sequence | None = None,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    disabled: Mapping[str, Callable[[dict[str, object]], bool]] | None = None,
) -> dict[str, object]:
    """Widgets for the fields of a settings dataclass (keys ``<prefix>_<field>``); returns their values.

    An optional field (default None) gets a switch "<label>: automatic" and a number that
    is used when the switch is off. On this page, ``defaults`` overrides a field's default,
    ``bounds`` its (minimum, maximum), and ``disabled`` greys a field out when its predicate
    holds for the values of the fields drawn before it. The widgets go round ``columns`` when
    given (so two dataclasses can share one row), else round ``n_columns`` new ones.
    """
    values: dict[str, object] = {}
    columns = list(columns) if columns is not None else st.columns(n_columns)
    fields = [field for field in settings_fields(settings) if field.name not in skip]
    for index, field in enumerate(fields):
        column = columns[index % len(columns)]
        default = (defaults or {}).get(field.name, field.default)
        limits = (bounds or {}).get(field.name, (field.minimum, field.maximum))
        off = (disabled or {}).get(field.name, lambda _values: False)(values)
        key = f"{prefix}_{field.name}"
        if field.optional:
            auto = column.checkbox(
                f"{field.label}: automatic", value=default is None, key=f"{key}_auto", help=field.help
            )
            number = _widget(column, field, key, default if default is not None else field.minimum or 1, limits, off)
            values[field.name] = None if auto else number
        else:
            values[field.name] = _widget(column, field, key, default, limits, off)
    return values
