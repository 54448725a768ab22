"""The Gradio app end to end through gradio_client, on a tiny random model launched in this process.

Each `Client` is its own browser-like session, which is what the isolation test relies on.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import app
from app_client import client, run
from tr.records import steps_from_dicts
from viz import interesting_step
from webapp.settings import FIELDS as SETTINGS, MAX_PROMPT_CHARS, parse_settings

ROOT = Path(__file__).resolve().parents[1]


def download(result: dict) -> dict:
    return json.loads(Path(result["download"]["value"]).read_text())


def plotly_traces(plot: dict) -> list:
    assert plot["type"] == "plotly"
    return json.loads(plot["plot"])["data"]


def rows_filled(info: str) -> int:
    return int(re.search(r"([\d,]+) of [\d,]+ rows filled", info).group(1).replace(",", ""))


def test_run_returns_identical_outputs_steps_figures_and_download(app_url):
    c = client(app_url)
    result = run(c, template="paper-80", max_new_tokens=20)
    assert result["message"].startswith("Done"), result["message"]
    assert "done" in result["ar_pane"] and "done" in result["tr_pane"]
    assert 'class="tr-band"' in result["tr_pane"]  # banded by step
    assert "identical" in result["stats"] and "not identical" not in result["stats"]
    assert "speed-up" in result["stats"] and "MAT" in result["stats"]

    record = download(result)
    ar, tr = record["outputs"]["ar"], record["outputs"]["tr"]
    assert ar["token_ids"] == tr["token_ids"] and ar["text"] == tr["text"]  # lossless under greedy decoding
    assert 1 <= len(tr["token_ids"]) <= 20 and record["identical"] and record["first_difference"] is None
    assert record["settings"]["template"] == "paper-80" and record["settings"]["max_new_tokens"] == 20
    for name in ("ar", "tr"):
        steps = record["steps"][name]
        assert [s["index"] for s in steps] == list(range(len(steps)))  # every step, in order
        assert [t for s in steps for t in s["tokens"]] == record["outputs"][name]["token_ids"]
        assert steps[-1]["finished"] and steps[-1]["total_tokens"] == len(record["outputs"][name]["token_ids"])
    tr_steps = record["steps"]["tr"]
    assert all(len(s["draft"]["tokens"]) == 81 for s in tr_steps[1:])  # paper-80: root + 80 drafts
    assert all(s["rows_written"] for s in tr_steps[1:])

    # The slider spans every step and opens on one that shows drafts both accepted and rejected.
    assert result["slider"]["maximum"] == max(len(tr_steps) - 1, 1)
    assert result["slider"]["value"] == interesting_step(steps_from_dicts(tr_steps))
    assert plotly_traces(result["tree"]), "the tree of that step is drawn"
    assert "<table" in result["rows"]
    assert rows_filled(result["matrix_info"]) > 0
    for chart in ("chart_time", "chart_speedup", "chart_hist", "chart_mat"):
        assert plotly_traces(result[chart]), chart
    assert "| 1 |" in result["history"]

    # Scrubbing: the first decoding step's tree and rows.
    tree, caption, why, rows, verify, mask = c.predict(index=1, api_name="/show_step")
    assert "Step 1:" in json.loads(tree["plot"])["layout"]["title"]["text"] and "<b>Step 1:</b> drafted" in caption
    # The device's cost curve and the timings it is fitted to come first.
    assert [trace["mode"] for trace in plotly_traces(why)][:2] == ["lines", "markers"]
    assert "Step 1 " in rows
    assert "Step 1:" in verify and verify.count('data-node="') == 81 + 1  # every node, and the bonus
    assert plotly_traces(mask), "the attention mask of that step is drawn"


@pytest.mark.parametrize("changes, expected", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt is too long"),
    (dict(template="custom JSON", custom_json="[[0], [1"), "not valid JSON"),
    (dict(template="custom JSON", custom_json="[[0, 0]]"), "no parent"),
    (dict(template="paper-800"), "Draft tree must be one of auto, auto-nolookup, paper-80"),
])
def test_bad_input_gives_a_message_and_the_app_keeps_serving(app_url, changes, expected):
    c = client(app_url)
    result = run(c, **changes)
    assert expected in result["message"], result["message"]
    assert "Traceback" not in result["message"]
    assert run(c, max_new_tokens=4)["message"].startswith("Done")


def test_settings_are_checked_again_before_a_run():
    # What a widget cannot send (e.g. an empty number box) still gets a clear message, not a stack trace.
    values = dict(zip(SETTINGS, ["Hi", 8, "paper-80", "", 8, "sampling", 0.7, 0.9, None, "hot", False]))
    with pytest.raises(ValueError, match="Seed must be a whole number"):
        parse_settings(values)
    for name, value, expected in [("k", 33, "k must be"), ("max_new_tokens", 2.5, "Max new tokens must be"),
                                  ("top_p", 0.0, "Top-p must be"), ("decoding", "beam", "Decoding must be"),
                                  ("temperature", float("nan"), "Temperature must be"),
                                  ("prompt_lookup", "yes", "Prompt lookup lane must be true or false")]:
        with pytest.raises(ValueError, match=expected):
            parse_settings(values | {"seed": 0, name: value})
    with pytest.raises(ValueError, match="missing settings: prompt_lookup"):
        parse_settings({name: values[name] for name in SETTINGS[:-1]})


def test_custom_tree_and_sampling_run(app_url):
    result = run(client(app_url), template="custom JSON", custom_json="[[0], [1], [0, 0]]", decoding="sampling",
                 seed=3, start="seeded", max_new_tokens=8)
    assert result["message"].startswith("Done"), result["message"]
    record = download(result)
    assert all(len(s["draft"]["tokens"]) == 4 for s in record["steps"]["tr"][1:])
    assert record["settings"]["decoding"] == "sampling" and record["settings"]["seed"] == 3


def test_auto_tree_run_says_what_it_chose_and_why(app_url):
    c = client(app_url)
    run(c, template="paper-80", max_new_tokens=30)  # a hot matrix: the same text again has rows to draft from
    result = run(c, template="auto", max_new_tokens=30)
    assert re.search(r"auto trees of \d+(–\d+)? drafts$", result["message"]), result["message"]
    assert re.search(r"expected [\d.]+ tokens per call, the run got MAT [\d.]+", result["why_note"]), result["why_note"]
    record = download(result)
    assert record["identical"]
    steps = record["steps"]["tr"][1:]
    assert all(s["draft"]["predicted_cost"] > 0 and len(s["draft"]["considered"]) >= len(s["draft"]["tokens"]) - 1
               for s in steps)
    weighed = next(i for i, s in enumerate(steps, start=1) if s["draft"]["considered"])
    why = plotly_traces(c.predict(index=weighed, api_name="/show_step")[2])
    assert [t["name"] for t in why] == ["measured cost (one-token passes)", "timings the cost is fitted to",
                                        "expected tokens per call", "expected speed-up = tokens ÷ cost"]


def written_rows(record: dict) -> set[int]:
    return {w["token"] for s in record["steps"]["tr"] for w in s["rows_written"]}


def test_sessions_do_not_share_matrix_rows(app_url):
    a, b = client(app_url), client(app_url)
    # Both sessions race at once (the queue runs them one after the other): each matrix holds exactly the
    # rows its own run wrote.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, a, prompt="Count from one to ten.", start="seeded"),
                   pool.submit(run, b, prompt="Name three colours.", template="tiny-4", start="cold")]
        result_a, result_b = (f.result(timeout=240) for f in futures)
    rows_a, rows_b = written_rows(download(result_a)), written_rows(download(result_b))
    assert rows_filled(result_a["matrix_info"]) == len(rows_a)
    assert rows_filled(result_b["matrix_info"]) == len(rows_b)

    only_a = sorted(rows_a - rows_b)
    assert only_a, "the two runs wrote different rows"
    assert "Candidates after" in a.predict(f"#{only_a[0]}", api_name="/lookup")
    assert "has not been written yet" in b.predict(f"#{only_a[0]}", api_name="/lookup")

    # A third visitor has no matrix at all until it runs.
    c = client(app_url)
    assert "has not been written yet" in c.predict(f"#{only_a[0]}", api_name="/lookup")
    message, info, _, = c.predict("the", api_name="/reset_matrix")
    assert "not created yet" in info

    # Resetting B's matrix leaves A's alone.
    _, info_b, _ = b.predict("the", api_name="/reset_matrix")
    assert rows_filled(info_b) == 0
    assert "Candidates after" in a.predict(f"#{only_a[0]}", api_name="/lookup")


def test_changing_k_starts_a_fresh_matrix(app_url):
    c = client(app_url)
    run(c, k=8, max_new_tokens=4)
    result = run(c, k=4, max_new_tokens=4)
    assert "k changed" in result["message"] and "(k=4)" in result["matrix_info"]
    record = download(result)
    assert rows_filled(result["matrix_info"]) == len(written_rows(record))


@pytest.fixture()
def app_logger_kept():
    """`app.main` configures the app's logger (a handler on this test's captured stderr, no propagation):
    put it back afterwards, or later tests' log lines go to a closed stream instead of their capture."""
    logger = logging.getLogger("token-recycling-app")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


def test_cli_help_and_load_failure(capsys, app_logger_kept):
    # In process: a subprocess would spend most of a minute importing torch and gradio again.
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--device", "--dtype", "--port", "--host", "--share"):
        assert flag in help_text

    assert app.main(["--model", str(ROOT / "no-such-model")]) == 1
    captured = capsys.readouterr()
    assert "Loading model" in captured.out  # the progress message comes first
    assert "Traceback" not in captured.err
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error:") and "no-such-model" in errors[0]
