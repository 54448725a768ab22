"""The shared look of every figure: one template, one font, one colour and one name per lane (decoder),
and the placeholder shown when there is nothing to plot yet (so callers never special-case empty runs).

A lane is a decoder in the race, keyed as the app keys it: "ar" (plain decoding, the baseline every
other lane is measured against), "tr" (Token Recycling), "pld" (prompt lookup decoding).
"""

from __future__ import annotations

from collections.abc import Iterable

import plotly.graph_objects as go

TEMPLATE = "plotly_white"
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)
MARGIN = dict(l=60, r=20, t=60, b=50)
SUBTITLE_TOP = 84  # top margin with a subtitle line under the title

BASELINE = "ar"
LANE_COLORS = {"ar": "#6b7280", "tr": "#16a34a", "pld": "#7c3aed"}
LANE_NAMES = {"ar": "plain decoding", "tr": "Token Recycling", "pld": "prompt lookup decoding"}
FALLBACK_COLORS = ("#2563eb", "#db2777", "#ea580c", "#0891b2")


def lane_color(lane: str) -> str:
    """The lane's colour in every chart; an unknown lane gets a stable colour of its own."""
    return LANE_COLORS.get(lane) or FALLBACK_COLORS[sum(map(ord, lane)) % len(FALLBACK_COLORS)]


def lane_name(lane: str) -> str:
    return LANE_NAMES.get(lane, lane)


def drafting_lanes(lanes: Iterable[str]) -> list[str]:
    """Every lane but the baseline, in the given order: the ones that guess tokens ahead."""
    return [lane for lane in lanes if lane != BASELINE]


def base_layout(fig: go.Figure, title: str, height: int = 360, takeaway: str = "") -> go.Figure:
    """Apply the common template, font, margins and title, with the chart's one-line takeaway as a
    subtitle; returns the figure for chaining."""
    heading = dict(text=title, x=0.02)
    margin = MARGIN
    if takeaway:
        heading["subtitle"] = dict(text=takeaway, font=dict(size=12, color="#4b5563"))
        margin = dict(MARGIN, t=SUBTITLE_TOP)
    fig.update_layout(template=TEMPLATE, font=FONT, margin=margin, height=height, title=heading)
    return fig


def empty_figure(title: str, note: str, height: int = 240) -> go.Figure:
    """A figure with no data and a centred note explaining why (e.g. "no decoding steps yet")."""
    fig = base_layout(go.Figure(), title, height)
    fig.add_annotation(text=note, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def note_of(fig: go.Figure) -> str | None:
    """The placeholder note of a figure from `empty_figure`, or None for a figure with data."""
    if fig.data or not fig.layout.annotations:
        return None
    return fig.layout.annotations[0].text
