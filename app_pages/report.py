"""Report: one self-contained HTML file of this session's results (interactive charts, tables,
the replies and a manifest of models, directions, settings and versions), to open offline."""

from __future__ import annotations

import streamlit as st

from app_pages import _state
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.views import report

st.title("Report")
loaded = _state.require_model()
ws = _state.workspace()


def sections() -> list:
    found = []
    if "last_shift" in ws.views:
        found.append(report.shift_section(ws.views["last_shift"]))
    if "last_compare" in ws.views:
        found.append(report.compare_section(ws.views["last_compare"]))
    if ws.generations:
        key = next(reversed(ws.generations))
        judged = ws.judged.get(f"{key}|{_state.judge_name()}")
        rows = [
            {
                "variant": name,
                "instruction": c.instruction,
                "completion": c.text,
                "label": judged[name].verdicts[i].label if judged else None,
            }
            for name, completions in ws.generations[key].items()
            for i, c in enumerate(completions)
        ]
        traced = {(r["variant"], r["instruction"]): r for r in ws.views.get("last_trace", [])}
        for row in rows:
            if (row["variant"], row["instruction"]) in traced:
                row.update(
                    trace=traced[row["variant"], row["instruction"]]["trace"],
                    trace_layer=traced[row["variant"], row["instruction"]]["trace_layer"],
                )
        summary = {"summary": {name: column.summary() for name, column in judged.items()}} if judged else None
        found.append(report.generate_section(rows, summary))
    return found


def manifest() -> dict:
    return {
        "model": {"spec": loaded.spec, "weights_sha256": weights_sha256(loaded.model), "dtype": str(loaded.dtype)},
        "prompts": {
            kind: (None if s is None else {"name": s.name, "n": len(s)})
            for kind, s in (("harmful", ws.harmful), ("harmless", ws.harmless))
        },
        "direction_sets": {
            name: {"names": list(d.names), "provenance": list(d.provenance)} for name, d in ws.direction_sets.items()
        },
        "judge": _state.judge_name(),
        "command": "dashboard: Report page",
    }


found = sections()
if not found:
    st.info(
        "Nothing to report yet: draw the manifold under an intervention, compare two models, or generate replies first."
    )
    st.stop()
st.caption("This session's results: " + ", ".join(section.title for section in found) + ".")
title = st.text_input("Title", "Refusal Atlas report", key="report_title")
if st.button("Build the report", key="report_build"):
    with st.spinner("Writing the charts and plotly.js into one file..."):
        st.session_state["report_html"] = report.render_report(
            title, found, {**manifest(), "environment": report.environment()}
        )
if "report_html" in st.session_state:
    html_text = st.session_state["report_html"]
    st.download_button(
        f"Download the report ({len(html_text) / 1e6:.1f} MB, opens offline)",
        html_text,
        file_name="refusal-atlas-report.html",
        mime="text/html",
        key="report_download",
    )
