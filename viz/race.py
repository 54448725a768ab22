"""The race as HTML: the verdict, the per-lane table, a plain account of the speed-up, and the history.

Everything takes the lanes' step lists as they stand (mid-run or finished), keyed "ar" (plain
decoding, the baseline), "tr", "pld"..., and returns values or HTML; the app only places the result.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tr.records import Stats, Step, difference, summarize, token_ids

from .explain import run_summary
from .style import BASELINE, drafting_lanes, lane_name

MAT_TIP = "mean accepted tokens: tokens written per model call after the prefill, bonus token included"
# A speed-up over fewer decoding calls than this is mostly the prefill and timing noise: the page says
# "too early to tell" instead of a figure (step mode shows the first steps one by one).
MIN_STEPS = 8
PROMPT_CHARS = 300  # a history row shows this much of its prompt
# The characters that give text a meaning in Markdown mid-line (CommonMark, GitHub's tables and strikes,
# Gradio's $ for formulas); "." or "-" only mean something at the start of a line, which escaped text never
# has here, and escaping them would garble numbers for whoever reads the text raw (an API client).
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~#<>$])")


@dataclass(frozen=True)
class Comparison:
    """One drafting lane against plain decoding, each on its own compute clock. A model call is one
    forward pass; the prefill over the prompt counts as one, so the numbers multiply exactly to the
    speed-up `tr.records.speedup` reports."""

    tokens: int
    calls: int
    seconds: float
    base_tokens: int
    base_calls: int
    base_seconds: float
    mean_drafts: float  # drafted tokens a decoding call verified, on average

    @property
    def tokens_per_call(self) -> float:
        return self.tokens / self.calls

    @property
    def base_tokens_per_call(self) -> float:
        return self.base_tokens / self.base_calls

    @property
    def cost_ratio(self) -> float:
        """Seconds per call of this lane over plain decoding's: what one call over drafts costs."""
        return (self.seconds / self.calls) / (self.base_seconds / self.base_calls)

    @property
    def speedup(self) -> float:
        """Tokens per call gained, divided by what each call cost more: tokens/s over plain decoding's."""
        return self.tokens_per_call / self.base_tokens_per_call / self.cost_ratio


def compare(base: list[Step], lane: list[Step]) -> Comparison | None:
    """The lane against the baseline; None until both have spent time and written a token."""
    if not base or not lane:
        return None
    a, b = summarize(base), summarize(lane)
    if not (a.seconds and b.seconds and a.tokens and b.tokens):
        return None
    decoding = lane[1:]
    drafts = sum(s.drafted for s in decoding) / len(decoding) if decoding else 0.0
    return Comparison(b.tokens, len(lane), b.seconds, a.tokens, len(base), a.seconds, drafts)


def too_early(steps: list[Step]) -> bool:
    """Whether a lane has made fewer than `MIN_STEPS` calls after the prefill: no speed-up worth reading yet."""
    return len(steps) - 1 < MIN_STEPS


def mat_text(steps: list[Step]) -> str:
    """MAT to two places, or "–" before any call after the prefill (plain decoding's is 1 by definition)."""
    return f"{summarize(steps).mat:.2f}" if len(steps) > 1 else "–"


def speedup_text(c: Comparison | None, steps: list[Step]) -> str:
    if c is None:
        return "–"
    if too_early(steps):
        return f"too early to tell ({len(steps) - 1} of {MIN_STEPS} calls)"
    return f"{c.speedup:.2f}×"


def heading(lane: str, titles: Mapping[str, str]) -> str:
    """The lane's column and sentence heading: the caller's title, else its usual name."""
    return titles.get(lane) or lane_name(lane)


def verdict_html(lanes: Mapping[str, list[Step]], titles: Mapping[str, str], finished: bool, sampling: bool) -> str:
    """"identical" only when every lane's output equals plain decoding's (mid-run: as far as both got);
    otherwise each differing lane and its first differing token."""
    base = lanes.get(BASELINE)
    others = drafting_lanes(lanes)
    if base is None or not others:
        return "–"
    diffs = {lane: difference(base, lanes[lane], finished) for lane in others}
    wrong = {lane: at for lane, at in diffs.items() if at is not None}
    if not wrong:
        n = min(len(token_ids(steps)) for steps in lanes.values())
        return (f'<span class="ok">identical</span> ({n} tokens)' if finished else
                f'<span class="ok">identical so far</span> (first {n} token{"" if n == 1 else "s"})')
    # Lossless sampling means the same distribution, not the same draws.
    note = " (fine when sampling: every output is a draw from the model's own distribution)" if sampling else ""
    named = "; ".join(f"{html.escape(heading(lane, titles))} first differs at token #{at}"
                      for lane, at in wrong.items())
    return f'<span class="bad">not identical</span>: {named}{note}'


def _table(lanes: Mapping[str, list[Step]], titles: Mapping[str, str],
           comparisons: Mapping[str, Comparison | None]) -> str:
    order = [BASELINE, *drafting_lanes(lanes)] if BASELINE in lanes else list(lanes)
    stats: dict[str, Stats | None] = {lane: summarize(lanes[lane]) if lanes[lane] else None for lane in order}

    def row(label: str, value: Any) -> str:
        cells = "".join(f"<td>{value(lane, s) if s else '–'}</td>" for lane, s in stats.items())
        return f"<tr><td>{label}</td>{cells}</tr>"

    def speed(lane: str, s: Stats) -> str:
        return "1.00× (baseline)" if lane == BASELINE else speedup_text(comparisons.get(lane), lanes[lane])

    body = "".join((
        row("tokens written", lambda lane, s: f"{s.tokens:,}"),
        row("model calls (1 prefill + the rest)", lambda lane, s: f"{s.steps + 1:,}"),
        row("MAT: tokens after the prefill ÷ calls after it", lambda lane, s: mat_text(lanes[lane])),
        row("compute time (its own clock)", lambda lane, s: f"{s.seconds:.2f} s"),
        row("time per model call", lambda lane, s: f"{1000 * s.seconds / (s.steps + 1):.1f} ms"),
        row("tokens / s", lambda lane, s: f"{s.tokens_per_s:.1f}"),
        row("speed-up over plain decoding", speed),
    ))
    heads = "".join(f"<th>{html.escape(heading(lane, titles))}</th>" for lane in order)
    per_call = {lane: s.seconds / (s.steps + 1) for lane, s in stats.items() if s}
    # A pass over drafts does more work than a one-token pass: timed cheaper, it caught the machine's noise.
    cheaper = BASELINE in per_call and any(t < per_call[BASELINE] for lane, t in per_call.items() if lane != BASELINE)
    note = ('<p class="note noise">A call over drafts timed cheaper than a plain call: only timing noise on a shared '
            "machine can do that, so read its speed-up as rough.</p>" if cheaper else "")
    return (f'<div class="wide"><table><thead><tr><th></th>{heads}</tr></thead><tbody>{body}</tbody>'
            f"</table></div>{note}")


def stats_html(lanes: Mapping[str, list[Step]], titles: Mapping[str, str], finished: bool, stopped: bool,
               sampling: bool) -> str:
    """Headline (speed-up and MAT per drafting lane, identical?), one sentence per drafting lane saying
    where its speed-up came from (once it means something: `MIN_STEPS`), and the table with one column
    per lane ("ar" first), folded."""
    base = lanes.get(BASELINE, [])
    comparisons = {lane: compare(base, lanes[lane]) for lane in drafting_lanes(lanes)}
    state = "" if finished else (" (stopped)" if stopped else " so far")
    metrics = []
    for lane, c in comparisons.items():
        metrics.append(f'<span class="metric lane-{lane}">{html.escape(heading(lane, titles))}: '
                       f"speed-up{state} <b>{speedup_text(c, lanes[lane])}</b> · "
                       f'<abbr title="{MAT_TIP}">MAT</abbr> <b>{mat_text(lanes[lane])}</b></span>')
    metrics.append(f'<span class="metric">Outputs: {verdict_html(lanes, titles, finished, sampling)}</span>')
    sentences = "".join(f'<p class="note">{run_summary(heading(lane, titles), c, finished)}</p>'
                        for lane, c in comparisons.items() if c and not too_early(lanes[lane]))
    return (f'<div class="stats"><p class="headline">{"".join(metrics)}</p>{sentences}'
            f"<details><summary>Every number</summary>{_table(lanes, titles, comparisons)}</details></div>")


def prompt_cell(prompt: str, limit: int = PROMPT_CHARS) -> str:
    """A prompt as one Markdown table cell: whitespace collapsed (a newline would end the row), HTML
    and Markdown escaped (prompts come from strangers), cut at `limit` characters with an ellipsis."""
    text = " ".join(prompt.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return markdown_text(text)


def markdown_text(text: str) -> str:
    """`text` for a Markdown view, shown as it is (it may come from a stranger): no markup, link, formula or
    HTML element."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def history_markdown(history: list[dict[str, Any]]) -> str:
    """A session's runs, newest first, as a Markdown table."""
    if not history:
        return "*No runs yet in this session.*"
    lines = ["| run | prompt | tree | k | start | tokens | TR MAT | speed-up | identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in reversed(history):
        lines.append(f"| {h['run']} | {prompt_cell(h['prompt'])} | {h['template']} | {h['k']} | {h['start']} | "
                     f"{h['tokens']} | {h['mat']:.2f} | {h['speedup']} | {h['identical']} |")
    return "\n".join(lines)
