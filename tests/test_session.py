"""A session and its races without any UI: runs share a hot matrix, the runner's chunks carry the matrix
and the cost curve back, history is bounded, records and downloads are complete."""

from __future__ import annotations

import json
import pickle

import pytest

from tr.costs import CostCurve, LearnedCost
from tr.device.model import load_model
from webapp.runner import race_chunks
from webapp.session import HISTORY_LIMIT, Session
from webapp.settings import FIELDS, parse_settings

SETTINGS = dict(zip(FIELDS, ["Count to five.", 12, "small-16", "", 8, "greedy", 0.7, 0.9, 0, "hot", False]))
CURVE = CostCurve([1, 2, 8, 32], [0.01, 0.011, 0.014, 0.025], 64, "cpu")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def race(lm, session: Session, values: dict, costs: LearnedCost | None = None) -> tuple:
    """One whole race as the app runs it; returns the run and the last chunk."""
    settings = parse_settings(values)
    matrix, _ = session.matrix_for(lm.vocab_size, settings.k)
    run = session.begin(settings, None)
    for chunk in race_chunks(lm, settings, lm.encode(settings.prompt), matrix, costs or LearnedCost(CURVE)):
        run.add(chunk.steps)
    assert chunk.done
    session.matrix = chunk.matrix
    run.finished = True
    session.remember(run)
    return run, chunk


def test_runs_share_the_matrix_until_k_changes_and_records_are_complete(tiny_lm):
    session = Session()
    race(tiny_lm, session, SETTINGS)
    matrix = session.matrix
    assert matrix.rows_filled > 0
    second, last = race(tiny_lm, session, SETTINGS)
    assert session.matrix is matrix and session.run is second and second.number == 2  # hot start
    record = second.record(tiny_lm)
    ar, tr = record["outputs"]["ar"], record["outputs"]["tr"]
    assert record["identical"] and ar["token_ids"] == tr["token_ids"] and len(ar["token_ids"]) == 12
    assert record["speedup"] == second.speedup() > 0 and json.dumps(record)  # serialisable as it is
    assert record["settings"]["template"] == "small-16" and record["settings"]["start"] == "hot"
    assert pickle.loads(pickle.dumps(last)).matrix.rows_filled == matrix.rows_filled  # crosses a process boundary
    assert session.matrix_for(tiny_lm.vocab_size, 4) == (session.matrix, True) and session.matrix.k == 4
    assert [h["run"] for h in session.history] == [1, 2]


def test_auto_runs_keep_correcting_one_cost_curve(tiny_lm):
    """The app hands every run the same `LearnedCost`: each run's steps go on correcting the device's curve."""
    costs = LearnedCost(CURVE)
    session, steps = Session(), 0
    for _ in range(2):
        run, last = race(tiny_lm, session, SETTINGS | {"template": "auto"}, costs)
        assert last.costs is costs
        steps += len(run.steps["tr"]) - 1  # the prefill is not a verification pass
    assert sum(costs.weights) == pytest.approx(steps, rel=0.03)  # decayed, a little under the count
    # The second run's trees were sized by a curve the first run's steps had already corrected.
    assert run.steps["tr"][1].draft.curve.steps > 0.9 * (steps - len(run.steps["tr"]) + 1) > 0
    assert json.dumps(run.record(tiny_lm))  # the curve travels in the download


def test_a_first_race_without_a_curve_measures_one_and_brings_it_back(tiny_lm):
    settings = parse_settings(SETTINGS | {"template": "auto", "max_new_tokens": 4})
    session = Session()
    matrix, _ = session.matrix_for(tiny_lm.vocab_size, 8)
    *_, last = race_chunks(tiny_lm, settings, tiny_lm.encode(settings.prompt), matrix, None)
    assert last.done and isinstance(last.costs, LearnedCost) and last.costs.curve.sizes[0] == 1


def test_a_stopped_race_ends_without_a_last_chunk(tiny_lm):
    settings = parse_settings(SETTINGS | {"max_new_tokens": 64})
    matrix, _ = Session().matrix_for(tiny_lm.vocab_size, 8)
    chunks = list(race_chunks(tiny_lm, settings, tiny_lm.encode(settings.prompt), matrix, LearnedCost(CURVE),
                              stopped=lambda: True))
    assert chunks == []


def test_history_is_bounded(tiny_lm):
    session = Session()
    run, _ = race(tiny_lm, session, SETTINGS)
    for _ in range(HISTORY_LIMIT + 5):
        session.remember(run)
    assert len(session.history) == HISTORY_LIMIT


@pytest.mark.parametrize("custom, reason", [
    ("", "the tree is empty"),
    ("[[0], [1", "not valid JSON"),
    ('{"a": 1}', "unknown tree"),
    ("[[0], [0, 9]]", "rank"),
])
def test_broken_custom_trees_are_refused_with_the_reason(custom, reason):
    with pytest.raises(ValueError, match=reason):
        parse_settings(SETTINGS | {"template": "custom JSON", "custom_json": custom})


def test_a_tree_checked_for_a_larger_k_than_the_matrix_is_refused(tiny_lm):
    from tr.generate import decode_steps
    from tr.matrix import AdjacencyMatrix
    from tr.specs import parse_tree

    matrix = AdjacencyMatrix(tiny_lm.vocab_size, 4)
    with pytest.raises(ValueError, match="ranks up to k=8, but the matrix keeps k=4"):
        decode_steps(tiny_lm, [1, 2, 3], "tr", 4, matrix=matrix, tree=parse_tree("paper-80", 8))
