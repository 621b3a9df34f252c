"""Dashboard page revisits with cached data: seconds per page rerun (goal < 1 s).

Drives app.py headless with Streamlit's AppTest on the real model (default: the refusal
organism), computes activations and DIM once on the Data page, then visits every page
twice and times the second visit, which is what a user sees when moving between pages.

    .venv/bin/python benchmarks/bench_app.py [--model-choice 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = [
    "app_pages/data.py",
    "app_pages/manifold.py",
    "app_pages/directions.py",
    "app_pages/generate.py",
    "app_pages/search.py",
    "app_pages/export.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    started = time.perf_counter()
    at.run()
    first = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    started = time.perf_counter()
    at.button(key="data_compute").click().run()
    compute = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    revisits: dict[str, list[float]] = {page: [] for page in PAGES}
    for _ in range(args.repeats):
        for page in PAGES:
            started = time.perf_counter()
            at.switch_page(page).run()
            revisits[page].append(time.perf_counter() - started)
            assert not at.exception, (page, [e.value for e in at.exception])
    model = at.session_state["atlas_model"][0]
    print(f"model {model}; first app run {first:.2f} s (model load); activations + DIM {compute:.2f} s")
    medians = {page: statistics.median(times[1:] if len(times) > 1 else times) for page, times in revisits.items()}
    for page, value in medians.items():
        print(f"  {page:22s} revisit median {value:.3f} s")
    worst = max(medians.values())
    print(f"VALUE page_revisit_max = {worst:.3f} s (goal < 1 s, {'met' if worst < 1 else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": model, "first": first, "compute": compute, "revisits": revisits}, indent=2)
        )


if __name__ == "__main__":
    main()
