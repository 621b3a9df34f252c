"""Several directions against one, measured honestly (the SOM paper's comparison).

For each layer: one difference-in-means (DIM) direction against subsets of k = 1..K
directions of SOMs trained with several seeds, of clustered per-prompt directions, and one
optimized (RDO) direction. Subsets are chosen on the *val* split by the Optuna subset
search with its default objective (the share of replies that are refused or broken, plus
``kl_penalty`` times the harmless first-token KL), so a subset cannot win by wrecking the
model; every chosen set is then measured on the *test* split, with bootstrap intervals:
coherent compliance (neither refused nor broken), broken, refused, harmless KL and harmless
refusal, beside the search budget each point used. The result is one JSON document, saved
in the cache under a content key (``results``), with every reply, for the dashboard.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Callable

from refusal_core.activations.extract import extract_activations
from refusal_core.damage import judge_by_name
from refusal_core.directions.planted import load_planted, recovery
from refusal_core.errors import SettingsError
from refusal_core.experiments import families as fam
from refusal_core.experiments.evaluate import Variant, measure_variants
from refusal_core.experiments.many_settings import ExperimentPrompts, ManyDirectionsSettings, builtin_prompts
from refusal_core.experiments.results import goal_check, load_cached, result_key, result_path, save_result
from refusal_core.generation import GenerationSettings
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.selection.optimize import OptimizeSettings
from refusal_core.selection.search import SearchSettings, run_search
from refusal_core.selection.subsets import ENCODING

__all__ = ["ExperimentPrompts", "ManyDirectionsSettings", "builtin_prompts", "run_many_directions"]


class _Tracker:
    """Progress in work units: one search trial is one unit; the other stages are weighed in it."""

    def __init__(self, progress: Progress | None, total: float) -> None:
        self.progress, self.total, self.done = progress, total, 0.0

    def report(self, stage: str, done: float | None = None) -> None:
        if done is not None:
            self.done = done
        if self.progress:
            self.progress(int(self.done), max(int(math.ceil(self.total)), int(self.done) + 1), stage=stage)


def _test_weight(settings: ManyDirectionsSettings, n_variants: int) -> float:
    """Cost of measuring ``n_variants`` on the test split, in search trials (reply tokens)."""
    per_trial = settings.val_harmful * settings.search_tokens
    return n_variants * (settings.test_harmful + settings.test_harmless) * settings.test_tokens / per_trial


def _plan(settings: ManyDirectionsSettings) -> tuple[int, int]:
    """(searched families, test variants) per layer, for the time estimate."""
    searched = len(settings.som_seeds) + (1 if settings.clusters else 0)
    variants = 2 + searched * settings.max_k + (1 if settings.optimize else 0)
    return searched, variants


def _search_family(
    loaded,
    family: fam.Family,
    prompts: ExperimentPrompts,
    settings: ManyDirectionsSettings,
    judge,
    chat,
    layer: int,
    tracker: _Tracker,
    storage: str,
) -> list[dict]:
    """The best subset of each size k = 1..K of ``family.pool``, chosen on val, with its budget."""
    points = []
    for k in range(1, min(settings.max_k, len(family.pool)) + 1):
        subsets = math.comb(len(family.pool), k)
        start = tracker.done
        if subsets == 1:
            names, budget = (
                list(family.pool.names),
                {
                    "trials": 0,
                    "evaluated": 0,
                    "prompts": 0,
                    "seconds": 0.0,
                    "note": "the whole pool: nothing to search",
                },
            )
        else:
            trials = min(settings.trials, subsets)
            search = SearchSettings(
                k=k,
                n_trials=trials,
                objective="verdicts",
                judge=settings.judge,
                kl_penalty=settings.kl_penalty,
                max_new_tokens=settings.search_tokens,
                seed=settings.search_seed,
                batch_size=settings.batch_size,
                study_label=f"many-L{layer}-{family.name}",
                storage=storage,
            )
            stage = f"layer {layer}: search {family.name}, k={k}"

            def update(done: int, total: int, stage=stage, start=start, **info: object) -> None:
                tracker.report(f"{stage}, trial {done}/{total}", start + done)

            tracker.report(f"{stage} ({trials} trials)")
            result = run_search(
                loaded,
                family.pool,
                prompts.val_harmful.instructions,
                prompts.val_harmless.instructions,
                search,
                judge=judge,
                progress=update,
                chat=chat,
            )
            evaluated = [t for t in result.trials if t["state"] == "COMPLETE" and t["reused_from"] is None]
            budget = {
                "trials": len(result.trials),
                "evaluated": len(evaluated),
                "ran": result.ran,
                "seconds": result.seconds,
                "study": result.study_name,
                "prompts": len(prompts.val_harmful) + len(prompts.val_harmless),
                "best_value": result.best_value,
            }
            if result.best_names is None:
                names = list(family.pool.names[:k])
                budget["note"] = "no trial completed: the first k of the pool"
            else:
                names = list(result.best_names)
            tracker.report(stage, start + min(settings.trials, subsets))
        points.append(
            {
                "family": family.name,
                "k": k,
                "names": names,
                "seed": family.seed,
                "search": budget,
                "vectors": family.pool.select(names).vectors,
            }
        )
    return points


def _planted_points(loaded, points: list[dict]) -> list[dict]:
    """Where the model folder holds planted directions (``directions.planted``): each point's
    recovery of them, and one more point that ablates the planted directions themselves."""
    planted = load_planted(getattr(loaded, "source", None))
    if planted is None:
        return []
    for point in points:
        point["planted"] = recovery(point["vectors"], planted)
    return [
        {
            "family": "planted",
            "k": len(planted),
            "names": list(planted.names),
            "seed": None,
            "vectors": planted.vectors,
            "search": {
                "trials": 0,
                "evaluated": 0,
                "prompts": 0,
                "seconds": 0.0,
                "note": "the planted directions: no search",
            },
            "planted": recovery(planted.vectors, planted),
        }
    ]


def _layer(
    loaded,
    layer: int,
    acts,
    prompts: ExperimentPrompts,
    settings: ManyDirectionsSettings,
    judge,
    chat,
    tracker: _Tracker,
    storage: str,
) -> dict:
    harmful_acts, harmless_acts = acts
    fit_args = (harmful_acts, harmless_acts, prompts.train_harmful, prompts.train_harmless, loaded.spec, layer)
    tracker.report(f"layer {layer}: fitting DIM, {len(settings.som_seeds)} SOMs and clusters")
    dim = fam.dim_family(*fit_args)
    searched = [fam.som_family(*fit_args, settings.som_grid, seed) for seed in settings.som_seeds]
    if settings.clusters:
        searched.append(fam.cluster_family(*fit_args, settings.clusters))
    single = [dim]
    if settings.optimize:
        start = tracker.done

        def steps(done: int, total: int, **info: object) -> None:
            tracker.report(f"layer {layer}: optimizing the RDO direction, step {done}/{total}", start + done)

        rdo_settings = OptimizeSettings(steps=settings.optimize_steps, batch_size=settings.batch_size)
        single.append(
            fam.rdo_family(loaded, dim, prompts.train_harmful, prompts.train_harmless, rdo_settings, chat, steps)
        )
    points = [
        {
            "family": f.name,
            "k": 1,
            "names": list(f.pool.names),
            "seed": None,
            "vectors": f.pool.vectors,
            "search": {"trials": 0, "evaluated": 0, "prompts": 0, "seconds": 0.0, "note": "one direction: no search"},
        }
        for f in single
    ]
    for family in searched:
        points += _search_family(loaded, family, prompts, settings, judge, chat, layer, tracker, storage)
    points += _planted_points(loaded, points)
    variants = [Variant("baseline", None)] + [Variant(f"{p['family']}/k{p['k']}", p.pop("vectors")) for p in points]
    start, weight = tracker.done, _test_weight(settings, len(variants))
    generation = GenerationSettings(max_new_tokens=settings.test_tokens, batch_size=settings.batch_size)
    measured = measure_variants(
        loaded,
        variants,
        prompts.test_harmful.instructions,
        prompts.test_harmless.instructions,
        judge,
        generation,
        settings.n_boot,
        settings.boot_seed,
        chat,
        tick=lambda stage, share: tracker.report(f"layer {layer}: {stage}", start + share * weight),
    )
    baseline = measured.pop("baseline")
    for point, variant in zip(points, variants[1:]):
        point.update(measured[variant.name])
    sizes = {f.name: len(f.pool) for f in single + searched}
    return {"layer": layer, "baseline": baseline, "points": points, "pool_sizes": sizes, "goal": goal_check(points)}


def run_many_directions(
    loaded: LoadedModel,
    settings: ManyDirectionsSettings = ManyDirectionsSettings(),
    prompts: ExperimentPrompts | None = None,
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
    judge_factory: Callable[[str], object] = judge_by_name,
) -> dict:
    """Run (or read back from the cache) the comparison; returns the JSON-ready result.

    The result: ``model``, ``weights``, ``settings``, ``prompts`` (counts and hashes),
    ``layers`` (per layer: ``baseline`` and ``points``, each point ``family``, ``k``,
    ``names``, ``seed``, ``search`` budget, ``metrics`` with bootstrap intervals, ``replies``
    and ``harmless_replies``; ``goal``), ``seconds`` (wall time of the run that computed it),
    ``started`` (UTC), ``key`` and ``path`` (the cache file) and ``cached`` (read back).
    """
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    prompts = prompts or builtin_prompts(settings)
    bad = [layer for layer in settings.layers if not 0 <= layer < loaded.n_layers]
    if bad:
        raise SettingsError(
            f"Layers {bad} do not exist: this model has layers 0..{loaded.n_layers - 1}; choose --layers among them."
        )
    fingerprint = weights_fingerprint(loaded.model)
    # The subset encoding is part of the key: a result searched with an older encoding is not read back as this one's.
    key = result_key(
        ENCODING,
        loaded.spec,
        fingerprint,
        settings.as_dict(),
        prompts.hashes(),
        (chat or ChatFormat()).identity(loaded.tokenizer),
    )
    if use_cache and (cached := load_cached(key)) is not None:
        return cached
    # The run's searches share one SQLite file beside the result: an interrupted run resumes
    # its studies, and a run without the cache starts them afresh.
    storage = result_path(key).with_suffix(".db")
    if not use_cache:
        storage.unlink(missing_ok=True)
    searched, variants = _plan(settings)
    per_layer = (
        searched * settings.max_k * settings.trials
        + _test_weight(settings, variants)
        + settings.optimize * settings.optimize_steps
    )
    tracker = _Tracker(progress, per_layer * len(settings.layers))
    tracker.report("activations of the train prompts")
    acts = tuple(
        extract_activations(loaded, p.instructions, chat=chat, batch_size=settings.batch_size)
        for p in (prompts.train_harmful, prompts.train_harmless)
    )
    judge = judge_factory(settings.judge)
    layers = []
    for index, layer in enumerate(settings.layers):
        tracker.done = max(tracker.done, index * per_layer)
        layers.append(_layer(loaded, layer, acts, prompts, settings, judge, chat, tracker, str(storage)))
    result = {
        "kind": "many-directions",
        "model": loaded.spec,
        "weights": fingerprint,
        "settings": settings.as_dict(),
        "prompts": {"counts": prompts.counts(), "hashes": prompts.hashes()},
        "layers": layers,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 1),
        "key": key,
    }
    return save_result(result)
