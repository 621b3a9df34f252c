"""Export: download direction sets (safetensors + JSON provenance, or a .pt of unit
vectors), import sets back (validated against the model width), and export chosen
directions in any registered format (a model folder, a LoRA adapter, a GGUF, a llama.cpp
control vector), each format's size on disk shown before anything is written."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import _state
from refusal_core.directions.archive import direction_sets_zip, read_direction_uploads, stacked_unit_pt
from refusal_core.directions.base import DirectionError
from refusal_core.directions.registry import settings_fields
from refusal_core.errors import UserError
from refusal_core.exports.files import find_model_files
from refusal_core.exports.folder_format import stream_folder
from refusal_core.exports.registry import ExportRequest, formats
from refusal_core.interventions.export_target import confined_export_dir, default_export_dir, export_root

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
    # The uploader keeps earlier files; only the ones not imported yet are read (two new files
    # that would become one set are refused, an earlier import of the same name is kept).
    seen = st.session_state.get(SEEN_UPLOADS, frozenset())
    fresh = [upload for upload in uploads if upload.file_id not in seen]
    if not fresh:
        return
    try:
        found = read_direction_uploads([(upload.name, upload.getvalue()) for upload in fresh], loaded.d_model)
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
    st.session_state[SEEN_UPLOADS] = seen | {upload.file_id for upload in fresh}
    st.success("Imported " + "; ".join(added) + ".")


def _model_files():
    """The loaded model's safetensors files, when every residual writer maps to a tensor in them;
    else None (a folder export then edits the model in memory)."""
    from refusal_core.exports.folder import plan_export

    try:
        files = find_model_files(loaded.source)
        if files is not None:
            plan_export(files)
        return files
    except UserError as err:
        st.warning(f"The model's files cannot be streamed ({err}); a folder export will edit the model in memory.")
        return None


def _stream(files, directions, out_dir: str, overwrite: bool, action: str) -> Path:
    """The full folder streamed from the model's files: no lock on the shared model, so other sessions keep working."""
    progress = _state.progress_callback(f"Streaming {files.folder.name} shard by shard")
    return stream_folder(
        files, directions, out_dir, spec=loaded.spec, overwrite=overwrite, command=action, progress=progress
    )


def _format_widgets(fmt, directions) -> dict[str, object]:
    """One widget per setting of ``fmt`` (an empty text box is "automatic": None)."""
    values: dict[str, object] = {}
    fields = settings_fields(fmt.settings)
    columns = st.columns(max(1, len(fields))) if fields else []
    for column, field in zip(columns, fields):
        key = f"export_model_{fmt.name}_{field.name}"
        if field.choices:
            values[field.name] = column.selectbox(field.label, list(field.choices), key=key, help=field.help)
        elif field.kind is str:
            text = column.text_input(
                field.label, value="" if field.default is None else str(field.default), key=key, help=field.help
            )
            values[field.name] = text.strip() or None
        else:
            values[field.name] = float(
                column.number_input(field.label, value=float(field.default), key=key, help=field.help)
            )
    return values


def _size(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def model_exports() -> None:
    if not ws.direction_sets:
        return
    st.header("Export the directions for use elsewhere")
    known = formats()
    st.caption(
        "Every format writes a folder with the directions, the result and a manifest.json that "
        "`python -m refusal_core reproduce` reruns. The shared model in memory is never changed."
    )
    options = list(ws.direction_sets)
    preferred = _state.preferred_direction(ws)
    _state.follow_default("export_model_set", preferred[0] if preferred else options[0], options)
    set_name = st.selectbox("Direction set", options, key="export_model_set")
    directions = ws.direction_sets[set_name]
    names = st.multiselect(
        "Directions", list(directions.names), default=list(directions.names[:1]), key=f"export_model_names_{set_name}"
    )
    if not names:
        st.info("Choose at least one direction.")
        return
    chosen = directions.select(names)
    rows = []
    for fmt in known.values():
        try:
            estimate = _size(fmt.estimate_size(loaded, chosen, fmt.settings()))
        except UserError as err:
            estimate = f"not available: {err}"
        rows.append({"format": fmt.title, "what it is": fmt.help, "size on disk (estimated)": estimate})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    titles = {fmt.title: name for name, fmt in known.items()}
    fmt = known[titles[st.radio("Format", list(titles), key="export_model_format", horizontal=True)]]
    files = _model_files() if fmt.name == "folder" else None
    if files is not None:
        st.caption(
            f"Streamed from the model's files in {files.folder}, shard by shard, in their stored dtype (orthogonal "
            "mode): the shared model in memory is not used, so other sessions keep working meanwhile."
        )
    values = _format_widgets(fmt, chosen)
    try:
        settings = fmt.settings(**values)
        st.caption(f"Estimated size on disk: **{_size(fmt.estimate_size(loaded, chosen, settings))}**")
    except UserError as err:
        st.error(f"{fmt.title}: {err}")
        return
    default_name = default_export_dir(loaded.spec).name.replace("orthogonalized", fmt.suffix or fmt.name)
    out_dir = st.text_input(
        "Output folder",
        value=str(export_root() / default_name),
        key=f"export_model_dir_{fmt.name}",
        help=f"A folder inside {export_root()} (a plain name is created there; ~ is your home folder). "
        "Set REFUSAL_ATLAS_EXPORT_ROOT before starting the app to export elsewhere.",
    )
    overwrite = st.checkbox(
        "Replace an earlier export in this folder",
        key="export_model_overwrite",
        help="Only a folder written by an earlier export (it holds a .refusal-atlas-export file) is ever replaced.",
    )
    if st.button(f"Write the {fmt.title}", disabled=not out_dir.strip(), key="export_model_run"):
        action = (
            f"dashboard Export page: {fmt.title} of {set_name}:{','.join(names)} with {values} to {out_dir.strip()}"
        )
        try:
            target = confined_export_dir(out_dir)
            if files is not None and settings.mode == "orthogonal":
                path = _stream(files, chosen, str(target), overwrite, action)
            else:
                with st.spinner(f"Writing the {fmt.title} of {len(names)} directions to {target}..."):
                    path = fmt.write(
                        ExportRequest(
                            loaded=loaded,
                            directions=chosen,
                            out_dir=target,
                            settings=settings,
                            overwrite=overwrite,
                            command=action,
                        )
                    )
        except UserError as err:
            st.error(f"Export failed: {err}")
        except OSError as err:
            st.error(
                f"Export failed: {err.strerror or err} ({err.filename or out_dir}); check the folder and free disk space."
            )
        else:
            exported(str(path))
            written = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
            st.success(f"Saved to {path.resolve()} ({_size(written)} on disk, manifest.json included).")


# The table is drawn last into a slot at the top, so it already lists what this run imported.
table_slot = st.container()
downloads()
imports()
model_exports()
with table_slot:
    sets_table()
