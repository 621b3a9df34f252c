"""Save one PNG per dashboard page to docs/screenshots/<page>.png, each after its main action.

Usage: ``python docs/take_screenshots.py [--out DIR]`` (needs ``apt-get install chromium``).
Serves ``streamlit run app.py`` on a free 127.0.0.1 port with the real bundled models and
walks the pages in one Playwright session as a user would, with small settings so it takes
a few minutes on a CPU: compute activations and DIM candidates, train the default SOM,
score the last-position DIM candidates of a few layers, draw the map with the selected
direction ablated, fit the category directions, generate the baseline next to the selected
direction ablated and added and trace it, run a short subset search over the SOM, compare
the organism with the base model, download the direction, build the session report, and
last the Start page with every step of the guided path done.

The Many directions page draws a saved ``experiments many-directions`` result; when the cache
holds none, the script first runs a small one (``SMALL_MANY_DIRECTIONS``: one layer, a 2x2 SOM,
k up to 2, a few prompts; 149 s on two busy CPU cores).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from refusal_core.experiments.results import saved_results  # noqa: E402
from tests import ui  # noqa: E402 - needs the repository root on sys.path
from tests.app_server import chromium_launch_options, streamlit_server  # noqa: E402

# A many-directions run small enough to precede the screenshots (the page draws a saved one).
SMALL_MANY_DIRECTIONS = (
    "--layers 18 --max-k 2 --som-seeds 0 --som-grid 2x2 --clusters 2 --no-optimize --trials 2 "
    "--search-tokens 8 --test-tokens 16 --val-prompts 2 2 --test-prompts 6 4 --n-boot 200"
).split()
VIEWPORT = {"width": 1400, "height": 2000}  # computed pages are long; show the results below the controls
# Plotly draws a chart a moment after Streamlit's run ends, and the first chart of a session
# waits for plotly.js to load, shown meanwhile as a skeleton (not yet an stPlotlyChart): the
# screenshot waits until no skeleton is left and every chart is drawn.
CHARTS_DRAWN = (
    "() => document.querySelectorAll('[data-testid^=stSkeleton]').length === 0 && "
    "[...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg'))"
)


def data(page: Page) -> None:
    ui.set_number(page, "Max prompts per set", 32)
    ui.press(page, "Compute activations and DIM directions")
    expect(page.get_by_text(re.compile(r"^DIM candidates: \d+ directions"))).to_be_visible()


def manifold(page: Page) -> None:
    ui.press(page, re.compile(r"^Train SOM at layer"))
    expect(page.get_by_text(re.compile(r"^Quantization error: the mean distance"))).to_be_visible()


def manifold_shift(page: Page) -> None:
    """The same map with the selected direction ablated: each prompt before and after."""
    ui.choose(page, "Set to ablate from", re.compile(r"^(Selected|Closest) DIM$"))
    ui.press(page, "Recompute under the intervention")
    ui.chart(page, "shift_chart").scroll_into_view_if_needed()


def categories(page: Page) -> None:
    ui.press(page, "Fit category directions")


def directions(page: Page) -> None:
    ui.set_number(page, "Validation prompts per set", 8)
    ui.set_number(page, "From layer", 18)
    ui.set_number(page, "To layer", 23)
    ui.press(page, "Score candidates")
    expect(page.get_by_text(re.compile(r"added as the set (Selected|Closest) DIM"))).to_be_visible()


def generate(page: Page) -> None:
    ui.set_number(page, "Max new tokens", 32)
    selected = page.get_by_test_id("stExpander").filter(has_text=re.compile(r"(Selected|Closest) DIM \(1 directions\)"))
    ui.expand(page, re.compile(r"(Selected|Closest) DIM \(1 directions\)"))
    name = selected.get_by_role("checkbox").nth(1).locator("xpath=ancestor::label").inner_text().strip()
    ui.tick(page, name)
    ui.tick(page, "Add a direction (ActAdd)")
    ui.press(page, re.compile(r"^Generate \d+ prompts x 3 columns$"))
    expect(page.get_by_test_id("stMetric")).to_have_count(3)
    ui.tick(page, "Trace refusal token by token")
    ui.choose(page, "Project on the set", re.compile(r"^(Selected|Closest) DIM$"))
    ui.chart(page, "trace_chart")


def compare(page: Page) -> None:
    ui.press(page, re.compile(r"^Compare "), timeout_ms=1_800_000)
    ui.chart(page, "compare_cosine")


def report(page: Page) -> None:
    ui.press(page, "Build the report")


def search(page: Page) -> None:
    ui.set_number(page, "k (directions per trial)", 2)
    ui.set_number(page, "Trials", 12)
    ui.press(page, "Run search")
    expect(page.get_by_text(re.compile(r"^\d+ scored trials"))).to_be_visible()


def export(page: Page) -> None:
    with page.expect_download():
        page.get_by_role("button", name=re.compile(r"^Download \.zip")).click()
    ui.after_action(page)


WALK = [("data", "Data & activations", data), ("manifold", "Manifold", manifold),
        ("directions", "Directions", directions), ("manifold-shift", "Manifold", manifold_shift),
        ("categories", "Categories", categories), ("generate", "Generate", generate),
        ("search", "Search", search), ("many-directions", "Many directions", None), ("compare", "Compare", compare),
        ("export", "Export", export), ("report", "Report", report), ("home", "Start", None)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not saved_results():
        print("No saved many-directions result: running a small one first", flush=True)
        command = [sys.executable, "-m", "refusal_core", "experiments", "many-directions", *SMALL_MANY_DIRECTIONS]
        subprocess.run(command, check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory(prefix="atlas-shots-") as tmp:
        log = Path(tmp) / "server.log"
        with streamlit_server(log_path=log) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(**chromium_launch_options())
            page = browser.new_page(viewport=VIEWPORT)
            try:
                ui.open_app(page, url, "Start")
                for name, title, action in WALK:
                    started = time.monotonic()
                    ui.go(page, title)
                    if action is not None:
                        action(page)
                    expect(page.get_by_test_id("stException")).to_have_count(0)
                    page.wait_for_function(CHARTS_DRAWN, timeout=ui.PAGE_TIMEOUT_MS)
                    page.screenshot(path=str(args.out / f"{name}.png"))
                    print(f"{name}.png: {time.monotonic() - started:.1f} s", flush=True)
            except Exception:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
