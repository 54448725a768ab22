"""The race as HTML: the verdict, the per-side table and the history, from both decoders' step records.

Everything takes the two step lists as they stand (mid-run or finished) and returns values or HTML;
the app only places the result.
"""

from __future__ import annotations

import html
from typing import Any

from tr.records import Step
from tr.records import summarize
from tr.records import difference, speedup, token_ids


def verdict_html(ar: list[Step], tr: list[Step], finished: bool, sampling: bool) -> str:
    """Whether the two outputs are identical (or, mid-run, identical so far)."""
    diff, n = difference(ar, tr, finished), len(token_ids(tr))
    if diff is None:
        return (f'<span class="ok">identical</span> ({n} tokens)' if finished else
                f'<span class="ok">identical so far</span> (first {min(n, len(token_ids(ar)))} tokens)')
    # Lossless sampling means the same distribution, not the same draws.
    note = " (fine when sampling: both are draws from the model's own distribution)" if sampling else ""
    return f'<span class="bad">not identical</span>: first difference at token #{diff}{note}'


def stats_html(ar: list[Step], tr: list[Step], finished: bool, stopped: bool, sampling: bool) -> str:
    """Headline (speed-up, MAT, identical?), then tokens, passes, MAT, time and tokens/s per side."""
    stats = [summarize(steps) if steps else None for steps in (ar, tr)]

    def cells(fmt: str, attr: str) -> str:
        return "".join(f"<td>{fmt.format(getattr(s, attr)) if s else '–'}</td>" for s in stats)

    rows = [
        ("tokens", cells("{:,}", "tokens")),
        ("forward passes after the prefill", cells("{:,}", "steps")),
        ("MAT: tokens per pass", cells("{:.2f}", "mat")),
        ("compute time (own clock)", cells("{:.2f} s", "seconds")),
        ("tokens / s", cells("{:.1f}", "tokens_per_s")),
    ]
    body = "".join(f"<tr><td>{label}</td>{values}</tr>" for label, values in rows)
    ratio, tr_stats = speedup(ar, tr), stats[1]
    state = "" if finished else (" (stopped)" if stopped else " so far")
    headline = (
        f'<span class="metric">Speed-up{state} <b>{f"{ratio:.2f}×" if ratio else "–"}</b></span>'
        f'<span class="metric">MAT <b>{f"{tr_stats.mat:.2f}" if tr_stats else "–"}</b></span>'
        f'<span class="metric">Outputs: {verdict_html(ar, tr, finished, sampling)}</span>'
    )
    note = ""
    if finished and ratio and tr_stats and ratio < tr_stats.mat:
        # The question every visitor asks: why is the speed-up smaller than MAT (or even below 1)?
        note = ('<p class="note">Speed-up is below MAT because one pass over the draft tree costs more than a '
                "one-token pass here: see <i>Why this tree size</i> and <i>The whole run</i> below.</p>")
    return (f'<div class="stats"><p class="headline">{headline}</p><table><thead><tr><th></th>'
            f"<th>autoregressive</th><th>Token Recycling</th></tr></thead><tbody>{body}</tbody></table>{note}</div>")


def history_markdown(history: list[dict[str, Any]]) -> str:
    """A session's runs, newest first, as a Markdown table."""
    if not history:
        return "*No runs yet in this session.*"
    lines = ["| run | prompt | tree | k | start | tokens | TR MAT | speed-up | identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in reversed(history):
        prompt = html.escape(h["prompt"][:48].replace("|", "/").replace("\n", " "))
        lines.append(f"| {h['run']} | {prompt} | {h['template']} | {h['k']} | {h['start']} | {h['tokens']} | "
                     f"{h['mat']:.2f} | {h['speedup']} | {h['identical']} |")
    return "\n".join(lines)
