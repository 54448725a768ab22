"""The shared look of every figure: one template, one font, and the placeholder shown when there is
nothing to plot yet (so callers never have to special-case empty runs)."""

from __future__ import annotations

import plotly.graph_objects as go

TEMPLATE = "plotly_white"
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)
MARGIN = dict(l=60, r=20, t=60, b=50)


def base_layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    """Apply the common template, font, margins and title; returns the figure for chaining."""
    fig.update_layout(template=TEMPLATE, font=FONT, margin=MARGIN, height=height, title=dict(text=title, x=0.02))
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
