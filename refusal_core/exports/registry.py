"""The export-format registry: every way a direction set leaves the toolkit honours one contract.

A format is an :class:`ExportFormat`: ``name`` (the CLI's ``export-model --format`` value),
``title`` (the Export page's label), ``help`` (one line for both), a ``settings`` dataclass
whose fields are declared with ``directions.registry.setting`` (so the CLI options and the
page widgets are generated from it), ``estimate_size(loaded, directions, settings)`` giving
the bytes the export will take on disk *before* anything is written, and
``write(request) -> Path``. Formats register themselves when their module is imported;
:func:`formats` imports every module of this package once, so a new format is one new file.

Every format writes into a staged folder (``interventions.export_target``: a partial folder
beside the target, moved into place when complete, an earlier export replaced only with
``overwrite``), so a failed export never leaves half a result.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.registry import settings_fields
from refusal_core.errors import SettingsError
from refusal_core.interventions.export_target import (
    check_target,
    new_partial_dir,
    recover_leftovers,
    replace_dir,
    write_marker,
)
from refusal_core.model.loading import LoadedModel

__all__ = [
    "BUILTIN_FORMATS",
    "ExportFormat",
    "ExportRequest",
    "export_version",
    "formats",
    "get_format",
    "register",
    "settings_from",
    "staged_export",
]

# The modules of the built-in formats, imported first and in this order (the CLI's choices
# and the Export page follow it). ``folder.py`` is the streaming writer the ``folder`` format
# may call; it and the other helpers below register nothing.
BUILTIN_FORMATS = ("folder_format", "lora", "gguf", "control_vector")
_BUILTIN_NAMES = ("folder", "lora", "gguf", "control_vector", "control-vector")
_NOT_FORMATS = {"registry", "manifest", "folder", "gguf_tensors", "gguf_scratch"}


@dataclass(frozen=True)
class ExportRequest:
    """One export: what to write, where, and the command recorded in its manifest."""

    loaded: LoadedModel
    directions: DirectionSet
    out_dir: Path
    settings: Any
    overwrite: bool = False
    command: str | None = None


@dataclass(frozen=True)
class ExportFormat:
    """A registered export format (see the module docstring)."""

    name: str
    title: str
    help: str
    settings: type
    estimate_size: Callable[[LoadedModel, DirectionSet, Any], int]
    write: Callable[[ExportRequest], Path]
    suffix: str = ""  # appended to the default folder name: cache/exports/<spec>-<suffix or name>


_FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    """Add (or replace) a format; its settings must describe every field."""
    settings_fields(fmt.settings)
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, ExportFormat]:
    """Every registered format by name: the built-in ones first, then any other module here, then plugins."""
    package = __name__.rpartition(".")[0]
    found = sorted(info.name for info in pkgutil.iter_modules(importlib.import_module(package).__path__))
    ordered = [name for name in BUILTIN_FORMATS if name in found]
    for module in [*ordered, *(name for name in found if name not in BUILTIN_FORMATS and name not in _NOT_FORMATS)]:
        importlib.import_module(f"{package}.{module}")
    # The built-in formats first, in their fixed order, whatever imported them first; then the rest.
    first = [name for name in _BUILTIN_NAMES if name in _FORMATS]
    return {name: _FORMATS[name] for name in [*first, *(name for name in _FORMATS if name not in first)]}


def get_format(name: str) -> ExportFormat:
    known = formats()
    key = name.replace("-", "_")
    if key not in known:
        raise SettingsError(f"Unknown export format {name!r}; choose one of {', '.join(known)}.")
    return known[key]


def settings_from(fmt: ExportFormat, values: dict[str, Any]) -> Any:
    """The format's settings from ``values`` (missing fields keep their defaults; unknown names are an error)."""
    names = {spec.name for spec in fields(fmt.settings)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SettingsError(
            f"Format {fmt.name!r} has no setting(s) {', '.join(unknown)}; it has {', '.join(sorted(names)) or 'none'}."
        )
    return fmt.settings(**values)


def staged_export(out_dir: Path, overwrite: bool, version: str, fill: Callable[[Path], None]) -> Path:
    """Run ``fill(tmp)`` on a fresh partial folder beside ``out_dir`` and move it into place.

    The target is checked before any work and again before the move (another export may
    have filled it meanwhile); the partial folder is deleted whatever happens.
    """
    recover_leftovers(out_dir)
    check_target(out_dir, overwrite)
    tmp = new_partial_dir(out_dir, version)
    try:
        fill(tmp)
        write_marker(tmp, complete=True, version=version)
        check_target(out_dir, overwrite)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_version() -> str:
    from refusal_core.interventions.export import package_version

    return package_version()
