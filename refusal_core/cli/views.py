"""``manifold``, ``compare`` and ``report``: what an intervention does to the representation,
two models' refusal geometry side by side, and a self-contained HTML report of saved results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from refusal_core.cli.common import (
    CliError,
    add_model_args,
    add_set_args,
    added_direction,
    chat_format,
    check_layer,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
)


def check_out(out: str | None, suffix: str | None = None) -> Path | None:
    """``--out`` checked before any work: its folder exists and can be written."""
    if out is None:
        return None
    path = Path(out).expanduser()
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"--out {out}: the folder {folder} does not exist; create it or choose another --out.")
    if not os.access(folder, os.W_OK):
        raise CliError(f"--out {out}: the folder {folder} is not writable; choose another --out.")
    if suffix and path.suffix.lower() != suffix:
        raise CliError(f"--out {out}: give a file name ending in {suffix}.")
    return path


def check_coeff(value: float) -> None:
    if not math.isfinite(value):
        raise CliError(f"--coeff {value} is not a finite number; give e.g. 1.0 (adds the direction) or -1.0.")


def intervention_from_args(args, loaded):
    """One intervention from ``--ablate`` and/or ``--actadd`` (both may be given: ablation first)."""
    from refusal_core.interventions.spec import Intervention

    if not args.ablate and not args.actadd:
        raise CliError("Give --ablate PATH[:names] and/or --actadd PATH:name: the intervention to draw.")
    parts, kwargs = [], {}
    if args.ablate:
        directions = load_directions(args.ablate, loaded.d_model)
        kwargs.update(ablate=directions.vectors, ablate_mode=args.ablate_mode)
        parts.append(f"ablate {', '.join(directions.names)}")
    if args.actadd:
        directions, layer = added_direction(args.actadd, loaded, args.actadd_layer, "--actadd-layer")
        kwargs.update(actadd=directions.vectors[0], actadd_layer=layer, actadd_coeff=args.coeff)
        parts.append(f"add {directions.names[0]} x {args.coeff:g} at layer {layer}")
    return Intervention(name="; ".join(parts), **kwargs), "; ".join(parts)


def cmd_manifold(args) -> None:
    from refusal_core.activations.extract import extract_activations
    from refusal_core.views.shift import intervened_activations, layer_shift

    check_coeff(args.coeff)
    out = check_out(args.out, ".json")
    harmful = prompt_set(args.harmful, args.column, args.limit)
    harmless = prompt_set(args.harmless, args.column, args.limit)
    loaded = load_model_from_args(args)
    check_layer(args.layer, loaded.n_layers)
    intervention, described = intervention_from_args(args, loaded)
    chat = chat_format(args)
    positions = (args.position,)
    before, after, warnings = [], [], []
    for prompts in (harmful, harmless):
        before.append(
            extract_activations(
                loaded,
                prompts.instructions,
                positions,
                chat,
                args.batch_size,
                progress=progress_bar("activations", args.json),
            )
        )
        acts, warning = intervened_activations(
            loaded,
            prompts.instructions,
            intervention,
            positions,
            chat,
            args.batch_size,
            progress=progress_bar("activations under the intervention", args.json),
        )
        after.append(acts)
        warnings += [warning] if warning else []
    shift = layer_shift(tuple(before), tuple(after), args.layer, args.position, args.method)
    result = {
        "model": loaded.spec,
        "intervention": described,
        "prompts": list(harmful.instructions + harmless.instructions),
        "shift": shift.as_dict(),
        "warnings": warnings,
    }
    if args.all_layers:
        # Block 0's input at a template token is that token's embedding, the same for every prompt: no map there.
        result["layers"] = [
            layer_shift(tuple(before), tuple(after), layer, args.position).as_dict()
            for layer in range(1, loaded.n_layers)
        ]
    if out is not None:
        out.write_text(json.dumps(result))
    if args.json:
        print(json.dumps(result))
        return
    moved, sep = shift.mean_moves(), shift
    print(
        f"{loaded.spec}, {described}; map: {args.method.upper()} of layer {args.layer} (block input), position {args.position}"
    )
    print(
        f"mean distance moved in the residual stream: harmful {moved['harmful_residual']:.4g}, harmless {moved['harmless_residual']:.4g}"
        f" (ratio {moved['harmful_residual'] / max(moved['harmless_residual'], 1e-12):.2f})"
    )
    for when, value in (("before", sep.separation_before), ("after", sep.separation_after)):
        print(
            f"{when}: DIM norm {value.dim_norm:.4g}, probe accuracy {value.probe_accuracy:.1%} "
            f"(probe of the unmodified points), refitted probe {value.cv_probe_accuracy:.1%}"
        )
    for warning in warnings:
        print(f"WARNING: {warning}")
    if out is not None:
        print(f"Wrote {out}")


def cmd_compare(args) -> None:
    from refusal_core.model.loading import load_model
    from refusal_core.views.compare import compare_models

    out = check_out(args.out, ".json")
    if args.score_prompts < 0:
        raise CliError(f"--score-prompts must be 0 (no scores) or more, got {args.score_prompts}.")
    harmful = prompt_set(args.harmful, args.column, args.limit)
    harmless = prompt_set(args.harmless, args.column, args.limit)
    val = None
    if args.score_prompts:
        val = (
            prompt_set(args.val_harmful, None, args.score_prompts).instructions,
            prompt_set(args.val_harmless, None, args.score_prompts).instructions,
        )
    models = [
        load_model(spec, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        for spec in (args.model_a, args.model_b)
    ]
    comparison, _ = compare_models(
        *models,
        harmful.instructions,
        harmless.instructions,
        args.position,
        val,
        chat_format(args),
        progress_bar("comparing", args.json),
    )
    result = {"model": comparison.model_a, "comparison": comparison.as_dict()}
    if out is not None:
        out.write_text(json.dumps(result))
    if args.json:
        print(json.dumps(result))
        return
    print(f"A: {comparison.model_a}\nB: {comparison.model_b}\nDIM at position {comparison.position}, per layer:")
    print(f"{'layer A':>7} {'layer B':>7} {'cosine':>8} {'norm A':>9} {'norm B':>9}")
    for row in comparison.as_dict()["layers"]:
        print(
            f"{row['layer_a']:>7} {row['layer_b']:>7} {row['cosine']:>8.4f} {row['norm_a']:>9.4g} {row['norm_b']:>9.4g}"
        )
    for key, scores in comparison.scores.items():
        print(f"model {key.upper()}: selection chose layer {scores['chosen_layer']} ({scores['reason']})")
    if out is not None:
        print(f"Wrote {out}")


def cmd_report(args) -> None:
    from refusal_core.views.report import sections_from_files, write_report

    out = check_out(args.out, ".html")
    missing = [name for name in args.results if not Path(name).expanduser().is_file()]
    if missing:
        raise CliError(
            f"No such result file: {', '.join(missing)}; give files written by manifold/compare/generate --json."
        )
    sections, manifest = sections_from_files(args.results)
    path = write_report(out, args.title, sections, {"command": "report", **manifest})
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline in any browser)")


def add_parsers(sub) -> None:
    """``manifold``, ``compare`` and ``report``."""
    man = sub.add_parser(
        "manifold", help="the manifold under an intervention: before/after map coordinates and separation"
    )
    add_model_args(man)
    add_set_args(man, split="test")
    man.add_argument("--layer", type=int, required=True, help="the block whose input is mapped")
    man.add_argument(
        "--position", type=int, default=-1, help="post-instruction token, as an offset from the end (default -1)"
    )
    man.add_argument("--ablate", default=None, help="directions projected out at every layer: PATH or PATH:name1,name2")
    man.add_argument("--ablate-mode", choices=["orthogonal", "sequential"], default="orthogonal")
    man.add_argument("--actadd", default=None, help="one direction added: PATH:name")
    man.add_argument(
        "--actadd-layer", type=int, default=None, help="where --actadd adds (default: the direction's own layer)"
    )
    man.add_argument("--coeff", type=float, default=1.0, help="actadd coefficient")
    man.add_argument(
        "--method", choices=["pca", "umap"], default="pca", help="the map, fitted on the unmodified points only"
    )
    man.add_argument(
        "--all-layers",
        action="store_true",
        help="also write every layer's before/after map (PCA, layers 1..), for the animation",
    )
    man.add_argument("--out", default=None, help="also write the JSON result to this file (for `report`)")
    man.set_defaults(func=cmd_manifold)

    cmp_ = sub.add_parser("compare", help="two models' refusal geometry: DIM cosine per layer and selection scores")
    cmp_.add_argument("model_a", help="model spec A (e.g. bundled:smollm2-135m-instruct)")
    cmp_.add_argument("model_b", help="model spec B (e.g. bundled:refusal-organism or an export folder)")
    cmp_.add_argument("--device", default=None)
    cmp_.add_argument("--dtype", default="float32")
    cmp_.add_argument("--trust-remote-code", action="store_true")
    cmp_.add_argument("--system-prompt", default=None)
    cmp_.add_argument("--json", action="store_true")
    cmp_.add_argument("--harmful", default="builtin:harmful/train")
    cmp_.add_argument("--harmless", default="builtin:harmless/train")
    cmp_.add_argument("--column", default=None)
    cmp_.add_argument("--limit", type=int, default=64, help="prompts of each set for the DIM directions (default 64)")
    cmp_.add_argument("--position", type=int, default=-1)
    cmp_.add_argument(
        "--score-prompts", type=int, default=8, help="val prompts per set for each model's selection scores (0: none)"
    )
    cmp_.add_argument("--val-harmful", default="builtin:harmful/val")
    cmp_.add_argument("--val-harmless", default="builtin:harmless/val")
    cmp_.add_argument("--out", default=None, help="also write the JSON result to this file (for `report`)")
    cmp_.set_defaults(func=cmd_compare)

    rep = sub.add_parser(
        "report", help="a self-contained HTML report from saved manifold/compare/generate --json results"
    )
    rep.add_argument(
        "results", nargs="+", help="JSON files written by manifold --out, compare --out or generate --json > FILE"
    )
    rep.add_argument("--out", default="refusal-atlas-report.html", help="the HTML file to write")
    rep.add_argument("--title", default="Refusal Atlas report")
    rep.set_defaults(func=cmd_report, json=False)
