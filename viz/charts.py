"""Charts over whole runs, one trace per lane: tokens against time, speed-up over plain decoding, tokens
per model call, and the running MAT.

Each takes the lanes' step records as the decoders yield them (a mapping "ar", "tr", "pld"... -> steps;
step 0 is the prefill; running totals live on every step), so a chart can be redrawn after every step
while a run streams in. Every lane keeps its colour (`viz.style.LANE_COLORS`) across charts; plain
decoding ("ar") is the baseline the drafting lanes are drawn against. With nothing to plot a chart is
a placeholder with a note instead of raising.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Mapping

import plotly.graph_objects as go

from tr.records import Step

from .style import BASELINE, base_layout, drafting_lanes, empty_figure, lane_color, lane_name

Lanes = Mapping[str, list[Step]]
HEIGHT = 400
# Below the plot, so the title's takeaway line has the figure's full width.
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.2, x=0)


def decoding_steps(steps: list[Step]) -> list[Step]:
    """The steps after the prefill: those that stand for one decoding forward pass each."""
    return [s for s in steps if s.index > 0]


def _figure(title: str, takeaway: str) -> go.Figure:
    fig = base_layout(go.Figure(), title, HEIGHT, takeaway)
    fig.update_layout(legend=LEGEND_BELOW, margin_b=100)
    return fig


def _baseline_line(fig: go.Figure, x: list[float], y: float, text: str) -> None:
    """Plain decoding as a dashed level line: a trace, so it has its legend entry like every lane."""
    fig.add_scatter(x=[min(x), max(x)], y=[y, y], mode="lines", name=f"{lane_name(BASELINE)} ({text})",
                    line=dict(color=lane_color(BASELINE), dash="dash", width=2), hoverinfo="skip")


def _listing(values: Mapping[str, str]) -> str:
    """"Token Recycling 1.75×, prompt lookup decoding 1.10×": one phrase per lane for a takeaway."""
    return ", ".join(f"{lane_name(lane)} {value}" for lane, value in values.items())


def tokens_vs_time(lanes: Lanes) -> go.Figure:
    """Tokens written so far against each lane's own compute clock, one line per lane."""
    title = "Tokens written over compute time"
    if not any(lanes.values()):
        return empty_figure(title, "No steps yet: start a run.")
    fig = _figure(title, "Steeper is faster; each line is timed on its decoder's own clock")
    for lane, steps in lanes.items():
        fig.add_scatter(
            x=[s.elapsed_s for s in steps], y=[s.total_tokens for s in steps], mode="lines+markers",
            name=lane_name(lane), line=dict(color=lane_color(lane), width=2.5, shape="hv"), marker=dict(size=4),
            hovertemplate="%{x:.3f} s: %{y} tokens<extra>" + lane_name(lane) + "</extra>",
        )
    fig.update_xaxes(title="compute time on the decoder's own clock (s)", rangemode="tozero")
    fig.update_yaxes(title="tokens written (count)", rangemode="tozero")
    return fig


def base_time_for(base: list[Step], tokens: int) -> float:
    """Seconds the baseline took to reach `tokens`; past its last step, extrapolated at its average rate."""
    totals = [s.total_tokens for s in base]
    i = bisect.bisect_left(totals, tokens)
    if i < len(base):
        return base[i].elapsed_s
    last = base[-1]
    return tokens * last.elapsed_s / last.total_tokens


def speedups(base: list[Step], steps: list[Step]) -> tuple[list[int], list[float]]:
    """(tokens written, baseline's time to as many tokens / the lane's time) after each step with time
    spent; nothing until the lane has a decoding step (at the prefill alone both do the same work)."""
    if not base or base[-1].total_tokens == 0 or not decoding_steps(steps):
        return [], []
    pairs = [(s.total_tokens, base_time_for(base, s.total_tokens) / s.elapsed_s) for s in steps if s.elapsed_s > 0]
    return [n for n, _ in pairs], [v for _, v in pairs]


def _curves(lanes: Lanes, points: Callable[[list[Step]], tuple[list, list]]) -> dict[str, tuple[list, list]]:
    """Each drafting lane's (x, y) points, for the lanes that have any."""
    curves = {lane: points(lanes[lane]) for lane in drafting_lanes(lanes)}
    return {lane: xy for lane, xy in curves.items() if xy[0]}


def speedup_over_steps(lanes: Lanes) -> go.Figure:
    """How many times faster each drafting lane reached each of its token counts than plain decoding."""
    title = "Speed-up over plain decoding as the run goes on"
    curves = _curves(lanes, lambda steps: speedups(lanes.get(BASELINE, []), steps))
    if not curves:
        return empty_figure(title, "Needs plain decoding and a drafting decoder past the prefill: run a race.")
    last = _listing({lane: f"{ys[-1]:.2f}×" for lane, (_, ys) in curves.items()})
    fig = _figure(title, f"Above the dashed 1× line is faster; now: {last}")
    for lane, (xs, ys) in curves.items():
        fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=lane_name(lane),
                        line=dict(color=lane_color(lane), width=2.5), marker=dict(size=4),
                        hovertemplate="%{x} tokens: %{y:.2f}×<extra>" + lane_name(lane) + "</extra>")
    _baseline_line(fig, [x for xs, _ in curves.values() for x in xs], 1.0, "1×")
    fig.update_xaxes(title="tokens written so far (count)")
    fig.update_yaxes(title="speed-up (× plain decoding's tokens/s)", rangemode="tozero")
    return fig


def accepted_histogram(lanes: Lanes) -> go.Figure:
    """What share of each lane's model calls wrote 1, 2, 3... tokens (accepted drafts + the bonus token)."""
    title = "Tokens written per model call"
    counts = {lane: Counter(len(s.tokens) for s in decoding_steps(steps)) for lane, steps in lanes.items()}
    counts = {lane: c for lane, c in counts.items() if c}
    if not counts:
        return empty_figure(title, "No decoding steps yet (the prefill is not counted).")
    means = {lane: sum(n * k for n, k in c.items()) / c.total() for lane, c in counts.items() if lane != BASELINE}
    takeaway = "Plain decoding always writes 1; past 1, drafts were accepted"
    if means:
        takeaway = f"Mean = MAT: {_listing({lane: f'{m:.2f}' for lane, m in means.items()})}; plain decoding always 1"
    fig = _figure(title, takeaway)
    xs = list(range(min(min(c) for c in counts.values()), max(max(c) for c in counts.values()) + 1))
    for lane, c in counts.items():
        fig.add_bar(x=xs, y=[100 * c[x] / c.total() for x in xs], name=lane_name(lane), marker_color=lane_color(lane),
                    customdata=[c[x] for x in xs],
                    hovertemplate="%{customdata} calls (%{y:.0f}%) wrote %{x} tokens<extra>" + lane_name(lane)
                    + "</extra>")
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="tokens written by one call (accepted drafts + 1 bonus)", dtick=1)
    fig.update_yaxes(title="share of the decoder's calls (%)", rangemode="tozero")
    return fig


def cumulative_mat(steps: list[Step]) -> tuple[list[int], list[float]]:
    """(decoding step, mean tokens per decoding step so far)."""
    xs, ys, total = [], [], 0
    for n, step in enumerate(decoding_steps(steps), start=1):
        total += len(step.tokens)
        xs.append(step.index)
        ys.append(total / n)
    return xs, ys


def mat_over_steps(lanes: Lanes) -> go.Figure:
    """Each drafting lane's MAT so far (a running average of tokens per call) against plain decoding's 1."""
    title = "MAT so far: running average of tokens per model call"
    curves = _curves(lanes, cumulative_mat)
    if not curves:
        return empty_figure(title, "No decoding steps yet (the prefill is not counted).")
    final = _listing({lane: f"{ys[-1]:.2f}" for lane, (_, ys) in curves.items()})
    fig = _figure(title, f"Early calls weigh most; it ends at the run's MAT: {final}")
    for lane, (xs, ys) in curves.items():
        fig.add_scatter(x=xs, y=ys, mode="lines", name=lane_name(lane), line=dict(color=lane_color(lane), width=2.5),
                        hovertemplate="after call %{x}: %{y:.2f} tokens per call<extra>" + lane_name(lane) + "</extra>")
    _baseline_line(fig, [x for xs, _ in curves.values() for x in xs], 1.0, "MAT 1")
    fig.update_xaxes(title="model call after the prefill (count)")
    fig.update_yaxes(title="mean tokens per call so far", rangemode="tozero")
    return fig
