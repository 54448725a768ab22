"""The benchmark's input: Spec-Bench-format questions from one or more JSONL files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Found through the package, not the cwd, so `python -m tools.bench` works from anywhere.
DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompts.jsonl"


@dataclass(frozen=True)
class Question:
    """One benchmarked prompt: only the first turn of a Spec-Bench record is used."""

    question_id: object  # as written in the file (a number or a string), unique within it
    category: str
    prompt: str


def parse_question(line: str, where: str) -> Question:
    """One JSONL line; `where` (file:line) starts every error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [key for key in ("question_id", "category", "turns") if key not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise ValueError(f"{where}: turns must be a non-empty list of strings")
    return Question(record["question_id"], str(record["category"]), turns[0])


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise OSError(f"cannot read prompts file {str(path)!r}: {err.strerror or err}") from None


def load_questions(path: str | Path, per_category: int | None = None) -> list[Question]:
    """The first `per_category` questions of each category, in file order (all when None). Raises OSError
    for an unreadable file, ValueError for bad lines."""
    if per_category is not None and per_category < 1:
        raise ValueError(f"--per-category must be at least 1, got {per_category}")
    path = Path(path)
    questions: list[Question] = []
    taken: dict[str, int] = {}
    seen: set = set()
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        question = parse_question(line, f"{path}:{number}")
        # Outputs are matched to the ar output of the same question_id, so ids must be unique.
        if question.question_id in seen:
            raise ValueError(f"{path}:{number}: question_id {question.question_id!r} appears twice")
        seen.add(question.question_id)
        if per_category is None or taken.get(question.category, 0) < per_category:
            taken[question.category] = taken.get(question.category, 0) + 1
            questions.append(question)
    if not questions:
        raise ValueError(f"no prompts in {str(path)!r}")
    return questions


def load_question_files(paths: Sequence[str | Path], per_category: int | None = None) -> list[Question]:
    """`load_questions` of each file in turn (`per_category` applies within each file). Outputs are
    matched to the ar output of the same question_id, so ids must be unique across the files too."""
    questions: list[Question] = []
    seen: dict[object, Path] = {}
    for path in map(Path, paths):
        for question in load_questions(path, per_category):
            if question.question_id in seen:
                raise ValueError(f"question_id {question.question_id!r} is in both {str(seen[question.question_id])!r} "
                                 f"and {str(path)!r}")
            seen[question.question_id] = path
            questions.append(question)
    return questions
