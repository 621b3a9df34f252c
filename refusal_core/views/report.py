"""A session report: one self-contained HTML file (interactive charts, tables, the replies and
a manifest of models, directions, settings and package versions) that opens offline in any
browser. plotly.js is written into the file once; nothing is fetched when it is opened.

The dashboard builds it from a session's results, ``python -m refusal_core report`` from the
JSON files the CLI saves (``manifold --json``, ``compare --json``, ``generate --json``).
"""

from __future__ import annotations

import datetime
import html
import importlib.metadata
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from refusal_core.errors import UserError
from refusal_core.views import figures

__all__ = ["ReportError", "Section", "environment", "render_report", "sections_from_files", "write_report"]

# The packages whose versions decide the figures; listed in every report's manifest.
PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "umap-learn", "plotly", "optuna")
# Charts download from their menu as vectors, at a size that fits a paper's full width.
CHART_CONFIG = {
    "toImageButtonOptions": {"format": "svg", "width": 1600, "height": 1000, "filename": "refusal-atlas-chart"},
    "displaylogo": False,
}


class ReportError(UserError, ValueError):
    """A saved result cannot be turned into a report section; the message names the file."""


@dataclass
class Section:
    """One part of the report: a heading, a paragraph, charts, tables (caption, rows of
    dicts) and ready HTML blocks (token-shaded replies)."""

    title: str
    text: str = ""
    charts: list = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)


def environment() -> dict:
    """Package versions and the platform, for the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def _table(caption: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else (value if isinstance(value, str) else json.dumps(value, default=str))


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#1d1d1d}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
caption{text-align:left;font-weight:bold;margin-bottom:4px}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:0.85em}
section{margin-bottom:3em}"""


def render_report(title: str, sections: Sequence[Section], manifest: dict) -> str:
    """The whole HTML document: plotly.js once, then each section, then the manifest."""
    from plotly.offline import get_plotlyjs

    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for number, section in enumerate(sections):
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for index, chart in enumerate(section.charts):
            parts.append(
                chart.to_html(
                    full_html=False, include_plotlyjs=False, div_id=f"chart-{number}-{index}", config=CHART_CONFIG
                )
            )
        parts += [_table(caption, rows) for caption, rows in section.tables]
        parts += list(section.blocks)
        parts.append("</section>")
    parts.append(
        "<section><h2>Manifest</h2><pre>"
        + html.escape(json.dumps(manifest, indent=2, default=str))
        + "</pre></section>"
    )
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: str | Path, title: str, sections: Sequence[Section], manifest: dict) -> Path:
    """Write the report to ``path`` (its folder must exist); returns the path."""
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise ReportError(f"The folder of {target} does not exist; create it or choose another --out.")
    manifest = {
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **manifest,
        "environment": environment(),
    }
    target.write_text(render_report(title, sections, manifest), encoding="utf-8")
    return target


def shift_section(result: dict) -> Section:
    """The manifold-under-intervention section from ``manifold --json`` output."""
    shift = result["shift"]
    moved, sep = shift["moved"], shift["separation"]
    charts = [figures.shift_figure(shift, result.get("prompts"))]
    if result.get("layers"):
        charts.append(figures.shift_animation(result["layers"], result.get("prompts")))
    rows = [
        {
            "": when,
            "DIM norm": sep[when]["dim_norm"],
            "probe accuracy (probe of the unmodified points)": sep[when]["probe_accuracy"],
            "probe accuracy (refitted, cross-validated)": sep[when]["cv_probe_accuracy"],
        }
        for when in ("before", "after")
    ]
    text = (
        f"{result.get('model', '')}: {result.get('intervention', '')} at layer {shift['layer']}. Mean distance moved "
        f"in the residual stream: harmful {moved['harmful_residual']:.3g}, harmless {moved['harmless_residual']:.3g}."
    )
    return Section("The manifold under the intervention", text, charts, [("Separation of harmful and harmless", rows)])


def compare_section(result: dict) -> Section:
    """The two-models section from ``compare --json`` output."""
    comparison = result.get("comparison", result)
    charts = [figures.compare_figure(comparison)]
    if comparison.get("scores"):
        charts.append(figures.scores_figure(comparison))
    return Section(
        f"{comparison['model_a']} (A) against {comparison['model_b']} (B)",
        "Cosine of the two models' DIM directions per layer, and their selection scores.",
        charts,
        [("Per layer", comparison["layers"])],
    )


def generate_section(rows: list[dict], summary: dict | None) -> Section:
    """The replies section from ``generate --json`` lines (one per reply, then a summary)."""
    traced = [row for row in rows if row.get("trace")]
    charts = [figures.trace_figure(traced, traced[0].get("trace_layer", 0))] if traced else []
    table = [
        {
            "variant": r["variant"],
            "verdict": r.get("label"),
            "instruction": r["instruction"],
            "reply": r.get("completion"),
        }
        for r in rows
    ]
    blocks = [
        f"<p><b>{html.escape(r['variant'])}</b>: {html.escape(r['instruction'])}</p>" + figures.trace_html(r["trace"])
        for r in traced
    ]
    tables = [("Replies", table)]
    if summary:
        tables.insert(
            0, ("Per column", [{"variant": name, **info} for name, info in summary.get("summary", {}).items()])
        )
    return Section("Replies", "", charts, tables, blocks)


def _read(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(
            f"Cannot read {path}: {err}. Give a JSON file written by a refusal_core command with --json."
        ) from err
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass  # several JSON lines, as generate --json prints them
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ReportError(
            f"{path} is not JSON ({err}); give the output of a refusal_core command run with --json."
        ) from err


def sections_from_files(paths: Sequence[str | Path]) -> tuple[list[Section], dict]:
    """Report sections (and manifest entries) from saved ``--json`` outputs, each file's kind
    told by its fields."""
    sections, sources = [], []
    for raw in paths:
        path = Path(raw).expanduser()
        records = _read(path)
        first = records[0] if records else {}
        if "shift" in first:
            kind, section = "manifold", shift_section(first)
        elif "comparison" in first or {"model_a", "model_b"} <= set(first):
            kind, section = "compare", compare_section(first)
        elif any("variant" in r for r in records):
            summary = next((r for r in records if "summary" in r), None)
            kind, section = "generate", generate_section([r for r in records if "variant" in r], summary)
        else:
            raise ReportError(f"{path} is not a manifold, compare or generate result; write one with --json.")
        sections.append(section)
        sources.append(
            {"file": str(path), "kind": kind, "model": next((r["model"] for r in records if r.get("model")), None)}
        )
    return sections, {"sources": sources}
