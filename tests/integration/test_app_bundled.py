"""The dashboard, driven headless with AppTest, on the bundled SmolLM2 (slow)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.unit.test_app import APP, _assert_ok, _workspace


@pytest.mark.slow
def test_data_and_generate_pages_on_the_bundled_base_model():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.radio(key="atlas_model_choice").set_value("SmolLM2-135M-Instruct (bundled, non-refusing contrast)").run()
    at.number_input(key="atlas_max_prompts").set_value(8).run()
    at.switch_page("app_pages/data.py").run()  # the app opens on the Start page
    at.button(key="data_compute").click().run()
    _assert_ok(at)
    assert _workspace(at, "bundled:smollm2-135m-instruct").harmful_acts.n_layers == 30
    at.selectbox(key="atlas_judge").set_value("substring")
    at.switch_page("app_pages/generate.py").run()
    at.number_input(key="generate_max_new").set_value(8)
    at.button(key="generate_run").click().run()
    _assert_ok(at)
    assert [m.label for m in at.metric] == ["baseline"]
