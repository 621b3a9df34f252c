"""Checks of the parsed command line that run before any model is loaded or anything computed.

* a flag given twice that keeps only one value (argparse keeps the last silently) is refused,
  unless the flag is declared repeatable (``action="append"``);
* every float option must be finite (``--coeff nan`` or ``1e400`` is refused);
* counts that cannot be negative (``--kl-limit``, ``--limit``, ``--batch-size``) are checked;
* a leading ``~`` in a path option is expanded (a quoted ``'~/model'`` reaches us unexpanded);
* ``--device`` must exist on this machine (``cuda`` on a CPU build fails here, not after the weights load);
* every output path (``--out``, ``--save-direction``, ``--delta-out``) must be writable;
* prompt files are read and checked (limits included) before the model is loaded.

Each problem raises ``CliError`` (exit code 2) naming the flag, the value and the fix.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

from refusal_core.cli.common import CliError

__all__ = ["leaf_parser", "preflight", "refuse_repeated_flags"]

PATH_OPTIONS = (
    "model",
    "out",
    "ablate",
    "actadd",
    "init",
    "dirs",
    "pool",
    "harmful",
    "harmless",
    "prompts",
    "kl_prompts",
    "save_direction",
    "delta_out",
    "from_fine_tune",
)
OUTPUT_OPTIONS = ("out", "save_direction", "delta_out")
# dest -> the smallest allowed value
MINIMUMS = {"kl_limit": 0, "limit": 1, "batch_size": 1}


def leaf_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)parser of the command named in ``argv``, following nested subcommands."""
    rest = list(argv)
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return parser
        index = next((i for i, token in enumerate(rest) if token in sub.choices), None)
        if index is None:
            return parser
        parser, rest = sub.choices[rest[index]], rest[index + 1 :]


def refuse_repeated_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A single-valued flag given more than once is an error, not "the last one wins"."""
    leaf = leaf_parser(parser, argv)
    seen: dict[argparse.Action, list[str]] = {}
    for index, token in enumerate(argv):
        if not token.startswith("-") or token == "-":
            continue
        option, has_value, inline = token.partition("=")
        action = leaf._option_string_actions.get(option)
        if action is None:
            continue
        value = inline if has_value else (argv[index + 1] if action.nargs != 0 and index + 1 < len(argv) else "")
        seen.setdefault(action, []).append(value)
    for action, values in seen.items():
        if len(values) > 1 and not isinstance(action, (argparse._AppendAction, argparse._CountAction)):
            flag = max(action.option_strings, key=len)
            shown = ", ".join(repr(v) for v in values if v) or f"{len(values)} times"
            raise CliError(
                f"{flag} was given {len(values)} times ({shown}) but takes one value; give it once "
                f"(only these are repeatable: {_repeatable(leaf) or 'none in this command'})."
            )


def _repeatable(leaf: argparse.ArgumentParser) -> str:
    return ", ".join(
        max(a.option_strings, key=len)
        for a in leaf._actions
        if isinstance(a, argparse._AppendAction) and a.option_strings
    )


def _check_numbers(leaf: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for action in leaf._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        flag = max(action.option_strings, key=len) if action.option_strings else action.dest
        if action.type is float:
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise CliError(f"{flag} {item} is not a finite number; give an ordinary number such as 1.0.")
        minimum = MINIMUMS.get(action.dest)
        if minimum is not None and isinstance(value, int) and value < minimum:
            raise CliError(f"{flag} must be at least {minimum}, got {value}; give a number >= {minimum}.")


def _expand_home(args: argparse.Namespace) -> None:
    for dest in PATH_OPTIONS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, dest, os.path.expanduser(value))
        elif isinstance(value, Path) and str(value).startswith("~"):
            setattr(args, dest, value.expanduser())
        elif isinstance(value, list):
            setattr(
                args, dest, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v for v in value]
            )


def check_device(device: str | None) -> None:
    """``--device`` names a device this machine has (before the weights are loaded onto it)."""
    if device is None or device in ("cpu", "auto"):
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CliError(
                f"--device {device} needs a CUDA GPU, and this PyTorch build sees none "
                f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of PyTorch."
            )
        if parsed.index is not None and parsed.index >= count:
            raise CliError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}; choose one of them."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {device}: MPS is not available on this machine; use --device cpu.")


def check_writable(path: str | os.PathLike[str], flag: str) -> None:
    """The folder ``path`` will be written into exists (or can be made) and accepts a new file."""
    target = Path(path)
    ancestor = target.parent if str(target.parent) else Path(".")
    ancestor = ancestor.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CliError(
            f"{flag} {str(path)!r} cannot be written: {str(ancestor)!r} is a file, not a folder; choose another path."
        )
    try:
        handle, probe = tempfile.mkstemp(dir=ancestor, prefix=".refusal-atlas-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise CliError(
            f"{flag} {str(path)!r} cannot be written: {err.strerror or err} in {str(ancestor)!r}; "
            "choose a folder you can write to (nothing was computed yet)."
        ) from None


PROMPT_OPTIONS = ("harmful", "harmless", "prompts", "kl_prompts")


def _check_prompt_files(args: argparse.Namespace) -> None:
    """Prompt files are read (within the size, count and length limits) before the model loads;
    built-in sets are always fine and Hugging Face sets are left to the command."""
    from refusal_core.prompts.loaders import resolve_prompt_set

    for dest in PROMPT_OPTIONS:
        spec = getattr(args, dest, None)
        if isinstance(spec, str) and not spec.startswith(("builtin:", "hf:")):
            column = getattr(args, "column", None) if dest != "kl_prompts" else None
            resolve_prompt_set(spec, column=column)


def preflight(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    """All the checks above, in order; raises CliError at the first problem."""
    leaf = leaf_parser(parser, argv)
    refuse_repeated_flags(parser, argv)
    _expand_home(args)
    _check_numbers(leaf, args)
    check_device(getattr(args, "device", None))
    _check_prompt_files(args)
    for dest in OUTPUT_OPTIONS:
        value = getattr(args, dest, None)
        if value:
            check_writable(value, "--" + dest.replace("_", "-"))
