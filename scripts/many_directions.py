"""Reproduce the SOM paper's finding on the refusal organism: several directions beat one.

1. Scan layers: refusal left on harmful val prompts with the single DIM direction of a
   layer (last post-instruction token) ablated everywhere.
2. At a layer where one DIM direction leaves >= 40% refusal, train a 3x3 SOM on the
   harmful representations, cluster the input-specific directions, and ablate the span of
   the first 1..k directions of each family (DIM: one per post-instruction position).
3. Print the refusal-vs-k table and the target check (SOM span <= 10%), with harmless KL.

    .venv/bin/python scripts/many_directions.py [--layer L] [--n-prompts 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.activations.extract import extract_activations  # noqa: E402
from refusal_core.comparison import refusal_by_layer, refusal_vs_count  # noqa: E402
from refusal_core.directions.clustering import cluster_direction_set, cluster_directions  # noqa: E402
from refusal_core.directions.dim import dim_from_activations, dim_name  # noqa: E402
from refusal_core.directions.per_prompt import representation_directions  # noqa: E402
from refusal_core.directions.provenance import build_provenance  # noqa: E402
from refusal_core.directions.som import SomSettings, som_direction_set, train_som  # noqa: E402
from refusal_core.model.loading import BUNDLED_ORGANISM, load_model  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED_ORGANISM)
    parser.add_argument("--layer", type=int, default=None, help="skip the scan and use this layer")
    parser.add_argument("--layers", default="4:24:2", help="scan range start:stop:step")
    parser.add_argument("--n-prompts", type=int, default=40, help="harmful (and harmless) val prompts")
    parser.add_argument("--max-k", type=int, default=6)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_model(args.model)
    harmful_train, harmless_train = builtin("harmful", "train"), builtin("harmless", "train")
    harmful_val = list(builtin("harmful", "val").instructions[: args.n_prompts])
    harmless_val = list(builtin("harmless", "val").instructions[: args.n_prompts])
    harmful_acts = extract_activations(loaded, harmful_train.instructions)
    harmless_acts = extract_activations(loaded, harmless_train.instructions)
    provenance = build_provenance(loaded.spec, harmful_train, harmless_train, "dim")
    dim = dim_from_activations(harmful_acts, harmless_acts, provenance)

    scan = {}
    layer = args.layer
    if layer is None:
        start, stop, step = (int(part) for part in args.layers.split(":"))
        scan = refusal_by_layer(loaded, dim, harmful_val, list(range(start, stop, step)))
        print("Single DIM direction ablated, refusal left per layer:")
        for scanned, rate in scan.items():
            print(f"  layer {scanned:2d}: {rate:6.1%}")
        partial = [scanned for scanned, rate in scan.items() if rate >= 0.4]
        if not partial:
            sys.exit("No scanned layer leaves >= 40% refusal with one DIM direction; pass --layer.")
        layer = max(partial)
    print(f"\nLayer {layer}: SOM, clusters and DIM families")

    harmful_layer = harmful_acts.block_input(layer, -1)
    harmless_layer = harmless_acts.block_input(layer, -1)
    som = train_som(harmful_layer, harmless_layer, SomSettings(x=3, y=3, seed=0))
    som_set = som_direction_set(som, build_provenance(loaded.spec, harmful_train, harmless_train, "som", layer, -1))
    clusters = cluster_directions(representation_directions(harmful_layer, harmless_layer), k=None, categories=list(harmful_train.categories))
    cluster_set = cluster_direction_set(clusters, build_provenance(loaded.spec, harmful_train, harmless_train, "per_prompt_representation", layer, -1))
    positions = sorted(harmful_acts.positions, reverse=True)
    dim_family = dim.select([dim_name(p, layer) for p in positions if dim_name(p, layer) in dim.names])
    curve = refusal_vs_count(loaded, {"dim": dim_family, "som": som_set, "clusters": cluster_set}, harmful_val, harmless_val, max_k=args.max_k)
    print(curve.table())
    print("\nharmless KL (first token) for the same variants:")
    for family, values in curve.kl.items():
        print(f"  {family:9s} " + "  ".join(f"k={k + 1}: {value:.3f}" for k, value in enumerate(values)))
    single = scan.get(layer, curve.rates["dim"][0])
    best_som = min(curve.rates["som"][1:] or curve.rates["som"])
    print(f"\nTarget: one DIM direction leaves >= 40% ({single:.1%}) and a SOM span (k >= 2) leaves <= 10% ({best_som:.1%}): "
          f"{'PASS' if single >= 0.4 and best_som <= 0.10 else 'FAIL'}")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"layer": layer, "scan": scan, "rates": curve.rates, "kl": curve.kl, "baseline": curve.baseline,
                                               "som_hits": list(som.hits), "clusters_k": clusters.k}, indent=2, default=str))


if __name__ == "__main__":
    main()
