"""Chat-template options given as text: ``key=value``, the value read as JSON.

``enable_thinking=false`` gives the template the boolean False, ``reasoning_effort=low`` the
string "low" (a value that is not JSON is taken as a plain string), ``n=3`` the number 3.
The CLI's repeatable ``--chat-template-option`` and the dashboard sidebar (one option per
line) both parse here, so a bad option gets the same message everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from refusal_core.prompts.chat import TemplateError

__all__ = ["TemplateOptionError", "parse_template_options"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Variables apply_chat_template sets itself; an option may not replace them.
_RESERVED = {"messages", "add_generation_prompt", "tools", "documents", "chat_template", "tokenize"}


class TemplateOptionError(TemplateError):
    """A chat-template option is not ``key=value`` with a usable key."""


def parse_template_options(items: Iterable[str] | None) -> tuple[tuple[str, object], ...]:
    """``("enable_thinking=false", ...)`` -> ``(("enable_thinking", False), ...)``, in order."""
    options: dict[str, object] = {}
    for item in items or ():
        text = item.strip()
        if not text:
            continue
        key, sep, raw = text.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not _NAME.fullmatch(key):
            raise TemplateOptionError(
                f"Chat-template option {item!r} is not key=value with a name of letters, digits and _; "
                "write it like enable_thinking=false."
            )
        if key in _RESERVED:
            raise TemplateOptionError(
                f"Chat-template option {key!r} is set by the toolkit itself; choose another name."
            )
        if key in options:
            raise TemplateOptionError(f"Chat-template option {key!r} is given twice; give each option once.")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return tuple(options.items())
