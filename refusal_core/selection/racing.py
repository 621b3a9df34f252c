"""Candidate scoring that scales: successive halving over (position, layer) candidates.

Exhaustive scoring (``score_candidates``) runs every candidate on every validation prompt:
on SmolLM2 with 174 candidates and the 60 + 104 validation prompts that is 46,632 rows,
hours on a CPU. Most of those rows only confirm that a candidate is far from the best.
:func:`race_candidates` spends rows where the choice is decided:

1. **Filters that need no scores.** A candidate at a layer ``>= max_layer_fraction *
   n_layers`` can never pass the layer filter, so it is not scored (NaN in the grids).
2. **An output-free pre-rank** (after COSMIC's idea, Siu et al. 2025, of choosing
   directions by cosine similarity in activation space rather than by outputs): the share of
   the model's late-layer refusal signal, the difference in means at the last post-instruction
   token in the layers the filter excludes, that ablating the candidate removes,
   ``mean_L cos^2(candidate, DIM(-1, L))``. It costs no forward pass; the best
   ``prerank_keep`` share of the admissible candidates go on.
3. **Racing.** All remaining candidates are scored (bypass, induce, KL) on the first
   ``first_prompts`` prompts of each set; the promising ``1 / growth`` are kept and scored on
   ``growth`` times as many prompts, and so on until the finalists have seen every prompt.
   "Promising" follows the selection policy: the lowest bypass among candidates that might
   still pass every filter (within ``z`` standard errors), and the lowest among those that
   might still induce refusal (the policy's fallback when nothing passes).

Only finalists, scored on every prompt, can be chosen; the grids show every other scored
candidate's means over the prompts it saw, and ``coverage`` says how many those were.
``exhaustive=True`` scores every candidate on every prompt by the same machinery.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.scores import refusal_token_ids
from refusal_core.metrics import kl_divergence
from refusal_core.model.forward import refusal_log_odds
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.selection.policy import apply_filters, lowest_bypass, why_none
from refusal_core.selection.result import SelectionFilters, SelectionResult
from refusal_core.selection.rows import PromptRows, prompt_rows, rows_logprobs
from refusal_core.selection.scoring import _Candidate, _candidates, _intervention, _provenance
from refusal_core.settings import setting

__all__ = ["RacingSettings", "ScoringMode", "prerank_scores", "race_candidates"]

MEASURES = ("bypass", "kl", "induce")


@dataclass(frozen=True)
class RacingSettings:
    """How hard :func:`race_candidates` prunes (see the module docstring)."""

    first_prompts: int = setting(2, "prompts per set every raced candidate is scored on in the first stage", minimum=1)
    growth: int = setting(
        4, "each stage keeps 1/growth of the candidates and scores them on growth x the prompts", minimum=2
    )
    prerank_keep: float = setting(
        0.25, "share of the admissible candidates the output-free pre-rank lets race", minimum=0.0, maximum=1.0
    )
    min_finalists: int = setting(2, "candidates scored on every prompt, at least", minimum=1)
    z: float = setting(
        1.0, "standard errors by which a candidate may miss a filter and still count as possibly passing", minimum=0.0
    )
    rows_per_forward: int = setting(32, "batch rows per forward pass", minimum=1)

    def __post_init__(self) -> None:
        if self.first_prompts < 1 or self.growth < 2 or self.min_finalists < 1 or self.rows_per_forward < 1:
            raise SettingsError("first_prompts, min_finalists and rows_per_forward must be >= 1 and growth >= 2.")
        if not 0 < self.prerank_keep <= 1:
            raise SettingsError(f"prerank_keep must be in (0, 1], got {self.prerank_keep}.")


@dataclass(frozen=True)
class ScoringMode:
    """Whether candidates are raced or each scored on every prompt (``race_candidates``'s ``exhaustive``)."""

    exhaustive: bool = setting(
        False,
        "score every candidate on every prompt (about 40x slower; hours on a CPU) instead of racing them: all on a "
        "few prompts, the promising ones on more, the finalists on all",
        label="Score every candidate on every prompt (exhaustive)",
    )


@dataclass
class _Race:
    """Prompts, baseline and every per-prompt value measured so far."""

    loaded: LoadedModel
    candidates: list[_Candidate]
    rows: PromptRows
    n_harmful: int
    n_harmless: int
    refusal_ids: list[int]
    base_harmless: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    values: dict = field(default_factory=dict)  # (candidate, measure) -> {prompt: value}
    rows_run: int = 0

    def prompts(self, measure: str, m: int) -> list[int]:
        """The first ``m`` prompt indices (into ``rows``) that ``measure`` is taken on."""
        if measure == "bypass":
            return list(range(min(m, self.n_harmful)))
        return [self.n_harmful + i for i in range(min(m, self.n_harmless))]

    def mean_se(self, candidate: int, measure: str) -> tuple[float, float]:
        seen = list(self.values.get((candidate, measure), {}).values())
        if not seen:
            return math.nan, math.inf
        mean = sum(seen) / len(seen)
        if len(seen) < 2:
            return mean, math.inf
        var = sum((v - mean) ** 2 for v in seen) / (len(seen) - 1)
        return mean, math.sqrt(var / len(seen))


def prerank_scores(candidates: Sequence[_Candidate], n_layers: int, cut: float) -> list[float]:
    """Output-free score per candidate: mean squared cosine with the late-layer refusal signal.

    The reference vectors are the candidates at the last post-instruction position whose
    layer is at or above ``cut * n_layers``, the layers the filter excludes (where the model
    reads refusal out); when the set has none there, its deepest quarter of last-position layers.
    """
    last = max(c.position for c in candidates)
    own = sorted({c.layer for c in candidates if c.position == last})
    late = [layer for layer in own if layer >= cut * n_layers] or own[-max(1, len(own) // 4) :]
    reference = torch.stack([c.vector for c in candidates if c.position == last and c.layer in late]).double()
    reference = reference / reference.norm(dim=-1, keepdim=True)
    vectors = torch.stack([c.vector for c in candidates]).double()
    vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return ((vectors @ reference.T) ** 2).mean(-1).tolist()


def _measure(race: _Race, wanted: list[tuple[int, str, int]], rows_per_forward: int, tick) -> None:
    """Run the rows ``(candidate, measure, prompt)`` that are not measured yet and store their values."""
    todo = [key for key in wanted if key[2] not in race.values.get(key[:2], {})]
    if not todo:
        return
    # One Intervention object per (candidate, kind): bypass and KL rows share the ablation,
    # and so its prefix pass.
    shared: dict[tuple[int, str], Intervention] = {}
    kind = {"bypass": "ablate", "kl": "ablate", "induce": "induce"}
    for candidate, measure, _ in todo:
        if (candidate, kind[measure]) not in shared:
            shared[candidate, kind[measure]] = _intervention(race.candidates[candidate], measure)
    logprobs = rows_logprobs(
        race.loaded,
        race.rows,
        [p for _, _, p in todo],
        [shared[c, kind[m]] for c, m, _ in todo],
        rows_per_forward,
        on_forward=tick,
    )
    values = refusal_log_odds(logprobs, race.refusal_ids)
    kl_rows = [i for i, (_, measure, _) in enumerate(todo) if measure == "kl"]
    if kl_rows:
        base = race.base_harmless[[todo[i][2] - race.n_harmful for i in kl_rows]]
        values[kl_rows] = kl_divergence(base, logprobs[kl_rows]).double()
    for (candidate, measure, prompt), value in zip(todo, values.tolist()):
        race.values.setdefault((candidate, measure), {})[prompt] = value
    race.rows_run += len(todo)


def _stage_rows(race: _Race, pool: Sequence[int], m: int) -> list[tuple[int, str, int]]:
    # Adding at the output of the last block has no block to hook; induce stays NaN there.
    n_layers = race.loaded.n_layers
    return [
        (c, measure, p)
        for c in pool
        for measure in MEASURES
        for p in race.prompts(measure, m)
        if measure != "induce" or race.candidates[c].layer < n_layers
    ]


def _keep(race: _Race, pool: list[int], keep: int, filters: SelectionFilters, z: float) -> list[int]:
    """The ``keep`` candidates of ``pool`` most likely to be the policy's choice."""
    stats = {c: {m: race.mean_se(c, m) for m in MEASURES} for c in pool}

    def inducing(c: int) -> bool:
        mean, se = stats[c]["induce"]
        return mean + z * se >= filters.min_induce

    def calm(c: int) -> bool:
        mean, se = stats[c]["kl"]
        return mean - z * se <= filters.max_kl

    by_bypass = sorted(pool, key=lambda c: (stats[c]["bypass"][0], race.candidates[c].layer))
    kept: list[int] = []
    # Half the places for the policy's first rule, the rest for its fallback, then fill.
    for group, quota in (
        ([c for c in by_bypass if calm(c) and inducing(c)], (keep + 1) // 2),
        ([c for c in by_bypass if inducing(c)], keep),
        (by_bypass, keep),
    ):
        for c in group:
            if len(kept) >= quota:
                break
            if c not in kept:
                kept.append(c)
    return kept


def _schedule(n_pool: int, n_prompts: int, settings: RacingSettings) -> list[tuple[int, int]]:
    """``(candidates, prompts per set)`` of every stage; the last covers every prompt."""
    stages, size, m = [], n_pool, settings.first_prompts
    while True:
        m = min(m, n_prompts)
        stages.append((size, m))
        if m >= n_prompts:
            return stages
        size, m = max(min(settings.min_finalists, size), math.ceil(size / settings.growth)), m * settings.growth


def race_candidates(
    loaded: LoadedModel,
    candidates: DirectionSet,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    filters: SelectionFilters = SelectionFilters(),
    settings: RacingSettings = RacingSettings(),
    exhaustive: bool = False,
    progress: Progress | None = None,
    chat: ChatFormat | None = None,
) -> SelectionResult:
    """Score DIM candidates by racing (or every one on every prompt with ``exhaustive``) and choose one.

    ``progress(done, total, stage=...)`` counts forward-pass rows (the shared-prefix pass of an
    intervention counts as one row); ``stage`` names the stage, its candidates and prompts,
    and how many candidates are settled (eliminated or fully scored).
    """
    if not harmful_val or not harmless_val:
        raise SettingsError("Selection needs at least one harmful and one harmless validation prompt.")
    candidates.check_width(loaded.d_model)
    started = time.perf_counter()
    listed = _candidates(candidates)
    race = _Race(
        loaded,
        listed,
        prompt_rows(loaded, list(harmful_val) + list(harmless_val), chat),
        len(harmful_val),
        len(harmless_val),
        refusal_token_ids(loaded.tokenizer),
    )
    n_prompts = max(race.n_harmful, race.n_harmless)
    everyone = list(range(len(listed)))
    admissible = [c for c in everyone if listed[c].layer < filters.max_layer_fraction * loaded.n_layers] or everyone
    if exhaustive:
        pool, stages = everyone, [(len(everyone), n_prompts)]
    else:
        ranks = prerank_scores(listed, loaded.n_layers, filters.max_layer_fraction)
        ordered = sorted(admissible, key=lambda c: -ranks[c])
        pool = ordered[
            : max(min(settings.min_finalists, len(ordered)), math.ceil(settings.prerank_keep * len(ordered)))
        ]
        stages = _schedule(len(pool), n_prompts, settings)
    # Work in rows: every prompt's baseline, then per stage each candidate's new rows and its
    # two prefix rows (ablation, addition).
    prefix_rows = 1 if len(race.rows.prefix) else 0
    total = len(race.rows) + prefix_rows
    previous = 0
    for size, m in stages:
        fresh = (
            min(m, race.n_harmful)
            - min(previous, race.n_harmful)
            + 2 * (min(m, race.n_harmless) - min(previous, race.n_harmless))
        )
        total += size * (fresh + 2 * prefix_rows)
        previous = m
    done = 0
    stage_text = "baseline"

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(min(done, total), total, stage=stage_text)

    baseline = Intervention()
    logprobs = rows_logprobs(
        loaded,
        race.rows,
        list(range(len(race.rows))),
        [baseline] * len(race.rows),
        settings.rows_per_forward,
        on_forward=tick,
    )
    race.base_harmless = logprobs[race.n_harmful :]
    base_scores = refusal_log_odds(logprobs, race.refusal_ids)
    for index, (size, m) in enumerate(stages):
        pool = pool[:size] if index == 0 else _keep(race, pool, size, filters, settings.z)
        settled = len(everyone) - len(pool)
        stage_text = (
            f"stage {index + 1}/{len(stages)}: {len(pool)} candidates x {m} prompts per set "
            f"({settled}/{len(everyone)} candidates settled)"
        )
        _measure(race, _stage_rows(race, pool, m), settings.rows_per_forward, tick)
    if progress:
        progress(
            total,
            total,
            stage=f"done: {len(everyone)}/{len(everyone)} candidates settled, {len(pool)} scored on every prompt",
        )
    result = _result(race, pool, filters, candidates, harmful_val, harmless_val, chat, base_scores)
    timing = {
        "seconds": round(time.perf_counter() - started, 4),
        "rows": race.rows_run,
        "stages": [list(s) for s in stages],
        "finalists": [listed[c].name for c in pool],
        "mode": "exhaustive" if exhaustive else "racing",
        "scored": len({c for c, _ in race.values}),
    }
    return _with_timing(result, timing)


def _with_timing(result: SelectionResult, timing: dict) -> SelectionResult:
    import dataclasses

    return dataclasses.replace(result, timing=timing)


def _result(
    race: _Race, finalists: list[int], filters, candidates, harmful_val, harmless_val, chat, base_scores
) -> SelectionResult:
    listed = race.candidates
    positions = tuple(sorted({c.position for c in listed}))
    layers = tuple(sorted({c.layer for c in listed}))
    names: list[list[str | None]] = [[None] * len(layers) for _ in positions]
    grids = {m: torch.full((len(positions), len(layers)), math.nan, dtype=torch.float64) for m in MEASURES}
    coverage = torch.zeros(len(positions), len(layers), dtype=torch.float64)
    complete = torch.zeros(len(positions), len(layers), dtype=torch.bool)
    for index, candidate in enumerate(listed):
        i, j = positions.index(candidate.position), layers.index(candidate.layer)
        names[i][j] = candidate.name
        for measure in MEASURES:
            grids[measure][i, j] = race.mean_se(index, measure)[0]
        coverage[i, j] = len(race.values.get((index, "bypass"), {})) / race.n_harmful
        complete[i, j] = index in finalists
    n_layers = race.loaded.n_layers
    passed = apply_filters(grids["bypass"], grids["induce"], grids["kl"], layers, n_layers, filters) & complete
    chosen = lowest_bypass(grids["bypass"], passed, positions, layers)
    if chosen is None:
        masked = {m: torch.where(complete, grids[m], math.nan) for m in MEASURES}
        reason = why_none(masked["bypass"], masked["induce"], masked["kl"], layers, n_layers, filters)
    else:
        best = float(grids["bypass"][positions.index(chosen[0]), layers.index(chosen[1])])
        reason = (
            f"Lowest bypass score ({best:.4g}) among the {int(passed.sum())} of {int(complete.sum())} finalists "
            f"(of {len(listed)} candidates) that passed."
        )
    return SelectionResult(
        positions=positions,
        layers=layers,
        names=tuple(tuple(row) for row in names),
        bypass=grids["bypass"],
        induce=grids["induce"],
        kl=grids["kl"],
        passed=passed,
        chosen=chosen,
        reason=reason,
        baseline_harmful=float(base_scores[: race.n_harmful].mean()),
        baseline_harmless=float(base_scores[race.n_harmful :].mean()),
        n_layers=n_layers,
        filters=filters,
        provenance=_provenance(race.loaded, candidates, harmful_val, harmless_val, chat),
        coverage=coverage,
        complete=complete,
        samples=race.values,
    )
