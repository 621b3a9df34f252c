"""Searching for the subset of directions whose joint ablation best stops refusal (Piras et al.).

A pool of candidate directions (DIM candidates, SOM neurons, cluster centroids...) holds
many more than one refusal direction. Each Optuna trial picks ``k`` distinct directions,
ablates them together at every layer and measures how much the model still refuses on
harmful validation prompts; the TPE sampler proposes the next subset from the results.

The study lives in an Optuna storage (an SQLite file under the cache by default, or any
storage URL), so an interrupted search resumes where it stopped, and several workers, on
several machines with a shared database, can fill one study together.

Trials and their user attributes:

- ``pick_0 .. pick_{k-1}``: pick i is an index into the pool names not picked before it
  (``subsets.py``), so every trial draws ``k`` distinct directions and none is spent on a
  repeat. When ``n_trials`` covers all C(n, k) subsets, a new study queues each subset once
  and the search is exhaustive. Studies carry the encoding's version (``subsets.ENCODING``)
  in their default name and as a study attribute; one made with the older encoding
  (``slot_i`` over all names, repeats pruned) is refused, not resumed.
- ``names``: the chosen names, sorted, so a set is one key whatever the slot order. The
  directions are ablated in this sorted order, which fixes the result of ``sequential``
  ablation too. A trial that draws a set some completed trial already evaluated copies that
  trial's ``refusal``/``kl`` and returns its value (user attribute ``reused_from``) instead
  of generating again.
- ``refusal``: the objective's refusal term (``trials.py``; with the default ``verdicts``
  objective the share of replies refused *or broken*); ``refused``/``broken``: the shares of
  each verdict (None for the ``score`` objective); ``kl``: mean harmless first-token KL
  (None without harmless prompts); ``replies``: a few of the trial's replies with their
  labels (at most ``stored_replies``, each cut to ``trials.REPLY_CHARS`` characters), so a
  chosen trial can be read back from the study. The trial value is
  ``refusal + kl_penalty * kl``; ``SearchResult.pareto`` lists the trials that no other
  beats on both refusal and KL.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

from refusal_core.activations.cache import content_key, tensor_digest
from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.judges.substring import Judge
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.selection.pareto import trial_front
from refusal_core.selection.search_settings import SearchSettings
from refusal_core.selection.study import open_study, redact, run_to_total, storage_url
from refusal_core.selection.subsets import ENCODING, check_encoding, enqueue_every_subset, suggest_subset, trial_names
from refusal_core.selection.trials import TrialEvaluator

__all__ = ["SearchResult", "SearchSettings", "best_direction_set", "run_search", "storage_url"]


@dataclass(frozen=True)
class SearchResult:
    """A study's trials and its best subset.

    ``trials``: one dict per trial (``number``, ``names`` sorted, ``value``, ``refusal``,
    ``refused``, ``broken``, ``kl``, ``state``, ``reused_from``, ``replies``), in trial
    order, including trials of earlier runs and other workers. ``best_names``/``best_value``
    are None until a trial completes. ``ran`` counts the trials this call ran; ``seconds`` is
    its wall time; ``started`` when the study's first trial began (ISO 8601, local time; None
    without trials).
    """

    trials: tuple[dict, ...]
    best_names: tuple[str, ...] | None
    best_value: float | None
    study_name: str
    storage: str
    settings: SearchSettings
    provenance: dict = field(default_factory=dict)
    ran: int = 0
    seconds: float = 0.0
    started: str | None = None

    @property
    def pareto(self) -> list[dict]:
        """Trials on the (refusal, KL) Pareto front, lowest refusal first (``pareto.trial_front``)."""
        return trial_front(self.trials)


def _optuna():
    """Import Optuna on first use, quieted; the search is an optional feature."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError("Subset search needs Optuna: pip install optuna==5.0.0 (pinned in constraints.txt).") from err
    # Optuna logs one INFO line per trial; progress goes through our callback instead.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _default_study_name(
    loaded: LoadedModel,
    pool: DirectionSet,
    harmful: Sequence[str],
    harmless: Sequence[str] | None,
    settings: SearchSettings,
    judge: Judge | None,
    chat: ChatFormat | None,
) -> str:
    key = content_key(
        "search",
        ENCODING,
        weights_fingerprint(loaded.model),
        list(pool.names),
        tensor_digest({"vectors": pool.vectors.float()}),
        settings.identity(),
        getattr(judge, "name", None),
        list(harmful),
        list(harmless) if harmless is not None else None,
        (chat or ChatFormat()).identity(loaded.tokenizer),
    )
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", settings.study_label or "search").strip("_.")[:60] or "search"
    return f"{label}-k{settings.k}-{key}"  # the whole 128-bit key: two studies never share a name by chance


def _check_inputs(pool: DirectionSet, harmful, harmless, settings: SearchSettings, judge, d_model: int) -> None:
    pool.check_width(d_model)
    if settings.k > len(pool):
        raise SettingsError(
            f"k={settings.k} but the pool holds only {len(pool)} directions; lower k or add directions."
        )
    if not harmful:
        raise SettingsError("The search needs at least one harmful validation prompt.")
    if settings.kl_penalty > 0 and not harmless:
        raise SettingsError("kl_penalty > 0 needs harmless validation prompts to measure KL on.")
    if settings.objective == "judge" and judge is None:
        raise SettingsError("objective='judge' needs a judge: run_search(..., judge=ClassifierJudge(...)).")
    if judge is not None and settings.objective not in ("judge", "verdicts"):
        raise SettingsError(
            f"A judge was given but objective is {settings.objective!r}; set objective='judge' (or 'verdicts' for a panel)."
        )
    if judge is not None and settings.objective == "verdicts" and not hasattr(judge, "verdicts"):
        raise SettingsError(
            "objective='verdicts' needs a judge panel (refusal_core.judges.make_judge); use objective='judge' for other judges."
        )


def _earlier_trial(study, names: list[str]):
    """A completed trial that already evaluated this set of names, or None."""
    optuna = _optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("names") == names:
            return trial
    return None


_MEASURES = ("refusal", "refused", "deflected", "broken", "kl", "replies")


def _objective(evaluator: TrialEvaluator, k: int):
    """The Optuna objective: draw k distinct directions, reuse a set already evaluated, else evaluate."""

    def objective(trial) -> float:
        names = sorted(suggest_subset(trial, evaluator.pool.names, k))
        trial.set_user_attr("names", names)
        earlier = _earlier_trial(trial.study, names)
        if earlier is not None:
            for attr in _MEASURES:
                trial.set_user_attr(attr, earlier.user_attrs.get(attr))
            trial.set_user_attr("reused_from", earlier.number)
            return float(earlier.value)
        measure = evaluator.measure(names)
        for attr in _MEASURES:
            value = getattr(measure, attr)
            trial.set_user_attr(attr, list(value) if attr == "replies" else value)
        return measure.refusal + (evaluator.settings.kl_penalty * measure.kl if measure.kl is not None else 0.0)

    return objective


def _best(study) -> tuple[tuple[str, ...] | None, float | None]:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None, None
    return tuple(best.user_attrs["names"]), float(best.value)


def _trial_rows(study, pool_names: Sequence[str]) -> tuple[dict, ...]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        names = attrs.get("names") or trial_names(trial.params, pool_names) or []
        rows.append(
            {
                "number": trial.number,
                "names": list(names),
                "value": trial.value,
                "refusal": attrs.get("refusal"),
                "refused": attrs.get("refused"),
                "deflected": attrs.get("deflected"),
                "broken": attrs.get("broken"),
                "kl": attrs.get("kl"),
                "state": trial.state.name,
                "reused_from": attrs.get("reused_from"),
                "replies": attrs.get("replies") or [],
            }
        )
    return tuple(rows)


def _progress_callback(progress: Progress | None, total: int):
    done = 0

    def callback(study, trial) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, best=_best(study)[1])

    return callback


def run_search(
    loaded: LoadedModel,
    pool: DirectionSet,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str] | None = None,
    settings: SearchSettings = SearchSettings(),
    judge: Judge | None = None,
    progress: Progress | None = None,
    n_trials: int | None = None,
    chat: ChatFormat | None = None,
) -> SearchResult:
    """Search for the ``settings.k`` pool directions whose joint ablation best stops refusal.

    Creates or resumes the study (``load_if_exists``). With ``n_trials=None`` it runs trials
    until the study holds ``settings.n_trials`` finished ones (completed and pruned, also
    those of other workers; see ``study.run_to_total``); an integer runs that many more.
    ``progress(done, to_run, best=value)`` is called after each trial of this call.
    """
    optuna = _optuna()
    _check_inputs(pool, harmful_val, harmless_val, settings, judge, loaded.d_model)
    started = time.perf_counter()
    name = settings.study_name or _default_study_name(loaded, pool, harmful_val, harmless_val, settings, judge, chat)
    url = storage_url(settings.storage, name)
    study = open_study(url, name, settings.seed, settings.heartbeat_seconds)
    check_encoding(study)
    if not study.get_trials(deepcopy=False) and math.comb(len(pool), settings.k) <= settings.n_trials:
        enqueue_every_subset(study, pool.names, settings.k)
    evaluator = TrialEvaluator(loaded, pool, harmful_val, harmless_val, settings, judge, chat)
    objective = _objective(evaluator, settings.k)
    if n_trials is None:
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        to_run = max(0, settings.n_trials - len(study.get_trials(deepcopy=False, states=counted)))
        ran = run_to_total(study, objective, settings.n_trials, _progress_callback(progress, to_run))
    else:
        study.optimize(objective, n_trials=n_trials, callbacks=[_progress_callback(progress, n_trials)])
        ran = n_trials
    best_names, best_value = _best(study)
    first = min((t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start), default=None)
    return SearchResult(
        trials=_trial_rows(study, pool.names),
        best_names=best_names,
        best_value=best_value,
        study_name=name,
        storage=redact(url),
        settings=settings,
        provenance=_provenance(loaded, pool, harmful_val, harmless_val, judge, settings),
        ran=ran,
        seconds=round(time.perf_counter() - started, 4),
        started=first.isoformat(timespec="seconds") if first else None,
    )


def _provenance(loaded: LoadedModel, pool: DirectionSet, harmful, harmless, judge, settings: SearchSettings) -> dict:
    return {
        "model": loaded.spec,
        "weights": weights_fingerprint(loaded.model),
        "pool_hash": tensor_digest({"vectors": pool.vectors.float()})[:32],
        "pool_size": len(pool),
        "harmful_hash": content_key("prompts", list(harmful)),
        "harmless_hash": content_key("prompts", list(harmless)) if harmless else None,
        "judge": getattr(judge, "name", None) or (settings.judge if settings.objective == "verdicts" else None),
    }


def best_direction_set(result: SearchResult, pool: DirectionSet) -> DirectionSet:
    """The best subset as a DirectionSet, each direction's provenance marked ``method="search"``.

    The original method and parameters are kept under ``source_method``/``params.source``;
    ``params`` also records the study, its storage, the objective and the value reached.
    """
    if result.best_names is None:
        raise SettingsError(f"Study {result.study_name} has no completed trial yet; run more trials.")
    chosen = pool.select(result.best_names)
    params = {
        "study_name": result.study_name,
        "storage": result.storage,
        "value": result.best_value,
        "subset": list(result.best_names),
        **result.settings.identity(),
    }
    provenance = tuple(
        {
            **record,
            "method": "search",
            "source_method": record.get("method"),
            "params": {**params, "source": record.get("params")},
        }
        for record in chosen.provenance
    )
    meta = {**pool.meta, "method": "search", "params": params, "search": result.provenance}
    return dataclasses.replace(chosen, provenance=provenance, meta=meta)
