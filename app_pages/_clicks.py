"""What a click on a Plotly chart drawn with ``st.plotly_chart(..., on_select="rerun")`` picked."""

from __future__ import annotations


def clicked_key(event) -> object | None:
    """``customdata[0]`` of the first selected point that carries one, else None."""
    try:
        points = event.selection.points
    except AttributeError:
        return None
    for point in points:
        data = point.get("customdata")
        if data:
            return data[0]
    return None
