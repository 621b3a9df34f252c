"""The Search page's and the Directions page's selection controls are generated from their
settings dataclasses: each control starts at its field's default (read here straight from
``dataclasses.fields``, not through the generator), and a changed control reaches the engine."""

from __future__ import annotations

import dataclasses

import pytest
from streamlit.testing.v1 import AppTest

from refusal_core.prompts.validation import ValidationSettings
from refusal_core.selection import racing
from refusal_core.selection.racing import ScoringMode
from refusal_core.selection.result import SelectionFilters
from refusal_core.selection.search_settings import SearchSettings
from tests.unit.test_app import _assert_ok, _with_activations, _workspace, tiny_app  # noqa: F401 (fixture)

# What a user sets on the Search page; the judge comes from the sidebar.
SEARCH_CONTROLS = ("k", "n_trials", "objective", "success", "kl_penalty", "max_new_tokens", "seed", "ablate_mode")


def _controls(at: AppTest) -> dict:
    """Every keyed input widget on the page, by key."""
    widgets = [*at.number_input, *at.selectbox, *at.multiselect, *at.checkbox]
    return {widget.key: widget for widget in widgets if widget.key}


def _defaults(settings: type) -> dict[str, object]:
    return {spec.name: spec.default for spec in dataclasses.fields(settings)}


def test_search_controls_start_at_the_dataclass_defaults_and_reach_the_search():
    at = _with_activations()
    at.switch_page("app_pages/search.py").run()
    _assert_ok(at)
    controls = _controls(at)
    defaults = _defaults(SearchSettings)
    pool_size = int(next(c.value for c in at.caption if c.value.startswith("Pool of")).split()[2])
    for name in SEARCH_CONTROLS:
        value = controls[f"search_{name}"].value
        expected = min(defaults[name], pool_size) if name == "k" else defaults[name]
        assert (tuple(value) if isinstance(value, list) else value) == expected, name
    assert controls["search_n_val"].value == _defaults(ValidationSettings)["n_val"]
    # The objective that needs no replies greys out what only replies use.
    controls["search_objective"].set_value("score").run()
    controls = _controls(at)
    assert controls["search_max_new_tokens"].disabled and controls["search_success"].disabled
    changed = {"k": 1, "n_trials": 2, "kl_penalty": 0.5, "seed": 7, "ablate_mode": "sequential"}
    for name, value in changed.items():
        controls[f"search_{name}"].set_value(value)
    at.button(key="search_run").click().run()
    _assert_ok(at)
    used = _workspace(at).search.result.settings
    assert {name: getattr(used, name) for name in changed} == changed
    assert used.objective == "score" and used.max_new_tokens == defaults["max_new_tokens"]


def test_selection_controls_start_at_the_dataclass_defaults_and_reach_the_race(monkeypatch):
    calls = []
    real = racing.race_candidates

    def recording(loaded, candidates, harmful, harmless, filters, *args, **kwargs):
        calls.append({"harmful": list(harmful), "filters": filters, "exhaustive": kwargs.get("exhaustive")})
        return real(loaded, candidates, harmful, harmless, filters, *args, **kwargs)

    monkeypatch.setattr(racing, "race_candidates", recording)
    at = _with_activations()
    at.switch_page("app_pages/directions.py").run()
    _assert_ok(at)
    controls = _controls(at)
    for settings in (SelectionFilters, ScoringMode, ValidationSettings):
        for name, default in _defaults(settings).items():
            assert controls[f"selection_{name}"].value == pytest.approx(default), name
    changed = {"max_kl": 0.5, "min_induce": -1.0, "max_layer_fraction": 1.0}
    for name, value in changed.items():
        controls[f"selection_{name}"].set_value(value)
    controls["selection_n_val"].set_value(2)
    controls["selection_exhaustive"].check()
    at.button(key="selection_run").click().run()
    _assert_ok(at)
    (call,) = calls
    assert call["filters"] == SelectionFilters(**changed) == _workspace(at).selection.filters
    assert call["exhaustive"] is True and _workspace(at).selection.timing["mode"] == "exhaustive"
    assert len(call["harmful"]) == 2
