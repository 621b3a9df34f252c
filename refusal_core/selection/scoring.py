"""Choosing one refusal direction among (position, layer) candidates, after Arditi et al. (2024).

Every difference-in-means candidate gets three scores, each a mean over validation prompts:

- ``bypass``: refusal score on harmful prompts with the candidate ablated at every layer
  (lower is better: ablation should stop refusal);
- ``induce``: refusal score on harmless prompts with the raw candidate added at its own
  layer (higher is better: adding it should cause refusal);
- ``kl``: KL(baseline || ablated) of the next-token distribution at the last prompt
  position on harmless prompts (lower is better: ablation should not break the model).

Candidates that fail the filters are dropped, and the one with the lowest bypass score wins.

Scoring is batched across candidates: each batch row is one (prompt, candidate, measure)
triple and carries its own intervention through ``row_interventions``, so a forward pass
scores many candidates at once instead of one. Rows are cut from one left-padded
tokenization of all prompts, and position ids ignore the padding, so a row computes the
same whichever batch it lands in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from refusal_core.activations.cache import content_key
from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.interventions.hooks import apply_intervention, row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.scores import refusal_token_ids
from refusal_core.metrics import kl_divergence
from refusal_core.model.families import model_lock
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.forward import encode_prompts, last_token_logprobs, refusal_log_odds
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.selection.policy import apply_filters, lowest_bypass, why_none
from refusal_core.selection.result import SelectionFilters, SelectionResult

__all__ = [
    "SelectionFilters",
    "SelectionResult",
    "apply_filters",
    "score_candidates",
    "score_candidates_sequential",
]

_MEASURES = ("bypass", "kl", "induce")


# ----------------------------------------------------------------------------- filtering


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Candidate:
    name: str
    position: int
    layer: int
    vector: torch.Tensor  # [d], raw: actadd uses the DIM norm, ablation normalises it away


@dataclass(frozen=True)
class _Row:
    """One batch row: a prompt (index into the combined prompt list) under one intervention."""

    prompt: int
    candidate: int
    measure: str


@dataclass
class _Prepared:
    """Everything the batched and the sequential scorer share."""

    candidates: list[_Candidate]
    batch: dict[str, torch.Tensor]  # all harmful then all harmless prompts, left-padded
    n_harmful: int
    refusal_ids: list[int]  # first tokens of refusal phrases
    base_harmless_logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    forwards: int = 0


def _candidates(directions: DirectionSet) -> list[_Candidate]:
    out = []
    for name, vector, record in zip(directions.names, directions.vectors, directions.provenance):
        if "layer" not in record or "position" not in record:
            raise DirectionError(
                f"Candidate {name!r} has no layer/position in its provenance; score the set written by "
                "`directions dim` (refusal_core.directions.dim.dim_direction_set)."
            )
        out.append(_Candidate(name, int(record["position"]), int(record["layer"]), vector.float()))
    cells = [(c.position, c.layer) for c in out]
    if len(set(cells)) != len(cells):
        raise DirectionError(
            "Two candidates share a (position, layer) cell; score one difference-in-means set at a time "
            "(the set written by `directions dim`)."
        )
    return out


def _prepare(
    loaded: LoadedModel, candidates: DirectionSet, harmful: Sequence[str], harmless: Sequence[str], chat
) -> _Prepared:
    if not harmful or not harmless:
        raise SettingsError("Selection needs at least one harmful and one harmless validation prompt.")
    candidates.check_width(loaded.d_model)
    texts = format_prompts(loaded.tokenizer, list(harmful) + list(harmless), chat)
    return _Prepared(
        candidates=_candidates(candidates),
        batch=encode_prompts(loaded, texts),
        n_harmful=len(harmful),
        refusal_ids=refusal_token_ids(loaded.tokenizer),
    )


def _intervention(candidate: _Candidate, measure: str) -> Intervention:
    """Actadd of the raw vector at its own layer for ``induce``; ablation at all layers otherwise."""
    if measure == "induce":
        return Intervention(
            name=f"actadd:{candidate.name}", actadd=candidate.vector, actadd_layer=candidate.layer, actadd_coeff=1.0
        )
    return Intervention(name=f"ablate:{candidate.name}", ablate=candidate.vector[None], ablate_mode="orthogonal")


def _rows(prepared: _Prepared, n_layers: int) -> list[_Row]:
    """Candidate-major rows: harmful prompts ablated, harmless ablated, harmless actadd-ed."""
    harmful = range(prepared.n_harmful)
    harmless = range(prepared.n_harmful, prepared.batch["input_ids"].shape[0])
    rows = []
    for index, candidate in enumerate(prepared.candidates):
        rows += [_Row(p, index, "bypass") for p in harmful]
        rows += [_Row(p, index, "kl") for p in harmless]
        # Adding at the output of the last block has no block to hook; it stays NaN.
        if candidate.layer < n_layers:
            rows += [_Row(p, index, "induce") for p in harmless]
    return rows


def _last_logprobs(loaded: LoadedModel, batch: dict[str, torch.Tensor], index: Sequence[int]) -> torch.Tensor:
    """``[len(index), vocab]`` float64 log-probabilities of the next token after the chosen rows.

    Left padding puts every prompt's last token at -1 even after rows are regrouped.
    """
    rows = torch.as_tensor(list(index), dtype=torch.long, device=batch["input_ids"].device)
    with torch.no_grad():
        return last_token_logprobs(loaded.model, {name: tensor[rows] for name, tensor in batch.items()}).cpu()


def _row_values(prepared: _Prepared, rows: Sequence[_Row], logprobs: torch.Tensor) -> torch.Tensor:
    """One number per row: the refusal score, or KL from the baseline for ``kl`` rows."""
    values = refusal_log_odds(logprobs, prepared.refusal_ids)
    kl_rows = [i for i, row in enumerate(rows) if row.measure == "kl"]
    if kl_rows:
        base = prepared.base_harmless_logprobs[[rows[i].prompt - prepared.n_harmful for i in kl_rows]]
        values[kl_rows] = kl_divergence(base, logprobs[kl_rows]).double()
    return values


def _baseline(loaded: LoadedModel, prepared: _Prepared, batch_size: int) -> tuple[float, float]:
    """Mean unmodified refusal scores (harmful, harmless); stores the harmless logprobs."""
    n_total = prepared.batch["input_ids"].shape[0]
    logprobs = []
    for start in range(0, n_total, batch_size):
        with model_lock(loaded.model):
            logprobs.append(_last_logprobs(loaded, prepared.batch, range(start, min(start + batch_size, n_total))))
        prepared.forwards += 1
    logprobs = torch.cat(logprobs)
    prepared.base_harmless_logprobs = logprobs[prepared.n_harmful :]
    scores = refusal_log_odds(logprobs, prepared.refusal_ids)
    return float(scores[: prepared.n_harmful].mean()), float(scores[prepared.n_harmful :].mean())


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _score_rows_batched(
    loaded: LoadedModel, prepared: _Prepared, rows: list[_Row], rows_per_forward: int, progress: Progress | None
) -> torch.Tensor:
    """Row values, ``rows_per_forward`` rows per forward pass, each row under its own intervention."""
    # One Intervention per (candidate, measure), shared by its rows: building one validates
    # the vectors, which need not happen once per prompt.
    interventions = {
        (row.candidate, row.measure): _intervention(prepared.candidates[row.candidate], row.measure) for row in rows
    }
    values = []
    for chunk in _chunks(rows, rows_per_forward):
        per_row = [interventions[row.candidate, row.measure] for row in chunk]
        # The lock is per forward: nothing stays on the model between chunks, and other
        # sessions sharing the model get a turn.
        with model_lock(loaded.model), row_interventions(loaded.model, per_row):
            logprobs = _last_logprobs(loaded, prepared.batch, [row.prompt for row in chunk])
        prepared.forwards += 1
        values.append(_row_values(prepared, chunk, logprobs))
        if progress:
            progress(sum(len(v) for v in values), len(rows))
    return torch.cat(values) if values else torch.empty(0, dtype=torch.float64)


def _score_rows_sequential(
    loaded: LoadedModel, prepared: _Prepared, rows: list[_Row], batch_size: int, progress: Progress | None
) -> torch.Tensor:
    """Row values, one (candidate, measure) at a time under a whole-batch intervention."""
    groups: dict[tuple[int, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row.candidate, row.measure), []).append(i)
    values = torch.empty(len(rows), dtype=torch.float64)
    done = 0
    for (candidate, measure), members in groups.items():
        intervention = _intervention(prepared.candidates[candidate], measure)
        for chunk in _chunks(members, batch_size):
            group_rows = [rows[i] for i in chunk]
            with model_lock(loaded.model), apply_intervention(loaded.model, intervention):
                logprobs = _last_logprobs(loaded, prepared.batch, [row.prompt for row in group_rows])
            prepared.forwards += 1
            values[list(chunk)] = _row_values(prepared, group_rows, logprobs)
        done += len(members)
        if progress:
            progress(done, len(rows))
    return values


def _grids(
    prepared: _Prepared, rows: list[_Row], values: torch.Tensor
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[str | None, ...], ...], dict[str, torch.Tensor]]:
    """Mean row values per (position, layer) cell for each measure, NaN where absent."""
    positions = tuple(sorted({c.position for c in prepared.candidates}))
    layers = tuple(sorted({c.layer for c in prepared.candidates}))
    cell = {i: (positions.index(c.position), layers.index(c.layer)) for i, c in enumerate(prepared.candidates)}
    names: list[list[str | None]] = [[None] * len(layers) for _ in positions]
    for i, candidate in enumerate(prepared.candidates):
        names[cell[i][0]][cell[i][1]] = candidate.name
    sums = {m: torch.zeros(len(positions), len(layers), dtype=torch.float64) for m in _MEASURES}
    counts = {m: torch.zeros(len(positions), len(layers), dtype=torch.float64) for m in _MEASURES}
    for row, value in zip(rows, values.tolist()):
        i, j = cell[row.candidate]
        sums[row.measure][i, j] += value
        counts[row.measure][i, j] += 1
    grids = {m: torch.where(counts[m] > 0, sums[m] / counts[m].clamp_min(1), torch.nan) for m in _MEASURES}
    return positions, layers, tuple(tuple(row) for row in names), grids


def _score(
    loaded: LoadedModel,
    candidates: DirectionSet,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    filters: SelectionFilters,
    batch_size: int,
    chat: ChatFormat | None,
    progress: Progress | None,
    rows_per_forward: int | None,
) -> SelectionResult:
    """Shared driver; ``rows_per_forward=None`` selects the sequential scorer."""
    if batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {batch_size}.")
    started = time.perf_counter()
    prepared = _prepare(loaded, candidates, harmful_val, harmless_val, chat)
    baseline_harmful, baseline_harmless = _baseline(loaded, prepared, batch_size)
    rows = _rows(prepared, loaded.n_layers)
    if rows_per_forward is None:
        values = _score_rows_sequential(loaded, prepared, rows, batch_size, progress)
    else:
        values = _score_rows_batched(loaded, prepared, rows, rows_per_forward, progress)
    positions, layers, names, grids = _grids(prepared, rows, values)
    passed = apply_filters(grids["bypass"], grids["induce"], grids["kl"], layers, loaded.n_layers, filters)
    chosen = lowest_bypass(grids["bypass"], passed, positions, layers)
    if chosen is None:
        reason = why_none(grids["bypass"], grids["induce"], grids["kl"], layers, loaded.n_layers, filters)
    else:
        best = float(grids["bypass"][positions.index(chosen[0]), layers.index(chosen[1])])
        reason = f"Lowest bypass score ({best:.4g}) among the {int(passed.sum())} of {len(prepared.candidates)} candidates that passed."
    return SelectionResult(
        positions=positions,
        layers=layers,
        names=names,
        bypass=grids["bypass"],
        induce=grids["induce"],
        kl=grids["kl"],
        passed=passed,
        chosen=chosen,
        reason=reason,
        baseline_harmful=baseline_harmful,
        baseline_harmless=baseline_harmless,
        n_layers=loaded.n_layers,
        filters=filters,
        provenance=_provenance(loaded, candidates, harmful_val, harmless_val, chat),
        timing={
            "seconds": round(time.perf_counter() - started, 4),
            "forwards": prepared.forwards,
            "rows": len(rows),
            "rows_per_forward": rows_per_forward if rows_per_forward is not None else batch_size,
            "mode": "sequential" if rows_per_forward is None else "batched",
        },
    )


def _provenance(loaded: LoadedModel, candidates: DirectionSet, harmful, harmless, chat) -> dict:
    return {
        "model": loaded.spec,
        "weights": weights_fingerprint(loaded.model),
        "dtype": str(loaded.dtype),
        "method": "arditi-selection",
        "harmful_hash": content_key("prompts", list(harmful)),
        "harmless_hash": content_key("prompts", list(harmless)),
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "chat": (chat or ChatFormat()).identity(loaded.tokenizer),
        "candidates": candidates.meta,
    }


def score_candidates(
    loaded: LoadedModel,
    candidates: DirectionSet,
    harmful_val: list[str],
    harmless_val: list[str],
    filters: SelectionFilters = SelectionFilters(),
    batch_size: int = 32,
    candidates_per_batch: int | None = None,
    progress: Progress | None = None,
    chat: ChatFormat | None = None,
) -> SelectionResult:
    """Score every candidate (bypass, induce, KL), filter, and choose one.

    ``candidates`` is a set from ``dim_direction_set`` (its provenance gives each vector's
    layer and position). Each forward pass holds ``batch_size`` rows, a row being one
    prompt under one candidate's intervention, so several candidates share a pass; with
    ``candidates_per_batch`` a pass instead holds that many candidates' worth of rows
    (``candidates_per_batch * (n_harmful + 2 * n_harmless)``). ``progress(done, total)``
    counts rows.
    """
    if candidates_per_batch is not None and candidates_per_batch < 1:
        raise SettingsError(f"candidates_per_batch must be at least 1, got {candidates_per_batch}.")
    rows_per_candidate = len(harmful_val) + 2 * len(harmless_val)
    rows_per_forward = batch_size if candidates_per_batch is None else candidates_per_batch * rows_per_candidate
    return _score(loaded, candidates, harmful_val, harmless_val, filters, batch_size, chat, progress, rows_per_forward)


def score_candidates_sequential(
    loaded: LoadedModel,
    candidates: DirectionSet,
    harmful_val: list[str],
    harmless_val: list[str],
    filters: SelectionFilters = SelectionFilters(),
    batch_size: int = 32,
    progress: Progress | None = None,
    chat: ChatFormat | None = None,
) -> SelectionResult:
    """:func:`score_candidates` one candidate at a time, with ``apply_intervention`` on whole
    batches of prompts: the same maths by another route, to check and time the batched one."""
    return _score(loaded, candidates, harmful_val, harmless_val, filters, batch_size, chat, progress, None)
