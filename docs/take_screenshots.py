"""Save one PNG per dashboard page to docs/screenshots/<page>.png.

Usage: ``python docs/take_screenshots.py [--out DIR]`` (needs ``apt-get install chromium``).
Starts ``streamlit run app.py`` on a free 127.0.0.1 port with the real bundled models (the
organism when built, else the sidebar's fallback, SmolLM2-135M-Instruct), opens every page
in a fresh session and captures its initial state: pages that need computed data show
their empty-state hint. Reuses the helpers of ``tests/browser_util.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser_util  # noqa: E402 - needs the repository root on sys.path

# The Deploy button and developer menu add nothing to a screenshot of the app.
SERVER_ARGS = ["--client.toolbarMode", "minimal"]


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
        with browser_util.streamlit_server(log_path=log, extra_args=SERVER_ARGS) as url:
            for page in browser_util.app_pages():
                png = args.out / f"{page.name}.png"
                rendered = browser_util.render_page(f"{url}/{page.url_path}", page.title, png)
                problems = browser_util.dom_problems(rendered.dom, page.title)
                if not rendered.settled:
                    problems.append("did not finish rendering")
                failed |= bool(problems)
                print(f"{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}: {rendered.seconds:.1f} s"
                      + (f"  PROBLEMS: {problems}" if problems else ""))
        if failed:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
