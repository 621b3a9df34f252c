"""Slow tests on the bundled SmolLM2 and the built refusal organism (run with -m slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refusal_core", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bundled_model_generates_from_the_cli():
    result = _cli("generate", "--model", "bundled:smollm2-135m-instruct", "--prompts", "builtin:harmless/test",
                  "--limit", "2", "--max-new-tokens", "12", "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sum(1 for r in records if "completion" in r) == 2
    assert all(r["completion"].strip() for r in records if "completion" in r)
    assert records[-1]["summary"]["baseline"]["n"] == 2


@pytest.fixture(scope="module")
def organism():
    from refusal_core.organism.build import build_organism

    return build_organism()


@pytest.mark.targets
def test_organism_meets_its_targets_and_one_optimized_direction_does_too(organism):
    """Issue 4's five targets on the held-out test prompts, and a single direction optimized
    from the selected DIM one that meets both ablation targets as well. Building, ablation
    and optimization are deterministic on one machine kind, so the figures are the README's."""
    from refusal_core.organism.report import organism_report

    # The README's figures: refusal phrases on 32-token replies (the report's judge before the panel).
    report = organism_report(optimize_steps=20, judge="substring", max_new_tokens=32)
    dump = json.dumps(report, indent=2, default=str)[-4000:]
    failed = [t["metric"] for t in report["targets"] if not t["pass"]]
    assert not failed, dump
    optimized = report["diagnostics"]["optimized"]
    assert optimized["harmful_refusal"] <= 0.10 and optimized["harmless_kl"] <= 0.10, dump
    assert optimized["harmless_kl"] < report["metrics"]["ablated_harmless_kl"], dump


def test_several_directions_beat_one_on_the_organism(organism):
    result = subprocess.run([sys.executable, "scripts/many_directions.py", "--n-prompts", "30", "--max-k", "4"], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Target:" in result.stdout and "PASS" in result.stdout.split("Target:")[1], result.stdout[-3000:]
