"""What the page shows, as dicts keyed by view name: the panes, the numbers, one step's tree and rows,
the charts. Built from a session's records with `viz`; the layout maps each name to its widget.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

import viz
from tr.device.model import LoadedModel
from tr.records import token_ids

from .session import NAMES, Run, Session

NO_MATRIX = "Adjacency matrix: not created yet (it is made on this session's first run)."


def stats_html(run: Run) -> str:
    """The per-side numbers table, with the verdict (identical or the first difference)."""
    return viz.stats_html(run.steps["ar"], run.steps["tr"], run.finished, run.stopped, run.settings.sampled)


def pane_html(lm: LoadedModel, run: Run, name: str) -> str:
    return viz.pane_html(NAMES[name], run.steps[name], lm.decode, banded=name == "tr")


def matrix_info(session: Session) -> str:
    matrix = session.matrix
    if matrix is None:
        return NO_MATRIX
    return f"Adjacency matrix (k={matrix.k}): " + viz.matrix_summary(matrix.rows_filled, matrix.vocab_size,
                                                                      matrix.nbytes)


def lookup_html(lm: LoadedModel, session: Session, text: str | None) -> str:
    """A token's current row, from this session's matrix only."""

    def encode(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    row_of = session.matrix.row if session.matrix is not None else lambda token: None
    return viz.token_lookup_html(text, lm.vocab_size, encode, row_of, lm.token_text)


def step_views(lm: LoadedModel, session: Session, index: Any) -> dict[str, Any]:
    """Tree figure, tree-size figure and rows table of TR step `index` of the session's latest run."""
    steps = session.run.steps["tr"] if session.run else []
    if not steps:
        note = "No Token Recycling steps yet: start a run."
        return {"tree": viz.empty_figure("Draft tree", note), "rows": f'<p class="howto">{note}</p>'}
    step = steps[min(max(int(index or 0), 0), len(steps) - 1)]
    return {
        "tree": viz.tree_figure(step, lm.token_text),
        "why": viz.tree_size_figure((step.draft and step.draft.curve) or session.run.curve, step),
        "rows": viz.rows_table_html(step, lm.token_text),
    }


def slider_for(run: Run, value: int | None = None) -> Any:
    last = max(len(run.steps["tr"]) - 1, 0)
    return gr.Slider(minimum=0, maximum=max(last, 1), value=last if value is None else value, step=1,
                     interactive=True, label=f"Token Recycling step (0 = prefill, {last} = last)")


def chart_views(run: Run) -> dict[str, Any]:
    ar, tr = run.steps["ar"], run.steps["tr"]
    return {
        "chart_time": viz.tokens_vs_time({"ar": ar, "tr": tr}),
        "chart_speedup": viz.speedup_over_steps(ar, tr),
        "chart_hist": viz.accepted_histogram(tr),
        "chart_mat": viz.mat_over_steps(tr),
    }


def live_views(lm: LoadedModel, session: Session, run: Run, tree: bool, charts: bool) -> dict[str, Any]:
    """What changes while a race runs: both panes and the numbers; when asked, the latest step's tree and
    rows (the view follows the run) and the charts."""
    ar_n, tr_n = len(token_ids(run.steps["ar"])), len(token_ids(run.steps["tr"]))
    views = {
        "message": f"Running… autoregressive {ar_n} tokens, Token Recycling {tr_n} tokens.",
        "ar_pane": pane_html(lm, run, "ar"),
        "tr_pane": pane_html(lm, run, "tr"),
        "stats": stats_html(run),
        "matrix_info": matrix_info(session),
    }
    if tree:
        views |= step_views(lm, session, len(run.steps["tr"]) - 1) | {"slider": slider_for(run)}
    return views | (chart_views(run) if charts else {})


def step_mode_views(lm: LoadedModel, session: Session, run: Run) -> dict[str, Any]:
    """A race paused after one of Token Recycling's steps: that step's tree, rows and verification, both
    panes, the numbers and the charts so far."""
    step, ar_n = run.steps["tr"][-1], len(token_ids(run.steps["ar"]))
    message = (f"**Step mode, paused** after Token Recycling's step {step.index}: it checked {step.drafted} drafted "
               f"tokens in one forward pass and committed {len(step.tokens)} "
               f"({step.accepted_drafts} accepted + 1 of the model's own). Plain decoding has made {ar_n} tokens "
               "on the same compute time. **Next step** goes on by one step, **Continue** runs to the end live.")
    return live_views(lm, session, run, tree=True, charts=True) | {"message": message}


def final_views(lm: LoadedModel, session: Session, lookup_text: str | None, message: str) -> dict[str, Any]:
    """Every view, from the session's latest run (or empty placeholders before its first); the download
    offers `session.download_path`."""
    run = session.run
    views = {
        "message": message,
        "matrix_info": matrix_info(session),
        "lookup": lookup_html(lm, session, lookup_text),
        "history": viz.history_markdown(session.history),
    }
    if run is None:
        return views
    shown = viz.most_accepted_step(run.steps["tr"])  # after the run, open on its most successful step
    views |= step_views(lm, session, shown) | {
        "ar_pane": pane_html(lm, run, "ar"),
        "tr_pane": pane_html(lm, run, "tr"),
        "stats": stats_html(run),
        "slider": slider_for(run, shown),
        "download": gr.DownloadButton(value=session.download_path, interactive=session.download_path is not None),
    }
    return views | chart_views(run)


def note_html(message: str) -> str:
    return f'<p class="howto">{html.escape(message)}</p>'


def failure(message: str) -> dict[str, Any]:
    """A bad request: a toast plus the message in the page; every other view stays as it was."""
    if len(message.split(" ", 1)[0]) > 1:  # tr's messages start lower-case, mid-sentence style; "k" stays
        message = message[:1].upper() + message[1:]
    gr.Warning(message)
    return {"message": f"⚠️ **{message}**"}
