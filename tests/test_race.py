"""The fair race: each decoder's clock counts only its own work, and the one behind always moves.

No test sleeps: the decoders' clock runs on a fake timer the test advances, and the race's order is
checked on step streams whose elapsed times are given."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tiny_models import tiny_model
from tr import decoding
from tr.decoding import Clock, autoregressive, token_recycling
from tr.drafts import TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.race import race
from tr.records import Step
from tr.trees import DraftTree, best_first_template


class FakeTimer:
    """A clock that moves only when the test says (each reading also ticks by `tick`, the decoder's own work)."""

    def __init__(self, tick: float = 0.001):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_clock_splits_forward_from_overhead_and_resume_drops_the_pause():
    timer = FakeTimer(tick=0.0)
    clock = Clock(torch.device("cpu"), timer)
    timer.now += 2.0  # drafting
    clock.forward_s = 3.0  # as `timed` would add
    timer.now += 3.0
    assert clock.split() == (3.0, 2.0)
    timer.now += 100.0  # the consumer renders, or the other decoder takes its turn
    clock.resume()
    timer.now += 1.0
    assert clock.split() == (0.0, 1.0)


def test_time_spent_by_the_consumer_is_not_counted(monkeypatch):
    timer = FakeTimer()
    monkeypatch.setattr(decoding, "Clock", lambda device: Clock(device, timer))
    pause = 10.0
    steps = []
    for step in autoregressive(tiny_model("llama", 96, seed=0), [1, 2, 3], 6):
        steps.append(step)
        timer.now += pause  # rendering, or the other decoder's turn
    assert len(steps) == 6
    assert all(s.overhead_s < 1.0 for s in steps)
    assert steps[-1].elapsed_s < 1.0


def stream(name: str, elapsed: list[float], log: list[str]) -> Iterator[Step]:
    """Steps with the given running compute times; `log` records when each is taken."""
    for i, seconds in enumerate(elapsed):
        log.append(f"{name}{i}")
        yield Step(i, [i], total_forward_s=seconds, finished=i == len(elapsed) - 1)


def test_race_advances_whichever_decoder_is_behind():
    log: list[str] = []
    events = list(race({"ar": stream("ar", [1.0, 2.0, 3.0, 4.0], log), "tr": stream("tr", [2.5, 5.0], log)}))
    assert [f"{name}{step.index}" for name, step in events] == ["ar0", "tr0", "ar1", "ar2", "tr1", "ar3"]
    assert log == ["ar0", "tr0", "ar1", "ar2", "tr1", "ar3"]  # never a step taken before its turn


@pytest.mark.parametrize("finish_early", [True, False])
def test_race_stops_taking_from_a_finished_decoder(finish_early):
    """A decoder that finished is not advanced again; one whose stream ends without `finished` is dropped."""
    def unfinished() -> Iterator[Step]:
        yield Step(0, [0], total_forward_s=0.5)

    log: list[str] = []
    runners = {"ar": stream("ar", [1.0, 2.0], log), "tr": stream("tr", [0.5], log) if finish_early else unfinished()}
    names = [name for name, _ in race(runners)]
    assert names == ["ar", "tr", "ar"]  # level at the start: the first named moves first


def test_race_always_advances_the_decoder_that_is_behind():
    model = tiny_model("qwen2", 96, seed=0)
    matrix = AdjacencyMatrix(96, 8)
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("small-16", 8)))
    runners = {
        "ar": autoregressive(model, [5, 6, 7], 30),
        "tr": token_recycling(model, [5, 6, 7], 30, matrix, drafter),
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
