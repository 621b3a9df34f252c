"""Racing candidate scoring: the shared-prefix rows, exhaustive racing against the reference
scorer, pruning, the policy's restriction to finalists, and progress reports."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.progress import ProgressClock, format_duration
from refusal_core.selection.policy import select_with_fallback
from refusal_core.selection.racing import RacingSettings, _schedule, race_candidates
from refusal_core.selection.result import load_selection
from refusal_core.selection.rows import prompt_rows, rows_logprobs
from refusal_core.selection.scoring import _last_logprobs, _prepare, score_candidates
from tests.tiny import assert_no_hooks
from tests.unit.test_selection import HARMFUL, HARMLESS, OPEN, assert_grids_close, candidates  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shared_prefix_rows_equal_whole_rows(tiny_llama, candidates):  # noqa: F811
    rows = prompt_rows(tiny_llama, HARMFUL + HARMLESS, None)
    assert len(rows.prefix) > 0
    vector = candidates.vectors[0]
    ablation = Intervention(name="a", ablate=vector[None])
    addition = Intervention(name="b", actadd=vector, actadd_layer=1)
    plain = Intervention()
    per_row = [ablation, addition, plain] * 2 + [ablation, addition]
    prompts = list(range(8))
    shared = rows_logprobs(tiny_llama, rows, prompts, per_row, rows_per_forward=3)
    prepared = _prepare(tiny_llama, candidates, HARMFUL, HARMLESS, None)
    with row_interventions(tiny_llama.model, per_row):
        whole = _last_logprobs(tiny_llama, prepared.batch, prompts)
    assert torch.allclose(shared, whole, atol=1e-5)
    assert_no_hooks(tiny_llama.model)


def test_exhaustive_race_equals_reference_scoring(tiny_llama, candidates):  # noqa: F811
    raced = race_candidates(tiny_llama, candidates, HARMFUL, HARMLESS, OPEN, exhaustive=True)
    reference = score_candidates(tiny_llama, candidates, HARMFUL, HARMLESS, filters=OPEN)
    for measure in ("bypass", "induce", "kl"):
        assert_grids_close(getattr(raced, measure), getattr(reference, measure))
    assert raced.chosen == reference.chosen
    assert bool(raced.complete[~raced.bypass.isnan()].all())
    assert_no_hooks(tiny_llama.model)


def test_racing_scores_fewer_rows_and_chooses_only_finalists(tiny_llama, candidates):  # noqa: F811
    settings = RacingSettings(first_prompts=1, growth=2, prerank_keep=1.0, min_finalists=1)
    raced = race_candidates(tiny_llama, candidates, HARMFUL, HARMLESS, OPEN, settings)
    full = race_candidates(tiny_llama, candidates, HARMFUL, HARMLESS, OPEN, exhaustive=True)
    assert raced.timing["rows"] < full.timing["rows"]
    assert raced.complete.sum() < (~raced.bypass.isnan()).sum()
    pick = select_with_fallback(raced)
    i, j = raced.positions.index(pick.cell[0]), raced.layers.index(pick.cell[1])
    assert bool(raced.complete[i, j]) and raced.coverage[i, j] == 1.0
    # A finalist's scores are its means over every prompt, the same as exhaustive scoring's.
    assert math.isclose(float(raced.bypass[i, j]), float(full.bypass[i, j]), abs_tol=1e-6)


def test_late_layers_are_not_scored(tiny_llama, candidates):  # noqa: F811
    filters = OPEN.__class__(max_kl=math.inf, min_induce=-math.inf, max_layer_fraction=0.5)  # 4 layers: only layer 1
    raced = race_candidates(tiny_llama, candidates, HARMFUL, HARMLESS, filters, RacingSettings(prerank_keep=1.0))
    scored_layers = {raced.layers[j] for i, j in (~raced.bypass.isnan()).nonzero().tolist()}
    assert scored_layers == {1}


def test_progress_counts_up_to_its_total_with_stage_text(tiny_llama, candidates):  # noqa: F811
    calls = []
    race_candidates(
        tiny_llama,
        candidates,
        HARMFUL,
        HARMLESS,
        OPEN,
        RacingSettings(first_prompts=1, growth=2, prerank_keep=1.0),
        progress=lambda done, total, **info: calls.append((done, total, str(info.get("stage", "")))),
    )
    totals = {total for _, total, _ in calls}
    assert len(totals) == 1
    dones = [done for done, _, _ in calls]
    assert dones == sorted(dones) and dones[-1] == calls[-1][1]
    assert any(stage.startswith("stage 1/") for _, _, stage in calls)
    assert any("candidates settled" in stage for _, _, stage in calls)


def test_raced_result_round_trips_with_coverage(tiny_llama, candidates, tmp_path):  # noqa: F811
    raced = race_candidates(
        tiny_llama,
        candidates,
        HARMFUL,
        HARMLESS,
        OPEN,
        RacingSettings(first_prompts=1, growth=2, prerank_keep=1.0, min_finalists=1),
    )
    loaded = load_selection(raced.save(tmp_path / "s.json"))
    assert torch.equal(loaded.complete, raced.complete)
    assert_grids_close(loaded.coverage, raced.coverage)
    assert select_with_fallback(loaded) == select_with_fallback(raced)


def test_schedule_ends_on_every_prompt_and_shrinks():
    stages = _schedule(40, 16, RacingSettings(first_prompts=2, growth=4, min_finalists=3))
    assert stages[-1][1] == 16
    assert [size for size, _ in stages] == sorted([size for size, _ in stages], reverse=True)
    assert stages[0] == (40, 2) and stages[-1][0] >= 3


def test_progress_clock_estimates_time_left():
    clock = ProgressClock()
    clock.started -= 10.0
    assert 9.0 < clock.remaining(1, 2) < 11.5
    assert "about" in clock.line("Scoring", 1, 2, "stage 1/2: 3 candidates x 2 prompts")
    assert format_duration(3725) == "1 h 02 min" and format_duration(65) == "1 min 05 s"
