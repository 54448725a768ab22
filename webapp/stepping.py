"""Step mode: a race paused between Token Recycling's verification steps, for a teacher to explain one
step at a time.

The run asks the runner for chunks of no compute at all (`Run.budget_s`), so each chunk is one step and
the runner's generator waits, holding no lock, between clicks; the fair clock is untouched, since each
decoder's clock counts its own compute only. A paused race keeps every decoder's caches, so few are kept
at once (`PausedRaces`). On a ZeroGPU Space a decorated call cannot wait for clicks: there the race is
computed whole and revealed one step at a time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import replace

from tr.records import Step

from .runner import Chunk

PAUSED_LIMIT = 4  # paused races across all sessions; the least recently stepped one is closed first
PAUSE_TIMEOUT_S = 15 * 60  # a paused race untouched this long is closed at the next step anywhere


class Stepper:
    """One paused race: the runner's chunks, and the steps received but not yet shown."""

    def __init__(self, chunks: Iterator[Chunk]):
        self.chunks = chunks
        self.pending: deque[tuple[str, Step]] = deque()
        self.last: Chunk | None = None  # the runner's final chunk, once it came

    @property
    def finished(self) -> bool:
        return self.last is not None and not self.pending

    def _fill(self) -> None:
        chunk = next(self.chunks)
        self.pending.extend(chunk.steps)
        if chunk.done:
            self.last = chunk

    def advance(self) -> list[tuple[str, Step]]:
        """The steps up to and including Token Recycling's next verification step (every remaining step
        once Token Recycling has finished)."""
        taken: list[tuple[str, Step]] = []
        while not self.finished:
            if not self.pending:
                self._fill()
                continue
            name, step = self.pending.popleft()
            taken.append((name, step))
            if name == "tr" and step.index >= 1:
                break
        return taken

    def rest(self) -> Iterator[Chunk]:
        """Everything still to come: the race goes on live (as large chunks as the run's budget asks)."""
        if self.pending:
            steps, self.pending = list(self.pending), deque()
            yield replace(self.last, steps=steps) if self.last else Chunk(steps)
        if self.last is None:
            yield from self.chunks

    def close(self) -> None:
        """End the runner's generator, and with it the decoders' caches."""
        try:
            getattr(self.chunks, "close", lambda: None)()
        except ValueError:  # it is computing a step: its run's stop flag ends it at that step
            pass


class PausedRaces:
    """The paused races of every session, bounded in number and in idle time."""

    def __init__(self, limit: int = PAUSED_LIMIT, timeout_s: float = PAUSE_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.timeout_s, self.clock = limit, timeout_s, clock
        # id(stepper) -> the stepper, what tells its session it was closed, when it last stepped
        self.races: OrderedDict[int, tuple[Stepper, Callable[[], None], float]] = OrderedDict()
        self.lock = threading.Lock()

    def keep(self, stepper: Stepper, on_close: Callable[[], None]) -> None:
        """Keep `stepper` as the one stepped last, closing the least recently stepped beyond the limit
        and any idle too long; `on_close` tells the session of a race closed that way."""
        with self.lock:
            now = self.clock()
            self.races.pop(id(stepper), None)
            self.races[id(stepper)] = (stepper, on_close, now)
            idle = [key for key, (_, _, touched) in self.races.items() if now - touched > self.timeout_s]
            surplus = list(self.races)[:max(len(self.races) - self.limit, 0)]
            closing = [self.races.pop(key) for key in dict.fromkeys(idle + surplus)]
        for old, tell, _ in closing:
            old.close()
            tell()

    def remove(self, stepper: Stepper) -> None:
        """Stop keeping `stepper` (it goes on live, or ends: its owner closes it)."""
        with self.lock:
            self.races.pop(id(stepper), None)
