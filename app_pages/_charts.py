"""Every chart drawn with one config: its menu's camera button downloads it at publication size
in the format chosen in the sidebar (SVG or PNG), offline (plotly.js renders the file itself)."""

from __future__ import annotations

import streamlit as st

FORMAT = "atlas_chart_format"
FORMATS = ("svg", "png")
# A full-width figure in a paper at 300 dpi: 1600 x 1000 pixels, doubled for PNG.
SIZE = {"width": 1600, "height": 1000}


def config() -> dict:
    """The Plotly config of every chart of this session."""
    fmt = st.session_state.get(FORMAT, FORMATS[0])
    return {
        "toImageButtonOptions": {
            "format": fmt,
            **SIZE,
            "scale": 2 if fmt == "png" else 1,
            "filename": "refusal-atlas-chart",
        },
        "displaylogo": False,
    }


def chart(figure, container=None, **kwargs):
    """``st.plotly_chart`` (or ``container.plotly_chart``) with this session's download config."""
    return (container or st).plotly_chart(figure, config=config(), **kwargs)


def format_sidebar() -> None:
    st.selectbox(
        "Chart downloads",
        FORMATS,
        key=FORMAT,
        format_func=lambda f: f"{f.upper()} at 1600x1000",
        help="What each chart's camera button (top right of the chart) downloads: SVG (vector) or PNG (2x).",
    )
