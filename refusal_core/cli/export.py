"""``export-model``: a model with directions orthogonalized out of its weights.

A model that comes from safetensors files (a local folder, the hub cache, a bundled
model's converted folder) is exported by streaming those files shard by shard without
loading it (``exports/folder.py``); others (tiny random models, ``.bin`` checkpoints) or
``--in-memory`` load the model and save it edited (``interventions/export.py``).
"""

from __future__ import annotations

import sys

from refusal_core.cli.common import add_model_args, emit, load_directions, load_model_from_args, progress_bar


def _streamed(args) -> str | None:
    """Export by streaming the model's files; None when there are none to stream."""
    from refusal_core.exports.files import files_for_spec
    from refusal_core.exports.folder import plan_export, stream_export
    from refusal_core.interventions.export import default_export_dir

    files = files_for_spec(args.model)
    if files is None:
        return None
    plan = plan_export(files, trust_remote_code=args.trust_remote_code)
    directions = load_directions(args.ablate, plan.d_model)
    out = stream_export(
        files, directions, args.out or default_export_dir(args.model), spec=args.model, overwrite=args.overwrite,
        command=" ".join(sys.argv), trust_remote_code=args.trust_remote_code, plan=plan,
        progress=progress_bar("Streaming export (MiB)", args.json),
    )
    emit(args, {"out": str(out), "directions": list(directions.names), "streamed": True, "source": str(files.folder)},
         lambda: print(f"Wrote the orthogonalized model ({len(directions)} directions removed), streamed shard by "
                       f"shard from {files.folder} in its stored dtype, to {out}"))
    return str(out)


def cmd_export_model(args) -> None:
    from refusal_core.interventions.export import export_orthogonalized

    if not args.in_memory and _streamed(args) is not None:
        return
    loaded = load_model_from_args(args)
    directions = load_directions(args.ablate, loaded.d_model)
    out = export_orthogonalized(loaded, directions, args.out, overwrite=args.overwrite, command=" ".join(sys.argv))
    emit(args, {"out": str(out), "directions": list(directions.names), "streamed": False},
          lambda: print(f"Wrote the orthogonalized model ({len(directions)} directions removed) to {out}"))


def add_parsers(sub) -> None:
    """``export-model``."""
    export = sub.add_parser("export-model", help="write a model with directions orthogonalized out of its weights")
    add_model_args(export)
    export.add_argument("--ablate", required=True, help="direction set: PATH or PATH:name1,name2")
    export.add_argument("--out", default=None, help="output folder (default: cache/exports/<model>-orthogonalized)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (never a folder of other files)")
    export.add_argument("--in-memory", action="store_true",
                        help="load the model and save it edited, instead of streaming its safetensors files shard by "
                             "shard (the default where the model has such files; needs memory for the whole model)")
    export.set_defaults(func=cmd_export_model)
