"""Command line: ``python -m refusal_core COMMAND ...``.

Human-readable output by default, ``--json`` for machines. Bad input (a missing file, a
width mismatch, a layer out of range, an unloadable model: any ``errors.UserError``) prints
one clear message to stderr and exits with code 2. Any other exception is a bug: Python
prints its traceback and the exit code is 1. Each command group lives in its own module and adds its
parsers with ``add_parsers(sub)``; ``common`` holds the loading preamble they share.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from refusal_core.cli import activations, categories, directions, experiments, export, generate, judge, organism, views
from refusal_core.cli.common import EXIT_BAD_INPUT
from refusal_core.cli.preflight import preflight
from refusal_core.errors import UserError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refusal_core", description="Refusal Atlas: find, inspect, ablate and export refusal directions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (activations, directions, generate, judge, export, organism, categories, experiments, views):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in the manifests commands write
    try:
        preflight(parser, argv, args)  # before any model is loaded or anything computed
        code = args.func(args)  # a command may return its own exit code (reproduce: 1 on a mismatch)
    except UserError as err:
        # Only the message: the user's input is at fault, and a traceback would bury the fix.
        # Every other exception propagates (traceback, exit code 1): it is a bug.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code if isinstance(code, int) else 0
