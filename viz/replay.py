"""A run's replay as one self-contained HTML file, to send to someone who opens it from disk: no server,
no internet.

The page holds the run's text panes (one per lane in the record), its numbers, its charts and a step
slider over Token Recycling's steps. Every step's draft tree (as plotly JSON) and matrix rows (as HTML)
are computed here and embedded; a small inline script swaps them when the slider moves. plotly.js is
inlined too, and a content security policy keeps the page from fetching anything. Prompts come from
strangers: every text is escaped, and the embedded data is packed in base64, which cannot close its
script element.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from tr.records import Step, steps_from_dicts

from .charts import accepted_histogram, mat_over_steps, speedup_over_steps, tokens_vs_time
from .matrix import rows_table_html
from .race import stats_html
from .style import TEMPLATE, lane_name, legend_html, palette_css
from .text import pane_html
from .tree import most_accepted_step, tree_figure

# Steps embedded: a 1,024-token run has several hundred. An 80-node step costs 0.1-0.3 s to draw on a
# busy 2-core CPU and ~14 kB packed, so 200 steps stay under a minute and 3 MB beside plotly.js's 4.8 MB.
MAX_STEPS = 200
REPLAY_ROWS = 40  # rows written per step a replay keeps (the app shows them all): the file stays small
APP_CSS = Path(__file__).resolve().parents[1] / "assets" / "app.css"  # the app's look for panes, stats, notes
PAGE_CSS = """
body { font-family: Inter, Segoe UI, Helvetica, Arial, sans-serif; color: #111827; max-width: 1400px;
  margin: 0 auto; padding: 12px 24px 40px; }
h1 { margin: 8px 0 2px; font-size: 24px; }
h2 { margin: 28px 0 8px; font-size: 18px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
.about { color: #4b5563; margin: 2px 0; font-size: 14px; }
.prompt { white-space: pre-wrap; word-break: break-word; background: #f9fafb; border: 1px solid #e5e7eb;
  border-radius: 8px; padding: 8px 10px; font-size: 14px; }
.settings td { padding: 1px 16px 1px 0; font-size: 13px; }
.settings td:first-child { color: #4b5563; }
.lanes { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 16px; }
.step-control { display: flex; align-items: center; gap: 12px; margin: 8px 0; }
.step-control input { flex: 1; }
.step-view { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 16px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 8px; }
"""
# Inline scripts and styles only; nothing is fetched, so a page that somehow held a remote reference
# still could not leak who opened it.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "font-src data:")
PAGE_JS = """
async function unpack(text) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}
async function main() {
  const replay = await unpack(document.getElementById("replay-data").textContent.trim());
  const config = {displaylogo: false, responsive: true};
  // Figures are embedded without their template (the same for all): put it back when drawing.
  const figure = (fig) => ({data: fig.data, layout: Object.assign({}, fig.layout, {template: replay.template}),
                            config});
  for (const [id, fig] of Object.entries(replay.charts)) Plotly.newPlot(id, figure(fig));
  const slider = document.getElementById("step");
  if (!slider) return;
  const show = (position) => {
    const step = replay.steps[position];
    document.getElementById("step-label").textContent = step.label;
    document.getElementById("rows").innerHTML = step.rows;
    Plotly.react("tree", figure(step.tree));
  };
  slider.addEventListener("input", () => show(Number(slider.value)));
  show(Number(slider.value));
}
main().catch((error) => {
  document.getElementById("replay-error").textContent = "The figures could not be drawn (" + error + "). " +
    "This page needs a browser from 2023 or later (Chrome 80, Firefox 113, Safari 16.4).";
});
"""
Json = dict[str, Any]


def figure_json(fig: go.Figure) -> Json:
    """A figure as plotly.js reads it, without its template (`template_json` carries it once for all)."""
    data = json.loads(fig.to_json())
    data["layout"].pop("template", None)
    return data


def template_json() -> Json:
    """The template every viz figure uses (`style.base_layout`), as plotly.js reads it."""
    return json.loads(go.Figure(layout={"template": TEMPLATE}).to_json())["layout"]["template"]


def pack(value: Any) -> str:
    """JSON, gzipped and in base64: every step's rows table and tree compress about 13 times (the
    page unpacks them with the browser's DecompressionStream), and base64 holds no "<" that could end
    the script element, whatever text the steps hold."""
    raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


def lane_title(record: Mapping[str, Any], lane: str, titles: Mapping[str, str] | None) -> str:
    """A lane's heading: the caller's title, else the method the record names, else the charts' name."""
    output = record.get("outputs", {}).get(lane) or {}
    return (titles or {}).get(lane) or output.get("method") or lane_name(lane)


def shown_steps(steps: list[Step], limit: int = MAX_STEPS) -> list[int]:
    """Indices of the steps to embed: all of them, or `limit` evenly spaced (first and last included)
    plus the most accepted one, the step the page opens on."""
    n = len(steps)
    if n <= limit:
        return list(range(n))
    spaced = {round(i * (n - 1) / (limit - 1)) for i in range(limit)}
    return sorted(spaced | {most_accepted_step(steps)})


def setting_text(value: Any) -> str:
    if isinstance(value, list):  # the tree's paths: their number says enough here
        return f"{len(value)} entries"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def header_html(record: Mapping[str, Any], exported: datetime) -> str:
    """Title, paper, model, date, prompt and settings."""
    settings = record.get("settings", {})
    rows = "".join(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(setting_text(value))}</td></tr>"
                   for key, value in settings.items() if key != "prompt")
    state = "finished" if record.get("finished") else "stopped before the end"
    return (
        f"<h1>Token Recycling replay · run {html.escape(str(record.get('run', '')))}</h1>"
        f'<p class="about">Method from {html.escape(str(record.get("paper", "")))}.</p>'
        f'<p class="about">Model {html.escape(str(record.get("model", "")))} on '
        f'{html.escape(str(record.get("device", "")))}; the run {state}; exported '
        f'{exported.strftime("%Y-%m-%d %H:%M %Z")}.</p>'
        f'<h2>Prompt</h2><div class="prompt">{html.escape(str(settings.get("prompt", "")))}</div>'
        f'<h2>Settings</h2><table class="settings"><tbody>{rows}</tbody></table>'
    )


def stats_section(record: Mapping[str, Any], lanes: dict[str, list[Step]], titles: dict[str, str]) -> str:
    finished = bool(record.get("finished"))
    sampled = record.get("settings", {}).get("decoding") == "sampling"
    # A record is exported after its run ended: an unfinished one was stopped.
    return f"<h2>The numbers</h2>{stats_html(lanes, titles, finished, not finished, sampled)}"


def panes_section(lanes: dict[str, list[Step]], titles: dict[str, str], decode: Callable[[list[int]], str]) -> str:
    # Plain decoding emits one token per pass: bands would only say that; every other lane drafts.
    panes = "".join(f'<div class="pane">{pane_html(titles[lane], steps, decode, banded=lane != "ar")}</div>'
                    for lane, steps in lanes.items())
    return f'<h2>The outputs</h2><div class="lanes">{panes}</div>{legend_html()}'


def step_label(step: Step, last: Step) -> str:
    return f"step {step.index} of {last.index}" + (" (the prefill)" if step.index == 0 else "")


def step_data(steps: list[Step], token_text: Callable[[int], str], limit: int) -> tuple[list[Json], int]:
    """The embedded steps (label, tree figure, rows table) and the position the slider opens on."""
    shown = shown_steps(steps, limit)
    data = [{"label": step_label(steps[i], steps[-1]), "tree": figure_json(tree_figure(steps[i], token_text)),
             "rows": rows_table_html(steps[i], token_text, max_rows=REPLAY_ROWS)} for i in shown]
    return data, shown.index(most_accepted_step(steps))


def steps_section(steps: list[Step], embedded: int, start: int) -> str:
    """The slider, the tree and rows placeholders the script fills, and a note when steps were left out."""
    if not steps:
        return '<h2>Token Recycling, step by step</h2><p class="howto">This record has no Token Recycling steps.</p>'
    note = ""
    if embedded < len(steps):
        note = (f'<p class="howto">This replay holds {embedded:,} of the run\'s {len(steps):,} steps, evenly '
                "spaced (first and last included): the slider skips the others to keep the file small.</p>")
    return (
        "<h2>Token Recycling, step by step</h2>"
        '<p class="howto">Move the slider (or use the arrow keys on it) to see the draft tree each forward '
        "pass verified, and the adjacency-matrix rows that pass overwrote.</p>"
        f'{note}<div class="step-control"><input type="range" id="step" min="0" max="{embedded - 1}" step="1" '
        f'value="{start}" aria-label="Token Recycling step"><output id="step-label" for="step"></output></div>'
        '<div class="step-view"><div id="tree"></div><div id="rows" class="rows-box"></div></div>'
    )


def chart_figures(lanes: dict[str, list[Step]]) -> dict[str, go.Figure]:
    return {
        "chart-time": tokens_vs_time(lanes),
        "chart-speedup": speedup_over_steps(lanes),
        "chart-hist": accepted_histogram(lanes),
        "chart-mat": mat_over_steps(lanes),
    }


def replay_html(record: Mapping[str, Any], token_text: Callable[[int], str], decode: Callable[[list[int]], str],
                titles: Mapping[str, str] | None = None, exported: datetime | None = None,
                max_steps: int = MAX_STEPS) -> str:
    """The whole page for `record` (what `webapp.session.Run.record` returns, also after a JSON round
    trip). `token_text` and `decode` are the model's (`LoadedModel.token_text`, `.decode`); `titles`
    overrides lane headings by lane key; `exported` is the date the page states (default: now, UTC);
    at most about `max_steps` Token Recycling steps are embedded (`shown_steps`)."""
    lanes = {lane: steps_from_dicts(items) for lane, items in record.get("steps", {}).items()}
    names = {lane: lane_title(record, lane, titles) for lane in lanes}
    tr = lanes.get("tr", [])
    steps, start = step_data(tr, token_text, max_steps) if tr else ([], 0)
    charts = chart_figures(lanes)
    data = {"template": template_json(), "charts": {key: figure_json(fig) for key, fig in charts.items()},
            "steps": steps}
    body = (header_html(record, exported or datetime.now(UTC)) + '<p id="replay-error" class="howto"></p>'
            + stats_section(record, lanes, names) + panes_section(lanes, names, decode)
            + steps_section(tr, len(steps), start)
            + '<h2>The whole run</h2><div class="charts">'
            + "".join(f'<div id="{key}"></div>' for key in charts) + "</div>")
    title = f"Token Recycling replay: run {record.get('run', '')}, {record.get('model', '')}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{palette_css()}{APP_CSS.read_text()}{PAGE_CSS}</style></head><body>"
        f'{body}<noscript><p class="howto">The figures and the step slider need JavaScript.</p></noscript>'
        f'<script type="application/octet-stream" id="replay-data">{pack(data)}</script>'
        f"<script>{get_plotlyjs()}</script><script>{PAGE_JS}</script></body></html>"
    )
