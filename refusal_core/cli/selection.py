"""``directions select`` (Arditi's candidate scoring) and ``directions search`` (Optuna subset search)."""

from __future__ import annotations

from pathlib import Path

from refusal_core.cli.common import (
    add_judge_arg,
    add_model_args,
    add_set_args,
    chat_format,
    emit,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
)
from refusal_core.exports.manifest import direction_files, seeds_of, write_result_manifest
from refusal_core.selection.racing import ScoringMode
from refusal_core.selection.result import SelectionFilters
from refusal_core.selection.search import SearchSettings
from refusal_core.settings import add_setting_flags, settings_from_args


def cmd_directions_select(args) -> None:
    from refusal_core.selection.policy import select_with_fallback
    from refusal_core.selection.racing import RacingSettings, race_candidates

    filters = settings_from_args(SelectionFilters, args)  # bad filters fail before the model loads
    loaded = load_model_from_args(args)
    candidates = load_directions(args.dirs, loaded.d_model)
    harmful = prompt_set(args.harmful, args.column, args.limit)
    harmless = prompt_set(args.harmless, args.column, args.limit)
    result = race_candidates(
        loaded,
        candidates,
        list(harmful.instructions),
        list(harmless.instructions),
        filters,
        RacingSettings(rows_per_forward=args.batch_size),
        exhaustive=args.exhaustive,
        progress=progress_bar("Scoring candidates", args.json),
        chat=chat_format(args),
    )
    result.save(args.out)
    pick = select_with_fallback(result)
    chosen = pick.cell if pick.chosen else None
    payload = {
        "out": args.out,
        "chosen": chosen,
        "n_candidates": len(candidates),
        "n_passed": int(result.passed.sum()),
        "mode": result.timing["mode"],
        "seconds": result.timing["seconds"],
        "rows": result.timing["rows"],
        "finalists": result.timing["finalists"],
    }

    def scores(cell) -> dict:
        p, li = result.positions.index(cell[0]), result.layers.index(cell[1])
        return {
            "bypass": float(result.bypass[p, li]),
            "induce": float(result.induce[p, li]),
            "kl": float(result.kl[p, li]),
        }

    if chosen is not None:
        payload.update(scores(chosen))
    elif pick.cell is not None:
        payload["closest"] = {"position": pick.cell[0], "layer": pick.cell[1], "rule": pick.rule, **scores(pick.cell)}
    # --save-direction saves the chosen candidate, or else the closest one (as the report and
    # the dashboard's *Closest DIM* do), and says which.
    written = [Path(args.out)]
    if args.save_direction and pick.name is not None:
        candidates.select([pick.name]).save(args.save_direction)
        written += direction_files(args.save_direction)
        payload["saved"] = {"path": args.save_direction, "name": pick.name, "closest": not pick.chosen}
    write_result_manifest(
        args.out,
        written,
        args.argv,
        loaded,
        candidates,
        inputs=direction_files(args.dirs.partition(":")[0]),
        seeds=seeds_of(args),
    )

    def human() -> None:
        how = (
            "every candidate on every prompt"
            if payload["mode"] == "exhaustive"
            else f"by racing, {len(payload['finalists'])} finalists on every prompt"
        )
        print(
            f"Scored {len(candidates)} candidates {how} ({payload['rows']} rows, {payload['seconds']:.0f} s); "
            f"{payload['n_passed']} pass the filters. Table written to {args.out}"
        )
        if chosen is None:
            print("No candidate passes the filters; relax --max-kl / --min-induce / --max-layer-fraction.")
            if "closest" in payload:
                c = payload["closest"]
                print(
                    f"Closest ({c['rule']}): position {c['position']}, layer {c['layer']} "
                    f"(bypass {c['bypass']:.3f}, induce {c['induce']:.3f}, KL {c['kl']:.4f})"
                )
        else:
            print(
                f"Chosen: position {chosen[0]}, layer {chosen[1]} (bypass {payload['bypass']:.3f}, induce {payload['induce']:.3f}, KL {payload['kl']:.4f})"
            )
        if "saved" in payload:
            what = "the closest candidate" if payload["saved"]["closest"] else "the chosen candidate"
            print(f"Saved {what}, {payload['saved']['name']}, to {payload['saved']['path']}")

    emit(args, payload, human)


def _trial_summary(trial: dict, replies: bool) -> dict:
    row = {key: value for key, value in trial.items() if key != "replies"}
    return {**row, "replies": trial["replies"]} if replies else row


def cmd_directions_search(args) -> None:
    from refusal_core.selection.search import best_direction_set, run_search

    # Settings first: a bad --storage or --study fails before the model is loaded.
    settings = settings_from_args(SearchSettings, args)
    loaded = load_model_from_args(args)
    pool = load_directions(args.pool, loaded.d_model)
    harmful = prompt_set(args.harmful, args.column, args.limit)
    harmless = prompt_set(args.harmless, args.column, args.limit)
    result = run_search(
        loaded,
        pool,
        list(harmful.instructions),
        list(harmless.instructions),
        settings,
        chat=chat_format(args),
        progress=progress_bar("Search", args.json),
    )
    best = best_direction_set(result, pool)
    best.save(args.out)
    write_result_manifest(
        args.out,
        direction_files(args.out),
        args.argv,
        loaded,
        best,
        inputs=direction_files(args.pool.partition(":")[0]),
        seeds=seeds_of(args),
    )
    front = result.pareto
    payload = {
        "out": args.out,
        "best": list(result.best_names),
        "best_value": result.best_value,
        "study": result.study_name,
        "storage": result.storage,
        "objective": args.objective,
        "judge": args.judge,
        "kl_penalty": args.kl_penalty,
        "pareto": [_trial_summary(trial, replies=True) for trial in front],
        "trials": [_trial_summary(trial, replies=False) for trial in result.trials],
        "ran": result.ran,
    }
    finished = sum(1 for trial in result.trials if trial["state"] in ("COMPLETE", "PRUNED"))

    def human() -> None:
        print(
            f"Study {result.study_name} ({result.storage}): {finished} finished trials, {result.ran} run by this worker"
        )
        print(
            f"Best {args.k} directions: {', '.join(result.best_names)} (objective {result.best_value:.3f}); written to {args.out}"
        )
        print(f"Pareto front (refusal term vs harmless KL; objective {args.objective}, judge {args.judge}):")
        for trial in front:
            shares = (
                "" if trial["broken"] is None else f" refused {trial['refused']:.0%}, broken {trial['broken']:.0%},"
            )
            kl = "n/a" if trial["kl"] is None else f"{trial['kl']:.4f}"
            print(
                f"  trial {trial['number']}: refusal {trial['refusal']:.3f},{shares} KL {kl}  {', '.join(trial['names'])}"
            )

    emit(args, payload, human)


def add_select_parser(directions) -> None:
    select = directions.add_parser("select", help="score DIM candidates (bypass, induce, KL) and choose one (Arditi)")
    add_model_args(select), add_set_args(select, split="val")
    select.add_argument("--dirs", required=True, help="DIM direction set from `directions dim`")
    add_setting_flags(select, SelectionFilters)
    select.add_argument("--out", required=True, help="JSON score table")
    add_setting_flags(select, ScoringMode)
    select.add_argument(
        "--save-direction",
        default=None,
        help="also save the chosen direction (or, when none passes the filters, the closest) as a set",
    )
    select.set_defaults(func=cmd_directions_select)


def add_search_parser(directions) -> None:
    search = directions.add_parser(
        "search", help="Optuna TPE search for the best k directions of a pool (Piras et al.)"
    )
    add_model_args(search), add_set_args(search, split="val")
    search.add_argument("--pool", required=True, help="direction set to pick from (PATH or PATH:name,...)")
    add_judge_arg(search)
    # The search's own settings; --batch-size comes from the prompt-set options.
    add_setting_flags(search, SearchSettings)
    search.add_argument("--out", required=True)
    search.set_defaults(func=cmd_directions_search)
