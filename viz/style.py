"""The shared look of every figure and of the page: one template, one font, the page's palette (one colour,
one meaning, defined here once and listed in the page's legend and the README), one name per lane
(decoder), and the placeholder shown when there is nothing to plot yet (so callers never special-case
empty runs).

A lane is a decoder in the race, keyed as the app keys it: "ar" (plain decoding, the baseline every
other lane is measured against), "tr" (Token Recycling), "pld" (prompt lookup decoding).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import plotly.graph_objects as go

TEMPLATE = "plotly_white"
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)
MARGIN = dict(l=60, r=20, t=60, b=50)
SUBTITLE_TOP = 84  # top margin with a subtitle line under the title



@dataclass(frozen=True)
class Colour:
    """One meaning on the page: a strong colour (lines, markers, text) and a light tint (backgrounds)."""

    strong: str
    tint: str
    label: str  # legend words


class Meaning(Enum):
    """Every meaning a colour carries anywhere on the page; nothing else is coloured (neutral greys and
    black are layout, not meaning)."""

    ACCEPTED = Colour("#16a34a", "#bbf7d0", "accepted draft")
    BONUS = Colour("#d97706", "#fde68a", "bonus token (the model's own)")
    REJECTED = Colour("#dc2626", "#fecaca", "rejected or cut draft")
    NEW = Colour("#2563eb", "#bfdbfe", "new candidate in a matrix row")
    PLAIN = Colour("#6b7280", "#e5e7eb", "plain decoding")
    TR = Colour("#7c3aed", "#ede9fe", "Token Recycling")
    PLD = Colour("#db2777", "#fce7f3", "prompt lookup decoding")

    @property
    def strong(self) -> str:
        return self.value.strong

    @property
    def tint(self) -> str:
        return self.value.tint


def palette_css() -> str:
    """The palette as CSS variables (`--tr-accepted`, `--tr-accepted-tint`, ...), so the page's stylesheet
    names meanings, never colours."""
    lines = [f"--tr-{m.name.lower()}: {m.strong}; --tr-{m.name.lower()}-tint: {m.tint};" for m in Meaning]
    return ":root { " + " ".join(lines) + " }"


def legend_html() -> str:
    """The palette as one line of swatches, for the page."""
    items = "".join(f'<span class="item"><span class="swatch" style="background:{m.tint};border-color:{m.strong}">'
                    f"</span>{html.escape(m.value.label)}</span>" for m in Meaning)
    return f'<p class="legend">{items}</p>'


def legend_markdown() -> str:
    """The palette as a Markdown table, for the README."""
    rows = "\n".join(f"| `{m.strong}` | `{m.tint}` | {m.value.label} |" for m in Meaning)
    return "| colour | tint | meaning |\n|---|---|---|\n" + rows


BASELINE = "ar"
LANE_COLORS = {"ar": Meaning.PLAIN.strong, "tr": Meaning.TR.strong, "pld": Meaning.PLD.strong}
LANE_NAMES = {"ar": "plain decoding", "tr": "Token Recycling", "pld": "prompt lookup decoding"}
FALLBACK_COLORS = ("#0891b2", "#ea580c", "#4d7c0f", "#1e3a8a")  # outside the palette's hues


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
