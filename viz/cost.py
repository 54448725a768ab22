"""Why a draft tree has the size it has: the device's verification cost curve against what a step's
drafts were expected to bring.

A step's tree pays off when its expected tokens (the bonus plus each node's estimated chance of
acceptance) grow faster than the cost of verifying it. The figure draws, for every size n the drafter
weighed: the cost of verifying n drafts plus the root (in one-token forward passes; calibrated, then
corrected by decoding steps' own timings, drawn as circles), the expected tokens of the best n nodes,
and their ratio, the expected speed-up over plain decoding before overheads. The `auto` tree stops at
the ratio's peak.
"""

from __future__ import annotations

from itertools import accumulate

import plotly.graph_objects as go

from tr.costs import CostCurve
from tr.records import Step

from .style import base_layout, empty_figure

COST_COLOR, EXPECTED_COLOR, RATIO_COLOR = "#dc2626", "#2563eb", "#16a34a"


def tree_size_figure(curve: CostCurve | None, step: Step | None = None) -> go.Figure:
    """Cost, expected tokens and their ratio by tree size, with the step's chosen size marked."""
    title = "Why this tree size"
    if curve is None:
        return empty_figure(title, "The device has not been calibrated yet.")
    draft = step.draft if step is not None else None
    chosen = draft.size - 1 if draft is not None else None
    weighed = draft.considered if draft is not None else []
    largest = max(len(weighed), chosen or 0, 16)
    sizes = list(range(largest + 1))
    cost = [curve.relative(n + 1) for n in sizes]
    fig = base_layout(go.Figure(), title, height=320)
    fig.add_scatter(x=sizes, y=cost, mode="lines", name="verification cost (× one-token pass)",
                    line=dict(color=COST_COLOR, width=2),
                    hovertemplate="%{x} drafts: verifying costs %{y:.2f}× a one-token pass<extra></extra>")
    if curve.measured:  # the timings the curve is fitted to (it may not fall with size: see tr.costs)
        shown = [(n - 1, t / curve.seconds[0]) for n, t in zip(curve.sizes, curve.measured) if n - 1 <= largest]
        timed = f"timed, corrected by ~{curve.steps:.0f} decoding steps" if curve.steps else "timed"
        fig.add_scatter(x=[n for n, _ in shown], y=[t for _, t in shown], mode="markers", name=timed,
                        marker=dict(color=COST_COLOR, size=6, symbol="circle-open"),
                        hovertemplate="%{x} drafts: timed at %{y:.2f}× the fitted one-token pass<extra></extra>")
    if weighed:
        expected = [1.0, *(1.0 + s for s in accumulate(weighed))]
        fig.add_scatter(x=sizes[: len(expected)], y=expected, mode="lines", name="expected tokens per step",
                        line=dict(color=EXPECTED_COLOR, width=2),
                        hovertemplate="best %{x} drafts: %{y:.2f} tokens expected<extra></extra>")
        ratio = [e / c for e, c in zip(expected, cost)]
        fig.add_scatter(x=sizes[: len(ratio)], y=ratio, mode="lines", name="expected tokens per unit of cost",
                        line=dict(color=RATIO_COLOR, width=3),
                        hovertemplate="%{x} drafts: %{y:.2f}× plain decoding (before overheads)<extra></extra>")
    if chosen is not None:
        fig.add_vline(x=chosen, line=dict(color="#111827", dash="dot"),
                      annotation_text=f"this step: {chosen} drafts", annotation_position="top right")
    fig.update_xaxes(title="draft nodes in the tree")
    fig.update_yaxes(title="tokens, or one-token passes", rangemode="tozero")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.25, x=0), margin=dict(b=90))
    return fig
