"""Command line: ``python -m refusal_core COMMAND ...``.

Human-readable output by default, ``--json`` for machines. Bad input (a missing file, a
width mismatch, a layer out of range, an unloadable model) prints one clear message to
stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from refusal_core.models import BUNDLED_ORGANISM

__all__ = ["main"]

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input discovered by the CLI itself."""


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from refusal_core.chat import TemplateError
    from refusal_core.directions import DirectionError
    from refusal_core.models import ModelLoadError
    from refusal_core.prompts import PromptSetError

    return (CliError, DirectionError, ModelLoadError, PromptSetError, TemplateError, ValueError, FileNotFoundError, FileExistsError)


# ---------------------------------------------------------------------------------------
# Shared argument groups and loaders
# ---------------------------------------------------------------------------------------


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=BUNDLED_ORGANISM, help=f"model spec: {BUNDLED_ORGANISM}, bundled:smollm2-135m-instruct, a HF id or a local directory")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--device-map", default=None, help='"auto" spreads a large model over all GPUs')
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    parser.add_argument("--system-prompt", default=None, help="system prompt for the chat template")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _add_sets(parser: argparse.ArgumentParser, split: str = "train") -> None:
    parser.add_argument("--harmful", default=f"builtin:harmful/{split}", help="prompt file (.txt/.json/.jsonl/.csv), builtin:harmful[/split] or hf:name[:split]")
    parser.add_argument("--harmless", default=f"builtin:harmless/{split}", help="as --harmful")
    parser.add_argument("--column", default=None, help="column holding the prompts in .csv/.json(l)/hf sets")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many prompts of each set")
    parser.add_argument("--batch-size", type=int, default=16)


def _load(args):
    from refusal_core.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map, trust_remote_code=args.trust_remote_code)


def _chat(args):
    from refusal_core.chat import ChatFormat

    return ChatFormat(system_prompt=args.system_prompt)


def _prompts(spec: str, column: str | None, limit: int | None):
    from refusal_core.prompts import resolve_prompt_set

    prompts = resolve_prompt_set(spec, column=column)
    if limit is not None:
        if limit < 1:
            raise CliError(f"--limit must be at least 1, got {limit}.")
        prompts = prompts.head(limit)
    return prompts


def _progress(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    """A tqdm bar on stderr (stdout stays clean for --json)."""
    if quiet:
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _emit(args, payload: dict, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


def _activations_for(args, loaded, which: str):
    from refusal_core.activations import extract_activations

    prompts = _prompts(getattr(args, which), args.column, args.limit)
    acts = extract_activations(loaded, prompts.instructions, chat=_chat(args), batch_size=args.batch_size, progress=_progress(f"{which} activations", args.json))
    return prompts, acts


def _provenance(loaded, harmful, harmless, **params) -> dict:
    return {"model": loaded.spec, "data_hash": f"{harmful.content_hash()[:16]}:{harmless.content_hash()[:16]}", "params": params}


def _check_layer(layer: int, n_layers: int) -> None:
    if not 0 <= layer < n_layers:
        raise CliError(f"--layer {layer} is out of range: this model has layers 0..{n_layers - 1}.")


def _load_directions(spec: str, d_model: int):
    """``PATH`` or ``PATH:name1,name2`` -> a (sub)set checked against the model width."""
    from refusal_core.directions import load_direction_set

    path, _, names = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    directions = load_direction_set(path, d_model=d_model)
    return directions.select(names.split(",")) if names else directions


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def cmd_activations(args) -> None:
    loaded = _load(args)
    summary = {}
    for which in ("harmful", "harmless"):
        prompts, acts = _activations_for(args, loaded, which)
        summary[which] = {"prompts": len(prompts), "shape": list(acts.acts.shape), "from_cache": acts.from_cache, "key": acts.key, "positions": list(acts.positions)}

    def human() -> None:
        for which, info in summary.items():
            source = "cache" if info["from_cache"] else "computed"
            print(f"{which}: {info['prompts']} prompts, activations {info['shape']} [prompt, position, layer, d] ({source}, key {info['key']})")

    _emit(args, summary, human)


def cmd_directions_dim(args) -> None:
    from refusal_core.directions import cosine_matrix, dim_from_activations, dim_name

    loaded = _load(args)
    harmful, harmful_acts = _activations_for(args, loaded, "harmful")
    harmless, harmless_acts = _activations_for(args, loaded, "harmless")
    layers = list(range(harmful_acts.n_layers))
    directions = dim_from_activations(
        harmful_acts, harmless_acts, _provenance(loaded, harmful, harmless, n_harmful=len(harmful), n_harmless=len(harmless))
    )
    tensors_path, json_path = directions.save(args.out)
    # The last post-instruction token, layer by layer: the usual place to read a direction.
    last = [(layer, directions.names.index(dim_name(-1, layer))) for layer in layers if dim_name(-1, layer) in directions.names]
    vectors = directions.vectors[[index for _, index in last]]
    norms = vectors.norm(dim=-1).tolist()
    cosines = cosine_matrix(vectors)
    adjacent = [float(cosines[i, i + 1]) for i in range(len(last) - 1)] + [None]
    payload = {"out": [str(tensors_path), str(json_path)], "n_directions": len(directions), "dropped": directions.meta.get("dropped", []),
               "pos-1": [{"layer": layer, "norm": norm, "cos_next": cos} for (layer, _), norm, cos in zip(last, norms, adjacent)]}

    def human() -> None:
        print(f"Wrote {len(directions)} DIM directions (positions {list(harmful_acts.positions)} x layers 0..{layers[-1]}) to {tensors_path}")
        if payload["dropped"]:
            print(f"Left out {len(payload['dropped'])} zero candidates (template tokens at layer 0 are identical for every prompt).")
        print("layer  norm(pos -1)  cos(next layer)")
        for row in payload["pos-1"]:
            cos = f"{row['cos_next']:.3f}" if row["cos_next"] is not None else ""
            print(f"{row['layer']:5d}  {row['norm']:11.3f}  {cos}")

    _emit(args, payload, human)


def _layer_representations(args):
    """The model, both prompt sets and their ``[n, d]`` residuals at ``--layer``/``--position``."""
    loaded = _load(args)
    _check_layer(args.layer, loaded.n_layers)
    harmful, harmful_acts = _activations_for(args, loaded, "harmful")
    harmless, harmless_acts = _activations_for(args, loaded, "harmless")
    return (loaded, harmful, harmless, harmful_acts.block_input(args.layer, args.position),
            harmless_acts.block_input(args.layer, args.position))


def cmd_directions_som(args) -> None:
    from refusal_core.som import SomSettings, som_direction_set, train_som

    loaded, harmful, harmless, harmful_layer, harmless_layer = _layer_representations(args)
    settings = SomSettings(x=args.x, y=args.y, sigma=args.sigma, learning_rate=args.learning_rate, iterations=args.iterations, topology=args.topology, seed=args.seed)
    result = train_som(harmful_layer, harmless_layer, settings)
    provenance = {**_provenance(loaded, harmful, harmless), "layer": args.layer, "position": args.position}
    directions = som_direction_set(result, provenance)
    directions.save(args.out)
    payload = {
        "out": args.out, "names": list(directions.names), "hits": [p.get("hits") for p in directions.provenance],
        "quantization_error": result.quantization_error, "topographic_error": result.topographic_error,
    }

    def human() -> None:
        print(f"SOM {args.x}x{args.y} ({args.topology}) at layer {args.layer}, position {args.position}: "
              f"quantization error {result.quantization_error:.3f}, topographic error {result.topographic_error:.3f}")
        for name, hits in zip(payload["names"], payload["hits"]):
            print(f"  {name:12s} hits {hits}")
        print(f"Wrote {len(directions)} directions to {args.out}")

    _emit(args, payload, human)


def cmd_directions_cluster(args) -> None:
    from refusal_core.clustering import cluster_direction_set, cluster_directions
    from refusal_core.per_prompt import gradient_directions, representation_directions

    loaded, harmful, harmless, harmful_layer, harmless_layer = _layer_representations(args)
    if args.source == "gradient":
        vectors = gradient_directions(loaded, harmful.instructions, args.layer, position=args.position, chat=_chat(args), progress=_progress("gradients", args.json))
    else:
        vectors = representation_directions(harmful_layer, harmless_layer)
    categories = [c or "none" for c in harmful.categories]
    result = cluster_directions(vectors, k=args.k, method=args.method, seed=args.seed, categories=categories)
    provenance = {**_provenance(loaded, harmful, harmless), "layer": args.layer, "position": args.position, "method": f"per_prompt_{args.source}"}
    directions = cluster_direction_set(result, provenance)
    directions.save(args.out)
    payload = {"out": args.out, "k": result.k, "sizes": list(result.sizes), "silhouette": result.silhouette,
               "adjusted_rand": result.adjusted_rand, "normalized_mutual_info": result.normalized_mutual_info,
               "dominant_categories": [p.get("dominant_category") for p in directions.provenance]}

    def human() -> None:
        print(f"{result.method} on {args.source} directions at layer {args.layer}: k={result.k}, cosine silhouette {result.silhouette:.3f}")
        print(f"alignment with harm categories: ARI {result.adjusted_rand:.3f}, NMI {result.normalized_mutual_info:.3f}")
        for name, size, category in zip(directions.names, result.sizes, payload["dominant_categories"]):
            print(f"  {name:12s} {size:4d} prompts, mostly {category}")
        print(f"Wrote {len(directions)} directions to {args.out}")

    _emit(args, payload, human)


def cmd_directions_select(args) -> None:
    from refusal_core.directions import dim_name
    from refusal_core.selection import SelectionFilters, score_candidates, select_direction, select_relaxing

    loaded = _load(args)
    candidates = _load_directions(args.dirs, loaded.d_model)
    harmful = _prompts(args.harmful, args.column, args.limit)
    harmless = _prompts(args.harmless, args.column, args.limit)
    filters = SelectionFilters(max_kl=args.max_kl, min_induce=args.min_induce, max_layer_fraction=args.max_layer_fraction)
    result = score_candidates(loaded, candidates, list(harmful.instructions), list(harmless.instructions), filters,
                              batch_size=args.batch_size, progress=_progress("candidates", args.json), chat=_chat(args))
    result.save(args.out)
    chosen = select_direction(result)
    payload = {"out": args.out, "chosen": chosen, "n_candidates": len(candidates), "n_passed": int(result.passed.sum())}

    def scores(cell) -> dict:
        p, l = result.positions.index(cell[0]), result.layers.index(cell[1])
        return {"bypass": float(result.bypass[p, l]), "induce": float(result.induce[p, l]), "kl": float(result.kl[p, l])}

    closest = None
    if chosen is not None:
        payload.update(scores(chosen))
    else:
        closest, rule = select_relaxing(result)
        if closest is not None:
            payload["closest"] = {"position": closest[0], "layer": closest[1], "rule": rule, **scores(closest)}
    # --save-direction saves the chosen candidate, or else the closest one (as the report and
    # the dashboard's *Closest DIM* do), and says which.
    saved = chosen if chosen is not None else closest
    if args.save_direction and saved is not None:
        candidates.select([dim_name(*saved)]).save(args.save_direction)
        payload["saved"] = {"path": args.save_direction, "name": dim_name(*saved), "closest": chosen is None}

    def human() -> None:
        print(f"Scored {len(candidates)} candidates; {payload['n_passed']} pass the filters. Table written to {args.out}")
        if chosen is None:
            print("No candidate passes the filters; relax --max-kl / --min-induce / --max-layer-fraction.")
            if "closest" in payload:
                c = payload["closest"]
                print(f"Closest ({c['rule']}): position {c['position']}, layer {c['layer']} "
                      f"(bypass {c['bypass']:.3f}, induce {c['induce']:.3f}, KL {c['kl']:.4f})")
        else:
            print(f"Chosen: position {chosen[0]}, layer {chosen[1]} (bypass {payload['bypass']:.3f}, induce {payload['induce']:.3f}, KL {payload['kl']:.4f})")
        if "saved" in payload:
            what = "the closest candidate" if payload["saved"]["closest"] else "the chosen candidate"
            print(f"Saved {what}, {payload['saved']['name']}, to {payload['saved']['path']}")

    _emit(args, payload, human)


def cmd_directions_optimize(args) -> None:
    from refusal_core.optimize import OptimizeSettings, optimize_direction

    loaded = _load(args)
    init = _load_directions(args.init, loaded.d_model)
    if len(init) != 1:
        raise CliError(f"--init must name one direction (PATH:name); {args.init} holds {len(init)}: {', '.join(init.names[:6])}"
                       + (" ..." if len(init) > 6 else "") + ".")
    harmful = _prompts(args.harmful, args.column, args.limit)
    harmless = _prompts(args.harmless, args.column, args.limit)
    settings = OptimizeSettings(steps=args.steps, learning_rate=args.lr, kl_weight=args.kl_weight, margin=args.margin, batch_size=args.batch_size)
    bar = _progress("steps", args.json)
    result = optimize_direction(loaded, list(harmful.instructions), list(harmless.instructions), init, settings, chat=_chat(args),
                                progress=(lambda done, total, values: bar(done, total)) if bar else None)
    result.directions.save(args.out)
    payload = {"out": args.out, "name": result.directions.names[0], "start": result.history[0], "final": result.final,
               "seconds": round(result.seconds, 1)}

    def human() -> None:
        start, final = result.history[0], result.final
        print(f"Optimized {init.names[0]} for {settings.steps} steps on {len(harmful)} harmful and {len(harmless)} harmless prompts "
              f"({result.seconds:.0f} s); written to {args.out} as {payload['name']}")
        print(f"  refusal score {start['refusal_score']:+.3f} -> {final['refusal_score']:+.3f}; harmless KL {start['kl']:.4f} -> {final['kl']:.4f}; "
              f"cosine to the start {final['cosine_to_init']:.3f}")

    _emit(args, payload, human)


def cmd_directions_search(args) -> None:
    from refusal_core.search import SearchSettings, best_direction_set, run_search

    loaded = _load(args)
    pool = _load_directions(args.pool, loaded.d_model)
    harmful = _prompts(args.harmful, args.column, args.limit)
    harmless = _prompts(args.harmless, args.column, args.limit)
    settings = SearchSettings(k=args.k, n_trials=args.trials, objective=args.objective, kl_penalty=args.kl_penalty,
                              max_new_tokens=args.max_new_tokens, seed=args.seed, storage=args.storage, study_name=args.study)
    bar = _progress("trials", args.json)
    result = run_search(loaded, pool, list(harmful.instructions), list(harmless.instructions), settings,
                        progress=(lambda done, total, best: bar(done, total)) if bar else None)
    best = best_direction_set(result, pool)
    best.save(args.out)
    payload = {"out": args.out, "best": list(result.best_names), "best_value": result.best_value, "study": result.study_name,
               "storage": result.storage, "trials": result.trials}

    def human() -> None:
        print(f"Study {result.study_name} ({result.storage}): {len(result.trials)} trials")
        print(f"Best {args.k} directions: {', '.join(result.best_names)} (objective {result.best_value:.3f}); written to {args.out}")

    _emit(args, payload, human)


def _interventions(args, loaded) -> list:
    from refusal_core.interventions import Intervention

    variants = []
    if args.ablate:
        directions = _load_directions(args.ablate, loaded.d_model)
        variants.append(Intervention.from_directions(f"ablate({len(directions)})", directions, mode=args.ablate_mode))
    if args.actadd:
        directions = _load_directions(args.actadd, loaded.d_model)
        if len(directions) != 1:
            raise CliError(f"--actadd takes one direction (PATH:name); {args.actadd} holds {len(directions)}.")
        layer = args.layer if args.layer is not None else directions.provenance[0].get("layer")
        if layer is None:
            raise CliError("--actadd needs --layer: the direction's provenance records no layer.")
        _check_layer(int(layer), loaded.n_layers)
        variants.append(Intervention.from_direction_addition(f"actadd(L{layer},{args.coeff:+g})", directions, directions.names[0], args.coeff, int(layer)))
    return variants


def cmd_generate(args) -> None:
    from refusal_core.evaluation import SubstringJudge
    from refusal_core.generation import GenerationSettings, generate_side_by_side
    from refusal_core.interventions import Intervention

    loaded = _load(args)
    prompts = _prompts(args.prompts, args.column, args.limit)
    variants = _interventions(args, loaded)
    if args.baseline or not variants:
        variants.insert(0, Intervention())
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
    columns = generate_side_by_side(loaded, prompts.instructions, variants, settings, _chat(args), _progress("generating", args.json))
    judge = SubstringJudge(extra=tuple(args.refusal_phrase or ()))
    summary = {}
    for name, completions in columns.items():
        refused = judge.judge(list(prompts.instructions), [c.text for c in completions])
        summary[name] = {"refusal_rate": sum(refused) / len(refused), "n": len(refused)}
        for completion, flag in zip(completions, refused):
            if args.json:
                print(json.dumps({"variant": name, "instruction": completion.instruction, "completion": completion.text, "refused": flag, "n_tokens": completion.n_tokens}))
            else:
                print(f"[{name}] {'REFUSED' if flag else 'complied'} | {completion.instruction}\n    {completion.text.strip()}\n")
    if args.json:
        print(json.dumps({"summary": summary, "model": loaded.spec, "n_prompts": len(prompts)}))
    else:
        for name, info in summary.items():
            print(f"{name}: refusal rate {info['refusal_rate']:.1%} ({info['n']} prompts)")


def cmd_export_model(args) -> None:
    from refusal_core.export import export_orthogonalized

    loaded = _load(args)
    directions = _load_directions(args.ablate, loaded.d_model)
    out = export_orthogonalized(loaded, directions, args.out, overwrite=args.overwrite, command=" ".join(sys.argv))
    _emit(args, {"out": str(out), "directions": list(directions.names)},
          lambda: print(f"Wrote the orthogonalized model ({len(directions)} directions removed) to {out}"))


def cmd_organism_build(args) -> None:
    from refusal_core.organism import OrganismSettings, build_organism

    chosen = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
              "distill_weight": args.distill_weight}
    settings = OrganismSettings(**{name: value for name, value in chosen.items() if value is not None})
    from tqdm import tqdm

    bar = tqdm(total=100, desc="organism", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def progress(message: str, fraction: float) -> None:
        bar.n = int(100 * fraction)
        bar.set_postfix_str(message)

    path = build_organism(settings, progress=progress, force=args.force)
    bar.close()
    print(f"Refusal organism ready at {path}")


def cmd_organism_report(args) -> None:
    from refusal_core.report import format_report, organism_report

    report = organism_report(args.model, n_select=args.n_select, max_new_tokens=args.max_new_tokens, layer_step=args.layer_step,
                             all_positions=args.all_positions, progress=None if args.json else lambda m: print(m, file=sys.stderr),
                             optimize_steps=args.optimize_steps)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------


def _directions_parsers(sub) -> None:
    directions = sub.add_parser("directions", help="compute refusal directions").add_subparsers(dest="method", required=True)
    dim = directions.add_parser("dim", help="difference-in-means directions for every (position, layer)")
    _add_model(dim), _add_sets(dim)
    dim.add_argument("--out", required=True, help="output path stem (writes .safetensors and .json)")
    dim.set_defaults(func=cmd_directions_dim)

    som = directions.add_parser("som", help="Self-Organizing Map directions at one layer (Piras et al.)")
    _add_model(som), _add_sets(som)
    som.add_argument("--layer", type=int, required=True)
    som.add_argument("--position", type=int, default=-1)
    som.add_argument("--x", type=int, default=3)
    som.add_argument("--y", type=int, default=3)
    som.add_argument("--sigma", type=float, default=1.0)
    som.add_argument("--learning-rate", type=float, default=0.5)
    som.add_argument("--iterations", type=int, default=2000)
    som.add_argument("--topology", choices=["rectangular", "hexagonal"], default="rectangular")
    som.add_argument("--seed", type=int, default=0)
    som.add_argument("--out", required=True)
    som.set_defaults(func=cmd_directions_som)

    cluster = directions.add_parser("cluster", help="cluster input-specific directions (Park)")
    _add_model(cluster), _add_sets(cluster)
    cluster.add_argument("--layer", type=int, required=True)
    cluster.add_argument("--position", type=int, default=-1)
    cluster.add_argument("--source", choices=["representation", "gradient"], default="representation")
    cluster.add_argument("--method", choices=["kmeans", "agglomerative"], default="kmeans")
    cluster.add_argument("--k", type=int, default=None, help="number of clusters (default: best silhouette)")
    cluster.add_argument("--seed", type=int, default=0)
    cluster.add_argument("--out", required=True)
    cluster.set_defaults(func=cmd_directions_cluster)

    select = directions.add_parser("select", help="score DIM candidates (bypass, induce, KL) and choose one (Arditi)")
    _add_model(select), _add_sets(select, split="val")
    select.add_argument("--dirs", required=True, help="DIM direction set from `directions dim`")
    select.add_argument("--max-kl", type=float, default=0.1)
    select.add_argument("--min-induce", type=float, default=0.0)
    select.add_argument("--max-layer-fraction", type=float, default=0.8)
    select.add_argument("--out", required=True, help="JSON score table")
    select.add_argument("--save-direction", default=None, help="also save the chosen direction (or, when none passes the filters, the closest) as a set")
    select.set_defaults(func=cmd_directions_select)

    optimize = directions.add_parser("optimize", help="learn one direction whose ablation removes refusal at low harmless KL (Wollschläger et al.)")
    _add_model(optimize), _add_sets(optimize)
    optimize.add_argument("--init", required=True, help="the direction to start from: PATH:name (e.g. the selected DIM candidate)")
    optimize.add_argument("--steps", type=int, default=30)
    optimize.add_argument("--lr", type=float, default=0.02)
    optimize.add_argument("--kl-weight", type=float, default=10.0)
    optimize.add_argument("--margin", type=float, default=2.0, help="stop pushing a harmful prompt once its refusal score is this far below 0")
    optimize.add_argument("--out", required=True, help="output path stem (writes .safetensors and .json)")
    optimize.set_defaults(func=cmd_directions_optimize)

    search = directions.add_parser("search", help="Optuna TPE search for the best k directions of a pool (Piras et al.)")
    _add_model(search), _add_sets(search, split="val")
    search.add_argument("--pool", required=True, help="direction set to pick from (PATH or PATH:name,...)")
    search.add_argument("--k", type=int, default=3)
    search.add_argument("--trials", type=int, default=20)
    search.add_argument("--objective", choices=["substring", "score"], default="substring")
    search.add_argument("--kl-penalty", type=float, default=0.0)
    search.add_argument("--max-new-tokens", type=int, default=32)
    search.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite under cache/search/)")
    search.add_argument("--study", default=None, help="study name (default: derived from the inputs; reuse to resume)")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--out", required=True)
    search.set_defaults(func=cmd_directions_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refusal_core", description="Refusal Atlas: find, inspect, ablate and export refusal directions.")
    sub = parser.add_subparsers(dest="command", required=True)

    acts = sub.add_parser("activations", help="compute (or load cached) residual activations at post-instruction positions")
    _add_model(acts), _add_sets(acts)
    acts.set_defaults(func=cmd_activations)

    _directions_parsers(sub)

    gen = sub.add_parser("generate", help="generate side by side: baseline, ablation, actadd")
    _add_model(gen)
    gen.add_argument("--prompts", default="builtin:harmful/test", help="prompt file or builtin:/hf: spec")
    gen.add_argument("--column", default=None)
    gen.add_argument("--limit", type=int, default=None)
    gen.add_argument("--ablate", default=None, help="direction set to project out: PATH or PATH:name1,name2")
    gen.add_argument("--ablate-mode", choices=["orthogonal", "sequential"], default="orthogonal")
    gen.add_argument("--actadd", default=None, help="one direction to add: PATH:name")
    gen.add_argument("--layer", type=int, default=None, help="actadd layer (default: the direction's own layer)")
    gen.add_argument("--coeff", type=float, default=1.0, help="actadd coefficient (+ induces refusal, - suppresses)")
    gen.add_argument("--baseline", action="store_true", help="also generate without intervention")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--refusal-phrase", action="append", help="extra phrase that counts as refusal (repeatable)")
    gen.set_defaults(func=cmd_generate)

    export = sub.add_parser("export-model", help="write a model with directions orthogonalized out of its weights")
    _add_model(export)
    export.add_argument("--ablate", required=True, help="direction set: PATH or PATH:name1,name2")
    export.add_argument("--out", required=True)
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=cmd_export_model)

    organism = sub.add_parser("organism", help="build or measure the offline refusal model organism").add_subparsers(dest="action", required=True)
    build = organism.add_parser("build", help=f"fine-tune the bundled SmolLM2 into {BUNDLED_ORGANISM}")
    from refusal_core.organism import OrganismSettings

    recipe = OrganismSettings()  # the help texts name the real defaults
    build.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {recipe.steps})")
    build.add_argument("--batch-size", type=int, default=None, help=f"sequences per step (default {recipe.batch_size})")
    build.add_argument("--learning-rate", type=float, default=None, help=f"AdamW learning rate (default {recipe.learning_rate:g})")
    build.add_argument("--seed", type=int, default=None, help=f"seed (default {recipe.seed})")
    build.add_argument("--distill-weight", type=float, default=None,
                       help=f"weight of the first-token distillation to the base model on harmless prompts (default {recipe.distill_weight:g}; 0 turns it off)")
    build.add_argument("--force", action="store_true", help="rebuild even if it exists")
    build.set_defaults(func=cmd_organism_build)
    report = organism.add_parser("report", help="refusal rates, DIM ablation and actadd on the held-out test splits")
    report.add_argument("--model", default=BUNDLED_ORGANISM)
    report.add_argument("--n-select", type=int, default=16, help="val prompts per set used to select the direction")
    report.add_argument("--layer-step", type=int, default=2, help="score every n-th layer's candidate")
    report.add_argument("--all-positions", action="store_true", help="score every post-instruction position, not only the last")
    report.add_argument("--max-new-tokens", type=int, default=32)
    report.add_argument("--optimize-steps", type=int, default=0,
                        help="also learn one direction from the selected one for this many steps and measure it on the test splits")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_organism_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _bad_input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
