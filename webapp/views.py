"""What the page shows, as dicts keyed by view name: the panes, the numbers, one step's tree and rows,
the charts. Built from a session's records with `viz`; the layout maps each name to its widget.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

import viz
from viz import takeaways
from tr.device.model import LoadedModel
from tr.records import token_ids

from .session import NAMES, Run, Session
from .settings import Lookup

NO_MATRIX = "Adjacency matrix: not created yet (it is made on this session's first run)."
NO_RUN = "No run yet: press Run race or Next step."  # plain: shown as Markdown and as escaped HTML


def stats_html(run: Run) -> str:
    """The per-lane numbers table, with the verdict (identical or the first difference)."""
    return viz.stats_html(run.steps, NAMES, run.finished, run.stopped, run.settings.sampled)


def pane_views(lm: LoadedModel, run: Run) -> dict[str, Any]:
    """One text pane per lane; the third lane's pane shows only when the run has that lane."""
    panes = {f"{lane}_pane": viz.pane_html(NAMES[lane], steps, lm.decode, banded=lane != "ar", selectable=lane == "tr")
             for lane, steps in run.steps.items()}
    return panes | {"pld_pane": gr.update(value=panes.get("pld_pane"), visible="pld" in run.steps)}


def matrix_info(session: Session) -> str:
    matrix = session.matrix
    if matrix is None:
        return NO_MATRIX
    return f"Adjacency matrix (k={matrix.k}): " + viz.matrix_summary(matrix.rows_filled, matrix.vocab_size,
                                                                      matrix.nbytes)


def lookup_html(lm: LoadedModel, session: Session, query: Lookup) -> str:
    """A token's current row, from this session's matrix only."""
    row_of = session.matrix.row if session.matrix is not None else lambda token: None
    return viz.token_lookup_html(query, lm.encode_text, row_of, lm.token_text)


def step_views(lm: LoadedModel, session: Session, index: Any) -> dict[str, Any]:
    """Tree figure, tree-size figure and rows table of TR step `index` of the session's latest run."""
    steps = session.run.steps["tr"] if session.run else []
    if not steps:
        note = "No Token Recycling steps yet: start a run."
        return {"tree": viz.empty_figure("Draft tree", note), "rows": f'<p class="howto">{note}</p>'}
    step = steps[min(max(int(index or 0), 0), len(steps) - 1)]
    sampled = session.run.settings.sampled
    return {
        "tree": viz.tree_figure(step, lm.token_text),
        "caption": viz.caption_html(step, lm.token_text, sampled),
        "why": viz.tree_size_figure((step.draft and step.draft.curve) or session.run.curve, step),
        "rows": viz.rows_table_html(step, lm.token_text),
        "verify": viz.verification_html(step, lm.token_text, sampled),
        "mask": viz.attention_mask_figure(step, lm.token_text),
    }


def run_takeaways(run: Run) -> dict[str, str]:
    """Each tab's one-line takeaway, from the run's Token Recycling steps."""
    steps = run.steps["tr"]
    return {"why_note": takeaways.size_takeaway(steps), "verify_note": takeaways.verify_takeaway(steps),
            "rows_note": takeaways.rows_takeaway(steps)}


def slider_for(run: Run, value: int | None = None) -> Any:
    """The step slider over the run's Token Recycling steps, naming the steps worth a look."""
    steps = run.steps["tr"]
    last = max(len(steps) - 1, 0)
    marks = "; ".join(f"{index}: {why}" for index, why in sorted(viz.marks_for(steps).items()))
    return gr.update(minimum=0, maximum=max(last, 1), value=last if value is None else value, step=1,
                     interactive=True, label=f"Token Recycling step (0 = the prefill, {last} = the last)",
                     info=f"Worth a look: {marks}." if marks else None)


def chart_views(run: Run) -> dict[str, Any]:
    """The whole run's charts, and the words under them in the run's own numbers."""
    return {
        "charts_howto": takeaways.charts_takeaway(run.steps),
        "chart_time": viz.tokens_vs_time(run.steps),
        "chart_speedup": viz.speedup_over_steps(run.steps),
        "chart_hist": viz.accepted_histogram(run.steps),
        "chart_mat": viz.mat_over_steps(run.steps),
    }


def live_views(lm: LoadedModel, session: Session, run: Run, tree: bool, charts: bool) -> dict[str, Any]:
    """What changes while a race runs: the panes and the numbers; when asked, the latest step's tree and
    rows (the view follows the run) and the charts."""
    made = ", ".join(f"{NAMES[lane]} {len(token_ids(steps))}" for lane, steps in run.steps.items())
    views = {
        "message": f"Running… tokens so far: {made}.",
        "stats": stats_html(run),
        "matrix_info": matrix_info(session),
    } | pane_views(lm, run)
    if tree:
        views |= step_views(lm, session, len(run.steps["tr"]) - 1) | {"slider": slider_for(run)} | run_takeaways(run)
    return views | (chart_views(run) if charts else {})


def step_mode_views(lm: LoadedModel, session: Session, run: Run) -> dict[str, Any]:
    """A race paused after one of Token Recycling's steps: that step's tree, rows and verification, both
    panes, the numbers and the charts so far."""
    step, ar_n = run.steps["tr"][-1], len(token_ids(run.steps["ar"]))
    message = (f"**Step mode**, paused after Token Recycling's step {step.index}: checked {step.drafted} drafted, "
               f"committed {len(step.tokens)} · plain decoding: {ar_n} tokens on the same compute time · "
               "**Next step** or **Continue**")
    return live_views(lm, session, run, tree=True, charts=True) | {"message": message}


def final_views(lm: LoadedModel, session: Session, lookup: Lookup, message: str) -> dict[str, Any]:
    """Every view, from the session's latest run (or empty placeholders before its first); the download
    offers `session.download_path`."""
    run = session.run
    views = {
        "message": message,
        "matrix_info": matrix_info(session),
        "lookup": lookup_html(lm, session, lookup),
        "history": viz.history_markdown(session.history),
        "runs_note": takeaways.runs_takeaway(session.history),
    }
    if run is None:
        return views
    # After the run, open on a step that shows both sides of verification: drafts accepted and rejected.
    shown = viz.interesting_step(run.steps["tr"])
    views |= step_views(lm, session, shown) | run_takeaways(run) | {
        "stats": stats_html(run),
        "slider": slider_for(run, shown),
        "download": gr.update(value=session.download_path, interactive=session.download_path is not None),
        "replay": gr.update(value=None, interactive=False),  # a new run needs its own replay made
    }
    return views | pane_views(lm, run) | chart_views(run)


def replay_page(lm: LoadedModel, run: Run) -> str:
    """The run as one self-contained HTML page (`viz.replay_html`)."""
    return viz.replay_html(run.record(lm), lm.token_text, lm.decode, NAMES)


def replay_views(run: Run, path: str) -> dict[str, Any]:
    return {"message": f"Replay of run {run.number} ready: **Download replay** saves one HTML file that opens "
                       "in any browser, offline.",
            "replay": gr.update(value=path, interactive=True)}


def note_html(message: str) -> str:
    return f'<p class="howto">{html.escape(message)}</p>'


def failure(message: str) -> dict[str, Any]:
    """A bad request: a toast plus the message in the page, both as plain text (a message may quote what a
    visitor typed), and the message itself as `error` for callers that are not a page; every other view
    stays as it was."""
    if len(message.split(" ", 1)[0]) > 1:  # tr's messages start lower-case, mid-sentence style; "k" stays
        message = message[:1].upper() + message[1:]
    gr.Warning(html.escape(message))
    return {"message": f"⚠️ **{viz.markdown_text(message)}**", "error": message}
