"""``export-model``: a model with directions orthogonalized out of its weights.
"""

from __future__ import annotations

import sys

from refusal_core.cli.common import add_model_args, emit, load_directions, load_model_from_args


def cmd_export_model(args) -> None:
    from refusal_core.interventions.export import export_orthogonalized

    loaded = load_model_from_args(args)
    directions = load_directions(args.ablate, loaded.d_model)
    out = export_orthogonalized(loaded, directions, args.out, overwrite=args.overwrite, command=" ".join(sys.argv))
    emit(args, {"out": str(out), "directions": list(directions.names)},
          lambda: print(f"Wrote the orthogonalized model ({len(directions)} directions removed) to {out}"))


def add_parsers(sub) -> None:
    """``export-model``."""
    export = sub.add_parser("export-model", help="write a model with directions orthogonalized out of its weights")
    add_model_args(export)
    export.add_argument("--ablate", required=True, help="direction set: PATH or PATH:name1,name2")
    export.add_argument("--out", default=None, help="output folder (default: cache/exports/<model>-orthogonalized)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (never a folder of other files)")
    export.set_defaults(func=cmd_export_model)
