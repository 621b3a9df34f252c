"""Slow tests on the bundled SmolLM2 and the built refusal organism (run with -m slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._targets import missed_targets

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refusal_core", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_bundled_model_generates_from_the_cli():
    result = _cli(
        "generate",
        "--model",
        "bundled:smollm2-135m-instruct",
        "--prompts",
        "builtin:harmless/test",
        "--limit",
        "2",
        "--max-new-tokens",
        "12",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sum(1 for r in records if "completion" in r) == 2
    assert all(r["completion"].strip() for r in records if "completion" in r)
    assert records[-1]["summary"]["baseline"]["n"] == 2


@pytest.fixture(scope="module")
def organism():
    from refusal_core.organism.build import build_organism

    return build_organism()


def test_the_built_organism_is_the_shipped_one(organism):
    """The organism here has the sha256 the shipped delta records: the same weights on every machine."""
    from refusal_core.model.fingerprint import weights_sha256
    from refusal_core.model.loading import BUNDLED_ORGANISM, load_model
    from refusal_core.organism.delta import SHIPPED_DELTA, OrganismDelta

    assert weights_sha256(load_model(BUNDLED_ORGANISM).model) == OrganismDelta.load(SHIPPED_DELTA).sha256


@pytest.mark.targets
def test_a_fresh_build_from_scratch_still_meets_the_targets(organism, tmp_path):
    """The recipe behind the shipped delta still works: a build from scratch (in its own cache,
    its delta written aside) meets the five targets too. Its sha256 may differ from the
    shipped one by float rounding, which is why the organism is shipped as a delta."""
    import os
    import shutil

    from refusal_core.model.loading import bundled_model_dir

    cache = tmp_path / "cache"
    # The converted base model is reused; everything else is made again.
    shutil.copytree(bundled_model_dir("smollm2-135m-instruct"), cache / "models" / "smollm2-135m-instruct")
    env = {**os.environ, "REFUSAL_ATLAS_CACHE": str(cache)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "refusal_core", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )

    built = cli("organism", "build", "--from-scratch", "--delta-out", str(tmp_path / "delta.safetensors"))
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "delta.safetensors").stat().st_size < 25e6
    reported = cli("organism", "report", "--json")
    assert reported.returncode == 0, reported.stderr[-3000:]
    report = json.loads(reported.stdout)
    failed = missed_targets(report["metrics"])  # thresholds pinned in tests/_targets.py, not the code's
    assert not failed, json.dumps(report["metrics"], indent=2)


@pytest.mark.targets
def test_organism_meets_its_targets_and_one_optimized_direction_does_too(organism):
    """The organism's five acceptance targets on the held-out test prompts, and a single direction optimized
    from the selected DIM one that meets both ablation targets as well. Building, ablation
    and optimization are deterministic on one machine kind, so the figures are the README's."""
    from refusal_core.organism.report import organism_report

    # The README's figures: refusal phrases on 32-token replies (the report's judge before the panel).
    report = organism_report(optimize_steps=20, judge="substring", max_new_tokens=32)
    dump = json.dumps(report, indent=2, default=str)[-4000:]
    failed = missed_targets(report["metrics"])  # thresholds pinned in tests/_targets.py, not the code's
    assert not failed, dump
    optimized = report["diagnostics"]["optimized"]
    assert optimized["harmful_refusal"] <= 0.10 and optimized["harmless_kl"] <= 0.10, dump
    assert optimized["harmless_kl"] < report["metrics"]["ablated_harmless_kl"], dump


def _many(*flags: str) -> dict:
    result = _cli("experiments", "many-directions", "--no-cache", "--json", "--n-boot", "500", *flags, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_many_directions_command_on_the_organism_keeps_its_invariants(organism):
    """The experiment at a small budget (one layer, k <= 2, 2 trials, 4 + 4 val and 8 + 4 test
    prompts, 32-token test replies, the default judge), then a 1x1 SOM, whose direction is DIM's."""
    small = (
        "--layers",
        "16",
        "--val-prompts",
        "4",
        "--test-prompts",
        "8",
        "4",
        "--search-tokens",
        "16",
        "--test-tokens",
        "32",
    )
    result = _many(*small, "--max-k", "2", "--trials", "2", "--clusters", "3", "--no-optimize")
    [layer] = result["layers"]
    assert {(p["family"], p["k"]) for p in layer["points"]} == {
        ("dim", 1),
        *((f"som/seed{s}", k) for s in (0, 1, 2) for k in (1, 2)),
        ("clusters", 1),
        ("clusters", 2),
    }
    for point in [layer["baseline"], *layer["points"]]:
        for name, m in point["metrics"].items():
            assert 0 <= m["low"] <= m["value"] <= m["high"] and (name == "kl" or m["high"] <= 1), (name, m)
        # Every reply has exactly one verdict (the organism does not reason, so none is unfinished).
        shares = [point["metrics"][name]["value"] for name in ("complied", "refused", "deflected", "broken")]
        assert sum(shares) == pytest.approx(1.0) and len(point["replies"]) == 8
    assert layer["baseline"]["metrics"]["refused"]["value"] >= 0.8  # the organism refuses its harmful test prompts
    searched = [p for p in layer["points"] if p["family"] != "dim"]
    assert all(1 <= p["search"]["evaluated"] <= p["search"]["trials"] <= 2 for p in searched)
    one = _many(*small, "--som-grid", "1x1", "--som-seeds", "0", "--max-k", "1", "--clusters", "0", "--no-optimize")
    points = {p["family"]: p for p in one["layers"][0]["points"]}
    for name in ("complied", "refused", "broken", "harmless_refused"):
        assert points["som/seed0"]["metrics"][name] == points["dim"]["metrics"][name]
    assert points["som/seed0"]["metrics"]["kl"]["value"] == pytest.approx(
        points["dim"]["metrics"]["kl"]["value"], rel=1e-3
    )
