"""A fair race between decoders that share one device: never at the same time, always advancing the
one whose own compute clock is behind, so each side's timeline is what it would be running alone; and
the race in numbers (speed-up, first difference), from both sides' step records as they stand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .decoding import Step
from .generate import first_divergence, summarize, token_ids


def race(runners: Mapping[str, Iterator[Step]]) -> Iterator[tuple[str, Step]]:
    """Yield (name, step) in order of each runner's elapsed compute time until all have finished."""
    live = dict(runners)
    clocks = {name: 0.0 for name in live}
    while live:
        name = min(live, key=clocks.__getitem__)
        step = next(live[name], None)
        if step is None:
            del live[name]
            continue
        clocks[name] = step.elapsed_s
        yield name, step
        if step.finished:
            del live[name]


def speedup(ar: list[Step], tr: list[Step]) -> float | None:
    """Token Recycling's tokens per second over plain decoding's, each on its own compute clock."""
    if not ar or not tr:
        return None
    ar_rate, tr_rate = summarize(ar).tokens_per_s, summarize(tr).tokens_per_s
    return tr_rate / ar_rate if ar_rate else None


def difference(ar: list[Step], tr: list[Step], finished: bool) -> int | None:
    """First token where the outputs differ; until the run has finished, only as far as both sides got."""
    a, b = token_ids(ar), token_ids(tr)
    if not finished:
        a, b = a[:len(b)], b[:len(a)]
    return first_divergence(a, b)
