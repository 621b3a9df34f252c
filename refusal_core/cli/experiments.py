"""``experiments many-directions``: one DIM direction against searched sets of SOM, cluster and
optimized directions, chosen on val and reported on test with bootstrap intervals."""

from __future__ import annotations

import json
import time
from pathlib import Path

from refusal_core.cli.common import (
    CliError,
    add_judge_arg,
    add_model_args,
    chat_format,
    emit,
    load_model_from_args,
    progress_bar,
)
from refusal_core.settings import add_setting_flags, settings_fields
from refusal_core.settings import settings_from_args as from_flags


def _pair(values: list[int], flag: str) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise CliError(f"{flag} takes one number (harmful = harmless) or two (harmful, harmless), got {values}.")
    return (values[0], values[-1])


def settings_from_args(args):
    """ManyDirectionsSettings from the flags: the generated ones, and the two prompt-count pairs."""
    from refusal_core.experiments.many_directions import ManyDirectionsSettings

    val, test = _pair(args.val_prompts, "--val-prompts"), _pair(args.test_prompts, "--test-prompts")
    return from_flags(
        ManyDirectionsSettings,
        args,
        val_harmful=val[0],
        val_harmless=val[1],
        test_harmful=test[0],
        test_harmless=test[1],
    )


def cmd_planted_recovery(args) -> None:
    from refusal_core.experiments.planted_recovery import format_pool_recovery, pool_recovery

    try:
        seeds = tuple(int(seed) for seed in args.som_seeds.split(","))
    except ValueError:
        raise CliError(
            f"--som-seeds takes whole numbers separated by commas (0,1,2), got {args.som_seeds!r}."
        ) from None
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
        raise CliError(
            f"--out {args.out} is a folder; give a file path such as {args.out.rstrip('/')}/many-directions.json."
        )
    loaded = load_model_from_args(args)
    result = run_many_directions(
        loaded,
        settings,
        chat=chat_format(args),
        progress=progress_bar("Many directions", args.json),
        use_cache=not args.no_cache,
    )
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=str))
    wall = time.perf_counter() - started

    def human() -> None:
        print(f"Model {result['model']} (weights {result['weights'][:16]}...)")
        print("Settings: " + ", ".join(f"{name}={value}" for name, value in result["settings"].items()))
        for line in table_lines(result):
            print(line)
        how = (
            f"read back from the cache (computed in {result['seconds']:.0f} s on {result['started']})"
            if result["cached"]
            else f"computed in {result['seconds']:.0f} s"
        )
        print(f"\nWall time {wall:.0f} s: {how}. Saved to {result['path']}" + (f" and {args.out}" if args.out else ""))

    emit(args, {**result, "wall_seconds": round(wall, 1)}, human)


def add_parsers(sub) -> None:
    """``experiments many-directions``."""
    from refusal_core.experiments.many_directions import ManyDirectionsSettings

    group = sub.add_parser("experiments", help="whole comparisons, run end to end and saved for the dashboard")
    actions = group.add_subparsers(dest="action", required=True)
    many = actions.add_parser(
        "many-directions", help="one DIM direction vs searched SOM / cluster sets and the RDO direction (val -> test)"
    )
    add_model_args(many)
    add_judge_arg(many)  # the registry's judges when the parser is built (plug-ins included)
    add_setting_flags(many, ManyDirectionsSettings)
    d = ManyDirectionsSettings()
    # One flag sets two fields (harmful, harmless); their help comes from the fields.
    for flag, fields in (
        ("--val-prompts", ("val_harmful", "val_harmless")),
        ("--test-prompts", ("test_harmful", "test_harmless")),
    ):
        first = next(item for item in settings_fields(ManyDirectionsSettings) if item.name == fields[0])
        defaults = [getattr(d, name) for name in fields]
        many.add_argument(
            flag,
            type=int,
            nargs="+",
            default=defaults,
            metavar="N",
            help=f"{first.help.replace('harmful ', 'harmful and harmless ', 1)} (default {defaults[0]} {defaults[1]})",
        )
    many.add_argument(
        "--no-cache", action="store_true", help="compute again even if this exact run is saved in the cache"
    )
    many.add_argument("--out", default=None, help="also write the result JSON here")
    many.set_defaults(func=cmd_many_directions)
    recovered = actions.add_parser(
        "planted-recovery",
        help="each direction family's whole pool against the model's planted directions "
        "(no generation; the planted variant: bundled:refusal-organism-two-mechanisms)",
    )
    add_model_args(recovered)
    recovered.add_argument(
        "--layer", type=int, default=None, help="layer to fit the families at (default: the planted directions' layer)"
    )
    recovered.add_argument("--som-seeds", default="0,1,2", help="one SOM per seed, comma-separated (default 0,1,2)")
    recovered.add_argument(
        "--clusters",
        type=int,
        default=d.clusters,
        help=f"k-means clusters of per-prompt directions (default {d.clusters})",
    )
    recovered.set_defaults(func=cmd_planted_recovery)
