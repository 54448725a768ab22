"""The fair race: each decoder's clock counts only its own work, and the one behind always moves."""

from __future__ import annotations

import time

from tiny_models import tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.matrix import AdjacencyMatrix
from tr.race import race
from tr.trees import DraftTree, best_first_template


def test_time_spent_by_the_consumer_is_not_counted():
    model = tiny_model("llama", 96, seed=0)
    pause = 0.05
    steps = []
    for step in autoregressive(model, [1, 2, 3], 6):
        steps.append(step)
        time.sleep(pause)  # rendering, or the other decoder's turn
    assert all(s.overhead_s < pause / 2 for s in steps)
    assert steps[-1].elapsed_s < pause * len(steps) / 2


def test_race_always_advances_the_decoder_that_is_behind():
    model = tiny_model("qwen2", 96, seed=0)
    matrix = AdjacencyMatrix(96, 8)
    runners = {
        "ar": autoregressive(model, [5, 6, 7], 30),
        "tr": token_recycling(model, [5, 6, 7], 30, matrix, DraftTree.from_paths(best_first_template("small-16", 8))),
    }
    clocks = {"ar": 0.0, "tr": 0.0}
    finished = set()
    for name, step in race(runners):
        assert name not in finished
        others = [c for n, c in clocks.items() if n != name and n not in finished]
        assert all(clocks[name] <= c for c in others)  # it was behind (or level) when it moved
        clocks[name] = step.elapsed_s
        if step.finished:
            finished.add(name)
    assert finished == {"ar", "tr"}
