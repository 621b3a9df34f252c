"""One way to declare settings: a dataclass whose every field is made with :func:`setting`,
its default and help written once. From it come the command-line flags
(:func:`add_setting_flags`, :func:`settings_from_args`) and the dashboard's controls
(``app_pages/_settings.py`` draws a widget per :class:`Setting` of :func:`settings_fields`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from refusal_core.errors import SettingsError

__all__ = [
    "Setting",
    "add_setting_flags",
    "grid",
    "int_list",
    "joined",
    "setting",
    "settings_fields",
    "settings_from_args",
]


def setting(
    default: object,
    help: str,
    label: str | None = None,
    choices: tuple = (),
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    parse: Callable[[str], object] | None = None,
    show: Callable[[object], str] | None = None,
) -> Any:
    """A settings field with its description (shown as CLI help and widget help).

    ``label`` is the widget's label (default: the name in words), ``choices`` the allowed
    values, ``flag`` the CLI option when it is not ``--name-with-dashes``, ``aliases`` older
    option names that keep working, ``minimum``/``maximum`` bound the widgets (the dataclass
    checks its values itself, with messages naming the fix) and ``step`` is their increment
    (the widget's own when None), and ``cli=False`` keeps the field
    off the command line. A field whose value is not one number or word (a tuple, say) gives
    ``parse`` (flag text to value, raising ``SettingsError`` naming the flag) and ``show``
    (value to flag text).
    """
    metadata = {
        "help": help,
        "label": label,
        "choices": tuple(choices),
        "flag": flag,
        "minimum": minimum,
        "maximum": maximum,
        "step": step,
        "aliases": tuple(aliases),
        "cli": cli,
        "parse": parse,
        "show": show,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One settings field as the CLI and the pages see it; ``kind`` is int, float, str or bool."""

    name: str
    kind: type
    default: object
    help: str
    label: str
    choices: tuple
    flag: str
    optional: bool
    minimum: float | None
    maximum: float | None
    aliases: tuple[str, ...] = ()
    cli: bool = True
    parse: Callable[[str], object] | None = None
    show: Callable[[object], str] | None = None
    step: float | None = None


def settings_fields(settings: type) -> list[Setting]:
    """The fields of a settings dataclass, with their types resolved (``int | None`` is an optional int)."""
    hints = typing.get_type_hints(settings)
    out = []
    for spec in dataclasses.fields(settings):
        hint = hints[spec.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        members = args if origin in (typing.Union, types.UnionType) else (hint,)
        kinds = [typing.get_origin(kind) or kind for kind in members if kind is not type(None)]
        if origin is typing.Literal:
            kinds = [type(args[0])]
        optional = type(None) in members
        meta = spec.metadata
        if "help" not in meta:
            raise TypeError(f"{settings.__name__}.{spec.name} has no description; declare it with setting(...).")
        out.append(
            Setting(
                name=spec.name,
                kind=kinds[0],
                default=spec.default,
                help=meta["help"],
                label=meta["label"] or spec.name.replace("_", " ").capitalize(),
                choices=meta["choices"],
                flag=meta["flag"] or "--" + spec.name.replace("_", "-"),
                optional=optional,
                minimum=meta["minimum"],
                maximum=meta["maximum"],
                aliases=meta.get("aliases", ()),
                cli=meta.get("cli", True),
                parse=meta.get("parse"),
                show=meta.get("show"),
                step=meta.get("step"),
            )
        )
    return out


def _parse(item: Setting):
    """An argparse ``type`` that converts to the field's kind. Bounds are the dataclass's to check
    (its ``__post_init__`` raises a ``SettingsError`` that names the fix), not argparse's."""

    def parse(text: str):
        try:
            return item.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not of type {item.kind.__name__}") from None

    parse.__name__ = item.kind.__name__  # argparse names the type in its messages
    return parse


def add_setting_flags(
    parser: argparse.ArgumentParser, settings: type, skip: tuple[str, ...] = (), defaults: dict | None = None
) -> list[Setting]:
    """One option per field of ``settings`` (those with ``cli`` on, not in ``skip``, and whose flag the
    parser does not have yet); returns the fields added. ``defaults`` overrides a field's default here.

    A bool field is a switch (``--flag`` turns on a default-off field; ``--flag``/``--no-flag`` a
    default-on one); other fields take a value converted to the field's type, checked against
    its choices. The help ends with the default, which is written only in the field.
    """
    added = []
    taken = set(parser._option_string_actions)
    for item in settings_fields(settings):
        if not item.cli or item.name in skip or item.flag in taken:
            continue
        default = (defaults or {}).get(item.name, item.default)
        names = [item.flag, *(alias for alias in item.aliases if alias not in taken)]
        if item.parse is not None:
            # Read as text and converted by settings_from_args, so a bad value is a SettingsError.
            text = item.show(default) if item.show else str(default)
            parser.add_argument(*names, dest=item.name, default=text, help=f"{item.help} (default {text})")
        elif item.kind is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(*names, dest=item.name, action=action, default=default, help=item.help)
        else:
            shown = "" if default is None else f" (default {default})"
            parser.add_argument(
                *names,
                dest=item.name,
                metavar=None if item.choices else item.flag.lstrip("-").upper().replace("-", "_"),
                type=_parse(item),
                default=default,
                choices=item.choices or None,
                help=item.help + shown,
            )
        added.append(item)
    return added


def settings_from_args(settings: type, args: argparse.Namespace, **overrides):
    """The settings dataclass from parsed flags: every field the namespace holds (text converted by the
    field's ``parse``), then ``overrides``."""
    values = {}
    for item in settings_fields(settings):
        if hasattr(args, item.name):
            value = getattr(args, item.name)
            values[item.name] = item.parse(value) if item.parse is not None and isinstance(value, str) else value
    return settings(**{**values, **overrides})


def int_list(flag: str) -> Callable[[str], tuple[int, ...]]:
    """``parse`` for comma-separated whole numbers (``12,16``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise SettingsError(
                f"{flag} takes whole numbers separated by commas (e.g. {flag} 12,16), got {text!r}."
            ) from None
        if not values:
            raise SettingsError(f"{flag} needs at least one number (e.g. {flag} 16).")
        return values

    return parse


def grid(flag: str) -> Callable[[str], tuple[int, int]]:
    """``parse`` for ``ROWSxCOLUMNS`` (``3x3``)."""

    def parse(text: str) -> tuple[int, int]:
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise SettingsError(f"{flag} takes ROWSxCOLUMNS (e.g. {flag} 3x3), got {text!r}.")
        return int(parts[0]), int(parts[1])

    return parse


def joined(separator: str) -> Callable[[object], str]:
    """``show`` for a tuple: its items joined by ``separator``."""
    return lambda value: separator.join(map(str, value))
