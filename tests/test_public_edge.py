"""The app in front of strangers, through gradio_client on a tiny model: Stop from a run's first instant,
one limit in tokens, bad values of any type answered in one line (one log line, no traceback),
unexpected errors logged once under an id the visitor sees, and no files left behind."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest

import app
from tr.specs import MAX_PROMPT_TOKENS
from webapp.downloads import Downloads
from app_client import FIELDS, GOOD, client, plain, run



def test_stop_reaches_a_run_from_its_first_update(app_url):
    c = client(app_url)
    job = c.submit(**(GOOD | dict(max_new_tokens=1024, template="tiny-4")), api_name="/run")
    deadline = time.monotonic() + 60
    while not job.outputs():  # the first update: the run has begun, nothing decoded is needed
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.01)
    first = dict(zip(FIELDS, job.outputs()[0]))
    assert first["message"] == "Running…", first["message"]  # sent before any decoding step
    message = c.predict("the", api_name="/stop")[0]
    assert re.match(r"Stopped run \d+\.", message), message
    last = dict(zip(FIELDS, job.result(timeout=60)))
    assert "Done" not in (last["message"] or "")


@pytest.mark.parametrize("prompt, needle", [
    ("word " * (MAX_PROMPT_TOKENS + 10), f"tokens, at most {MAX_PROMPT_TOKENS:,} are accepted"),
    ("😀" * 3000, f"at most {MAX_PROMPT_TOKENS:,} are accepted"),
    ("x" * (32 * MAX_PROMPT_TOKENS + 1), f"far more than the {MAX_PROMPT_TOKENS:,} tokens accepted"),
])
def test_one_prompt_limit_in_tokens_says_the_limit_and_the_count(app_url, prompt, needle):
    result = run(client(app_url), prompt=prompt)
    assert needle in result["message"], result["message"][:300]


@pytest.mark.parametrize("changes, needle", [
    (dict(k=99), "k must be a whole number from 1 to 32, got 99"),
    (dict(k="eight"), "k must be a whole number from 1 to 32, got 'eight'"),
    (dict(max_new_tokens=0), "Max new tokens must be a whole number from 1 to 1024, got 0"),
    (dict(max_new_tokens=2.5), "Max new tokens must be a whole number from 1 to 1024, got 2.5"),
    (dict(max_new_tokens="lots"), "Max new tokens must be a whole number"),
    (dict(max_new_tokens=None), "Max new tokens must be a whole number"),
    (dict(decoding="sampling", top_p=0.0), "Top-p must be a number in (0.0, 1.0], got 0.0"),
    (dict(decoding="sampling", seed=10**30), "Seed must be a whole number from 0 to 2147483647"),
    (dict(start="lukewarm"), "Start must be one of hot, cold, seeded, primed, got 'lukewarm'"),
    (dict(template=["auto"]), "Draft tree must be one of auto"),
    (dict(prompt=123), "The prompt is empty"),
])
def test_wrong_values_of_any_type_get_one_line_and_one_log_line(app_url, changes, needle, caplog):
    c = client(app_url)
    with caplog.at_level(logging.INFO, logger="token-recycling-app"):
        result = run(c, **changes)
    assert needle in plain(result["message"]), result["message"]
    records = [r for r in caplog.records if r.name == "token-recycling-app"]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert "Done" in run(c, max_new_tokens=4)["message"]


def test_the_lookup_survives_any_text_and_the_app_keeps_serving(app_url):
    c = client(app_url)
    for text in ("#" + "9" * 5000, "#²", "#-1", "#", 42, None, "x" * 100_000):
        html = c.predict(text, api_name="/lookup")
        assert "Traceback" not in html and ("token id" in html or "row" in html or "Type a word" in html
                                            or "must be text" in html), html[:200]
    assert "not created yet" in c.predict("#" + "9" * 5000, api_name="/reset_matrix")[1]
    assert "Done" in run(c)["message"]


def test_an_unexpected_error_is_logged_once_with_the_id_the_visitor_sees(app_url, monkeypatch, caplog):
    from webapp import views

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "lookup_html", broken)
    with caplog.at_level(logging.INFO, logger="token-recycling-app"):
        html = client(app_url).predict("the", api_name="/lookup")
    shown = re.search(r"error id ([0-9a-f]{8})", html)
    assert shown, html
    records = [r for r in caplog.records if r.name == "token-recycling-app"]
    assert len(records) == 1 and records[0].exc_info and shown.group(1) in records[0].getMessage()


def test_downloads_are_replaced_removed_with_their_session_and_expire():
    now = [1000.0]
    downloads = Downloads(max_age_s=60, clock=lambda: now[0])
    try:
        first = downloads.write({"run": 1})
        second = downloads.write({"run": 2}, replaces=first)
        assert downloads.files() == [Path(second)] and json.loads(Path(second).read_text()) == {"run": 2}
        others = [downloads.write({"run": n}) for n in range(5)]
        downloads.remove(others[0])  # a session that ended
        assert len(downloads.files()) == 5
        now[0] += 61
        downloads.write({"run": 9})  # every write sweeps what expired
        assert len(downloads.files()) == 1
    finally:
        downloads.close()
    assert not downloads.folder.exists()


def test_many_sessions_leave_at_most_one_file_each_and_none_once_expired(app_url):
    import conftest

    downloads = conftest.APP_DOWNLOADS[app_url]
    before = len(downloads.files())
    clients = [client(app_url) for _ in range(6)]
    for c in clients:
        run(c)
        run(c)  # a session's second run replaces its file
    assert len(downloads.files()) <= before + len(clients)
    downloads.max_age_s = 0
    downloads.sweep()
    assert downloads.files() == []


def test_a_bad_port_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--port", "99999"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("argument --port: must be a whole number from 1 to 65535, got '99999'")
    assert not any("Traceback" in line for line in err)


def test_a_page_load_copies_no_model(tiny_model_dir):
    """Gradio deep-copies the page's config for every page load: nothing in it may lead to the model (a
    bound method did, copying the whole model per visitor)."""
    import types

    import torch

    from tr.costs import CostCurve, LearnedCost
    from tr.device.model import load_model
    from webapp.layout import build_demo
    from webapp.runner import race_runner

    lm = load_model(str(tiny_model_dir))
    demo = build_demo(lm, LearnedCost(CostCurve([1, 2], [0.01, 0.011], 64, "cpu")), race_runner(lm))
    seen, stack = set(), [demo.config]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        assert not isinstance(value, (types.MethodType, torch.nn.Module, torch.Tensor)), type(value)
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif hasattr(value, "__dict__") and not isinstance(value, (types.FunctionType, type)):
            stack.extend(vars(value).values())


def test_a_sessions_copy_of_the_page_does_not_grow_with_its_updates(tiny_model_dir):
    """Gradio adds a component to a session's copy of the page for every view an event updates by
    property (a skipped view included): without pruning, 3 races added about 50."""
    from conftest import launch_app
    from tr.device.model import load_model

    demo, port = launch_app(load_model(str(tiny_model_dir)))
    try:
        c = client(f"http://127.0.0.1:{port}/")
        for n in range(3):
            assert "Done" in run(c, max_new_tokens=4, prompt=f"Count to {n + 3}.")["message"]
        assert c.predict("the", api_name="/stop")[0] == "Nothing is running."  # every other view skipped
        (session,) = demo.state_holder.session_data.values()
        assert set(session.blocks_config.blocks) == set(demo.default_config.blocks)
        assert set(session.config_values) <= set(demo.default_config.blocks)
    finally:
        demo.close()
