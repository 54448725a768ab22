"""The page: widgets, each known by a name, wired to `webapp.handlers`.

Inputs and outputs are wired by name: `FIELDS` (the race's settings) and `OUTPUTS` (the views) are the
only orders, and every handler returns a dict of views by name. Each browser session keeps its own
`Session` in a `gr.State`; races are queued so only one uses the model at a time.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

import viz
from tr.costs import LearnedCost
from tr.device.model import LoadedModel
from tr.device.primed import describe_primed, find_primed
from tr.matrix import MAX_K
from tr.specs import CUSTOM_EXAMPLE, MAX_NEW_TOKENS, Start
from viz.explain import (
    ABOUT, GLOSSARY, HOWTO_CONTROLS, HOWTO_MATRIX, HOWTO_RACE, HOWTO_SIZE, HOWTO_TREE, HOWTO_VERIFY, INTRO,
    howto_charts,
)

from . import lessons, views
from .downloads import Downloads
from .handlers import Handlers
from .log import unexpected
from .edge import OneTool, ShortRequests
from .mcp import add_mcp_tool
from .runner import Runner
from .session import NAMES, Session
from .settings import CUSTOM, DECODING, FIELDS, TEMPLATES

ASSETS = Path(__file__).resolve().parents[1] / "assets"
QUEUE_SIZE = 16
OUTPUTS = (
    "message", "ar_pane", "tr_pane", "pld_pane", "stats", "slider", "tree", "caption", "why", "why_note", "rows",
    "rows_note", "verify", "verify_note", "mask", "matrix_info", "lookup", "charts_howto", "chart_time",
    "chart_speedup", "chart_hist", "chart_mat", "download", "replay", "history", "runs_note", "lesson", "session",
)
NO_LESSON = "Free play (no lesson)"
# Clicking a band of generated text opens its step: the slider's number box takes the step, as if typed.
SELECT_STEP_JS = """() => {
  document.addEventListener("click", (event) => {
    const band = event.target.closest("#tr-pane [data-step]");
    const box = document.querySelector("#step-slider input[type=number]");
    if (!band || !box) return;
    box.value = band.dataset.step;
    box.dispatchEvent(new Event("input", {bubbles: true}));
  });
}"""


def load_examples(path: Path = ASSETS / "prompts.jsonl") -> tuple[list[list[str]], list[str]]:
    """Example prompts and their labels ("code: Write a Python…") from the project's Spec-Bench-style file."""
    prompts, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            text, label = item["turns"][0], item["label"]
            prompts.append([text])
            labels.append(f"{label}: {text[:32]}…" if len(text) > 32 else f"{label}: {text}")
    return prompts, labels


def ordered(values: dict[str, Any], names: tuple[str, ...] = OUTPUTS) -> tuple:
    """Views by name, in the order of `names`; anything left out stays as it is in the browser."""
    return tuple(values.get(name, gr.skip()) for name in names)


class SessionConfigs:
    """Gradio keeps a copy of the page's components per session and, for every output an event updates by
    property (`gr.skip()` and `gr.update()` included), adds one more component to that copy and never
    drops it: a session's memory would grow with every screen update.
    `prune` drops every component the page did not start with from one session's copy."""

    def __init__(self, demo: gr.Blocks):
        self.demo = demo

    def prune(self, request: gr.Request | None) -> None:
        sessions = getattr(getattr(self.demo, "state_holder", None), "session_data", {})
        session = sessions.get(getattr(request, "session_hash", None))
        if session is None:
            return
        original = self.demo.default_config.blocks
        for key in [key for key in session.blocks_config.blocks if key not in original]:
            del session.blocks_config.blocks[key]
            session.config_values.pop(key, None)


def api(fn: Callable, names: tuple[str, ...], configs: SessionConfigs) -> Callable:
    """`fn` with the parameter names the API shows (gradio reads the signature), pruning the session's
    copy of the page before it runs and, for a generator, after its last update (gradio passes the request
    to the last parameter by its annotation; the API does not show it)."""
    if inspect.isgeneratorfunction(fn):
        def call(*args: Any) -> Any:
            *values, request = args
            configs.prune(request)
            try:
                yield from fn(*values)
            finally:
                configs.prune(request)
    else:
        def call(*args: Any) -> Any:
            *values, request = args
            configs.prune(request)
            return fn(*values)
    call.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in (*names, "request")])
    call.__annotations__ = {"request": gr.Request}
    return call


class App(OneTool, ShortRequests, gr.Blocks):
    """gr.Blocks whose launch() brings the app's theme and CSS (Gradio 6 takes them in launch, and the
    tests launch the demo themselves), and whose requests all reach the app's own checks (`webapp.edge`)."""

    def launch(self, *args: Any, **kwargs: Any):
        # Fonts the browser already has: the default theme would fetch Google Fonts, which fails offline.
        # A neutral primary hue: every colour on the page means something (`viz.style.Meaning`), buttons none.
        kwargs.setdefault("theme", gr.themes.Default(
            primary_hue=gr.themes.colors.slate,
            font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
            font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"]))
        kwargs.setdefault("css", viz.palette_css() + (ASSETS / "app.css").read_text())
        kwargs.setdefault("js", SELECT_STEP_JS)
        return super().launch(*args, **kwargs)


def settings_panel(lm: LoadedModel) -> dict[str, gr.components.Component]:
    """The race's settings, by the names `parse_settings` reads."""
    w: dict[str, Any] = {}
    w["max_new_tokens"] = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, precision=0, label="Max new tokens")
    with gr.Row():
        # Custom values reach parse_settings, whose message names the valid templates.
        w["template"] = gr.Dropdown(list(TEMPLATES), value=TEMPLATES[0], label="Draft tree", min_width=120,
                                    allow_custom_value=True)
        w["k"] = gr.Slider(1, MAX_K, value=8, step=1, precision=0, label="k (per row)", min_width=120)
    w["custom_json"] = gr.Textbox(label="Custom tree (JSON list of paths)", value=CUSTOM_EXAMPLE, lines=2,
                                  visible=False)
    with gr.Row():
        w["decoding"] = gr.Radio(list(DECODING), value="greedy", label="Decoding", min_width=120)
        primed = find_primed(lm) is not None
        w["start"] = gr.Radio([s.value for s in Start], value=(Start.PRIMED if primed else Start.HOT).value,
                              label="Start", min_width=120)
    w["prompt_lookup"] = gr.Checkbox(False, label="Third lane: prompt lookup decoding",
                                     info="drafts copied from the prompt, on the same clock")
    with gr.Row(visible=False) as sampling_row:
        w["temperature"] = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature", min_width=90)
        w["top_p"] = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", min_width=90)
        w["seed"] = gr.Number(0, precision=0, minimum=0, label="Seed", min_width=80)
    # Show the custom JSON box and the sampling settings only when they are in use.
    w["template"].change(lambda name: gr.update(visible=name == CUSTOM), w["template"], w["custom_json"],
                         api_visibility="private")
    w["decoding"].change(lambda mode: gr.update(visible=mode == "sampling"), w["decoding"], sampling_row,
                         api_visibility="private")
    return w


def race_panel(w: dict[str, Any], primed: bool) -> tuple[dict[str, Any], gr.Dropdown]:
    """Prompt, buttons, an example to pick and a lesson to pick (those that start primed only where the
    model has a primed matrix), in one row; returns the buttons by name and the lesson's dropdown."""
    examples = load_examples()
    with gr.Row(equal_height=False, elem_id="prompt-row"):
        w["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=6, value=examples[0][0][0], scale=5,
                                 min_width=240, placeholder="Ask the model something, or pick an example")
        with gr.Column(scale=4, min_width=240):
            with gr.Row(elem_id="buttons"):
                buttons = {"run": gr.Button("Run race", variant="primary", min_width=70),
                           "step": gr.Button("Next step", elem_id="step-button", min_width=70),
                           "resume": gr.Button("Continue", elem_id="continue-button", min_width=70),
                           "stop": gr.Button("Stop", min_width=50)}  # red means a rejected draft
            with gr.Row(elem_id="picks"):
                example = gr.Dropdown(list(zip(examples[1], (e[0] for e in examples[0]))), value=None,
                                      label="Example prompt", min_width=120, elem_id="example-pick")
                playable = [lesson.title for lesson in viz.lessons.LESSONS if primed or not lesson.needs_primed]
                lesson = gr.Dropdown([NO_LESSON, *playable], value=NO_LESSON, label="Lesson", min_width=120,
                                     elem_id="lesson-pick")
    example.input(lambda text: text, example, w["prompt"], api_visibility="private", preprocess=False)
    return buttons, lesson


def first_screen(costs: LearnedCost | None, v: dict[str, Any]) -> None:
    """The race at a glance: the panes and the result (left), the chosen step's tree and its verdict
    (right), and the palette's legend."""
    with gr.Row(equal_height=False, elem_id="race"):
        with gr.Column(scale=5, min_width=300):
            for lane in NAMES:  # the third lane shows once a race has it
                v[f"{lane}_pane"] = gr.HTML(f'<p class="pane-title">{NAMES[lane]}</p>', elem_classes="pane",
                                            elem_id=f"{lane}-pane", visible=lane != "pld")
            v["stats"] = gr.HTML(elem_classes="stats", elem_id="stats")
        with gr.Column(scale=6, min_width=300):
            v["slider"] = gr.Slider(0, 1, value=0, step=1, precision=0, interactive=False,
                                    label="Token Recycling step (after a run)", elem_id="step-slider")
            v["tree"] = gr.Plot(viz.empty_figure("Draft tree", "No steps yet: start a run."), show_label=False,
                                elem_id="tree-plot")
            v["caption"] = gr.HTML('<p class="caption">Which branch will the model keep? Run, then check here.</p>',
                                   elem_id="tree-caption")
            gr.HTML(viz.legend_html(), elem_id="legend")


def detail_tabs(lm: LoadedModel, costs: LearnedCost | None, v: dict[str, Any]) -> gr.Textbox:
    """Everything else, one click away; each tab opens with its one-line takeaway. Returns the lookup box."""
    # Opens on the tree size: a verification table of a large tree alone holds hundreds of words.
    with gr.Tabs(elem_id="details", selected="why"):
        with gr.Tab("Verification", elem_id="tab-verify"):
            v["verify_note"] = gr.Markdown(views.NO_RUN, elem_classes="takeaway")
            with gr.Row(equal_height=False):
                with gr.Column(scale=6, min_width=300):
                    v["verify"] = gr.HTML(views.note_html(views.NO_RUN), elem_id="verify-table")
                with gr.Column(scale=5, min_width=300):
                    v["mask"] = gr.Plot(viz.empty_figure("Tree attention mask", views.NO_RUN), show_label=False,
                                        elem_id="mask-plot")
            with gr.Accordion("How to read it", open=False):
                gr.Markdown(HOWTO_TREE + "\n\n" + HOWTO_VERIFY, elem_classes="howto")
        with gr.Tab("Matrix rows", elem_id="tab-rows"):
            v["rows_note"] = gr.Markdown(views.NO_RUN, elem_classes="takeaway")
            v["rows"] = gr.HTML(views.note_html(views.NO_RUN), elem_classes="rows-box", elem_id="rows-table")
            v["matrix_info"] = gr.Markdown(views.NO_MATRIX)
            lookup_text = gr.Textbox(label="Look up a token's row", submit_btn="Look up", elem_id="lookup-text",
                                     placeholder="a word, e.g. the, Python, or #42 for a token id")
            v["lookup"] = gr.HTML('<p class="howto">Type a word (or <code>#id</code>) to see its row.</p>')
            with gr.Accordion("How to read it", open=False):
                gr.Markdown(HOWTO_MATRIX, elem_classes="howto")
        with gr.Tab("Tree size", id="why", elem_id="tab-why"):
            v["why_note"] = gr.Markdown(views.NO_RUN, elem_classes="takeaway")
            why = viz.tree_size_figure(costs.curve) if costs else viz.empty_figure(
                "Verification cost", "Measured on the device during the first run.")
            v["why"] = gr.Plot(why, show_label=False, elem_id="why-plot")
            with gr.Accordion("How to read it", open=False):
                gr.Markdown(HOWTO_SIZE, elem_classes="howto")
        with gr.Tab("Charts", elem_id="tab-charts"):
            v["charts_howto"] = gr.Markdown(views.NO_RUN, elem_classes="takeaway")
            with gr.Row():
                v["chart_time"] = gr.Plot(viz.tokens_vs_time({}), show_label=False, elem_id="chart-time")
                v["chart_speedup"] = gr.Plot(viz.speedup_over_steps({}), show_label=False, elem_id="chart-speedup")
            with gr.Row():
                v["chart_hist"] = gr.Plot(viz.accepted_histogram({}), show_label=False, elem_id="chart-hist")
                v["chart_mat"] = gr.Plot(viz.mat_over_steps({}), show_label=False, elem_id="chart-mat")
            with gr.Accordion("MAT against speed-up", open=False):
                gr.Markdown(howto_charts(lm.device.type), elem_classes="howto")
        with gr.Tab("Runs", elem_id="tab-runs"):
            v["runs_note"] = gr.Markdown(views.NO_RUN, elem_classes="takeaway")
            v["history"] = gr.Markdown(viz.history_markdown([]), elem_classes="history", elem_id="history")
            with gr.Row():
                v["download"] = gr.DownloadButton("Download run (JSON)", size="sm", interactive=False)
                v["replay_button"] = gr.Button("Make replay (HTML)", size="sm", elem_id="make-replay")
                v["replay"] = gr.DownloadButton("Download replay", size="sm", interactive=False,
                                                elem_id="replay-download")
        with gr.Tab("Glossary", elem_id="tab-about"):
            gr.Markdown(ABOUT + "\n\n" + HOWTO_RACE + "\n\n" + GLOSSARY, elem_classes="howto", elem_id="glossary")
    return lookup_text


def guarded(fn: Callable[..., dict], what: str, names: tuple[str, ...], configs: SessionConfigs) -> Callable[..., Any]:
    """A handler returning views by name, in the order of `names`; anything unexpected is logged once
    with an id and shown in the first view (a message or a note). The API shows the handler's own
    parameter names."""

    def call(*args: Any) -> Any:
        try:
            values = ordered(fn(*args), names)
        except Exception as err:
            message = unexpected(err, what)
            first = views.failure(message) if names[0] == "message" else {names[0]: views.note_html(message)}
            values = ordered(first, names)
        return values[0] if len(names) == 1 else values

    return api(call, tuple(inspect.signature(fn).parameters), configs)


def build_demo(lm: LoadedModel, costs: LearnedCost | None, runner: Runner, model_note: str = "",
               downloads: Downloads | None = None) -> gr.Blocks:
    """The whole app on an already loaded model. `costs` is the device's cost curve (None: measured by
    the first run, as on ZeroGPU); `runner` is where races run (`webapp.runner.race_runner`)."""
    handlers = Handlers(lm, costs, runner, downloads or Downloads())
    # delete_cache: gradio serves a copy of every download from its cache; drop copies older than the
    # app's own files, as often.
    cache_s = int(handlers.downloads.max_age_s)
    with App(title="Token Recycling, live", analytics_enabled=False, delete_cache=(cache_s, cache_s)) as demo:
        # A function, not a bound method: Gradio deep-copies the page's config for every page load, and a
        # bound method would take its object (the model with it) along.
        v: dict[str, Any] = {"session": gr.State(None, delete_callback=lambda state: handlers.forget(state))}
        precision = lm.dtype_note or str(lm.dtype).removeprefix("torch.")
        gr.Markdown("# Token Recycling, live\n" + INTRO, elem_classes="title", elem_id="intro")
        with gr.Sidebar(open=False, label="Settings", elem_id="settings"):
            gr.Markdown(f"Model `{lm.display_name}` on `{lm.device}` in {precision}{model_note}; "
                        f"{describe_primed(lm)}.", elem_classes="howto")
            w = settings_panel(lm)
            reset_button = gr.Button("Reset matrix", size="sm")
            with gr.Accordion("What these settings do", open=False):
                gr.Markdown(HOWTO_CONTROLS, elem_classes="howto")
        buttons, lesson_pick = race_panel(w, find_primed(lm) is not None)
        v["lesson"] = gr.Markdown("", elem_id="lesson", elem_classes="lesson")
        v["message"] = gr.Markdown("Pick an example or a lesson, or press **Run race**. Settings: the ☰ at the left.",
                                   elem_classes="message", elem_id="message")
        first_screen(costs, v)
        lookup_text = detail_tabs(lm, costs, v)
        buttons |= {"reset": reset_button, "replay": v.pop("replay_button")}
        configs = SessionConfigs(demo)
        wire(handlers, v, w, buttons, lookup_text, configs)
        wire_lessons(v, w, lesson_pick, configs)
    add_mcp_tool(demo, handlers)  # last: every other endpoint is hidden from MCP
    demo.queue(max_size=QUEUE_SIZE)
    return demo


def wire(handlers: Handlers, v: dict[str, Any], w: dict[str, Any], buttons: dict[str, gr.Button],
         lookup_text: gr.Textbox, configs: SessionConfigs) -> None:
    """Every event, its inputs and outputs by name. `preprocess=False` everywhere: the values arrive as
    sent, and `webapp.settings` checks each one (Gradio's own checks would answer an API client with a
    generic error and log a traceback)."""
    outputs = [v[name] for name in OUTPUTS]

    def streamed(handler: Callable[..., Iterator[dict]], names: tuple[str, ...]) -> Callable[..., Iterator[tuple]]:
        def call(*values: Any) -> Iterator[tuple]:
            for views_by_name in handler(*values):
                yield ordered(views_by_name)
        return api(call, names, configs)

    def race(handler: Callable[..., Iterator[dict]]) -> Callable[..., Iterator[tuple]]:
        """A handler of the race's settings by name, called with the page's values in `FIELDS` order."""
        def by_name(state: Session | None, *values: Any) -> Iterator[dict]:
            *settings, lookup = values
            return handler(state, dict(zip(FIELDS, settings)), lookup)
        return streamed(by_name, ("state", *FIELDS, "lookup"))

    # One race on the model at a time, across all sessions; the bounded queue holds the rest.
    on_model = dict(concurrency_limit=1, concurrency_id="model", show_progress="minimal", preprocess=False)
    race_inputs = [v["session"], *(w[n] for n in FIELDS), lookup_text]
    events = [
        buttons["run"].click(race(handlers.run), race_inputs, outputs, api_name="run", **on_model),
        buttons["step"].click(race(handlers.step), race_inputs, outputs, api_name="step", **on_model),
        buttons["resume"].click(streamed(handlers.resume, ("state", "lookup")), [v["session"], lookup_text], outputs,
                                api_name="continue", **on_model),
    ]
    buttons["stop"].click(guarded(handlers.stop, "stop", OUTPUTS, configs), [v["session"], lookup_text], outputs,
                          cancels=events, api_name="stop", queue=False, preprocess=False)
    reset_outputs = ("message", "matrix_info", "lookup", "session")
    buttons["reset"].click(guarded(handlers.reset, "reset", reset_outputs, configs), [v["session"], lookup_text],
                           [v[n] for n in reset_outputs], api_name="reset_matrix", preprocess=False)
    lookup_text.submit(guarded(handlers.lookup, "lookup", ("lookup",), configs), [v["session"], lookup_text],
                       [v["lookup"]], api_name="lookup", preprocess=False)
    buttons["replay"].click(guarded(handlers.replay, "replay", ("message", "replay"), configs), [v["session"]],
                            [v["message"], v["replay"]], api_name="replay", concurrency_limit=2, preprocess=False)
    step_outputs = ("tree", "caption", "why", "rows", "verify", "mask")
    v["slider"].input(guarded(handlers.show_step, "show_step", step_outputs, configs), [v["session"], v["slider"]],
                      [v[n] for n in step_outputs], api_name="show_step", trigger_mode="always_last",
                      show_progress="hidden", preprocess=False)


def wire_lessons(v: dict[str, Any], w: dict[str, Any], pick: gr.Dropdown, configs: SessionConfigs) -> None:
    """Picking a lesson puts its question on the page and its (last) run's settings in the fields; Run or
    Next step then runs it (`webapp.lessons`)."""
    names = ("lesson", *FIELDS, "session")
    outputs = [v["lesson"], *(w[n] for n in FIELDS), v["session"]]
    pick.input(guarded(lessons.pick, "lesson", names, configs), [v["session"], pick], outputs, api_name="lesson",
               preprocess=False)
