"""``experiments many-directions``: one DIM direction against searched sets of SOM, cluster and
optimized directions, chosen on val and reported on test with bootstrap intervals (issue 19)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from refusal_core.cli.common import CliError, add_model_args, chat_format, emit, load_model_from_args, progress_bar
from refusal_core.judges.panel import MIN_RATE_TOKENS


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CliError(f"{flag} takes whole numbers separated by commas (e.g. {flag} 12,16), got {text!r}.") from None
    if not values:
        raise CliError(f"{flag} needs at least one number (e.g. {flag} 16).")
    return values


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise CliError(f"--som-grid takes ROWSxCOLUMNS (e.g. --som-grid 3x3), got {text!r}.")
    return int(parts[0]), int(parts[1])


def _pair(values: list[int], flag: str) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise CliError(f"{flag} takes one number (harmful = harmless) or two (harmful, harmless), got {values}.")
    return (values[0], values[-1])


def settings_from_args(args):
    from refusal_core.experiments.many_directions import ManyDirectionsSettings

    val, test = _pair(args.val_prompts, "--val-prompts"), _pair(args.test_prompts, "--test-prompts")
    return ManyDirectionsSettings(
        layers=_ints(args.layers, "--layers"), max_k=args.max_k, som_seeds=_ints(args.som_seeds, "--som-seeds"),
        som_grid=_grid(args.som_grid), clusters=args.clusters, optimize=not args.no_optimize, optimize_steps=args.optimize_steps,
        trials=args.trials, val_harmful=val[0], val_harmless=val[1], test_harmful=test[0], test_harmless=test[1],
        search_tokens=args.search_tokens, test_tokens=args.test_tokens, judge=args.judge, kl_penalty=args.kl_penalty,
        n_boot=args.n_boot, boot_seed=args.boot_seed, search_seed=args.seed, batch_size=args.batch_size,
    )


def cmd_planted_recovery(args) -> None:
    from refusal_core.experiments.planted_recovery import format_pool_recovery, pool_recovery

    try:
        seeds = tuple(int(seed) for seed in args.som_seeds.split(","))
    except ValueError:
        raise CliError(f"--som-seeds takes whole numbers separated by commas (0,1,2), got {args.som_seeds!r}.") from None
    loaded = load_model_from_args(args)
    result = pool_recovery(loaded, args.layer, som_seeds=seeds, clusters=args.clusters)
    emit(args, result, lambda: print(format_pool_recovery(result)))


def cmd_many_directions(args) -> None:
    from refusal_core.activations.cache import atomic_write_text
    from refusal_core.experiments.many_directions import run_many_directions
    from refusal_core.experiments.results import table_lines

    started = time.perf_counter()
    settings = settings_from_args(args)  # bad settings fail before the model loads
    if args.out and Path(args.out).is_dir():
        raise CliError(f"--out {args.out} is a folder; give a file path such as {args.out.rstrip('/')}/many-directions.json.")
    loaded = load_model_from_args(args)
    result = run_many_directions(loaded, settings, chat=chat_format(args), progress=progress_bar("Many directions", args.json),
                                 use_cache=not args.no_cache)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=str))
    wall = time.perf_counter() - started

    def human() -> None:
        print(f"Model {result['model']} (weights {result['weights'][:16]}...)")
        print("Settings: " + ", ".join(f"{name}={value}" for name, value in result["settings"].items()))
        for line in table_lines(result):
            print(line)
        how = f"read back from the cache (computed in {result['seconds']:.0f} s on {result['started']})" if result["cached"] else f"computed in {result['seconds']:.0f} s"
        print(f"\nWall time {wall:.0f} s: {how}. Saved to {result['path']}" + (f" and {args.out}" if args.out else ""))

    emit(args, {**result, "wall_seconds": round(wall, 1)}, human)


def add_parsers(sub) -> None:
    """``experiments many-directions``."""
    from refusal_core.damage import JUDGE_CHOICES
    from refusal_core.experiments.many_directions import ManyDirectionsSettings

    group = sub.add_parser("experiments", help="whole comparisons, run end to end and saved for the dashboard")
    actions = group.add_subparsers(dest="action", required=True)
    many = actions.add_parser("many-directions", help="one DIM direction vs searched SOM / cluster sets and the RDO direction (val -> test)")
    add_model_args(many)
    d = ManyDirectionsSettings()
    many.add_argument("--layers", default=",".join(map(str, d.layers)), help=f"block inputs to compare at, comma-separated (default {d.layers[0]})")
    many.add_argument("--max-k", type=int, default=d.max_k, help=f"largest subset searched per family (default {d.max_k})")
    many.add_argument("--som-seeds", default=",".join(map(str, d.som_seeds)), help="one SOM per seed, comma-separated (default 0,1,2)")
    many.add_argument("--som-grid", default="x".join(map(str, d.som_grid)), help="SOM grid ROWSxCOLUMNS (default 3x3; 1x1 gives the DIM direction)")
    many.add_argument("--clusters", type=int, default=d.clusters, help=f"k-means clusters of per-prompt directions (0: leave them out; default {d.clusters})")
    many.add_argument("--no-optimize", action="store_true", help="leave out the optimized (RDO) direction")
    many.add_argument("--optimize-steps", type=int, default=d.optimize_steps, help=f"Adam steps of the RDO direction (default {d.optimize_steps})")
    many.add_argument("--trials", type=int, default=d.trials, help=f"search trials per (family, k), capped at the distinct subsets (default {d.trials})")
    many.add_argument("--val-prompts", type=int, nargs="+", default=[d.val_harmful, d.val_harmless], metavar="N",
                      help=f"harmful and harmless val prompts per search trial (default {d.val_harmful} {d.val_harmless})")
    many.add_argument("--test-prompts", type=int, nargs="+", default=[d.test_harmful, d.test_harmless], metavar="N",
                      help=f"harmful and harmless test prompts every point is reported on (default {d.test_harmful} {d.test_harmless})")
    many.add_argument("--search-tokens", type=int, default=d.search_tokens, help=f"reply length in the search (default {d.search_tokens})")
    many.add_argument("--test-tokens", type=int, default=d.test_tokens,
                      help=f"reply length on the test split (default {d.test_tokens}; the judges' rate length is {MIN_RATE_TOKENS})")
    many.add_argument("--judge", choices=JUDGE_CHOICES, default=d.judge, help=f"judge of the verdicts (default {d.judge})")
    many.add_argument("--kl-penalty", type=float, default=d.kl_penalty, help=f"search objective += this times the harmless KL (default {d.kl_penalty})")
    many.add_argument("--n-boot", type=int, default=d.n_boot, help=f"bootstrap resamples (default {d.n_boot})")
    many.add_argument("--boot-seed", type=int, default=d.boot_seed, help="seed of the bootstrap resamples")
    many.add_argument("--seed", type=int, default=d.search_seed, help="seed of the search's TPE sampler")
    many.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per batched call (default {d.batch_size})")
    many.add_argument("--no-cache", action="store_true", help="compute again even if this exact run is saved in the cache")
    many.add_argument("--out", default=None, help="also write the result JSON here")
    many.set_defaults(func=cmd_many_directions)
    recovered = actions.add_parser("planted-recovery", help="each direction family's whole pool against the model's planted directions "
                                                            "(no generation; the planted variant: bundled:refusal-organism-two-mechanisms)")
    add_model_args(recovered)
    recovered.add_argument("--layer", type=int, default=None, help="layer to fit the families at (default: the planted directions' layer)")
    recovered.add_argument("--som-seeds", default="0,1,2", help="one SOM per seed, comma-separated (default 0,1,2)")
    recovered.add_argument("--clusters", type=int, default=d.clusters, help=f"k-means clusters of per-prompt directions (default {d.clusters})")
    recovered.set_defaults(func=cmd_planted_recovery)
