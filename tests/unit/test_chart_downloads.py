"""Every chart of the dashboard is drawn through ``app_pages._charts.chart``, so its menu
downloads it in the session's format (SVG or PNG) at publication size."""

from __future__ import annotations

import ast
from pathlib import Path

from app_pages import _charts

PAGES = Path(__file__).resolve().parents[2] / "app_pages"


def test_no_page_draws_a_chart_without_the_download_config():
    direct = []
    for path in sorted(PAGES.glob("*.py")):
        if path.name == "_charts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "plotly_chart":
                direct.append(f"{path.name}:{node.lineno}")
    assert direct == [], f"draw these with _charts.chart(...): {direct}"


def test_the_download_config_follows_the_chosen_format(monkeypatch):
    import streamlit as st

    monkeypatch.setattr(st, "session_state", {_charts.FORMAT: "png"})
    png = _charts.config()["toImageButtonOptions"]
    monkeypatch.setattr(st, "session_state", {_charts.FORMAT: "svg"})
    svg = _charts.config()["toImageButtonOptions"]
    assert (png["format"], png["width"], png["height"], png["scale"]) == ("png", 1600, 1000, 2)
    assert (svg["format"], svg["scale"]) == ("svg", 1)
