"""Export: download direction sets (safetensors + JSON provenance, or a .pt of unit
vectors), import sets back (validated against the model width), and write a model with
chosen directions orthogonalized out of its weights."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from app_pages import _state
from refusal_core.directions.archive import direction_sets_zip, read_direction_uploads, stacked_unit_pt
from refusal_core.directions.base import DirectionError
from refusal_core.errors import UserError
from refusal_core.interventions.export import default_export_dir, export_orthogonalized
from refusal_core.interventions.export_target import confined_export_dir, export_root

st.title("Export")
loaded = _state.require_model()
ws = _state.workspace()
SEEN_UPLOADS = "export_seen_uploads"


def exported(what: str) -> None:
    """Record an export for the Start page's guided path."""
    ws.exports.append(what)


def sets_table() -> None:
    if not ws.direction_sets:
        st.info("No direction sets yet. Compute some on the other pages, or import a set below.")
        return
    rows = [
        {
            "set": name,
            "directions": len(d),
            "width": d.d_model,
            "methods": ", ".join(sorted({str(p.get("method")) for p in d.provenance})),
        }
        for name, d in ws.direction_sets.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def downloads() -> None:
    st.header("Download")
    options = list(ws.direction_sets)
    preferred = _state.preferred_direction(ws)
    default = [preferred[0]] if preferred else options[:1]
    _state.follow_default("export_sets", default, options)
    chosen = st.multiselect("Direction sets to download", options, key="export_sets")
    if not chosen:
        return
    sets = {name: ws.direction_sets[name] for name in chosen}
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(chosen))[:80] or "directions"
    cols = st.columns(2)
    try:
        cols[0].download_button(
            "Download .zip (safetensors + JSON provenance)",
            direction_sets_zip(sets),
            file_name=f"{stem}.zip",
            mime="application/zip",
            key="export_zip",
            on_click=exported,
            args=("zip",),
        )
        cols[1].download_button(
            "Download .pt (unit vectors [k, d])",
            stacked_unit_pt(sets),
            file_name=f"{stem}.pt",
            mime="application/octet-stream",
            key="export_pt",
            on_click=exported,
            args=("pt",),
        )
    except DirectionError as err:
        st.error(str(err))


def imports() -> None:
    st.header("Import")
    uploads = st.file_uploader(
        "Direction files: .safetensors with its .json, a .zip export, or a .pt tensor",
        type=["safetensors", "json", "zip", "pt"],
        accept_multiple_files=True,
        key="export_upload",
    )
    if not uploads:
        return
    ids = tuple(sorted(upload.file_id for upload in uploads))
    if st.session_state.get(SEEN_UPLOADS) == ids:
        return
    try:
        found = read_direction_uploads([(upload.name, upload.getvalue()) for upload in uploads], loaded.d_model)
    except DirectionError as err:
        st.error(f"Import failed: {err}")
        return
    added = []
    for stem, directions in found.items():
        wanted = f"imported:{stem}"
        name = ws.free_name(wanted)
        ws.add_set(name, directions)
        note = "" if name == wanted else f", renamed because a set named {wanted} exists already"
        added.append(f"{name} ({len(directions)} directions{note})")
    st.session_state[SEEN_UPLOADS] = ids
    st.success("Imported " + "; ".join(added) + ".")


def orthogonalized_model() -> None:
    if not ws.direction_sets:
        return
    st.header("Orthogonalized model")
    st.caption(
        "Projects the chosen directions out of every weight that writes to the residual stream, then saves "
        "the model (the shared model in memory is restored)."
    )
    options = list(ws.direction_sets)
    preferred = _state.preferred_direction(ws)
    _state.follow_default("export_model_set", preferred[0] if preferred else options[0], options)
    set_name = st.selectbox("Direction set", options, key="export_model_set")
    directions = ws.direction_sets[set_name]
    names = st.multiselect(
        "Directions", list(directions.names), default=list(directions.names[:1]), key=f"export_model_names_{set_name}"
    )
    default_dir = export_root() / default_export_dir(loaded.spec).name
    out_dir = st.text_input("Output folder", value=str(default_dir), key="export_model_dir",
                            help=f"A folder inside {export_root()} (a plain name is created there; ~ is your home folder). "
                                 "Set REFUSAL_ATLAS_EXPORT_ROOT before starting the app to export elsewhere.")
    overwrite = st.checkbox(
        "Replace an earlier export in this folder",
        key="export_model_overwrite",
        help="Only a folder written by an earlier export (it holds a .refusal-atlas-export file) is ever replaced.",
    )
    if st.button("Write the orthogonalized model", disabled=not names or not out_dir.strip(), key="export_model_run"):
        try:
            with st.spinner(f"Orthogonalizing {len(names)} directions and saving to {out_dir}..."):
                path = export_orthogonalized(
                    loaded, directions.select(names), confined_export_dir(out_dir), overwrite=overwrite
                )
        except UserError as err:
            st.error(f"Export failed: {err}")
        except OSError as err:
            st.error(f"Export failed: {err.strerror or err} ({err.filename or out_dir}); check the folder and free disk space.")
        else:
            exported(str(path))
            st.success(f"Saved to {path.resolve()}. Load it in the sidebar as a local path to check it.")


# The table is drawn last into a slot at the top, so it already lists what this run imported.
table_slot = st.container()
downloads()
imports()
orthogonalized_model()
with table_slot:
    sets_table()
