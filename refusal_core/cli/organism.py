"""``organism build|report``: build or measure the offline refusal model organism.
"""

from __future__ import annotations

import json
import sys

from refusal_core.model.loading import BUNDLED_ORGANISM


def cmd_organism_build(args) -> None:
    from refusal_core.organism.build import OrganismSettings, build_organism

    chosen = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
              "distill_weight": args.distill_weight}
    settings = OrganismSettings(**{name: value for name, value in chosen.items() if value is not None})
    from tqdm import tqdm

    bar = tqdm(total=100, desc="organism", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def progress(done: int, total: int, message: str = "") -> None:
        bar.n = done
        bar.set_postfix_str(message)

    path = build_organism(settings, progress=progress, force=args.force)
    bar.close()
    print(f"Refusal organism ready at {path}")


def cmd_organism_report(args) -> None:
    from refusal_core.organism.report import format_report, organism_report

    report = organism_report(args.model, n_select=args.n_select, max_new_tokens=args.max_new_tokens, layer_step=args.layer_step,
                             all_positions=args.all_positions, progress=None if args.json else lambda m: print(m, file=sys.stderr),
                             optimize_steps=args.optimize_steps)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))


def add_parsers(sub) -> None:
    """``organism build|report``."""
    organism = sub.add_parser("organism", help="build or measure the offline refusal model organism").add_subparsers(dest="action", required=True)
    build = organism.add_parser("build", help=f"fine-tune the bundled SmolLM2 into {BUNDLED_ORGANISM}")
    from refusal_core.organism.build import OrganismSettings

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
