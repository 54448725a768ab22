"""Token Recycling, live: a Gradio app that races plain decoding against Token Recycling on one model.

Token Recycling (Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language
Models with Token Recycling", ACL 2025, arXiv 2408.08696) drafts from an adjacency matrix of the
model's own recent top-k predictions and verifies a whole draft tree in one forward pass.

This file is wiring only: decoding, timing and the fair race live in `tr`, every figure and HTML
fragment in `viz`. Each browser session keeps its own adjacency matrix and run history in a
`gr.State`; generations are queued so only one uses the model at a time.

    python app.py                      # bundled SmolLM2-135M-Instruct on http://127.0.0.1:7860
    python app.py --model HuggingFaceTB/SmolLM2-360M-Instruct --device cuda
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

import viz
from viz.explain import ABOUT, HOWTO_CONTROLS, HOWTO_MATRIX, HOWTO_RACE, HOWTO_SIZE, HOWTO_TREE, howto_charts
from tools.priming import primed_path
from tr.device.model import BUNDLED, LoadedModel, ModelLoadError, load_model
from tr.generate import AUTO, START_MODES
from tr.device.calibrate import calibrate
from tr.costs import LearnedCost
from tr.matrix import MAX_K
from tr.device.model import DTYPES
from tr.records import token_ids
from webapp.session import (CUSTOM, CUSTOM_EXAMPLE, DECODING, MAX_NEW_TOKENS, NAMES, TEMPLATES, Run, Session, load_examples,
                        parse_settings)

log = logging.getLogger("token-recycling-app")

UPDATE_EVERY_S = 0.25  # at most ~4 UI updates a second (text panes and numbers)
# Plotly figures are what costs the browser most (a slow machine can spend seconds per update on them and
# stop responding, Stop button included): while running, redraw the tree less often and the charts rarely.
TREE_EVERY_S = 2.0
CHARTS_EVERY_S = 4.0
QUEUE_SIZE = 16
STATE_SESSIONS = 200  # each session holds a vocab x k matrix (~3 MB for SmolLM2): bound how many are kept
MODEL_LOCK = threading.Lock()  # one forward pass on the model at a time, even from an abandoned (stopped) run

# Fonts the browser already has: the default theme would fetch Google Fonts, which fails offline.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
)
CSS = (Path(__file__).resolve().parent / "assets" / "app.css").read_text()

OUTPUTS = (
    "message", "ar_pane", "tr_pane", "stats", "slider", "tree", "why", "rows", "matrix_info", "lookup",
    "chart_time", "chart_speedup", "chart_hist", "chart_mat", "download", "history", "session",
)


# ---------------------------------------------------------------------------------------------------
# Numbers and text for the views
# ---------------------------------------------------------------------------------------------------


def stats_html(run: Run) -> str:
    """The per-side numbers table, with the verdict (identical or the first difference)."""
    sampling = run.settings.decoding == "sampling"
    return viz.stats_html(run.steps["ar"], run.steps["tr"], run.finished, run.stopped, sampling)


def pane_html(lm: LoadedModel, run: Run, name: str) -> str:
    return viz.pane_html(NAMES[name], run.steps[name], lm.decode, banded=name == "tr")


def matrix_info(lm: LoadedModel, session: Session) -> str:
    matrix = session.matrix
    if matrix is None:
        return "Adjacency matrix: not created yet (it is made on this session's first run)."
    return f"Adjacency matrix (k={matrix.k}): " + viz.matrix_summary(matrix.rows_filled, matrix.vocab_size,
                                                                      matrix.nbytes)


def lookup_html(lm: LoadedModel, session: Session, text: str | None) -> str:
    """A token's current row, from this session's matrix only."""

    def encode(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    row_of = session.matrix.row if session.matrix is not None else lambda token: None
    return viz.token_lookup_html(text, lm.vocab_size, encode, row_of, lm.token_text)


# ---------------------------------------------------------------------------------------------------
# View updates: dicts keyed by OUTPUTS names; anything left out stays as it is in the browser
# ---------------------------------------------------------------------------------------------------


def ordered(values: dict[str, Any]) -> tuple:
    return tuple(values.get(name, gr.skip()) for name in OUTPUTS)


def step_views(lm: LoadedModel, session: Session, index: Any) -> tuple[Any, Any, str]:
    """Tree figure, tree-size figure and rows table of TR step `index` of the session's latest run."""
    steps = session.run.steps["tr"] if session.run else []
    if not steps:
        note = "No Token Recycling steps yet: start a run."
        return viz.empty_figure("Draft tree", note), gr.skip(), f'<p class="howto">{note}</p>'
    step = steps[min(max(int(index or 0), 0), len(steps) - 1)]
    why = viz.tree_size_figure(step.cost_curve or session.run.curve, step)
    return viz.tree_figure(step, lm.token_text), why, viz.rows_table_html(step, lm.token_text)


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
        "matrix_info": matrix_info(lm, session),
    }
    if tree:
        views["tree"], views["why"], views["rows"] = step_views(lm, session, len(run.steps["tr"]) - 1)
        views["slider"] = slider_for(run)
    return views | (chart_views(run) if charts else {})


class Pacer:
    """Says when something is due again, at most once per `interval_s` of wall time."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = time.perf_counter()

    def due(self, now: float) -> bool:
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def final_views(lm: LoadedModel, session: Session, lookup_text: str | None, message: str) -> dict[str, Any]:
    """Every view, from the session's latest run (or empty placeholders before its first)."""
    run = session.run
    views = {
        "message": message,
        "matrix_info": matrix_info(lm, session),
        "lookup": lookup_html(lm, session, lookup_text),
        "history": viz.history_markdown(session.history),
        "session": session,
    }
    if run is None:
        return views
    shown = viz.most_accepted_step(run.steps["tr"])  # after the run, open on its most successful step
    tree, why, rows = step_views(lm, session, shown)
    views |= {
        "ar_pane": pane_html(lm, run, "ar"),
        "tr_pane": pane_html(lm, run, "tr"),
        "stats": stats_html(run),
        "slider": slider_for(run, shown),
        "tree": tree,
        "why": why,
        "rows": rows,
        "download": gr.DownloadButton(value=session.write_download(lm, run), interactive=True),
    }
    return views | chart_views(run)


# ---------------------------------------------------------------------------------------------------
# Event handlers
# ---------------------------------------------------------------------------------------------------


def failure(message: str, session: Session) -> dict[str, Any]:
    """A bad request: a toast plus the message in the page; every other view stays as it was."""
    message = message[:1].upper() + message[1:]  # tr's messages start lower-case, mid-sentence style
    gr.Warning(message)
    return {"message": f"⚠️ **{message}**", "session": session}


def run_handler(lm: LoadedModel, costs: LearnedCost, session: Session | None, widgets: tuple,
                lookup_text: str | None) -> Iterator[tuple]:
    """The Run button: race both decoders, streaming throttled updates, then render everything.

    `widgets` are the values parse_settings takes, in its order.
    """
    session = session or Session()
    try:
        settings = parse_settings(*widgets)
        run, events, note = session.start(lm, settings, costs)
    except ValueError as err:  # TreeError is a ValueError; tr's messages are written for users
        yield ordered(failure(str(err), session))
        return
    begin = time.perf_counter()
    tree_pacer, chart_pacer = Pacer(TREE_EVERY_S), Pacer(CHARTS_EVERY_S)
    budget_s, done = UPDATE_EVERY_S, False
    try:
        while not done:
            with MODEL_LOCK:  # released between updates, so a stopped run never blocks the next one
                done = run.advance(events, budget_s)
            rendering = time.perf_counter()
            run.wall_s = rendering - begin
            if not done:
                tree = tree_pacer.due(rendering) or len(run.steps["tr"]) <= 2  # show the first tree at once
                charts = not tree and chart_pacer.due(rendering)  # never both in one update
                yield ordered(live_views(lm, session, run, tree, charts) | {"session": session})
                # Rendering costs real time on a small CPU: keep it (and sending) under a third of the wall
                # time, so the live view never slows the race down more than it must.
                budget_s = max(UPDATE_EVERY_S, 2 * (time.perf_counter() - rendering))
    except ValueError as err:  # raised lazily inside a decoder (e.g. a prompt the model cannot take)
        run.stopped = True
        yield ordered(failure(str(err), session))
        return
    except Exception as err:  # a bug or e.g. out of memory: keep serving, keep the traceback in the log
        log.exception("run %d failed", run.number)
        run.stopped = True
        yield ordered(failure(f"the run failed ({type(err).__name__}: {err}); the app is still running", session))
        return
    if run.stopped:  # the Stop handler has already shown what the run got to
        return
    run.finished = True
    session.remember(run)
    message = (f"Done{note}{run.tree_note()}: run {run.number}, {run.wall_s:.1f} s of wall time for both decoders "
               "together (each side's own compute time is in the table).")
    yield ordered(final_views(lm, session, lookup_text, message))


def stop_handler(lm: LoadedModel, session: Session | None, lookup_text: str | None) -> tuple:
    """The Stop button: flag the run to stop at its next step (gradio also cancels the event, but only
    between updates) and show at once what it got to."""
    session = session or Session()
    run = session.run
    if run is None or run.finished or run.stopped:
        return ordered({"message": "Nothing is running.", "session": session})
    run.stopped = True
    session.remember(run)
    return ordered(final_views(lm, session, lookup_text, f"Stopped run {run.number}."))


def reset_handler(lm: LoadedModel, session: Session | None, lookup_text: str | None) -> tuple[str, str, str, Session]:
    """Reset matrix: forget every row this session learned (the next run starts cold, or primed)."""
    session = session or Session()
    if session.matrix is not None:
        session.matrix.reset()
    primed = primed_path(lm.name).is_file()
    note = " A primed start fills the empty rows from the primed matrix again." if primed else ""
    return "Matrix reset: every row is empty again." + note, matrix_info(lm, session), lookup_html(
        lm, session, lookup_text), session


def slider_handler(lm: LoadedModel, session: Session | None, index: Any) -> tuple[Any, Any, str]:
    return step_views(lm, session or Session(), index)


# ---------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------


def forget(session: Session | None) -> None:
    """Gradio drops a closed session's state after a while: remove its download file with it."""
    if session is not None:
        session.forget()


class App(gr.Blocks):
    """gr.Blocks whose launch() brings the app's theme and CSS (Gradio 6 takes them in launch, and the
    tests launch the demo themselves)."""

    def launch(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("theme", THEME)
        kwargs.setdefault("css", CSS)
        return super().launch(*args, **kwargs)


def build_demo(lm: LoadedModel) -> gr.Blocks:
    """The whole app on an already loaded model; queued so one generation uses the model at a time."""
    examples, example_labels = load_examples()
    # Measured once per model, device, dtype and kernel settings, then read from disk (a few seconds);
    # every run's steps correct it, for all sessions: it is the device's.
    costs = LearnedCost(calibrate(lm.model, lm.name))
    # delete_cache: gradio keeps a copy of every download; drop copies older than an hour, hourly.
    with App(title="Token Recycling, live", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        # A Session, made by the first handler that needs one (one per browser session).
        session = gr.State(None, delete_callback=forget)
        gr.Markdown(f"# Token Recycling, live\nModel `{lm.name}` on `{lm.device}`", elem_classes="title")
        gr.Markdown(ABOUT, elem_classes="intro")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):  # settings sidebar
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, precision=0, label="Max new tokens")
                with gr.Row():
                    # Custom values reach parse_settings, whose message names the valid templates.
                    template = gr.Dropdown(list(TEMPLATES), value=AUTO, label="Draft tree", min_width=120,
                                           allow_custom_value=True)
                    k = gr.Slider(1, MAX_K, value=8, step=1, precision=0, label="k (per row)", min_width=120)
                custom_json = gr.Textbox(label="Custom tree (JSON list of paths)", value=CUSTOM_EXAMPLE,
                                         lines=2, visible=False)
                with gr.Row():
                    decoding = gr.Radio(list(DECODING), value="greedy", label="Decoding", min_width=120)
                    start = gr.Radio(list(START_MODES), value="primed" if primed_path(lm.name).is_file() else "hot",
                                     label="Start", min_width=120)
                with gr.Row(visible=False) as sampling_row:
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature", min_width=90)
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", min_width=90)
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", min_width=80)
                with gr.Row():
                    reset_button = gr.Button("Reset matrix", size="sm")
                    download = gr.DownloadButton("Download run (JSON)", size="sm", interactive=False)
                gr.Markdown(HOWTO_CONTROLS, elem_classes="howto")
            with gr.Column(scale=3):
                with gr.Row(equal_height=True):
                    prompt = gr.Textbox(label="Prompt", lines=3, max_lines=10, value=examples[1][0], scale=5,
                                        placeholder="Ask the model something, or pick an example below")
                    with gr.Column(scale=1, min_width=120):
                        run_button = gr.Button("Run race", variant="primary")
                        stop_button = gr.Button("Stop", variant="stop")
                gr.Examples(examples, inputs=[prompt], example_labels=example_labels, examples_per_page=12,
                            label="Example prompts (chat, code, translation, summarization, maths, retrieval)",
                            elem_id="examples")
                message = gr.Markdown("Pick an example or type a prompt, then press **Run race**.",
                                      elem_classes="message", elem_id="message")
                with gr.Row(equal_height=False):
                    ar_pane = gr.HTML(f'<p class="pane-title">{NAMES["ar"]}</p>', elem_classes="pane",
                                      elem_id="ar-pane")
                    tr_pane = gr.HTML(f'<p class="pane-title">{NAMES["tr"]}</p>', elem_classes="pane",
                                      elem_id="tr-pane")
                stats = gr.HTML(elem_classes="stats", elem_id="stats")
                gr.Markdown(HOWTO_RACE, elem_classes="howto")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=500):
                gr.Markdown("### Draft tree of one step")
                gr.Markdown(HOWTO_TREE, elem_classes="howto")
                slider = gr.Slider(0, 1, value=0, step=1, precision=0, interactive=False,
                                   label="Token Recycling step (after a run)", elem_id="step-slider")
                tree = gr.Plot(viz.empty_figure("Draft tree", "No steps yet: start a run."), show_label=False,
                               elem_id="tree-plot")
                gr.Markdown(HOWTO_SIZE, elem_classes="howto")
                why = gr.Plot(viz.tree_size_figure(costs.curve), show_label=False, elem_id="why-plot")
            with gr.Column(scale=6, min_width=420):
                gr.Markdown("### Adjacency matrix rows written at that step")
                gr.Markdown(HOWTO_MATRIX, elem_classes="howto")
                rows = gr.HTML('<p class="howto">No steps yet: start a run.</p>', elem_classes="rows-box",
                               elem_id="rows-table")
                info = gr.Markdown("Adjacency matrix: not created yet (it is made on this session's first run).")
                lookup_text = gr.Textbox(label="Look up a token's row", submit_btn="Look up", elem_id="lookup-text",
                                         placeholder="a word, e.g. the, Python, or #42 for a token id")
                lookup = gr.HTML('<p class="howto">Type a word (or <code>#id</code>) to see its row.</p>')
        gr.Markdown("### The whole run")
        gr.Markdown(howto_charts(lm.device.type), elem_classes="howto")
        with gr.Row():
            chart_time = gr.Plot(viz.tokens_vs_time({}), show_label=False, elem_id="chart-time")
            chart_speedup = gr.Plot(viz.speedup_over_steps([], []), show_label=False, elem_id="chart-speedup")
        with gr.Row():
            chart_hist = gr.Plot(viz.accepted_histogram([]), show_label=False, elem_id="chart-hist")
            chart_mat = gr.Plot(viz.mat_over_steps([]), show_label=False, elem_id="chart-mat")
        gr.Markdown("### This session's runs")
        history = gr.Markdown(viz.history_markdown([]), elem_classes="history")

        outputs = [message, ar_pane, tr_pane, stats, slider, tree, why, rows, info, lookup,
                   chart_time, chart_speedup, chart_hist, chart_mat, download, history, session]
        widgets = [prompt, max_new, template, custom_json, k, decoding, temperature, top_p, seed, start]

        # Named parameters, so the API (and gradio_client) can call /run with keywords.
        def run(state: Session | None, prompt: str, max_new_tokens: int, template: str, custom_json: str, k: int,
                decoding: str, temperature: float, top_p: float, seed: int, start: str, lookup: str
                ) -> Iterator[tuple]:
            values = (prompt, max_new_tokens, template, custom_json, k, decoding, temperature, top_p, seed, start)
            yield from run_handler(lm, costs, state, values, lookup)

        # One generation on the model at a time, across all sessions; the bounded queue holds the rest.
        run_event = run_button.click(run, [session, *widgets, lookup_text], outputs, api_name="run",
                                     concurrency_limit=1, concurrency_id="model", show_progress="minimal")
        stop_button.click(lambda state, text: stop_handler(lm, state, text), [session, lookup_text], outputs,
                          cancels=[run_event], api_name="stop", queue=False)
        reset_button.click(lambda state, text: reset_handler(lm, state, text), [session, lookup_text],
                           [message, info, lookup, session], api_name="reset_matrix")
        lookup_text.submit(lambda state, text: lookup_html(lm, state or Session(), text), [session, lookup_text],
                           lookup, api_name="lookup")
        slider.input(lambda state, index: slider_handler(lm, state, index), [session, slider], [tree, why, rows],
                     api_name="show_step", trigger_mode="always_last", show_progress="hidden")
        # Show the custom JSON box and the sampling settings only when they are in use.
        template.change(lambda name: gr.Textbox(visible=name == CUSTOM), template, custom_json,
                        api_visibility="private")
        decoding.change(lambda mode: gr.Row(visible=mode == "sampling"), decoding, sampling_row,
                        api_visibility="private")
    demo.queue(max_size=QUEUE_SIZE)
    return demo


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Race plain decoding against Token Recycling in the browser.")
    parser.add_argument("--model", default=BUNDLED,
                        help=f"hub id or local folder of a causal LM (default: {BUNDLED}, the packaged "
                             "SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="default: float32")
    parser.add_argument("--port", type=int, default=7860, help="default: 7860")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all; default: "
                                                            "127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    note = " (the first load converts the bundled GGUF: about 30 s)" if args.model == BUNDLED else ""
    print(f"Loading model {args.model!r} on {args.device}{note}...", flush=True)
    try:
        lm = load_model(args.model, args.device, args.dtype)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Loaded {lm.name} ({lm.vocab_size:,} tokens, {lm.device}, {str(lm.dtype).removeprefix('torch.')}).",
          flush=True)
    demo = build_demo(lm)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    state_session_capacity=STATE_SESSIONS)
    except OSError as err:  # e.g. the port is taken
        print(f"error: could not start the web server on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
