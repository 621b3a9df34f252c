"""The first UMAP map in a fresh dashboard server, with and without set-up's numba warm-up.

Two fresh ``streamlit run app.py`` servers in headless Chromium, each with a new, empty numba
cache folder (``NUMBA_CACHE_DIR``), so neither sees code compiled by earlier runs:

- ``cold``: nothing compiled beforehand and the app's background warm-up turned off
  (``tests/patched_app.py --no-umap-warm-up``): what every fresh server paid before set-up warmed UMAP;
- ``set-up``: ``projection.warm_up_umap()`` first runs in its own process, as ``setup.sh``
  does (timed: what set-up pays), then the server starts with its background warm-up on.

In each server: open the app, press "Compute activations and DIM directions" on the Data
page, open Manifold (a PCA map), then choose UMAP; the figure is the time from that click
until Streamlit's run has ended and Plotly has drawn the map (Playwright drives Debian's
Chromium, as the browser tests do). Goal: <= 15 s.

Run from the repository root (needs chromium): ``.venv/bin/python benchmarks/bench_first_map.py``.
The organism must be built (``organism build``), or the servers use the tiny test model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.app_server import CHROMIUM, chromium_launch_options, streamlit_server, tiny_unless_built  # noqa: E402

GOAL_S = 15.0
WORK_TIMEOUT_MS = 900_000
WARM_UP = "from refusal_core.projection import warm_up_umap; warm_up_umap()"


def first_umap_map(env: dict[str, str], log: Path, stand_ins: list[str]) -> tuple[float, float]:
    """Seconds from choosing UMAP to the settled page, and from server start to that click."""
    from playwright.sync_api import expect, sync_playwright

    from tests import ui

    started = time.monotonic()
    with (
        streamlit_server(env=env, log_path=log, stand_ins=tiny_unless_built() + stand_ins) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(**chromium_launch_options())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            ui.open_app(page, url, "Start")
            ui.go(page, "Data & activations")
            ui.press(page, "Compute activations and DIM directions", WORK_TIMEOUT_MS)
            ui.go(page, "Manifold")
            clicked = time.monotonic()
            page.get_by_test_id("stRadio").filter(has_text="Map").get_by_text("UMAP", exact=True).click()
            ui.after_action(page, WORK_TIMEOUT_MS)
            expect(ui.chart(page, "manifold_chart")).to_be_visible()
            seconds = time.monotonic() - clicked
            problems = page.locator(
                "[data-testid='stException'], [data-testid='stAlertContentError']"
            ).all_inner_texts()
            if problems:
                raise RuntimeError(f"the Manifold page shows problems: {problems}")
        finally:
            browser.close()
        return seconds, clicked - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="measure only the server after set-up's warm-up")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="atlas-first-map-") as tmp:
        warm_cache = Path(tmp) / "numba-setup"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(warm_cache), "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", WARM_UP], env=env, check=True, cwd=ROOT)
        print(
            f"set-up warm-up (warm_up_umap in a fresh process, empty cache): {time.monotonic() - started:.1f} s",
            flush=True,
        )
        cases = [("set-up", {"NUMBA_CACHE_DIR": str(warm_cache)}, [])]
        if not args.skip_cold:
            cases.append(("cold", {"NUMBA_CACHE_DIR": str(Path(tmp) / "numba-cold")}, ["--no-umap-warm-up"]))
        for name, case_env, stand_ins in cases:
            seconds, before = first_umap_map(case_env, Path(tmp) / f"server-{name}.log", stand_ins)
            rows.append((name, seconds, before))
            print(
                f"{name}: first UMAP map {seconds:.1f} s (clicked {before:.0f} s after the server started)", flush=True
            )
    print(f"\n{'server':8s} {'first UMAP map':>15s}  goal <= {GOAL_S:.0f} s")
    for name, seconds, _ in rows:
        print(f"{name:8s} {seconds:13.1f} s  {'PASS' if seconds <= GOAL_S else 'FAIL'}")
    if len(rows) == 2:
        print(f"RATIO set-up / cold: {rows[0][1] / rows[1][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
