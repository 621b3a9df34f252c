"""The README's "Refusal by category" figures, from a fresh run of ``categories report`` on
the organism with the report's default settings (the README's settings; run with -m slow).

The README's printed report is parsed, so the README and this test cannot drift apart: each
category's goal verdict (MET / missed) must be the same for both matrices, and its own
refusal, the others' minimum and the harmless refusal must be within one prompt of the
README's (20 points on a category's 5 test prompts, 1/24 on the 24 harmless ones); the
conditions' kind, layer, shrinkage and margin chosen on val must be the README's. The run
uses one torch thread, as the README's did: greedy replies are then the same bits on this
machine; another CPU's rounding may flip a reply, which the tolerance allows but a verdict
on the goal's edge may not survive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(\S+)\s+(\d+)%\s+(\d+)%\s+(\d+)%\s+(\d+)%\s+(MET|missed)$")
CONDITIONS = re.compile(r"^conditions: (\S+) at layer (\d+), shrinkage ([\d.]+)(?:, margin ([\d.]+))?")


def readme_selectivity(heading: str = "## Measured on the organism") -> dict[str, list[tuple]]:
    """The two selectivity tables (ablation, then conditional) of the first report printed after ``heading``."""
    text = (ROOT / "docs" / "results" / "categories.md").read_text()
    block = text.split(heading, 1)[1].split("```text", 1)[1].split("```", 1)[0]
    rows = [m.groups() for m in map(ROW.match, block.splitlines()) if m]
    assert len(rows) == 24, f"expected two selectivity tables of 12 rows under {heading!r}, found {len(rows)} rows"
    chosen = [m.groups() for m in map(CONDITIONS.match, block.splitlines()) if m]
    assert len(chosen) == 1, f"expected one 'conditions:' line under {heading!r}"
    return {"ablation": rows[:12], "conditional": rows[12:], "conditions": chosen[0]}


def test_categories_report_reproduces_the_readme_selectivity():
    from refusal_core.categories.conditions import GOAL
    from refusal_core.categories.matrix import DEFAULTS
    from refusal_core.organism.build import build_organism

    build_organism()  # the shipped organism (seconds when it is there)
    expected = readme_selectivity()
    kind, layer, shrinkage, margin = expected.pop("conditions")
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "refusal_core", "categories", "report", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (
        report["n_test"]["per_category"],
        report["n_test"]["harmless"],
        report["max_new_tokens"],
        report["judge"],
    ) == (DEFAULTS["per_category"], DEFAULTS["n_harmless"], DEFAULTS["max_new_tokens"], DEFAULTS["judge"])
    chosen = report["conditions"]
    assert (chosen["kind"], chosen["layer"], chosen["shrinkage"]) == (kind, int(layer), float(shrinkage))
    assert chosen["margin"] == (None if margin is None else float(margin))
    harmless_step = 1 / report["n_test"]["harmless"] + 1e-9
    for block, rows in expected.items():
        for i, ((category, own, _, others_min, harmless, verdict), got) in enumerate(
            zip(rows, report[block]["selectivity"])
        ):
            where = f"{block} / {category}"
            assert report["categories"][i] == category, where
            # The verdict must match where the README's row is more than one prompt clear of the
            # goal's edges; on an edge (e.g. own refusal exactly 20%), one reply flipped by another
            # CPU's rounding may flip it, and the figures' tolerance below is what holds.
            clear = (
                abs(int(own) / 100 - GOAL["own"]) > 0.2 + 0.005
                and abs(int(others_min) / 100 - GOAL["others"]) > 0.2 + 0.005
                and abs(int(harmless) / 100 - GOAL["harmless"]) > harmless_step + 0.005
            )
            if clear or (verdict == "missed" and int(own) / 100 > GOAL["own"] + 0.2 + 0.005):
                assert got["meets_goal"] == (verdict == "MET"), where
            assert abs(got["own"] - int(own) / 100) <= 0.2 + 0.005, where
            assert abs(got["others_min"] - int(others_min) / 100) <= 0.2 + 0.005, where
            assert abs(got["harmless"] - int(harmless) / 100) <= harmless_step + 0.005, where
    print(f"categories report: {time.perf_counter() - started:.0f} s")
