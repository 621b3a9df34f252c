"""``directions <method>``: one subcommand per registered direction method, generated from
the registry (each settings field becomes an option), plus ``select`` and ``search``."""

from __future__ import annotations

import argparse
from pathlib import Path

from refusal_core.cli import selection
from refusal_core.cli.common import (
    CliError,
    add_layers_arg,
    add_model_args,
    add_set_args,
    chat_format,
    check_layer,
    check_memory_before_load,
    emit,
    layers_from_args,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
)
from refusal_core.directions.registry import DirectionMethod, FitInput, methods
from refusal_core.exports.manifest import direction_files, seeds_of, write_result_manifest
from refusal_core.selection import optimize  # noqa: F401  (registers the optimize method)
from refusal_core.settings import add_setting_flags, settings_from_args


def _manifest(args, stem, written, loaded, directions=None, inputs=()) -> None:
    """``<stem>.manifest.json`` beside a saved result (``reproduce`` reruns it)."""
    files = [path for name in inputs for path in direction_files(str(name).partition(":")[0])]
    write_result_manifest(stem, written, args.argv, loaded, directions, inputs=files, seeds=seeds_of(args))


# Where the README's `directions select --save-direction` keeps the selected DIM candidate;
# methods that refine one direction start from it by default.
DEFAULT_INIT = "cache/best"


def add_parsers(sub) -> None:
    """``directions`` and its subcommands: the registered methods, then select and search."""
    directions = sub.add_parser("directions", help="compute refusal directions").add_subparsers(
        dest="subcommand", required=True
    )
    for method in methods().values():
        add_method_parser(directions, method)
    selection.add_select_parser(directions)
    selection.add_search_parser(directions)


def add_method_parser(directions, method: DirectionMethod) -> argparse.ArgumentParser:
    """The subcommand of one method: model and prompt-set options, where it reads, its settings, ``--out``."""
    parser = directions.add_parser(method.name, help=method.help, description=method.help)
    add_model_args(parser), add_set_args(parser), add_layers_arg(parser)
    if method.reads == "layer":
        parser.add_argument("--layer", type=int, required=True, help="the block whose input the method reads")
        parser.add_argument(
            "--position", type=int, default=-1, help="post-instruction token, as an offset from the end (default -1)"
        )
    if method.reads == "init":
        parser.add_argument(
            "--init",
            default=None,
            help=f"the direction to start from: PATH:name (default {DEFAULT_INIT}, "
            "where the README's `directions select --save-direction` puts the selected DIM candidate)",
        )
    # Fields whose flag the prompt-set options already give (e.g. --batch-size) read that option.
    add_setting_flags(parser, method.settings)
    parser.add_argument("--out", required=True, help="output path stem (writes .safetensors and .json)")
    parser.set_defaults(func=lambda args: run_method(method, args))
    return parser


def run_method(method: DirectionMethod, args) -> None:
    """Load, fit, save and describe one method's directions."""
    layers = layers_from_args(args)
    if method.reads == "layer" and layers is not None and args.layer not in layers:
        raise CliError(f"--layer {args.layer} is not among --layers {args.layers}; add it, or leave --layers out.")
    check_memory_before_load(args)  # estimate (and --max-memory) from the files, before the load
    loaded = load_model_from_args(args)
    init = None
    if method.reads == "layer":
        check_layer(args.layer, loaded.n_layers)
    if method.reads == "init":
        if args.init is None and not Path(f"{DEFAULT_INIT}.safetensors").exists():
            raise CliError(
                f"No --init given and no selected direction at {DEFAULT_INIT}; run `directions select ... "
                f"--save-direction {DEFAULT_INIT}` first, or give --init PATH:name."
            )
        init = load_directions(args.init or DEFAULT_INIT, loaded.d_model)
        if len(init) != 1:
            raise CliError(
                f"--init must name one direction (PATH:name); {args.init} holds {len(init)}: {', '.join(init.names[:6])}"
                + (" ..." if len(init) > 6 else "")
                + "."
            )
    data = FitInput(
        loaded=loaded,
        harmful=prompt_set(args.harmful, args.column, args.limit),
        harmless=prompt_set(args.harmless, args.column, args.limit),
        layer=getattr(args, "layer", None),
        position=getattr(args, "position", -1),
        init=init,
        chat=chat_format(args),
        batch_size=args.batch_size,
        progress=lambda label: progress_bar(label, args.json),
        layers=layers,
    )
    settings = settings_from_args(method.settings, args)
    directions = method.fit(data, settings)
    directions.save(args.out)
    _manifest(
        args,
        args.out,
        direction_files(args.out),
        loaded,
        directions,
        [args.init or DEFAULT_INIT] if init is not None else [],
    )
    payload, lines = method.describe(directions)

    def human() -> None:
        print("\n".join(lines))
        print(f"Wrote {len(directions)} directions to {args.out}")

    emit(args, {"out": args.out, **payload}, human)
