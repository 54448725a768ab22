"""Why a draft tree has the size it has: the device's verification cost against what a step's drafts
were expected to bring.

A step's tree pays off when its expected tokens (the bonus plus each node's estimated chance of
acceptance) grow faster than the cost of verifying it. For every size n the drafter weighed, the top
panel draws the cost of checking n drafts plus the root (in one-token forward passes: calibrated, then
corrected by decoding steps' own timings, which are drawn as circles) and the expected tokens of the
best n drafts; the bottom panel their ratio, the expected speed-up over plain decoding before
overheads. Every line spans the same sizes. The `auto` tree stops at the ratio's peak.
"""

from __future__ import annotations

from itertools import accumulate

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tr.costs import CostCurve
from tr.records import Draft, Step

from .style import Meaning, base_layout, empty_figure

# Cost is neutral (black); what Token Recycling expects to gain is in its lane colour.
COST_COLOR, EXPECTED_COLOR, RATIO_COLOR = "#111827", Meaning.TR.strong, Meaning.TR.strong
MIN_SIZES = 16  # drafts shown without weighed drafts to show, so the curve's shape is seen


def weighed_scores(draft: Draft) -> list[float]:
    """Chances of the drafts the drafter weighed, best first: what it considered (a dynamic tree), else
    the draft's own nodes (a fixed template or a lookup chain)."""
    return draft.considered or sorted(draft.scores[1:], reverse=True)


def takeaway(chosen: int, ratio: list[float]) -> str:
    """One line: the step's size against the peak of the expected speed-up."""
    peak = max(range(len(ratio)), key=ratio.__getitem__)
    if chosen == peak:
        return f"This step drafted {chosen}, where the expected speed-up peaks at {ratio[peak]:.2f}×"
    return (f"This step drafted {chosen} (expected speed-up {ratio[chosen]:.2f}×); "
            f"the peak is at {peak} draft{'' if peak == 1 else 's'} ({ratio[peak]:.2f}×)")


def tree_size_figure(curve: CostCurve | None, step: Step | None = None) -> go.Figure:
    """Measured cost and expected tokens by tree size (top), their ratio (bottom), the step's size marked."""
    title = "Why this tree size"
    if curve is None:
        return empty_figure(title, "The device has not been calibrated yet.")
    draft = step.draft if step is not None else None
    chosen = draft.size - 1 if draft is not None else None
    weighed = weighed_scores(draft) if draft is not None else []
    # Every line over the same sizes: those weighed, else enough to show the curve's shape.
    sizes = list(range((len(weighed) if weighed else max(chosen or 0, MIN_SIZES)) + 1))
    cost = [curve.relative(n + 1) for n in sizes]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.58, 0.42])
    fig.add_scatter(x=sizes, y=cost, mode="lines", name="measured cost (one-token passes)", row=1, col=1,
                    line=dict(color=COST_COLOR, width=2),
                    hovertemplate="%{x} drafts: checking costs %{y:.2f}× a one-token pass<extra></extra>")
    if curve.measured:  # the timings the curve is fitted to (it may not fall with size: see tr.costs)
        shown = [(n - 1, t / curve.seconds[0]) for n, t in zip(curve.sizes, curve.measured) if n - 1 <= sizes[-1]]
        fig.add_scatter(x=[n for n, _ in shown], y=[t for _, t in shown], mode="markers", row=1, col=1,
                        name="timings the cost is fitted to",
                        marker=dict(color=COST_COLOR, size=6, symbol="circle-open"),
                        hovertemplate="%{x} drafts: timed at %{y:.2f}× a one-token pass<extra></extra>")
    line = ""
    if weighed:
        expected = [1.0, *(1.0 + s for s in accumulate(weighed))]
        ratio = [e / c for e, c in zip(expected, cost)]
        fig.add_scatter(x=sizes, y=expected, mode="lines", name="expected tokens per call", row=1, col=1,
                        line=dict(color=EXPECTED_COLOR, width=2, dash="dash"),
                        hovertemplate="best %{x} drafts: %{y:.2f} tokens expected<extra></extra>")
        fig.add_scatter(x=sizes, y=ratio, mode="lines", name="expected speed-up = tokens ÷ cost", row=2, col=1,
                        line=dict(color=RATIO_COLOR, width=3),
                        hovertemplate="%{x} drafts: %{y:.2f}× plain decoding (before overheads)<extra></extra>")
        line = takeaway(chosen, ratio)
    if chosen is not None:
        fig.add_vline(x=chosen, line=dict(color="#111827", dash="dot"), row="all", col=1)
    base_layout(fig, title, height=420, takeaway=line or "What checking more drafts in one call costs on this device")
    fig.update_xaxes(title="drafts in the tree (the root not counted)", row=2, col=1)
    fig.update_yaxes(title="passes / tokens", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="speed-up (×)", rangemode="tozero", row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, x=0), margin=dict(b=100))
    return fig
