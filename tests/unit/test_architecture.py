"""The layers the imports obey: import-linter's contract (pyproject.toml) holds, and, read
independently from the source with ``ast``, no two files import each other through a cycle
and the forward-pass plumbing is written only in ``model/forward.py``."""

from __future__ import annotations

import ast
import re
import subprocess

from tests.dev_tools import dev_tool
from tests.import_graph import ROOT, cycles, file_graph, module_files


def test_the_cycle_finder_finds_a_planted_cycle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}, "f": {"f"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_graph_reader_resolves_relative_and_lazy_imports(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    monkeypatch.setattr("tests.import_graph.ROOT", tmp_path)
    graph = file_graph("pkg")
    assert graph["pkg.a"] == {"pkg.sub.b", "pkg.sub"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_no_file_of_the_engine_or_the_pages_is_in_an_import_cycle():
    for package in ("refusal_core", "app_pages"):
        graph = file_graph(package)
        assert len(graph) > 5
        assert cycles(graph) == [], f"import cycles between files of {package}"


def test_the_import_contract_holds():
    """``lint-imports`` reads the layers contract from pyproject.toml; a broken contract fails here."""
    run = subprocess.run(
        [dev_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", run.stdout)


def test_nothing_below_selection_imports_it():
    below = (
        "model",
        "prompts",
        "activations",
        "directions",
        "interventions",
        "generation",
        "readouts",
        "judges",
        "metrics",
        "damage",
        "errors",
        "paths",
        "progress",
        "settings",
    )
    graph = file_graph("refusal_core")
    offenders = {
        module: sorted(t for t in targets if t.startswith("refusal_core.selection"))
        for module, targets in graph.items()
        if module.split(".")[1:2] and module.split(".")[1] in below
    }
    assert {m: t for m, t in offenders.items() if t} == {}


FORWARD_NAMES = {
    "pad_id",
    "left_padded",
    "last_logits",
    "keep_last",
    "last_token_logprobs",
    "tokenize_prompts",
    "encode_prompts",
    "token_ids",
    "refusal_log_odds",
    "_left_padded",
    "_keep_last",
}


def test_forward_plumbing_is_written_only_in_model_forward():
    forward = ROOT / "refusal_core" / "model" / "forward.py"
    for module, path in module_files("refusal_core").items():
        if path == forward:
            continue
        source = path.read_text(encoding="utf-8")
        defined = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
        assert not defined & FORWARD_NAMES, f"{module} defines forward plumbing {defined & FORWARD_NAMES}"
        assert "logits_to_keep" not in source, f"{module} chooses logits_to_keep itself; use model.forward.keep_last"
