"""The records a run produces, and the numbers read off them: plain data, no torch.

Decoders yield one `Step` per forward pass; everything downstream (summaries, the race's verdict, the
app's views, the benchmark's tables, `viz`) reads these records and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .costs import CostCurve

LOOKUP = -2  # the "rank" of a node copied from an n-gram match rather than read from a matrix row


class OriginKind(str, Enum):
    """Where a draft node came from. A `str` enum, so a record's JSON shows the word."""

    ROOT = "root"  # the last committed token
    ROW = "row"  # a candidate of the one-token row of its parent's token
    PAIR = "pair"  # a candidate of the row of (grandparent, parent): one more token of context
    LOOKUP = "lookup"  # copied from the text after an earlier occurrence of its last n-gram


@dataclass(frozen=True)
class Origin:
    """A node's origin, the key its acceptance is counted under (`tr.acceptance.AcceptanceStats`).

    `level` is the probability bucket (0: under 10% .. 9: 90% and more) the model gave a ROW or PAIR
    candidate when its row was written, the n-gram length for LOOKUP, 0 for the root.
    """

    kind: OriginKind
    level: int = 0

    def __post_init__(self) -> None:
        # A dynamic tree looks a rate up per candidate it weighs: hash once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.kind.value, self.level)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.level}"


ROOT_ORIGIN = Origin(OriginKind.ROOT)


@dataclass
class Draft:
    """One step's tree, as the drafter built it. Node 0 is the root (the last committed token); parents
    come before children. Plain lists: the decoder builds the tensors it verifies with."""

    tokens: list[int]  # (n,)
    parents: list[int]  # (n,) parent index, -1 for the root
    depths: list[int]  # (n,) 0 for the root
    ranks: list[int]  # (n,) candidate rank in the parent's row; -1 for the root, LOOKUP for n-gram copies
    origins: list[Origin]  # (n,)
    scores: list[float]  # (n,) estimated chance each node is accepted (1 for the root)
    predicted_cost: float = 0.0  # verification cost in one-token forward passes (0: unknown)
    considered: list[float] = field(default_factory=list)  # scores of every node weighed, best first (kept first)
    curve: CostCurve | None = None  # the cost curve the size was chosen by, or reported against
    probe: bool = False  # the root alone, to time a one-token pass (`LearnedCost.needs_probe`)

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def expected_tokens(self) -> float:
        """Expected tokens this step emits: the bonus plus each node's chance of acceptance."""
        return sum(self.scores)


@dataclass
class RowWrite:
    """One row overwritten during a step: the candidates before and after."""

    token: int
    old: list[int]
    new: list[int]
    was_filled: bool


@dataclass
class Step:
    """What one forward pass did: the draft it verified and what verification found. Step 0 is the
    prefill over the prompt."""

    index: int
    tokens: list[int]  # emitted by this step, in order
    draft: Draft | None = None  # None for the prefill and plain decoding
    choices: list[int] = field(default_factory=list)  # the model's token after each node (-1: not drawn)
    accepted: list[int] = field(default_factory=list)  # node indices of the accepted path, root first
    rows_written: list[RowWrite] = field(default_factory=list)
    forward_s: float = 0.0
    overhead_s: float = 0.0
    total_tokens: int = 0  # running totals, prefill included
    total_forward_s: float = 0.0
    total_overhead_s: float = 0.0
    finished: bool = False

    @property
    def elapsed_s(self) -> float:
        return self.total_forward_s + self.total_overhead_s

    @property
    def accepted_drafts(self) -> int:
        return max(len(self.accepted) - 1, 0)

    @property
    def drafted(self) -> int:
        """Draft nodes verified, the root not counted (0 without a draft)."""
        return self.draft.size - 1 if self.draft else 0

    @property
    def expected_tokens(self) -> float:
        """What the drafter expected this step to emit (bonus included)."""
        return self.draft.expected_tokens if self.draft else 1.0


def _draft_from_dict(item: dict[str, Any]) -> Draft:
    curve = item.get("curve")
    return Draft(**{**item, "origins": [Origin(OriginKind(o["kind"]), o["level"]) for o in item["origins"]],
                    "curve": CostCurve(**curve) if curve is not None else None})


def steps_from_dicts(items: list[dict[str, Any]]) -> list[Step]:
    """Steps back from `dataclasses.asdict` form, as a run's record holds them (also after a JSON round
    trip, where an origin's kind is its word)."""
    return [
        Step(**{**item, "draft": _draft_from_dict(item["draft"]) if item.get("draft") is not None else None,
                "rows_written": [RowWrite(**w) for w in item.get("rows_written", [])]})
        for item in items
    ]


@dataclass
class Stats:
    tokens: int
    steps: int  # decoding forward passes after the prefill
    mat: float  # mean tokens emitted per decoding step
    forward_s: float
    overhead_s: float
    prefill_s: float

    @property
    def seconds(self) -> float:
        return self.forward_s + self.overhead_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def token_ids(steps: list[Step]) -> list[int]:
    """Every token the steps emitted, in order."""
    return [t for s in steps for t in s.tokens]


def summarize(steps: list[Step]) -> Stats:
    decode = steps[1:]
    last = steps[-1]
    decoded = sum(len(s.tokens) for s in decode)
    return Stats(
        tokens=last.total_tokens,
        steps=len(decode),
        mat=decoded / len(decode) if decode else 0.0,
        forward_s=last.total_forward_s,
        overhead_s=last.total_overhead_s,
        prefill_s=steps[0].forward_s + steps[0].overhead_s,
    )


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two outputs differ (the shorter length if one is a prefix of
    the other); None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


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


def read_bench(path: str | Path) -> dict:
    """A `python -m tools.bench` JSON document; raises ValueError, in words, when the file is not one."""
    try:
        document = json.loads(Path(path).read_text())
        document["table"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read a bench table from {path}: {err}") from err
    return document
