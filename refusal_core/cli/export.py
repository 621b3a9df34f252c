"""``export-model``: the directions exported in one of the registered formats (``exports/registry.py``:
a full folder, a LoRA adapter, a GGUF, a llama.cpp control vector), each with a manifest.json;
``reproduce MANIFEST``: rerun an export or saved result and compare its output hash.

A full folder of a model that comes from safetensors files (a local folder, the hub cache, a
bundled model's converted folder) is streamed from those files shard by shard without loading
the model (``exports/folder.py``); other models, the norm-preserving mode and ``--in-memory``
load the model and save it edited (``interventions/export.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from refusal_core.cli.common import CliError, add_model_args, emit, load_directions, load_model_from_args, progress_bar


def _format_settings(fmt, args):
    """The chosen format's settings from the flags given; a flag of another format is an error."""
    from refusal_core.directions.registry import settings_fields
    from refusal_core.exports.registry import formats

    own = {field.name for field in settings_fields(fmt.settings)}
    given = {
        name
        for other in formats().values()
        for name in (f.name for f in settings_fields(other.settings))
        if getattr(args, f"setting__{name}", None) is not None
    }
    foreign = sorted(given - own)
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise CliError(
            f"{flags} does not apply to --format {fmt.name}; its options are "
            f"{', '.join('--' + n.replace('_', '-') for n in sorted(own)) or 'none'}."
        )
    values = {
        name: getattr(args, f"setting__{name}") for name in own if getattr(args, f"setting__{name}", None) is not None
    }
    return fmt.settings(**values)


def _streamed(args) -> str | None:
    """Stream the full-folder export from the model's files; None when there are none to stream."""
    from refusal_core.exports.files import WeightFilesError, files_for_spec
    from refusal_core.exports.folder import plan_export
    from refusal_core.exports.folder_format import stream_folder
    from refusal_core.interventions.export import default_export_dir

    files = files_for_spec(args.model)
    if files is None:
        return None
    try:
        plan = plan_export(files, trust_remote_code=args.trust_remote_code)
    except WeightFilesError as err:  # names on disk the streaming export cannot map: edit the loaded model instead
        print(f"note: the model's files cannot be streamed ({err}); exporting from memory instead.", file=sys.stderr)
        return None
    directions = load_directions(args.ablate, plan.d_model)
    command = " ".join(["python", "-m", "refusal_core", *getattr(args, "argv", sys.argv[1:])])
    out = stream_folder(
        files,
        directions,
        args.out or default_export_dir(args.model),
        spec=args.model,
        overwrite=args.overwrite,
        command=command,
        trust_remote_code=args.trust_remote_code,
        plan=plan,
        progress=progress_bar("Streaming export (MiB)", args.json),
    )
    emit(
        args,
        {
            "out": str(out),
            "format": "folder",
            "directions": list(directions.names),
            "streamed": True,
            "source": str(files.folder),
        },
        lambda: print(
            f"Wrote the orthogonalized model ({len(directions)} directions removed), streamed shard by "
            f"shard from {files.folder} in its stored dtype, to {out}"
        ),
    )
    return str(out)


def cmd_export_model(args) -> None:
    from refusal_core.exports.registry import ExportRequest, get_format
    from refusal_core.interventions.export_target import default_export_dir

    fmt = get_format(args.format)
    settings = _format_settings(fmt, args)  # bad flags fail before the model is loaded
    streams = fmt.name == "folder" and settings.mode == "orthogonal" and not args.in_memory
    if streams and _streamed(args) is not None:
        return
    loaded = load_model_from_args(args)
    directions = load_directions(args.ablate, loaded.d_model)
    out = (
        Path(args.out)
        if args.out
        else default_export_dir(loaded.spec).with_name(
            default_export_dir(loaded.spec).name.replace("orthogonalized", fmt.suffix or fmt.name)
        )
    )
    command = " ".join(["python", "-m", "refusal_core", *getattr(args, "argv", sys.argv[1:])])
    written = fmt.write(
        ExportRequest(
            loaded=loaded,
            directions=directions,
            out_dir=out,
            settings=settings,
            overwrite=args.overwrite,
            command=command,
        )
    )
    emit(
        args,
        {"out": str(written), "format": fmt.name, "directions": list(directions.names), "streamed": False},
        lambda: print(f"Wrote {fmt.title} ({len(directions)} directions) to {written}"),
    )


def cmd_reproduce(args) -> int:
    from refusal_core.cli.reproduce import reproduce

    outcome = reproduce(args.manifest)
    emit(
        args,
        outcome,
        lambda: print(
            f"{'MATCH' if outcome['match'] else 'MISMATCH'}: recorded output sha256 {outcome['recorded']}, "
            f"rerun gives {outcome['rerun']}"
            + ("" if outcome["match"] else f"; differing files: {', '.join(outcome['differ']) or 'none listed'}")
        ),
    )
    return 0 if outcome["match"] else 1


def add_parsers(sub) -> None:
    """``export-model`` and ``reproduce``."""
    from refusal_core.directions.registry import settings_fields
    from refusal_core.exports.registry import formats

    known = formats()
    export = sub.add_parser(
        "export-model", help="export directions: a model folder, a LoRA adapter, a GGUF or a control vector"
    )
    add_model_args(export)
    export.add_argument("--ablate", required=True, help="direction set: PATH or PATH:name1,name2")
    export.add_argument(
        "--format",
        default="folder",
        choices=[name for name in known] + [n.replace("_", "-") for n in known if "_" in n],
        help="; ".join(f"{fmt.name}: {fmt.help}" for fmt in known.values()),
    )
    export.add_argument("--out", default=None, help="output folder (default: cache/exports/<model>-<format>)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --out (never a folder of other files)"
    )
    export.add_argument(
        "--in-memory",
        action="store_true",
        help="[folder] load the model and save it edited, instead of streaming its safetensors files shard by "
        "shard (the default where the model has such files; needs memory for the whole model)",
    )
    seen: set[str] = set()
    for fmt in known.values():
        for field in settings_fields(fmt.settings):
            if field.name in seen:
                continue
            seen.add(field.name)
            export.add_argument(
                field.flag,
                dest=f"setting__{field.name}",
                metavar=field.name.upper(),
                type=field.kind,
                default=None,
                choices=field.choices or None,
                help=f"[{fmt.name}] {field.help} (default {field.default})",
            )
    export.set_defaults(func=cmd_export_model)
    again = sub.add_parser(
        "reproduce",
        help="rerun the command a manifest.json records and compare the output hash "
        "(exit 0 match, 1 mismatch, 2 bad manifest)",
    )
    again.add_argument("manifest", help="a manifest.json written beside an export or a saved result")
    again.add_argument("--json", action="store_true", help="machine-readable JSON output")
    again.set_defaults(func=cmd_reproduce)
