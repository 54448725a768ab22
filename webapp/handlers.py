"""The app's event handlers: each takes a session and named values and returns views by name.

The Run button's path: `parse_settings` checks the request; the prompt is encoded and checked against
the token limit and the model's room; the session is handed back to the page at once (so Stop reaches
the run from its first instant); `webapp.runner` races both decoders beside the model and hands back
chunks of step records; each chunk is added to the session's run and rendered (throttled: rendering
costs the CPU the race runs on). The last chunk brings back the session's matrix and the device's
corrected cost curve.

Step mode (the Next step button) runs the same race one Token Recycling step per click, paused in
between (`webapp.stepping`); Continue lets a paused race go on live.

Rejected input gets a one-line message and one line in the log. Anything unexpected is logged once with
its traceback under a short id, and the visitor sees that id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

from tr.costs import LearnedCost
from tr.device.model import LoadedModel
from tr.device.primed import find_primed
from tr.generate import check_request
from tr.specs import check_prompt_tokens

from . import lessons, views
from .downloads import Downloads
from .log import rejected, unexpected
from .runner import CHUNK_S, Chunk, Runner
from .session import Run, Session
from .settings import Lookup, parse_lookup, parse_settings, parse_step
from .stepping import PausedRaces, Stepper

# Plotly figures are what costs the browser most (a slow machine can spend seconds per update on them and
# stop responding, Stop button included): while running, redraw the tree less often and the charts rarely.
TREE_EVERY_S = 2.0
CHARTS_EVERY_S = 4.0


class Pacer:
    """Says when something is due again, at most once per `interval_s` of wall time."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = time.perf_counter()

    def due(self, now: float) -> bool:
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def parse_lookup_or_none(text: Any, vocab_size: int) -> Lookup:
    """The lookup box beside another action: a bad value only empties the lookup view."""
    try:
        return parse_lookup(text, vocab_size)
    except ValueError as err:
        rejected(err)
        return ""


class Handlers:
    """The handlers of one app: its model, the device's cost curve (shared by every session: it is the
    device's, and every run's steps correct it), where races run, where downloads are written and the
    races paused in step mode."""

    def __init__(self, lm: LoadedModel, costs: LearnedCost | None, runner: Runner, downloads: Downloads,
                 paused: PausedRaces | None = None):
        self.lm, self.costs, self.runner, self.downloads = lm, costs, runner, downloads
        self.paused = paused or PausedRaces()

    def begin(self, session: Session, values: dict[str, Any], budget_s: float) -> tuple[Run, Iterator[Chunk]] | dict:
        """Check a request and begin its race (ending a paused one); the views of a rejection instead."""
        try:
            settings = parse_settings(values)
            prompt_ids = self.lm.encode(settings.prompt)
            check_prompt_tokens(len(prompt_ids))
            check_request(self.lm, prompt_ids, settings.max_new_tokens)
        except ValueError as err:  # every message here is written for the visitor
            return views.failure(rejected(err)) | {"session": session}
        self.end_paused(session)
        matrix, replaced = session.matrix_for(self.lm.vocab_size, settings.k)
        run = session.begin(settings, self.costs.curve if self.costs else None)
        run.budget_s = budget_s
        if replaced:
            run.note = f" (k changed: this run started a fresh matrix with k={settings.k})"
        return run, self.runner(settings, prompt_ids, matrix, self.costs, lambda: run.stopped, lambda: run.budget_s)

    def run(self, session: Session | None, values: dict[str, Any], lookup_text: Any) -> Iterator[dict]:
        """The Run button: race both decoders, streaming throttled updates, then render everything."""
        session = session or Session()
        live = partial(self.begin, budget_s=CHUNK_S)
        if not (yield from lessons.earlier_runs(session, live, self.stream, lookup_text)):
            return
        begun = self.begin(session, values, CHUNK_S)
        if isinstance(begun, dict):
            yield begun
            return
        run, chunks = begun
        yield {"message": "Running…", "session": session}  # the page holds the session, and Stop reaches it
        yield from self.stream(session, run, chunks, lookup_text)

    def stream(self, session: Session, run: Run, chunks: Iterator[Chunk], lookup_text: Any) -> Iterator[dict]:
        """Show a race live until it ends: throttled updates, then every view."""
        begin = time.perf_counter() - run.wall_s
        tree_pacer, chart_pacer = Pacer(TREE_EVERY_S), Pacer(CHARTS_EVERY_S)
        try:
            for chunk in chunks:
                run.add(chunk.steps)
                if chunk.done:
                    self.take_back(session, chunk)
                    break
                rendering = time.perf_counter()
                run.wall_s = rendering - begin
                tree = tree_pacer.due(rendering) or len(run.steps["tr"]) <= 2  # show the first tree at once
                charts = not tree and chart_pacer.due(rendering)  # never both in one update
                yield views.live_views(self.lm, session, run, tree, charts) | {"session": session}
                # Rendering costs real time on a small CPU: keep it (and sending) under a third of the wall
                # time, so the live view never slows the race down more than it must.
                run.budget_s = max(CHUNK_S, 2 * (time.perf_counter() - rendering))
            if run.stopped:  # the Stop handler has already shown what the run got to
                return
            run.wall_s = time.perf_counter() - begin
            yield self.finish(session, run, lookup_text)
        except Exception as err:  # a bug or e.g. out of memory: keep serving, keep the traceback in the log
            run.stopped = True
            yield views.failure(unexpected(err, f"run {run.number}")) | {"session": session}

    def take_back(self, session: Session, last: Chunk) -> None:
        """What a race changed, from its last chunk: the session's matrix and the device's cost curve."""
        session.matrix, self.costs = last.matrix, last.costs

    def finish(self, session: Session, run: Run, lookup_text: Any) -> dict:
        """A finished run: remembered, written for download, every view shown."""
        run.finished = True
        session.remember(run)
        session.download_path = self.downloads.write(run.record(self.lm), replaces=session.download_path)
        facts = (f"Done: run {run.number}", f"{run.wall_s:.1f} s wall time{run.note}", run.tree_note())
        message = " · ".join(fact for fact in facts if fact)
        lookup = parse_lookup_or_none(lookup_text, self.lm.vocab_size)
        return views.final_views(self.lm, session, lookup, message) | lessons.answer_views(session, run) | {
            "session": session}

    def step(self, session: Session | None, values: dict[str, Any], lookup_text: Any) -> Iterator[dict]:
        """The Next step button: one more verification step of the session's paused race, or a new race
        paused after its first step."""
        session = session or Session()
        if session.stepper is None:
            live = partial(self.begin, budget_s=CHUNK_S)  # a lesson's earlier runs go live, not step by step
            if not (yield from lessons.earlier_runs(session, live, self.stream, lookup_text)):
                return
            begun = self.begin(session, values, budget_s=0.0)
            if isinstance(begun, dict):
                yield begun
                return
            session.stepper = Stepper(begun[1])
            yield {"message": "Computing the first step…", "session": session}
        run, stepper = session.run, session.stepper
        began = time.perf_counter()
        try:
            run.add(stepper.advance())
        except StopIteration:  # Stop came while the step was computed
            return
        except Exception as err:
            self.end_paused(session)
            yield views.failure(unexpected(err, f"run {run.number}")) | {"session": session}
            return
        run.wall_s += time.perf_counter() - began
        if stepper.finished:
            self.paused.remove(stepper)
            session.stepper = None
            self.take_back(session, stepper.last)
            yield self.finish(session, run, lookup_text)
            return
        self.paused.keep(stepper, on_close=lambda: self.close_paused(session, stepper))
        yield views.step_mode_views(self.lm, session, run) | {"session": session}

    def resume(self, session: Session | None, lookup_text: Any) -> Iterator[dict]:
        """The Continue button: a paused race goes on live to its end."""
        session = session or Session()
        stepper = session.stepper
        if stepper is None:
            yield {"message": "Nothing is paused: **Next step** starts a race one step at a time.", "session": session}
            return
        self.paused.remove(stepper)
        session.stepper, session.run.budget_s = None, CHUNK_S
        yield {"message": "Running…", "session": session}
        yield from self.stream(session, session.run, stepper.rest(), lookup_text)

    def end_paused(self, session: Session) -> None:
        """End the session's paused race, if any, as stopped."""
        if session.stepper is not None:
            self.paused.remove(session.stepper)
            self.close_paused(session, session.stepper)

    @staticmethod
    def close_paused(session: Session, stepper: Stepper) -> None:
        stepper.close()
        if session.stepper is stepper:
            session.stepper = None
            if not session.run.stopped:
                session.run.stopped = True
                session.remember(session.run)

    def stop(self, session: Session | None, lookup_text: Any) -> dict:
        """The Stop button: flag the run to stop at its next step (gradio also cancels the event, but only
        between updates) and show at once what it got to."""
        session, lookup_text = session or Session(), parse_lookup_or_none(lookup_text, self.lm.vocab_size)
        run = session.run
        if run is None or run.finished or run.stopped:
            return {"message": "Nothing is running.", "session": session}
        run.stopped = True
        session.remember(run)
        self.end_paused(session)
        return views.final_views(self.lm, session, lookup_text, f"Stopped run {run.number}.") | {"session": session}

    def reset(self, session: Session | None, lookup_text: Any) -> dict:
        """Reset matrix: forget every row this session learned (the next run starts cold, or primed)."""
        session, lookup_text = session or Session(), parse_lookup_or_none(lookup_text, self.lm.vocab_size)
        if session.matrix is not None:
            session.matrix.reset()
        primed = find_primed(self.lm) is not None
        note = " A primed start fills the empty rows from the primed matrix again." if primed else ""
        return {"message": "Matrix reset: every row is empty again." + note,
                "matrix_info": views.matrix_info(session), "lookup": views.lookup_html(self.lm, session, lookup_text),
                "session": session}

    def lookup(self, session: Session | None, text: Any) -> dict:
        try:
            query = parse_lookup(text, self.lm.vocab_size)
            return {"lookup": views.lookup_html(self.lm, session or Session(), query)}
        except ValueError as err:
            return {"lookup": views.note_html(rejected(err))}

    def replay(self, session: Session | None) -> dict:
        """Make replay: the latest run (finished or stopped) as one HTML page that works from disk."""
        session = session or Session()
        run = session.run
        if run is None or not (run.finished or run.stopped) or session.stepper is not None:
            return {"message": "Nothing to replay yet: a replay is made of a finished (or stopped) run."}
        session.replay_path = self.downloads.write(views.replay_page(self.lm, run), replaces=session.replay_path)
        return views.replay_views(run, session.replay_path)

    def show_step(self, session: Session | None, index: Any) -> dict:
        try:
            return views.step_views(self.lm, session or Session(), parse_step(index))
        except ValueError as err:
            return {"rows": views.note_html(rejected(err))}

    def forget(self, session: Session | None) -> None:
        """Gradio drops a closed session's state after a while: remove its download and paused race with it."""
        if session is not None:
            self.downloads.remove(session.download_path)
            self.downloads.remove(session.replay_path)
            self.end_paused(session)
