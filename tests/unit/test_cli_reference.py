"""docs/cli.md is the parsers' reference as they are now, and it names every command and option."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from refusal_core.cli import build_parser
from refusal_core.cli.reference import REGENERATE, reference
from tests.import_graph import ROOT


def test_the_committed_cli_reference_is_current():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == reference(), f"docs/cli.md is stale; regenerate it with: {REGENERATE}"


def _help_text(path: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*path, "--help"])
    return out.getvalue()


def test_every_command_and_option_of_argparse_help_is_in_the_reference():
    """Oracle: argparse's own --help of every command (the command list read from the top-level help)."""
    text = reference()
    top = _help_text([])
    groups = re.search(r"^  \{([^}]*)\}", top, re.M).group(1).split(",")
    checked = 0
    for group in groups:
        group_help = _help_text([group])
        subcommands = re.search(r"^  \{([^}]*)\}", group_help, re.M)
        paths = [[group, name] for name in subcommands.group(1).split(",")] if subcommands else [[group]]
        for path in paths:
            anchor = f'<a id="{"-".join(path)}"></a>'
            assert anchor in text, f"{' '.join(path)} missing"
            section = text.split(anchor, 1)[1].split("<a id=", 1)[0]
            option_lines = [line.split("  ")[0] for line in _help_text(path).splitlines() if re.match(r"\s+-", line)]
            flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", " ".join(option_lines))) - {"--help"}
            missing = {flag for flag in flags if f"`{flag}`" not in section}
            assert not missing, f"{' '.join(path)}: {missing}"
            checked += 1
    assert checked >= 10
