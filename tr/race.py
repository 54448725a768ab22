"""A fair race between decoders that share one device: never at the same time, always advancing the
one whose own compute clock is behind, so each side's timeline is what it would be running alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .records import Step


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


