"""The race session without any UI: runs share a hot matrix, history is bounded, records and downloads are
complete, and custom trees are refused with readable reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tr.costs import CostCurve, LearnedCost
from tr.device.model import load_model
from webapp.session import HISTORY_LIMIT, MAX_TREE_NODES, Session, parse_settings
from tr.trees import TreeError

SETTINGS = ["Count to five.", 12, "small-16", "", 8, "greedy", 0.7, 0.9, 0, "hot"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def race(lm, session: Session, settings: list) -> tuple:
    run, events, note = session.start(lm, parse_settings(*settings), None)
    assert run.advance(events, budget_s=60.0)
    run.finished = True
    session.remember(run)
    return run, note


def test_runs_share_the_matrix_until_k_changes_and_records_are_complete(tiny_lm):
    session = Session()
    first, note = race(tiny_lm, session, SETTINGS)
    matrix = session.matrix
    assert note == "" and matrix.rows_filled > 0
    second, _ = race(tiny_lm, session, SETTINGS)
    assert session.matrix is matrix and session.run is second and second.number == 2  # hot start
    record = second.record(tiny_lm)
    ar, tr = record["outputs"]["ar"], record["outputs"]["tr"]
    assert record["identical"] and ar["token_ids"] == tr["token_ids"] and len(ar["token_ids"]) == 12
    assert record["speedup"] == second.speedup() > 0 and json.dumps(record)  # serialisable as it is
    _, note = race(tiny_lm, session, [*SETTINGS[:4], 4, *SETTINGS[5:]])
    assert "fresh matrix with k=4" in note and session.matrix is not matrix and session.matrix.k == 4
    assert [h["run"] for h in session.history] == [1, 2, 3]


def test_auto_runs_keep_correcting_one_cost_curve(tiny_lm):
    """The app hands every run the same `LearnedCost`: each run's steps go on correcting the device's curve."""
    costs = LearnedCost(CostCurve([1, 2, 8, 32], [0.01, 0.011, 0.014, 0.025], 64, "cpu"))
    settings = parse_settings("Count to five.", 12, "auto", "", 8, "greedy", 0.7, 0.9, 0, "hot")
    session, steps = Session(), 0
    for _ in range(2):
        run, events, _ = session.start(tiny_lm, settings, costs)
        assert run.advance(events, budget_s=60.0)
        steps += len(run.steps["tr"]) - 1  # the prefill is not a verification pass
    assert sum(costs.weights) == pytest.approx(steps, rel=0.03)  # decayed, a little under the count
    # The second run's trees were sized by a curve the first run's steps had already corrected.
    assert run.steps["tr"][1].cost_curve.steps > 0.9 * (steps - len(run.steps["tr"]) + 1) > 0
    assert json.dumps(run.record(tiny_lm))  # the curve travels in the download


def test_history_is_bounded_and_the_download_goes_with_the_session(tiny_lm):
    session = Session()
    run, _ = race(tiny_lm, session, SETTINGS)
    for _ in range(HISTORY_LIMIT + 5):
        session.remember(run)
    assert len(session.history) == HISTORY_LIMIT
    path = Path(session.write_download(tiny_lm, run))
    assert json.loads(path.read_text())["run"] == 1
    assert session.write_download(tiny_lm, run) == str(path)  # one file per session, overwritten
    session.forget()
    assert not path.exists()


@pytest.mark.parametrize("custom, reason", [
    ("", "the custom tree is empty"),
    ("[[0], [1", "not valid JSON"),
    ('{"a": 1}', "must be a JSON list of paths"),
    ("[[0], [0, 9]]", "rank"),
    (json.dumps([[r] for r in range(8)] + [[r, s] for r in range(8) for s in range(8)]
                + [[r, s, t] for r in range(8) for s in range(8) for t in range(3)]), f"at most {MAX_TREE_NODES}"),
])
def test_broken_custom_trees_are_refused_with_the_reason(custom, reason):
    settings = parse_settings(*SETTINGS[:2], "custom JSON", custom, *SETTINGS[4:])
    with pytest.raises(TreeError, match=reason):
        settings.tree_paths()
