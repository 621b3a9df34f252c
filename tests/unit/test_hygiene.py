"""House-keeping the tools check: ruff (rules in pyproject.toml), every dotted
``refusal_core.…`` name in the sources resolves, no empty section banners, no issue numbers
in code, and no switch that exists only for tests in product code."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

from tests.banners import empty_banners
from tests.dev_tools import dev_tool
from tests.import_graph import ROOT

SOURCE_DIRS = ("refusal_core", "app_pages", "tests", "benchmarks", "scripts", "docs")
PRODUCT = ("refusal_core", "app_pages")
DOTTED = re.compile(r"\brefusal_core(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues? ?#?\d+\b|(?<![\w&/])#\d{1,3}\b(?!-)")


def python_files(dirs=SOURCE_DIRS) -> list[Path]:
    """The Python sources of ``dirs`` (and app.py with the engine), less this file, which plants examples."""
    files = [ROOT / "app.py"] if "refusal_core" in dirs else []
    for folder in dirs:
        files += sorted((ROOT / folder).rglob("*.py"))
    return [path for path in files if path != Path(__file__).resolve()]


def resolves(name: str) -> bool:
    """Whether a dotted name is a module, or an attribute (or submodule) reached from one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
            break
        except ModuleNotFoundError:
            continue
    else:
        return False
    for attr in parts[cut:]:
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{attr}")
        except (ModuleNotFoundError, AttributeError):
            return False
    return True


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([dev_tool(tool), *args], cwd=ROOT, capture_output=True, text=True)


def test_every_python_file_parses_on_the_oldest_supported_python():
    """Python 3.10 grammar (``requires-python``): e.g. no quote reuse inside f-strings (3.12)."""
    broken = {}
    for path in [*python_files(), Path(__file__)]:
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
        except SyntaxError as err:
            broken[str(path.relative_to(ROOT))] = f"line {err.lineno}: {err.msg}"
    assert broken == {}


def test_ruff_check_passes():
    run = _run("ruff", "check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_ruff_format_check_passes():
    run = _run("ruff", "format", "--check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_the_resolver_tells_real_names_from_stale_ones():
    assert resolves("refusal_core.metrics.kl_divergence") and resolves("refusal_core.directions.registry")
    assert resolves("refusal_core.model.forward.Batch")
    assert not resolves("refusal_core.export") and not resolves("refusal_core.metrics.no_such_function")


def test_every_dotted_refusal_core_name_in_the_sources_resolves():
    stale = {}
    for path in python_files():
        for name in set(DOTTED.findall(path.read_text(encoding="utf-8"))):
            if not resolves(name):
                stale.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert stale == {}


def test_the_banner_finder_finds_an_empty_banner_and_keeps_a_full_one():
    dash = "# " + "-" * 40
    text = "\n".join(["x = 1", dash, "# Empty", dash, "", "", dash, "# Full", dash, "", "def f():", "    pass", ""])
    assert empty_banners(text) == [2]
    assert empty_banners(text + "\n".join([dash, "# Last", dash, ""])) == [2, 13]


def test_no_empty_section_banners():
    found = {str(p.relative_to(ROOT)): empty_banners(p.read_text(encoding="utf-8")) for p in python_files()}
    assert {path: lines for path, lines in found.items() if lines} == {}


@pytest.mark.parametrize(
    "text, numbered",
    [
        ("the panel of issue 15", True),
        ("see #16.", True),
        ("Issue 4's targets", True),
        ("row #x", False),
        ("int8 #0-9", False),
        ("colour &#160;", False),
        ("top 5 issues", False),
    ],
)
def test_the_issue_number_pattern(text, numbered):
    assert bool(ISSUE_NUMBER.search(text)) is numbered


def test_no_issue_numbers_in_code():
    found = {}
    for path in python_files() + [ROOT / "pyproject.toml", ROOT / "setup.sh"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ISSUE_NUMBER.search(line):
                found.setdefault(str(path.relative_to(ROOT)), []).append(number)
    assert found == {}


def test_no_test_only_switches_in_product_code():
    """Tests swap models and skip warm-ups with fixtures, not environment variables read by the product."""
    switches = ("REFUSAL_ATLAS_TEST_MODEL", "REFUSAL_ATLAS_UMAP_WARM_UP", "TEST_MODEL_ENV")
    found = {
        str(path.relative_to(ROOT)): [s for s in switches if s in path.read_text(encoding="utf-8")]
        for path in python_files(PRODUCT) + [ROOT / "app.py"]
    }
    assert {path: names for path, names in found.items() if names} == {}
