"""The CLI reference, generated from the parsers: every subcommand with its help and each
option with its default and help, as Markdown.

``python -m refusal_core.cli.reference > docs/cli.md`` regenerates ``docs/cli.md``; a test
fails while the committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterator

from refusal_core.cli import build_parser

__all__ = ["REGENERATE", "commands", "reference"]

REGENERATE = "python -m refusal_core.cli.reference > docs/cli.md"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((action for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Iterator[tuple]:
    """``(path, help, parser)`` of every command that runs (a parser without subcommands), depth first."""
    sub = _subparsers(parser)
    if sub is None:
        yield path, help, parser
        return
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from commands(child, (*path, name), helps.get(name, ""))


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{name}`" for name in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        ("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper()
    )
    return f"{names} {_cell(metavar)}"


def _default(action: argparse.Action) -> str:
    if action.required or not action.option_strings:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    if action.default is None or action.default == argparse.SUPPRESS:
        return ""
    return f"`{_cell(action.default)}`"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        help = (
            (action.help or "") % {"default": action.default}
            if action.help and "%(default)" in action.help
            else action.help or ""
        )
        help = help.removesuffix(f" (default {action.default})")  # the default has its own column
        rows.append(f"| {_flag(action)} | {_default(action)} | {_cell(help)} |")
    if not rows:
        return []
    return ["| option | default | help |", "| --- | --- | --- |", *rows]


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference as Markdown."""
    parser = parser or build_parser()
    lines = [
        "# CLI reference",
        "",
        f"Generated from the parsers by `{REGENERATE}`; do not edit by hand.",
        f"Every command runs as `{parser.prog} COMMAND ...`; bad input exits with code 2 and one message.",
        "",
    ]
    found = list(commands(parser))
    lines += ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{' '.join(path)}`](#{'-'.join(path)}) | {_cell(help)} |" for path, help, _ in found]
    for path, help, command in found:
        lines += ["", f'<a id="{"-".join(path)}"></a>', f"## `{' '.join(path)}`", ""]
        if help:
            lines += [_cell(help[:1].upper() + help[1:]), ""]
        if command.description and command.description != help:
            lines += [command.description.strip(), ""]
        lines += _options(command)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
