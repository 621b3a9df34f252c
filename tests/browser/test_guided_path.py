"""The dashboard in headless Chromium, driven by Playwright as a new user would.

Slow (``python -m pytest -m slow tests/browser/test_guided_path.py``). A real ``streamlit run`` serves
the app on the organism (the tiny random Llama of ``tests/tiny.py`` when the organism is
not built). The main test walks the Start page's guided path end to end in one session and
checks, on the way, what a user sees of the issue-18 fixes: colour scales, tick labels,
defaults, counts, kept state. Settings are made small through the UI to keep it quick.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import ui
from tests.app_server import app_pages, streamlit_server, tiny_unless_built

PAGES = app_pages()
PROMPTS_PER_SET = 16
# Plotly's Plasma starts at #0d0887; Streamlit's theme recoloured Magma's #000004 to pink.
PLASMA_LOWEST = "rgb(13, 8, 135)"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The dashboard served for this module's tests."""
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with streamlit_server(log_path=log, stand_ins=tiny_unless_built()) as url:
        yield url


def test_app_declares_pages_with_their_own_addresses():
    assert [page.url_path for page in PAGES][0] == "", "the Start page is the default one, served at /"
    assert [page.title for page in PAGES][0] == "Start"
    assert len({page.url_path for page in PAGES}) == len(PAGES) >= 7


def _alerts(page: Page) -> str:
    return "\n".join(page.get_by_test_id("stAlert").all_inner_texts())


def _no_exception(page: Page) -> None:
    expect(page.get_by_test_id("stException")).to_have_count(0)


def _step_states(page: Page) -> list[str]:
    """'Done' or 'Not done yet' for each step of the Start page's guided path, in order."""
    states = []
    for number in range(1, 5):
        text = page.locator(f".st-key-guide_step_{number}").inner_text()
        states.append("Not done yet" if "Not done yet" in text else "Done" if "Done" in text else "?")
    return states


def _start_page(page: Page) -> list[str]:
    ui.go(page, "Start")
    return _step_states(page)


def _tick_labels(chart, axis: str) -> list[str]:
    return chart.locator(f"g.{axis}tick text").all_text_contents()


@pytest.mark.slow
def test_a_page_opened_by_its_address_is_that_page_of_the_app(page: Page, tmp_path):
    """/generate on a server no session has opened yet: the Generate page with the app's sidebar."""
    with streamlit_server(log_path=tmp_path / "server.log", stand_ins=["--tiny"]) as url:
        ui.open_app(page, f"{url}/generate", "Generate")
        nav = page.get_by_test_id("stSidebarNav")
        expect(nav.get_by_role("link", name="Start")).to_be_visible()
        expect(nav.get_by_role("link", name="state")).to_have_count(0)  # the app_pages/ folder's own listing
        expect(page.get_by_text("No direction sets yet")).to_be_visible()
        expect(page.get_by_role("link", name=re.compile("Compute activations"))).to_be_visible()
        assert page.url.endswith("/generate")
        _no_exception(page)


@pytest.mark.slow
def test_guided_path_end_to_end(page: Page, app_url):
    ui.open_app(page, app_url, "Start")
    assert _step_states(page) == ["Not done yet"] * 4
    ui.set_number(page, "Max prompts per set", PROMPTS_PER_SET)

    # 1. Compute activations, from the step's link.
    page.get_by_role("link", name="Open Data & activations").click()
    expect(ui.heading(page, "Data & activations")).to_be_visible()
    ui.press(page, "Compute activations and DIM directions")
    expect(page.get_by_text(re.compile(r"^DIM candidates: \d+ directions"))).to_be_visible()
    assert "Activations: " in _alerts(page) and "DIM candidates: computed" in _alerts(page)
    expect(page.get_by_test_id("stProgress")).to_have_count(0)  # finished bars are gone
    # Again: the report says the activations came from the cache and the separation was kept.
    ui.press(page, "Compute activations and DIM directions")
    assert "loaded from the activation cache" in _alerts(page)
    expect(page.get_by_text(re.compile("^Per-layer separation: kept from an earlier run"))).to_be_visible()
    n_layers = int(re.search(r"(\d+) layers", page.get_by_test_id("stSidebar").inner_text()).group(1))

    # 2. Find a direction.
    ui.go(page, "Directions")
    heat = ui.chart(page, "directions_cosines")
    box = heat.bounding_box()
    assert box["width"] > 800 and box["height"] >= 420, box
    for label in heat.locator("g.xtick text").all():  # no x label cut off at the chart's edge
        label_box = label.bounding_box()
        assert label_box and label_box["y"] + label_box["height"] <= box["y"] + box["height"] + 1
    assert len(ui.tags(page, "Directions from DIM")) <= 12
    box_of_tags = ui.multiselect(page, "Directions from DIM").locator("[role=group]").first
    assert box_of_tags.evaluate("e => e.scrollHeight <= e.clientHeight + 1"), "the DIM multiselect is clipped"
    ui.set_number(page, "Validation prompts per set", 4)
    high = min(n_layers - 1, round(0.75 * n_layers))
    ui.set_number(page, "From layer", max(1, high - 2))
    ui.set_number(page, "To layer", high)
    ui.press(page, "Score candidates")
    expect(page.get_by_text(re.compile(r"^(Chosen:|No candidate chosen)"))).to_be_visible()
    _no_exception(page)
    # The KL scale starts at Plasma's lowest colour (Streamlit's theme no longer swaps it for pink).
    kl = ui.chart(page, "selection_kl_chart")
    stops = kl.locator("linearGradient stop").evaluate_all("s => s.map(e => e.getAttribute('stop-color'))")
    assert PLASMA_LOWEST in stops[:1] + stops[-1:], stops
    # One position: one integer tick, no -0.6 ... -1.4.
    assert _tick_labels(ui.chart(page, "selection_bypass_chart"), "y") == ["-1"]
    assert all(re.fullmatch(r"\d+", t) for t in _tick_labels(kl, "x")), _tick_labels(kl, "x")
    offered = page.get_by_text(re.compile(r"added as the set (Selected|Closest) DIM")).inner_text()
    selected_set = re.search(r"added as the set (Selected DIM|Closest DIM)", offered).group(1)
    assert ui.selected(page, "Start from").startswith(f"{selected_set}:")
    assert _start_page(page) == ["Done", "Done", "Not done yet", "Not done yet"]

    # 3. See it switched off: the selected direction ablated next to the baseline.
    ui.go(page, "Generate")
    ui.set_number(page, "Max new tokens", 12)
    ui.expand(page, f"{selected_set} (1 directions)")
    direction = page.get_by_test_id("stExpander").filter(has_text=selected_set).get_by_role("checkbox").nth(1)
    name = direction.locator("xpath=ancestor::label").inner_text().strip()
    ui.tick(page, name)
    ui.press(page, re.compile(r"^Generate \d+ prompts x 2 columns$"))
    expect(page.get_by_test_id("stMetric")).to_have_count(2)
    bar_labels = ui.chart(page, "generate_rates").locator("text.bartext").all_text_contents()
    # Stacked refused / complied / broken shares: each column's shares add up to 100%, so
    # every column has at least one labelled bar, and every label is a percentage.
    assert len(bar_labels) >= 2 and all(re.fullmatch(r"\d+%", t) for t in bar_labels), bar_labels
    assert _start_page(page) == ["Done", "Done", "Done", "Not done yet"]
    ui.go(page, "Generate")  # the tick and the results are still there, as current results
    expect(page.get_by_role("checkbox", name=name, exact=True)).to_be_checked()
    expect(page.get_by_text("Results for the settings above")).to_be_visible()
    expect(page.get_by_test_id("stMetric")).to_have_count(2)

    # 4. Export: the forms point at the selected direction; download, then import back.
    ui.go(page, "Export")
    assert ui.tags(page, "Direction sets to download") == [selected_set]
    assert ui.selected(page, "Direction set") == selected_set
    with page.expect_download() as zip_download:
        page.get_by_role("button", name=re.compile(r"^Download \.zip")).click()
    with page.expect_download() as pt_download:
        page.get_by_role("button", name=re.compile(r"^Download \.pt")).click()
    ui.after_action(page)
    stem = Path(zip_download.value.suggested_filename).stem
    zip_path, pt_path = zip_download.value.path(), pt_download.value.path()
    uploader = page.get_by_test_id("stFileUploaderDropzoneInput")
    uploader.set_input_files(
        files=[{"name": f"{stem}.zip", "mimeType": "application/zip", "buffer": Path(zip_path).read_bytes()}]
    )
    expect(page.get_by_text(re.compile(rf"^Imported imported:{re.escape(stem)} "))).to_be_visible()
    uploader.set_input_files(
        files=[{"name": f"{stem}.pt", "mimeType": "application/octet-stream", "buffer": Path(pt_path).read_bytes()}]
    )
    expect(
        page.get_by_text(re.compile(rf"renamed because a set named imported:{re.escape(stem)} exists"))
    ).to_be_visible()
    table = page.get_by_test_id("stDataFrame").first
    expect(table).to_contain_text(f"imported:{stem} (2)")  # the table above already lists both imports
    assert _start_page(page) == ["Done"] * 4
    _no_exception(page)


@pytest.mark.slow
def test_som_map_quality_and_search_counts(page: Page, app_url):
    ui.open_app(page, app_url, "Start")
    ui.set_number(page, "Max prompts per set", PROMPTS_PER_SET)
    ui.go(page, "Data & activations")
    ui.press(page, "Compute activations and DIM directions")
    expect(page.get_by_text(re.compile(r"^DIM candidates: \d+ directions"))).to_be_visible()
    organism = "refusal-organism" in page.get_by_test_id("stSidebar").inner_text()

    # The default SOM, with both errors and what they mean beside the map.
    ui.go(page, "Manifold")
    ui.press(page, re.compile(r"^Train SOM at layer \d+, position -1$"))
    expect(page.get_by_text(re.compile(r"^Quantization error: the mean distance"))).to_be_visible()
    topographic = page.get_by_test_id("stMetric").filter(has_text="Topographic error").get_by_test_id("stMetricValue")
    share = float(topographic.inner_text().rstrip("%")) / 100
    if organism:  # the 3x3 map at layer 18 lies flat over the prompts (it was folded, 0.516)
        assert share <= 0.1, share
    # Clicking a node selects it without fading the prompts' points.
    chart = ui.chart(page, "manifold_chart")
    # Plotly takes clicks on its drag layer above the points, as a mouse click at the node does.
    chart.locator("g.trace.scatter").last.locator("path.point").nth(4).click(force=True)
    ui.after_action(page)
    expect(page.get_by_role("combobox", name="Neuron (or click a node in the 2-D map)")).to_have_value(
        re.compile(r"^1-1 \(")  # the centre node, fifth in grid order
    )
    points = ui.chart(page, "manifold_chart").locator("g.trace.scatter").first.locator("path.point")
    opacities = points.evaluate_all("ps => ps.map(p => parseFloat(getComputedStyle(p).opacity))")
    assert opacities and min(opacities) >= 0.5, opacities
    som_set = page.get_by_text(re.compile(r"^SOM 3x3 L\d+ P-1: added to the direction sets")).inner_text().split(":")[0]

    # Search over the SOM's directions: the counts agree and the study is named after the pool.
    ui.go(page, "Search")
    assert ui.tags(page, "Pool: direction sets") == [som_set]
    ui.set_number(page, "k (directions per trial)", 2)
    ui.set_number(page, "Trials", 6)
    ui.set_number(page, "Validation prompts per set", 2)
    ui.press(page, "Run search")
    study = page.get_by_role("heading", name=re.compile(r"^Study ")).inner_text()
    assert re.fullmatch(rf"Study {re.escape(som_set.replace(' ', '_'))}-k2-[0-9a-f]{{32}}", study), study
    caption = page.get_by_text(re.compile(r"^\d+ scored trials")).inner_text()
    scored = int(re.match(r"(\d+) scored", caption).group(1))
    skipped = int(m.group(1)) if (m := re.search(r"(\d+) skipped", caption)) else 0
    assert scored + skipped == 6, caption
    trial_points = ui.chart(page, "search_trials_chart").locator("g.trace.scatter").first.locator("path.point")
    expect(trial_points).to_have_count(scored)
    _no_exception(page)
