"""Lessons: one-click experiments, each a question, a preset (the race's settings by field name, one
run or two to compare) and an answer written after the runs from their own step records, never canned.

The answer names every run it cites ("run 3: MAT 1.85, 1.21×") in the same figures the page's numbers
and the runs table show, so a reader (and a test) can check one against the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from tr.records import Step, difference, summarize, token_ids

from .race import compare, too_early
from .tree import failed_step, has_tree, most_accepted_step

Lanes = Mapping[str, list[Step]]  # one run's steps per lane, keyed "ar", "tr", "pld"


@dataclass(frozen=True)
class LessonRun:
    """What an answer reads of one run."""

    number: int
    lanes: Lanes
    sampled: bool = False


class LessonKey(str, Enum):
    COLD_PRIMED = "cold-primed"
    PAPER_AUTO = "paper-auto"
    LOOKUP_VS_TR = "lookup-vs-tr"
    GOOD_FAILED = "good-failed"
    SAMPLING = "sampling"
    K1_K8 = "k1-k8"


@dataclass(frozen=True)
class Lesson:
    key: LessonKey
    title: str
    question: str
    presets: tuple[dict[str, Any], ...]  # settings by field name, over `BASE`; one per run, in order
    answer: Callable[[list[LessonRun]], str]

    @property
    def needs_primed(self) -> bool:
        """Whether a run starts primed: only models with a primed matrix can play it."""
        return any(p.get("start") == "primed" for p in self.presets)


PROMPT = "Explain to a ten-year-old why the sky is blue, in three or four sentences."
REPEAT = ("Repeat this sentence exactly, twice: The quick brown fox jumps over the lazy dog near the quiet "
          "river bank.")
BASE: dict[str, Any] = dict(prompt=PROMPT, max_new_tokens=64, template="auto", custom_json="", k=8,
                            decoding="greedy", temperature=0.7, top_p=0.9, seed=0, start="hot",
                            prompt_lookup=False)


def figures(run: LessonRun, lane: str = "tr") -> str:
    """"run 3: MAT 1.85, 1.21×", the figures the page shows for that run (speed-up withheld while too early)."""
    steps, base = run.lanes[lane], run.lanes["ar"]
    c = compare(base, steps)
    mat = f"MAT {summarize(steps).mat:.2f}" if len(steps) > 1 else "no MAT yet"
    speed = "speed-up too early to tell" if c is None or too_early(steps) else f"{c.speedup:.2f}×"
    return f"run {run.number}: {mat}, {speed}"


def _mat(run: LessonRun, lane: str = "tr") -> float:
    return summarize(run.lanes[lane]).mat if len(run.lanes[lane]) > 1 else 0.0


def _compare(first: LessonRun, second: LessonRun, a: str, b: str, why: str) -> str:
    """"A (run 1: ...) against B (run 2: ...): B wrote 0.40 more tokens per call and ran faster." plus `why`."""
    gain = _mat(second) - _mat(first)
    trend = "more" if gain > 0 else ("fewer" if gain < 0 else "as many")
    speeds = [compare(r.lanes["ar"], r.lanes["tr"]) for r in (first, second)]
    pace = ""
    if all(speeds) and not any(too_early(r.lanes["tr"]) for r in (first, second)):
        pace = " and ran faster" if speeds[1].speedup > speeds[0].speedup else " but ran slower"
    amount = f"{abs(gain):.2f} {trend} tokens" if gain else "as many tokens"
    return f"{a} ({figures(first)}) against {b} ({figures(second)}): {b} wrote {amount} per call{pace}. {why}"


def answer_cold_primed(runs: list[LessonRun]) -> str:
    cold, primed = runs
    accepted = [sum(s.accepted_drafts for s in r.lanes["tr"][1:]) for r in runs]
    return _compare(cold, primed, "Cold", "primed",
                    f"Accepted drafts: {accepted[0]} cold, {accepted[1]} primed. A cold matrix has no rows, so its "
                    "first trees are empty guesses; a primed one remembers what the model tends to say next.")


def answer_paper_auto(runs: list[LessonRun]) -> str:
    paper, auto = runs
    cost = [compare(r.lanes["ar"], r.lanes["tr"]) for r in runs]
    costs = (f" Each call cost {cost[0].cost_ratio:.2f}× a plain one with the paper's tree and "
             f"{cost[1].cost_ratio:.2f}× with auto's." if all(cost) else "")
    return _compare(paper, auto, "The paper's 80-node tree", "auto",
                    "auto sizes each tree to this device's cost curve (tab Tree size)." + costs)


def answer_lookup_vs_tr(runs: list[LessonRun]) -> str:
    parts = []
    for run, what in zip(runs, ("the repeating prompt", "the open question")):
        lookup, recycling = _mat(run, "pld"), _mat(run, "tr")
        winner = ("both wrote as much" if f"{lookup:.2f}" == f"{recycling:.2f}" else
                  f"{'prompt lookup' if lookup > recycling else 'Token Recycling'} wrote more")
        parts.append(f"On {what}, {winner} per call (run {run.number}: prompt lookup MAT {lookup:.2f}, "
                     f"Token Recycling MAT {recycling:.2f})")
    return "; ".join(parts) + ". Prompt lookup can only copy text that is already there; the matrix guesses anywhere."


def answer_good_failed(runs: list[LessonRun]) -> str:
    (run,) = runs
    steps = run.lanes["tr"]
    good, failed = most_accepted_step(steps), failed_step(steps)
    if not any(has_tree(s) for s in steps[1:]):
        return f"Run {run.number} drafted nothing: no step to bookmark."
    text = (f"Good step {good} (run {run.number}): {steps[good].accepted_drafts} of {steps[good].drafted} drafts "
            f"accepted, {len(steps[good].tokens)} tokens from one call.")
    if failed is None:
        return text + " No step was rejected outright in this run."
    return (text + f" Failed step {failed}: all {steps[failed].drafted} drafts rejected, 1 token (the model's own). "
            "Both are marked on the slider.")


def answer_sampling(runs: list[LessonRun]) -> str:
    (run,) = runs
    ar, tr = run.lanes["ar"], run.lanes["tr"]
    at = difference(ar, tr, True)
    same = (f"the two texts are identical ({len(token_ids(tr))} tokens)" if at is None
            else f"the two texts first differ at token #{at}")
    return (f"In {figures(run)}, {same}. Lossless under sampling means every token is a "
            "draw from the model's own distribution, the same distribution plain decoding draws from; the draws "
            "themselves may differ, so the texts need not match.")


def answer_k(runs: list[LessonRun]) -> str:
    one, eight = runs
    return _compare(one, eight, "k = 1", "k = 8",
                    "With k = 1 each row keeps one candidate, so a tree is a single chain; k = 8 gives alternatives.")


LESSONS = (
    Lesson(LessonKey.COLD_PRIMED, "Cold against primed: what did the matrix remember?",
           "Same prompt, twice: first with an empty matrix, then primed. Which writes more tokens per call?",
           (dict(start="cold"), dict(start="primed")), answer_cold_primed),
    Lesson(LessonKey.PAPER_AUTO, "The paper's 80-node tree against auto",
           "The paper's tree drafts 80 tokens per call; auto sizes each tree for this device. Which is faster here?",
           (dict(template="paper-80"), dict(template="auto")), answer_paper_auto),
    Lesson(LessonKey.LOOKUP_VS_TR, "Prompt lookup against Token Recycling",
           "A prompt to repeat, then an open question, with the third lane on. Who wins each?",
           (dict(prompt=REPEAT, prompt_lookup=True), dict(prompt_lookup=True)), answer_lookup_vs_tr),
    Lesson(LessonKey.GOOD_FAILED, "A good step and a failed step",
           "Which step accepted the most, and which had every guess rejected? (Both get marked on the slider.)",
           (dict(template="small-16", start="seeded"),), answer_good_failed),
    Lesson(LessonKey.SAMPLING, "Sampling: what does lossless mean?",
           "With sampling on, must the two texts be identical?",
           (dict(decoding="sampling"),), answer_sampling),
    Lesson(LessonKey.K1_K8, "k = 1 against k = 8",
           "One candidate per matrix row, or eight: how much do the alternatives add?",
           (dict(k=1, start="cold"), dict(k=8, start="cold")), answer_k),
)
BY_TITLE = {lesson.title: lesson for lesson in LESSONS}


def preset(lesson: Lesson, index: int) -> dict[str, Any]:
    """The settings of the lesson's run `index`, every field named."""
    return BASE | lesson.presets[index]
