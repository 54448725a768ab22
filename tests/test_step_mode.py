"""Step mode: a race paused between Token Recycling's steps, one step per click, bounded in how many
races wait at once; and a paused race that goes on live gives the same race as one run live."""

from __future__ import annotations

import re

import pytest

from tr.costs import CostCurve, LearnedCost
from tr.device.model import load_model
from tr.records import Step, token_ids
from webapp.downloads import Downloads
from webapp.handlers import Handlers
from webapp.runner import Chunk, race_runner
from webapp.session import Session
from webapp.settings import FIELDS
from webapp.stepping import PausedRaces, Stepper

SETTINGS = dict(zip(FIELDS, ["Count to five.", 16, "small-16", "", 8, "greedy", 0.7, 0.9, 0, "hot", False]))
CURVE = CostCurve([1, 2, 8, 32], [0.01, 0.011, 0.014, 0.025], 64, "cpu")


def chunks(names: str) -> list[Chunk]:
    """One chunk per letter (a: plain decoding, t: Token Recycling), numbered per side; the last is done."""
    count = {"a": 0, "t": 0}
    made = []
    for letter in names:
        made.append(Chunk([("ar" if letter == "a" else "tr", Step(count[letter], [1]))]))
        count[letter] += 1
    made[-1].done = True
    return made


def test_each_advance_ends_at_token_recyclings_next_verification_step():
    stepper = Stepper(iter(chunks("atatatataa")))
    first = stepper.advance()  # the prefills, then the first verification step
    assert [(n, s.index) for n, s in first] == [("ar", 0), ("tr", 0), ("ar", 1), ("tr", 1)]
    assert [(n, s.index) for n, s in stepper.advance()] == [("ar", 2), ("tr", 2)]
    assert [(n, s.index) for n, s in stepper.advance()] == [("ar", 3), ("tr", 3)]
    assert not stepper.finished
    assert [(n, s.index) for n, s in stepper.advance()] == [("ar", 4), ("ar", 5)]  # TR has finished
    assert stepper.finished and stepper.last.done


def test_the_rest_of_a_paused_race_comes_whole_and_ends_done():
    stepper = Stepper(iter([Chunk([("ar", Step(0, [1])), ("tr", Step(0, [1])), ("tr", Step(1, [1])),
                                   ("ar", Step(1, [1]))])] + chunks("aat")))
    stepper.advance()
    rest = list(stepper.rest())
    assert [(n, s.index) for c in rest for n, s in c.steps] == [("ar", 1), ("ar", 0), ("ar", 1), ("tr", 0)]
    assert rest[-1].done and not rest[0].done


class Closing:
    """A chunk iterator that records whether it was closed."""

    def __init__(self):
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration

    def close(self):
        self.closed = True


def test_paused_races_are_bounded_in_number_and_idle_time():
    now = [0.0]
    paused = PausedRaces(limit=2, timeout_s=60, clock=lambda: now[0])
    told = []
    races = [Stepper(Closing()) for _ in range(4)]
    for i, race in enumerate(races[:3]):
        paused.keep(race, on_close=lambda i=i: told.append(i))
    assert told == [0] and races[0].chunks.closed and not races[1].chunks.closed  # the least recently stepped
    now[0] = 30
    paused.keep(races[1], on_close=lambda: told.append(1))  # stepped again: now the most recent
    now[0] = 80
    paused.keep(races[3], on_close=lambda: told.append(3))  # race 2 idle for 80 s: closed
    assert told == [0, 2] and set(paused.races) == {id(races[1]), id(races[3])}
    paused.remove(races[1])
    assert set(paused.races) == {id(races[3])} and not races[1].chunks.closed


@pytest.fixture(scope="module")
def handlers(tiny_model_dir, tmp_path_factory):
    lm = load_model(str(tiny_model_dir))
    downloads = Downloads(tmp_path_factory.mktemp("downloads"))
    yield Handlers(lm, LearnedCost(CURVE), race_runner(lm), downloads, PausedRaces(limit=1))
    downloads.close()


def last(views):
    return list(views)[-1]


def test_next_step_advances_one_verification_step_per_click_then_continue_runs_live(handlers):
    session = Session()
    shown = last(handlers.step(session, SETTINGS, ""))
    assert session.stepper is not None and "paused after Token Recycling's step 1:" in shown["message"]
    for expected in (2, 3):
        views = last(handlers.step(session, SETTINGS | {"prompt": "ignored while paused"}, ""))
        assert session.run.steps["tr"][-1].index == expected
        assert views["tree"].layout.title.text.startswith(f"Step {expected}")
        assert re.search(rf"Step {expected}\b", views["caption"])  # the step's verdict under its tree
        # A few steps are no race yet: no speed-up figure, and no sentence built on one.
        headline = views["stats"].split('class="headline">')[1].split("</p>")[0]
        assert "too early to tell" in headline and not re.search(r"<b>[\d.]+×</b>", headline)
        assert 'class="note"' not in views["stats"]
    assert session.run.settings.prompt == "Count to five."
    final = last(handlers.resume(session, ""))
    assert final["message"].startswith("Done") and session.stepper is None and session.run.finished
    assert token_ids(session.run.steps["ar"]) == token_ids(session.run.steps["tr"])
    assert session.history[-1]["identical"] == "yes"

    live = Session()
    last(handlers.run(live, SETTINGS, ""))
    assert token_ids(live.run.steps["tr"]) == token_ids(session.run.steps["tr"])


def test_stop_ends_a_paused_race_and_a_new_race_replaces_it(handlers):
    session, other = Session(), Session()
    last(handlers.step(session, SETTINGS, ""))
    stepper = session.stepper
    assert handlers.stop(session, "")["message"] == "Stopped run 1."
    assert session.stepper is None and stepper.chunks.gi_frame is None  # the generator (caches) is gone
    assert session.history[-1]["identical"].endswith("(stopped)")

    last(handlers.step(session, SETTINGS, ""))
    last(handlers.step(other, SETTINGS, ""))  # the limit is one paused race: the session's is closed
    assert session.stepper is None and session.run.stopped and other.stepper is not None
    last(handlers.run(other, SETTINGS, ""))  # a live run ends the paused one
    assert other.run.number == 2 and other.history[0]["identical"].endswith("(stopped)")
    assert last(handlers.resume(Session(), ""))["message"].startswith("Nothing is paused")
