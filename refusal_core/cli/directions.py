"""``directions dim|som|cluster|optimize|select|search``: compute, choose and search refusal directions.
"""

from __future__ import annotations

from refusal_core.cli import selection
from refusal_core.cli.common import (
    CliError,
    activations_for,
    add_model_args,
    add_set_args,
    chat_format,
    check_layer,
    cli_provenance,
    emit,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
)


def cmd_directions_dim(args) -> None:
    from refusal_core.directions.base import cosine_matrix
    from refusal_core.directions.dim import dim_from_activations, dim_name

    loaded = load_model_from_args(args)
    harmful, harmful_acts = activations_for(args, loaded, "harmful")
    harmless, harmless_acts = activations_for(args, loaded, "harmless")
    layers = list(range(harmful_acts.n_layers))
    directions = dim_from_activations(
        harmful_acts, harmless_acts, cli_provenance(loaded, harmful, harmless, n_harmful=len(harmful), n_harmless=len(harmless))
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

    emit(args, payload, human)


def _layer_representations(args):
    """The model, both prompt sets and their ``[n, d]`` residuals at ``--layer``/``--position``."""
    loaded = load_model_from_args(args)
    check_layer(args.layer, loaded.n_layers)
    harmful, harmful_acts = activations_for(args, loaded, "harmful")
    harmless, harmless_acts = activations_for(args, loaded, "harmless")
    return (loaded, harmful, harmless, harmful_acts.block_input(args.layer, args.position),
            harmless_acts.block_input(args.layer, args.position))


def cmd_directions_som(args) -> None:
    from refusal_core.directions.som import SomSettings, som_direction_set, train_som

    loaded, harmful, harmless, harmful_layer, harmless_layer = _layer_representations(args)
    settings = SomSettings(x=args.x, y=args.y, sigma=args.sigma, learning_rate=args.learning_rate, iterations=args.iterations, topology=args.topology, seed=args.seed)
    result = train_som(harmful_layer, harmless_layer, settings)
    provenance = {**cli_provenance(loaded, harmful, harmless), "layer": args.layer, "position": args.position}
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

    emit(args, payload, human)


def cmd_directions_cluster(args) -> None:
    from refusal_core.directions.clustering import cluster_direction_set, cluster_directions
    from refusal_core.directions.per_prompt import gradient_directions, representation_directions

    loaded, harmful, harmless, harmful_layer, harmless_layer = _layer_representations(args)
    if args.source == "gradient":
        vectors = gradient_directions(loaded, harmful.instructions, args.layer, position=args.position, chat=chat_format(args), progress=progress_bar("gradients", args.json))
    else:
        vectors = representation_directions(harmful_layer, harmless_layer)
    categories = [c or "none" for c in harmful.categories]
    result = cluster_directions(vectors, k=args.k, method=args.method, seed=args.seed, categories=categories)
    provenance = {**cli_provenance(loaded, harmful, harmless), "layer": args.layer, "position": args.position, "method": f"per_prompt_{args.source}"}
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

    emit(args, payload, human)


def cmd_directions_optimize(args) -> None:
    from refusal_core.directions.optimize import OptimizeSettings, optimize_direction

    loaded = load_model_from_args(args)
    init = load_directions(args.init, loaded.d_model)
    if len(init) != 1:
        raise CliError(f"--init must name one direction (PATH:name); {args.init} holds {len(init)}: {', '.join(init.names[:6])}"
                       + (" ..." if len(init) > 6 else "") + ".")
    harmful = prompt_set(args.harmful, args.column, args.limit)
    harmless = prompt_set(args.harmless, args.column, args.limit)
    settings = OptimizeSettings(steps=args.steps, learning_rate=args.lr, kl_weight=args.kl_weight, margin=args.margin, batch_size=args.batch_size)
    bar = progress_bar("steps", args.json)
    result = optimize_direction(loaded, list(harmful.instructions), list(harmless.instructions), init, settings, chat=chat_format(args),
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

    emit(args, payload, human)


def add_parsers(sub) -> None:
    """``directions`` and its subcommands."""
    directions = sub.add_parser("directions", help="compute refusal directions").add_subparsers(dest="method", required=True)
    dim = directions.add_parser("dim", help="difference-in-means directions for every (position, layer)")
    add_model_args(dim), add_set_args(dim)
    dim.add_argument("--out", required=True, help="output path stem (writes .safetensors and .json)")
    dim.set_defaults(func=cmd_directions_dim)

    som = directions.add_parser("som", help="Self-Organizing Map directions at one layer (Piras et al.)")
    add_model_args(som), add_set_args(som)
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
    add_model_args(cluster), add_set_args(cluster)
    cluster.add_argument("--layer", type=int, required=True)
    cluster.add_argument("--position", type=int, default=-1)
    cluster.add_argument("--source", choices=["representation", "gradient"], default="representation")
    cluster.add_argument("--method", choices=["kmeans", "agglomerative"], default="kmeans")
    cluster.add_argument("--k", type=int, default=None, help="number of clusters (default: best silhouette)")
    cluster.add_argument("--seed", type=int, default=0)
    cluster.add_argument("--out", required=True)
    cluster.set_defaults(func=cmd_directions_cluster)

    selection.add_select_parser(directions)

    optimize = directions.add_parser("optimize", help="learn one direction whose ablation removes refusal at low harmless KL (Wollschläger et al.)")
    add_model_args(optimize), add_set_args(optimize)
    optimize.add_argument("--init", required=True, help="the direction to start from: PATH:name (e.g. the selected DIM candidate)")
    optimize.add_argument("--steps", type=int, default=30)
    optimize.add_argument("--lr", type=float, default=0.02)
    optimize.add_argument("--kl-weight", type=float, default=10.0)
    optimize.add_argument("--margin", type=float, default=2.0, help="stop pushing a harmful prompt once its refusal score is this far below 0")
    optimize.add_argument("--out", required=True, help="output path stem (writes .safetensors and .json)")
    optimize.set_defaults(func=cmd_directions_optimize)

    selection.add_search_parser(directions)
