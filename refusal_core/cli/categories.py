"""``categories report``: switch refusal off one harm category at a time and measure every
category's refusal (the ablation and conditional-ablation matrices, selectivity)."""

from __future__ import annotations

import json
import sys

from refusal_core.cli.common import add_judge_arg, add_model_args, load_model_from_args, progress_bar
from refusal_core.settings import add_setting_flags, settings_from_args


def cmd_categories_report(args) -> None:
    from refusal_core.categories.matrix import categories_report
    from refusal_core.categories.settings import CategoriesSettings
    from refusal_core.categories.text import format_report

    settings = settings_from_args(CategoriesSettings, args)  # bad settings fail before the model loads
    loaded = load_model_from_args(args)
    report = categories_report(
        loaded,
        settings,
        say=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)),
        progress=progress_bar("generating", args.json),
    )
    print(json.dumps(report, default=str) if args.json else format_report(report))


def add_parsers(sub) -> None:
    """``categories report``."""
    from refusal_core.categories.settings import CategoriesSettings

    group = sub.add_parser("categories", help="refusal by harm category: ablation and conditional-ablation matrices")
    actions = group.add_subparsers(dest="action", required=True)
    report = actions.add_parser(
        "report", help="12x12 refusal matrix, harmless refusal and KL, selectivity per category (test split)"
    )
    add_model_args(report)
    add_judge_arg(report)
    add_setting_flags(report, CategoriesSettings)
    report.set_defaults(func=cmd_categories_report)
