"""The development tools the checks run (ruff, lint-imports), found in this interpreter's venv."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

INSTALL = 'pip install -e ".[dev]" -c constraints.txt'


def dev_tool(name: str) -> str:
    """The venv's own console script (beside this interpreter), else one on PATH; a missing tool fails the test."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the development tools: {INSTALL}")
    return found
