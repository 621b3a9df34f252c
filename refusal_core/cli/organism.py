"""``organism build|report``: build or measure the offline refusal model organism."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from refusal_core.cli.common import CliError, add_judge_arg
from refusal_core.model.loading import BUNDLED_ORGANISM, ORGANISM_VARIANTS
from refusal_core.settings import add_setting_flags, settings_from_args


def cmd_organism_build(args) -> None:
    from refusal_core.organism.build import OrganismSettings, build_organism

    chosen = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "distill_weight": args.distill_weight,
        "delta_rank": args.rank,
    }
    given = {name: value for name, value in chosen.items() if value is not None}
    if args.from_scratch and args.from_fine_tune:
        raise CliError("--from-scratch trains a fine-tune and --from-fine-tune cuts an existing one; give one of them.")
    if (given or args.delta_out) and not (args.from_scratch or args.from_fine_tune):
        flags = (
            ", ".join("--" + name.replace("_", "-").replace("delta-rank", "rank") for name in given) or "--delta-out"
        )
        raise CliError(
            f"{flags} only apply to a fine-tune from scratch; add --from-scratch (or --from-fine-tune DIR; the default build applies the shipped delta)."
        )
    planted = None
    if args.variant == "two-mechanisms":
        from refusal_core.organism.planted import PlantedSettings

        foreign = [
            name for name in given if name not in ("steps", "learning_rate", "seed", "distill_weight", "delta_rank")
        ]
        if foreign:
            raise CliError(
                f"--{foreign[0].replace('_', '-')} does not apply to --variant two-mechanisms (its recipe takes --steps, "
                "--learning-rate, --seed, --distill-weight and --rank)."
            )
        planted = PlantedSettings(**given)
        given = {}
    elif args.variant and not args.from_scratch:
        raise CliError(
            f"--variant {args.variant} has no shipped delta: add --from-scratch (the recipe, minutes) to build it."
        )
    settings = OrganismSettings(**given)
    from tqdm import tqdm

    bar = tqdm(total=100, desc="organism", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def progress(done: int, total: int, message: str = "") -> None:
        bar.n = done
        bar.set_postfix_str(message)

    path = build_organism(
        settings,
        progress=progress,
        force=args.force,
        from_scratch=args.from_scratch,
        delta_out=args.delta_out,
        from_fine_tune=args.from_fine_tune,
        variant=args.variant,
        planted=planted,
    )
    bar.close()
    spec = BUNDLED_ORGANISM + (f"-{args.variant}" if args.variant else "")
    print(f"Refusal organism ready at {path} (model spec {spec})")


def cmd_organism_report(args) -> None:
    from refusal_core.organism.report import ReportSettings, format_report, organism_report

    settings = settings_from_args(ReportSettings, args)
    report = organism_report(args.model, settings, progress=None if args.json else lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))


def cmd_organism_planted(args) -> None:
    from refusal_core.directions.planted import load_planted
    from refusal_core.model.loading import load_model
    from refusal_core.organism.planted_check import check_planted, format_check

    loaded = load_model(args.model)
    planted = load_planted(loaded.source)
    if planted is None:
        raise CliError(
            f"{args.model} holds no planted directions (planted-directions.safetensors); build the planted variant with "
            "python -m refusal_core organism build --variant two-mechanisms"
        )
    layer = args.layer if args.layer is not None else int(planted.provenance[0]["layer"])
    if not 0 <= layer < loaded.n_layers:
        raise CliError(f"--layer {layer} does not exist: this model has layers 0..{loaded.n_layers - 1}.")
    result = check_planted(
        loaded, planted.vectors, layer, split=args.split, max_new_tokens=args.max_new_tokens, judge=args.judge
    )
    print(json.dumps(result) if args.json else format_check(result))


def add_parsers(sub) -> None:
    """``organism build|report``."""
    organism = sub.add_parser("organism", help="build or measure the offline refusal model organism").add_subparsers(
        dest="action", required=True
    )
    build = organism.add_parser(
        "build",
        help=f"make {BUNDLED_ORGANISM}: the bundled SmolLM2 plus the shipped delta (seconds, identical on every machine), "
        "or --from-scratch: the full fine-tune recipe, which writes a new delta",
    )
    from refusal_core.organism.build import OrganismSettings
    from refusal_core.organism.delta import SHIPPED_DELTA

    recipe = OrganismSettings()  # the help texts name the real defaults
    build.add_argument(
        "--from-scratch",
        action="store_true",
        help="run the fine-tune recipe (minutes) instead of applying the shipped delta, cut it to a low-rank delta, "
        "write that delta (--delta-out) and build the organism from it",
    )
    build.add_argument(
        "--from-fine-tune",
        type=Path,
        default=None,
        metavar="DIR",
        help="cut the full fine-tune saved in model directory DIR into a delta instead of training one "
        "(e.g. to try another --rank); writes the delta and builds the organism like --from-scratch",
    )
    build.add_argument(
        "--delta-out",
        type=Path,
        default=None,
        help=f"with --from-scratch or --from-fine-tune: where the new delta goes (default: the shipped {SHIPPED_DELTA.name} in refusal_core/data/, to commit)",
    )
    build.add_argument(
        "--rank",
        type=int,
        default=None,
        help=f"with --from-scratch or --from-fine-tune: rank of the delta (default {recipe.delta_rank})",
    )
    build.add_argument(
        "--steps", type=int, default=None, help=f"with --from-scratch: optimizer steps (default {recipe.steps})"
    )
    build.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"with --from-scratch: sequences per step (default {recipe.batch_size})",
    )
    build.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help=f"with --from-scratch: AdamW learning rate (default {recipe.learning_rate:g})",
    )
    build.add_argument("--seed", type=int, default=None, help=f"with --from-scratch: seed (default {recipe.seed})")
    build.add_argument(
        "--distill-weight",
        type=float,
        default=None,
        help=f"with --from-scratch: weight of the first-token distillation to the base model on harmless prompts (default {recipe.distill_weight:g}; 0 turns it off)",
    )
    build.add_argument(
        "--variant",
        choices=ORGANISM_VARIANTS,
        default=None,
        help="with --from-scratch: build an organism variant into its own directory, loaded as "
        f"{BUNDLED_ORGANISM}-<variant> (the default organism is left alone); category-styles: "
        "each harm category is refused in its own words (refusal_core/organism/variants.py); two-mechanisms: "
        "a planted ground truth whose two groups of harm categories refuse through two known directions, "
        "built from its shipped delta in seconds, or its recipe with --from-scratch (refusal_core/organism/planted.py)",
    )
    build.add_argument(
        "--force", action="store_true", help="rebuild even if it exists (--from-scratch always rebuilds)"
    )
    build.set_defaults(func=cmd_organism_build)
    report = organism.add_parser("report", help="refusal rates, DIM ablation and actadd on the held-out test splits")
    from refusal_core.organism.report import ReportSettings

    report.add_argument("--model", default=BUNDLED_ORGANISM)
    add_judge_arg(report)
    add_setting_flags(report, ReportSettings)
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_organism_report)
    planted = organism.add_parser(
        "planted",
        help="the planted properties of the two-mechanisms variant on one split (group cosine, "
        "refusal, pooled DIM and planted ablations)",
    )
    planted.add_argument("--model", default=f"{BUNDLED_ORGANISM}-two-mechanisms")
    planted.add_argument("--split", choices=("train", "val", "test"), default="test")
    planted.add_argument(
        "--layer", type=int, default=None, help="mechanism layer (default: the one the planted directions name)"
    )
    planted.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="reply length (default 48, as experiments many-directions on test)",
    )
    add_judge_arg(planted)
    planted.add_argument("--json", action="store_true")
    planted.set_defaults(func=cmd_organism_planted)
