"""The views of an intervention in headless Chromium: the session report opens from disk with
every network request refused and draws its charts; each new control of the Manifold,
Generate, Compare and Report pages is walked once on a real server (the tiny model)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from refusal_core.cli import main
from tests import ui
from tests.app_server import streamlit_server
from tests.tiny import tiny_model

pytestmark = pytest.mark.slow


def _offline(page: Page) -> list[str]:
    """Refuse every request that leaves the file system; return the list of those asked for."""
    asked: list[str] = []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            request_route.continue_()
        else:
            asked.append(url)
            request_route.abort()

    page.route("**/*", route)
    return asked


def test_the_report_opens_offline_and_draws_every_chart(page: Page, tmp_path):
    model = tmp_path / "model"
    loaded = tiny_model("llama")
    loaded.model.save_pretrained(model)
    loaded.tokenizer.save_pretrained(model)
    stem = str(tmp_path / "dim")
    assert main(["directions", "dim", "--model", str(model), "--limit", "6", "--out", stem]) == 0
    shift, compared, report = tmp_path / "shift.json", tmp_path / "compare.json", tmp_path / "report.html"
    assert (
        main(
            [
                "manifold",
                "--model",
                str(model),
                "--limit",
                "6",
                "--layer",
                "2",
                "--ablate",
                f"{stem}:dim/pos-1/layer1",
                "--all-layers",
                "--out",
                str(shift),
                "--json",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "compare",
                str(model),
                str(model),
                "--limit",
                "6",
                "--score-prompts",
                "2",
                "--out",
                str(compared),
                "--json",
            ]
        )
        == 0
    )
    assert main(["report", str(shift), str(compared), "--out", str(report)]) == 0
    asked = _offline(page)
    page.goto(report.as_uri())
    charts = page.locator(".js-plotly-plot")
    expect(charts).to_have_count(4)  # shift, its animation, cosine, scores
    for index in range(4):
        expect(charts.nth(index).locator("g.cartesianlayer").first).to_be_attached()
    expect(page.get_by_role("heading", name="Manifest")).to_be_visible()
    assert asked == [], asked


def test_each_new_control_once(page: Page, tmp_path):
    with streamlit_server(log_path=tmp_path / "server.log", stand_ins=["--tiny", "--no-umap-warm-up"]) as url:
        ui.open_app(page, url, "Start")
        ui.set_number(page, "Max prompts per set", 8)
        ui.go(page, "Data & activations")
        ui.press(page, "Compute activations and DIM directions")
        # Manifold: the selected set's directions ablated, drawn in the page's own map.
        ui.go(page, "Manifold")
        ui.press(page, "Recompute under the intervention")
        ui.chart(page, "shift_chart")
        expect(page.get_by_test_id("stMetric")).to_have_count(4)
        # Generate: one DIM direction ablated beside the baseline, then traced.
        ui.go(page, "Generate")
        ui.set_number(page, "Max new tokens", 5)
        ui.press(page, re.compile(r"^Generate \d+ prompts x 1 columns$"))
        ui.tick(page, "Trace refusal token by token")
        ui.chart(page, "trace_chart")
        # Compare against the other bundled model, then the report of the session.
        ui.go(page, "Compare")
        ui.press(page, re.compile(r"^Compare "))
        ui.chart(page, "compare_cosine")
        ui.go(page, "Report")
        ui.press(page, "Build the report")
        with page.expect_download() as download:
            page.get_by_role("button", name=re.compile("^Download the report")).click()
        saved = tmp_path / "report.html"
        download.value.save_as(saved)
        text = saved.read_text()
        assert "The manifold under the intervention" in text and "Replies" in text and "against" in text
        expect(page.get_by_test_id("stException")).to_have_count(0)
