"""The replay export: step records survive the round trip through a run's record, the page is one
self-contained file (plotly.js inlined, nothing remote) that escapes a stranger's prompt, and in a browser
with the network cut off the step slider redraws the tree of the chosen step.

Runs are real races on the tiny random model (with the bundled tokenizer), as the app computes them.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
from dataclasses import asdict
from datetime import UTC, datetime

import pytest
from plotly.offline import get_plotlyjs

from tr.costs import CostCurve, LearnedCost
from tr.device.model import load_model
from tr.records import Step, steps_from_dicts
from viz import replay_html
from viz.replay import shown_steps
from viz.tree import most_accepted_step, title_of
from webapp.runner import race_chunks
from webapp.session import Run, Session
from webapp.settings import parse_settings

HOSTILE = "<script>alert(1)</script> Count to five."
CURVE = CostCurve([1, 2, 8, 32], [0.01, 0.011, 0.014, 0.025], 64, "cpu")
EXPORTED = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def race_run(lm, template: str, tokens: int, prompt: str = HOSTILE) -> Run:
    """One whole race as the app computes it."""
    settings = parse_settings({"prompt": prompt, "max_new_tokens": tokens, "template": template, "custom_json": "",
                               "k": 8, "decoding": "greedy", "temperature": 0.7, "top_p": 0.9, "seed": 0,
                               "start": "hot", "prompt_lookup": False})
    session = Session()
    matrix, _ = session.matrix_for(lm.vocab_size, settings.k)
    run = session.begin(settings, None)
    for chunk in race_chunks(lm, settings, lm.encode(settings.prompt), matrix, LearnedCost(CURVE)):
        run.add(chunk.steps)
    run.finished = True
    return run


@pytest.fixture(scope="module")
def auto_run(tiny_lm) -> Run:
    return race_run(tiny_lm, "auto", 24)


@pytest.fixture(scope="module")
def record(tiny_lm, auto_run) -> dict:
    """As the app's download holds it: through JSON."""
    return json.loads(json.dumps(auto_run.record(tiny_lm)))


def embedded(page: str) -> dict:
    """The page's packed data, unpacked as its script does."""
    packed = re.search(r'id="replay-data">([^<]*)</script>', page).group(1)
    return json.loads(gzip.decompress(base64.b64decode(packed)))


def test_steps_survive_asdict_and_json(auto_run):
    for steps in auto_run.steps.values():
        assert steps_from_dicts([asdict(s) for s in steps]) == steps
        assert steps_from_dicts(json.loads(json.dumps([asdict(s) for s in steps]))) == steps
    drafts = [s.draft for s in auto_run.steps["tr"] if s.draft]
    assert any(d.curve for d in drafts) and any(s.rows_written for s in auto_run.steps["tr"])  # nested types covered


def test_page_is_self_contained_and_escapes_the_prompt(tiny_lm, record):
    page = replay_html(record, tiny_lm.token_text, tiny_lm.decode, exported=EXPORTED)
    plotly_js = get_plotlyjs()
    assert plotly_js in page
    ours = page.replace(plotly_js, "")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|<link|@import|url\(""", ours, re.IGNORECASE)
    assert len(re.findall(r"<script", ours)) == 3  # data, plotly.js, the slider's script: none with a src
    assert "alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for fact in ("Turning Trash into Treasure", record["model"], "2025-03-01 12:30", "<td>template</td><td>auto</td>"):
        assert fact in page  # the paper, the model, the date, the settings
    data = embedded(page)
    assert len(data["steps"]) == len(record["steps"]["tr"]) and set(data["charts"]) == {
        "chart-time", "chart-speedup", "chart-hist", "chart-mat"}


def test_every_lane_gets_a_pane_and_long_runs_are_capped(tiny_lm, record):
    record = dict(record, steps=dict(record["steps"], pld=record["steps"]["tr"]),
                  outputs=dict(record["outputs"], pld=dict(record["outputs"]["tr"], method="Prompt <lookup>")))
    page = replay_html(record, tiny_lm.token_text, tiny_lm.decode, titles={"tr": "Recycled"}, max_steps=5)
    assert page.count('class="pane"') == 3
    assert "Recycled" in page and "Prompt &lt;lookup&gt;" in page and "Autoregressive" in page
    steps = steps_from_dicts(record["steps"]["tr"])
    shown = shown_steps(steps, 5)
    assert {0, len(steps) - 1, most_accepted_step(steps)} <= set(shown) and len(shown) <= 6
    assert len(embedded(page)["steps"]) == len(shown)
    assert f"holds {len(shown)} of the run's {len(steps)} steps" in page


def test_a_record_without_steps_still_renders(tiny_lm, record):
    page = replay_html(dict(record, steps={"ar": record["steps"]["ar"]}), tiny_lm.token_text, tiny_lm.decode)
    assert "no Token Recycling steps" in page and embedded(page)["steps"] == []


@pytest.mark.slow
def test_the_slider_redraws_the_chosen_step_offline(tiny_lm, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI=true requires the browser test to run", pytrace=False)
        pytest.skip("chromium is not installed")
    from playwright.sync_api import expect, sync_playwright

    run = race_run(tiny_lm, "small-16", 24)
    steps: list[Step] = run.steps["tr"]
    path = tmp_path / "replay.html"
    path.write_text(replay_html(json.loads(json.dumps(run.record(tiny_lm))), tiny_lm.token_text, tiny_lm.decode))
    start = most_accepted_step(steps)
    target = 2 if start != 2 else 3
    errors, remote, dialogs = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 900})

        def only_files(route):
            if route.request.url.startswith("file:"):
                route.continue_()
            else:
                remote.append(route.request.url)
                route.abort()

        context.route("**/*", only_files)
        page = context.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(path.as_uri())

        expect(page.locator("#tree .gtitle")).to_have_text(title_of(steps[start]))
        expect(page.locator(".prompt")).to_have_text(HOSTILE)
        for chart in ("#chart-time", "#chart-speedup", "#chart-hist", "#chart-mat"):
            expect(page.locator(f"{chart} .main-svg").first).to_be_visible()

        page.locator("#step").evaluate(
            "(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); }", target)
        expect(page.locator("#tree .gtitle")).to_have_text(title_of(steps[target]))
        expect(page.locator("#step-label")).to_have_text(f"step {target} of {steps[-1].index}")
        expect(page.locator("#rows")).to_contain_text(f"Step {target} ")
        assert page.locator("#tree .scatterlayer .trace").count() >= 4
        expect(page.locator("#replay-error")).to_be_empty()
        browser.close()
    assert not remote and not errors and not dialogs
