"""The dashboard's views of an intervention, driven headless with AppTest on the tiny model:
the manifold under an intervention, the per-token trace on Generate, Compare and the
session report; each control walked once, results kept per session."""

from __future__ import annotations

import base64
import json

import numpy as np

from tests.unit.test_app import _assert_ok, _charts, _with_activations, _workspace, tiny_app  # noqa: F401


def _figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _values(array) -> np.ndarray:
    """A trace's coordinates: Plotly writes numpy arrays as base64 typed arrays."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
    return np.asarray(array, dtype=float)


def _shift(at):
    at.switch_page("app_pages/manifold.py").run()
    _assert_ok(at)
    at.radio(key="shift_kind").set_value("ablate").run()
    at.selectbox(key="shift_set").set_value("DIM").run()
    name = _workspace(at).direction_sets["DIM"].names[-1]
    at.multiselect(key="shift_dirs").set_value([name]).run()
    at.button(key="shift_run").click().run()
    _assert_ok(at)
    return name


def test_manifold_under_an_ablation_draws_before_and_after_in_the_unchanged_map():
    at = _with_activations()
    _shift(at)
    figures = _figures(at)
    shift = next(f for f in figures if any(t.get("name") == "harmful, after" for t in f["data"]))
    ws = _workspace(at)
    n = len(ws.harmful.instructions)
    before = next(t for t in shift["data"] if t.get("name") == "harmful, before")
    # "Before" is the page's own map of this layer, untouched: the first chart's harmful points.
    page_map = figures[0]
    harmful = next(t for t in page_map["data"] if t.get("name") == "harmful")
    np.testing.assert_allclose(_values(before["x"]), _values(harmful["x"]), rtol=1e-6)
    assert len(_values(before["x"])) == n
    assert [m.label for m in at.metric][:4] == [
        "DIM norm",
        "Probe accuracy",
        "Refitted probe (CV)",
        "Harmful / harmless move",
    ]
    assert "last_shift" in ws.views
    at.checkbox(key="shift_animate").check().run()
    _assert_ok(at)
    animation = _figures(at)[-1]
    assert len(animation["frames"]) == ws.harmful_acts.n_layers - 1


def test_generate_traces_every_reply_token_by_token():
    at = _with_activations()
    ws = _workspace(at)
    name = ws.direction_sets["DIM"].names[-1]
    at.switch_page("app_pages/generate.py").run()
    at.selectbox(key="atlas_judge").set_value("substring")
    at.checkbox(key=f"generate_dir_DIM_{name}").check()
    at.number_input(key="generate_max_new").set_value(5)
    at.button(key="generate_run").click().run()
    _assert_ok(at)
    charts = _charts(at)
    at.checkbox(key="trace_on").check().run()
    at.selectbox(key="trace_set").set_value("DIM").run()
    at.multiselect(key="trace_dirs").set_value([name]).run()
    _assert_ok(at)
    assert _charts(at) == charts + 1
    rows = ws.views["last_trace"]
    generation = ws.generations[next(reversed(ws.generations))]
    assert len(rows) == sum(len(c) for c in generation.values())
    for row in rows:
        completion = next(c for c in generation[row["variant"]] if c.instruction == row["instruction"])
        assert len(row["trace"]["projections"]) == completion.n_tokens
    # Another set to project on starts at its first direction, so the trace is still drawn.
    other = ws.direction_sets["DIM"].select(list(ws.direction_sets["DIM"].names[:2]))
    ws.add_set("Two of DIM", other)
    at.run()
    at.selectbox(key="trace_set").set_value("Two of DIM").run()
    _assert_ok(at)
    assert at.multiselect(key="trace_dirs").value == [other.names[0]]
    assert _charts(at) == charts + 1


def test_compare_page_and_session_report():
    at = _with_activations()
    at.switch_page("app_pages/compare.py").run()
    _assert_ok(at)
    at.radio(key="compare_other").set_value("SmolLM2-135M-Instruct (bundled)").run()
    at.button(key="compare_run").click().run()
    _assert_ok(at)
    ws = _workspace(at)
    comparison = ws.views["last_compare"]
    # In the tests both bundled choices load the same tiny weights: the directions agree at every layer.
    assert all(abs(row["cosine"] - 1) < 1e-6 for row in comparison["layers"][1:])
    assert _charts(at) == 3  # the cosine per layer and the two maps
    _shift(at)
    at.switch_page("app_pages/report.py").run()
    _assert_ok(at)
    at.button(key="report_build").click().run()
    _assert_ok(at)
    html = at.session_state["report_html"]
    assert "The manifold under the intervention" in html and "against" in html and "weights_sha256" in html


def test_view_results_stay_in_their_session():
    first = _with_activations()
    _shift(first)
    second = _with_activations()
    second.switch_page("app_pages/manifold.py").run()
    _assert_ok(second)
    assert "last_shift" in _workspace(first).views and "last_shift" not in _workspace(second).views
    second.switch_page("app_pages/report.py").run()
    assert any("Nothing to report yet" in info.value for info in second.info)
