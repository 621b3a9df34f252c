"""Save one PNG per dashboard page to docs/screenshots/<page>.png, with work done on each.

Usage: ``python docs/take_screenshots.py [--out DIR]`` (needs ``apt-get install chromium``).
Starts ``streamlit run app.py`` on a free 127.0.0.1 port with the real bundled models (the
organism when built, else the sidebar's fallback, SmolLM2-135M-Instruct) and walks through
the pages in one browser session, pressing each page's main button with its default
settings: compute activations and DIM directions, train the SOM, score the DIM candidates,
generate side by side. Search and Export are captured as they open. Takes several minutes
on a CPU. Reuses the helpers of ``tests/browser_util.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser_util  # noqa: E402 - needs the repository root on sys.path

# The Deploy button and developer menu add nothing to a screenshot of the app.
SERVER_ARGS = ["--client.toolbarMode", "minimal"]
# Page title -> what is done there before the screenshot, in order: ("click", button label
# prefix), ("check", checkbox label prefix) or ("expand", text in an expander's header).
WALK = {
    "Data & activations": [("click", "Compute activations and DIM directions")],
    "Manifold": [("click", "Train SOM at layer")],
    "Directions": [("click", "Score candidates")],
    "Generate": [
        ("expand", "SOM 3x3"),
        ("check", "Ablate the whole set 'SOM"),
        ("expand", " DIM (1 direction"),  # Selected or Closest DIM; the full DIM set is a multiselect
        ("check", "dim/pos"),
        ("check", "Add a direction (ActAdd)"),
        ("click", "Generate "),
    ],
    "Search": [],
    "Export": [],
}
WORK_TIMEOUT_S = 900.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    if browser_util.chromium_binary() is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    failed = False
    with tempfile.TemporaryDirectory(prefix="atlas-shots-") as tmp:
        log = Path(tmp) / "server.log"
        with browser_util.streamlit_server(log_path=log, extra_args=SERVER_ARGS) as url, browser_util.browser_session() as tab:
            tab.resize(1400, 2200)  # computed pages are long; show the charts below the controls too
            for index, page in enumerate(browser_util.app_pages()):
                started = time.monotonic()
                png = args.out / f"{page.name}.png"
                if index == 0:
                    tab.goto(f"{url}/{page.url_path}")
                else:
                    tab.nav(page.title)
                settled = tab.wait(page.title)
                for action, label in WALK.get(page.title, []):
                    getattr(tab, action)(label)
                    settled = tab.wait(page.title, WORK_TIMEOUT_S) and settled
                tab.screenshot(png)
                problems = browser_util.dom_problems(tab.dom(), page.title)
                if not settled:
                    problems.append("did not finish rendering")
                failed |= bool(problems)
                shown = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
                print(f"{shown}: {time.monotonic() - started:.1f} s" + (f"  PROBLEMS: {problems}" if problems else ""), flush=True)
        if failed:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
