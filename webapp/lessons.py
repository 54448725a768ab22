"""Lessons on the page: picking one (`viz.lessons`) shows its question and puts its last run's settings
in the fields; Run or Next step then runs its earlier runs whole, the last one as asked (live or step by
step), and the answer is written from those runs when the last one finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

from viz.lessons import BY_TITLE, Lesson, LessonRun, preset

from .session import Run, Session
from .settings import FIELDS


def question_markdown(lesson: Lesson) -> str:
    """The lesson's question, and how many runs it takes."""
    runs = len(lesson.presets)
    how = "two runs, one after the other" if runs > 1 else "one run"
    return f"**Lesson: {lesson.title}.** {lesson.question} (Run or Next step: {how}.)"


def pick(session: Session | None, title: Any) -> dict[str, Any]:
    """A lesson picked (or free play): its question and its last run's settings, by field name."""
    session = session or Session()
    session.lesson = BY_TITLE.get(title) if isinstance(title, str) else None
    session.lesson_runs = []
    if session.lesson is None:
        return {"lesson": "", "session": session}
    last = preset(session.lesson, len(session.lesson.presets) - 1)
    return {"lesson": question_markdown(session.lesson), "session": session} | {name: last[name] for name in FIELDS}


def earlier_runs(session: Session, begin: Callable[[Session, dict[str, Any]], Any],
                 stream: Callable[..., Iterator[dict]], lookup_text: Any) -> Generator[dict, None, bool]:
    """A lesson's runs before its last, each begun by `begin(session, settings by name)` and raced whole,
    shown live (`Handlers.stream`); the last is the caller's. Returns (as the generator's value) whether
    the caller should go on: False when a run was rejected or stopped."""
    session.lesson_runs = []
    lesson = session.lesson
    if lesson is None:
        return True
    for index in range(len(lesson.presets) - 1):
        begun = begin(session, preset(lesson, index))
        if isinstance(begun, dict):
            yield begun
            return False
        run, chunks = begun
        yield {"message": f"Lesson run {index + 1} of {len(lesson.presets)}…", "session": session}
        yield from stream(session, run, chunks, lookup_text)
        if not run.finished:
            return False
    return True


def lesson_run(run: Run) -> LessonRun:
    """What an answer reads of a finished run."""
    return LessonRun(run.number, run.steps, run.settings.sampled)


def answer_views(session: Session, run: Run) -> dict[str, Any]:
    """After a finished run: the lesson's answer once all its runs are in, from their own records."""
    lesson = session.lesson
    if lesson is None:
        return {}
    session.lesson_runs.append(run)
    if len(session.lesson_runs) < len(lesson.presets):
        return {}
    runs = [lesson_run(r) for r in session.lesson_runs[-len(lesson.presets):]]
    return {"lesson": f"{question_markdown(lesson)}\n\n**Answer, from these runs:** {lesson.answer(runs)}"}
