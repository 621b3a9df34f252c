"""``categories report``: switch refusal off one harm category at a time and measure every
category's refusal (the ablation and conditional-ablation matrices, selectivity)."""

from __future__ import annotations

import json
import sys

from refusal_core.cli.common import CliError, add_judge_arg, add_model_args, load_model_from_args, progress_bar


def cmd_categories_report(args) -> None:
    from refusal_core.categories.matrix import categories_report
    from refusal_core.categories.text import format_report

    for flag in ("per_category", "n_harmless", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}.")
    if args.shrinkage is not None and not args.shrinkage > 0:
        raise CliError(f"--shrinkage must be > 0, got {args.shrinkage}.")
    loaded = load_model_from_args(args)
    report = categories_report(
        loaded, layer=args.layer, condition_layer=args.condition_layer, part=args.part, per_category=args.per_category,
        n_harmless=args.n_harmless, max_new_tokens=args.max_new_tokens, shrinkage=args.shrinkage, batch_size=args.batch_size,
        max_train_prompts=args.max_train_prompts, judge=args.judge, condition_kind=args.condition, margin=args.margin, say=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)), progress=progress_bar("generating", args.json),
    )
    print(json.dumps(report, default=str) if args.json else format_report(report))


def add_parsers(sub) -> None:
    """``categories report``."""
    group = sub.add_parser("categories", help="refusal by harm category: ablation and conditional-ablation matrices")
    actions = group.add_subparsers(dest="action", required=True)
    report = actions.add_parser("report", help="12x12 refusal matrix, harmless refusal and KL, selectivity per category (test split)")
    from refusal_core.categories.conditions import KINDS, MARGINS, SHRINKAGES
    from refusal_core.categories.matrix import DEFAULTS

    add_model_args(report)
    report.add_argument("--layer", type=int, default=None, help="layer of the category directions (default: 3/4 of the depth)")
    report.add_argument("--condition-layer", type=int, default=None,
                        help="layer the conditions read (default: chosen on val, every other layer from 1/5 to 1/2 of the depth)")
    report.add_argument("--condition", choices=KINDS, default="exclusive",
                        help="exclusive (default): a prompt fires the one category whose discriminant scores highest, by --margin; "
                             "ovr: each category against the rest with a val threshold (several may fire)")
    report.add_argument("--margin", type=float, default=None,
                        help=f"exclusive conditions: lead over every other class's score (default: chosen on val from {', '.join(map(str, MARGINS))})")
    report.add_argument("--part", choices=("full", "specific"), default="full",
                        help="ablate each category's full difference in means or its part orthogonal to the shared direction")
    report.add_argument("--per-category", type=int, default=DEFAULTS["per_category"],
                        help=f"harmful test prompts per category (default {DEFAULTS['per_category']}, all of them)")
    report.add_argument("--n-harmless", type=int, default=DEFAULTS["n_harmless"], help=f"harmless test prompts (default {DEFAULTS['n_harmless']})")
    report.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"],
                        help=f"greedy reply length (default {DEFAULTS['max_new_tokens']}: the organism's refusals open with the refusal)")
    add_judge_arg(report)
    report.add_argument("--shrinkage", type=float, default=None,
                        help=f"covariance shrinkage of the condition discriminants (default: chosen on val from {', '.join(map(str, SHRINKAGES))})")
    report.add_argument("--max-train-prompts", type=int, default=None,
                        help="cap the train and val sets the directions and thresholds come from (default: all)")
    report.add_argument("--batch-size", type=int, default=32, help="generation rows per batch")
    report.set_defaults(func=cmd_categories_report)
