"""Charts over whole runs: tokens against time, speed-up against the baseline, tokens per step.

Each takes step records as the decoders yield them (step 0 is the prefill; running totals live on
every step), so a chart can be redrawn after every step while a run streams in. With nothing to plot
they return a placeholder figure with a note instead of raising.
"""

from __future__ import annotations

import bisect
from collections import Counter

import plotly.graph_objects as go

from tr.records import Step

from .style import base_layout, empty_figure

COLORS = {"ar": "#6b7280", "tr": "#16a34a"}
FALLBACK_COLORS = ("#2563eb", "#db2777", "#ea580c", "#7c3aed")
NAMES = {"ar": "autoregressive", "tr": "Token Recycling"}
TR_COLOR = COLORS["tr"]


def decoding_steps(steps: list[Step]) -> list[Step]:
    """The steps after the prefill: those that stand for one decoding forward pass each."""
    return [s for s in steps if s.index > 0]


def tokens_vs_time(runs: dict[str, list[Step]]) -> go.Figure:
    """Tokens generated so far against compute time, one line per method."""
    title = "Tokens generated over time"
    if not any(runs.values()):
        return empty_figure(title, "No steps yet: start a run.")
    fig = base_layout(go.Figure(), title)
    for i, (name, steps) in enumerate(runs.items()):
        color = COLORS.get(name, FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
        fig.add_scatter(
            x=[s.elapsed_s for s in steps], y=[s.total_tokens for s in steps], mode="lines+markers",
            name=NAMES.get(name, name), line=dict(color=color, width=2.5, shape="hv"), marker=dict(size=4),
            hovertemplate="%{x:.3f} s: %{y} tokens<extra>" + NAMES.get(name, name) + "</extra>",
        )
    fig.update_xaxes(title="elapsed compute time (s)", rangemode="tozero")
    fig.update_yaxes(title="tokens generated", rangemode="tozero")
    return fig


def ar_time_for(ar_steps: list[Step], tokens: int) -> float:
    """Seconds the baseline took to reach `tokens`; past its last step, extrapolated at its average rate."""
    totals = [s.total_tokens for s in ar_steps]
    i = bisect.bisect_left(totals, tokens)
    if i < len(ar_steps):
        return ar_steps[i].elapsed_s
    last = ar_steps[-1]
    return tokens * last.elapsed_s / last.total_tokens


def speedups(ar_steps: list[Step], tr_steps: list[Step]) -> tuple[list[int], list[float]]:
    """(TR step index, AR time to the same token count / TR time) for each TR step with time spent;
    nothing until TR has a decoding step (at the prefill alone both methods do the same work)."""
    if not ar_steps or ar_steps[-1].total_tokens == 0 or not decoding_steps(tr_steps):
        return [], []
    pairs = [(s.index, ar_time_for(ar_steps, s.total_tokens) / s.elapsed_s) for s in tr_steps if s.elapsed_s > 0]
    return [i for i, _ in pairs], [v for _, v in pairs]


def speedup_over_steps(ar_steps: list[Step], tr_steps: list[Step]) -> go.Figure:
    """How many times faster Token Recycling reached each of its token counts than the baseline."""
    title = "Speed-up over autoregressive decoding"
    xs, ys = speedups(ar_steps, tr_steps)
    if not xs:
        return empty_figure(title, "Needs both methods, and a decoding step past the prefill: run a race.")
    fig = base_layout(go.Figure(), title)
    fig.add_scatter(x=xs, y=ys, mode="lines+markers", name="speed-up", line=dict(color=TR_COLOR, width=2.5),
                    marker=dict(size=4), hovertemplate="step %{x}: %{y:.2f}×<extra></extra>")
    fig.add_hline(y=1, line=dict(color="#6b7280", dash="dash"), annotation_text="as fast as autoregressive",
                  annotation_position="bottom right")
    fig.update_xaxes(title="Token Recycling step")
    fig.update_yaxes(title="speed-up (×)", rangemode="tozero")
    return fig


def accepted_histogram(tr_steps: list[Step]) -> go.Figure:
    """How many tokens each decoding step emitted (accepted drafts + the bonus token)."""
    title = "Tokens per decoding step"
    counts = Counter(len(s.tokens) for s in decoding_steps(tr_steps))
    if not counts:
        return empty_figure(title, "No decoding steps yet (the prefill is not counted).")
    xs = list(range(min(counts), max(counts) + 1))
    fig = base_layout(go.Figure(), title)
    fig.add_bar(x=xs, y=[counts[x] for x in xs], marker_color=TR_COLOR, name="steps",
                hovertemplate="%{y} steps emitted %{x} tokens<extra></extra>")
    mean = sum(x * n for x, n in counts.items()) / sum(counts.values())
    fig.add_vline(x=mean, line=dict(color="#111827", dash="dash"), annotation_text=f"mean {mean:.2f}",
                  annotation_position="top right")
    fig.update_xaxes(title="tokens per step", dtick=1)
    fig.update_yaxes(title="decoding steps")
    return fig


def cumulative_mat(tr_steps: list[Step]) -> tuple[list[int], list[float]]:
    """(decoding step, mean tokens per decoding step so far)."""
    xs, ys, total = [], [], 0
    for n, step in enumerate(decoding_steps(tr_steps), start=1):
        total += len(step.tokens)
        xs.append(step.index)
        ys.append(total / n)
    return xs, ys


def mat_over_steps(tr_steps: list[Step]) -> go.Figure:
    """Mean accepted tokens per step (MAT) as the run goes on: the matrix warming up shows as a rise."""
    title = "Mean tokens per step (MAT), cumulative"
    xs, ys = cumulative_mat(tr_steps)
    if not xs:
        return empty_figure(title, "No decoding steps yet (the prefill is not counted).")
    fig = base_layout(go.Figure(), title)
    fig.add_scatter(x=xs, y=ys, mode="lines", name="MAT", line=dict(color=TR_COLOR, width=2.5),
                    hovertemplate="after step %{x}: %{y:.2f} tokens/step<extra></extra>")
    fig.add_hline(y=1, line=dict(color="#6b7280", dash="dash"), annotation_text="autoregressive: 1",
                  annotation_position="bottom right")
    fig.update_xaxes(title="decoding step")
    fig.update_yaxes(title="mean tokens per step", rangemode="tozero")
    return fig
