"""The benchmark's results as typed rows: one per (prompt, method), one per (category, method) in the
table. They become dicts (`dataclasses.asdict`) only when written; the field order is the JSON's key order."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PromptRow:
    """One method on one prompt, the fastest of its repeats."""

    question_id: object
    category: str
    method: str  # `BenchMethod.name`
    tokens: int
    seconds: float
    tokens_per_s: float | None
    steps: int | None = None  # decoding forward passes; None where transformers does not report them
    mat: float | None = None  # mean tokens per decoding step; None without a decoding step
    forward_s: float | None = None
    overhead_s: float | None = None
    repeat_seconds: list[float] = field(default_factory=list)  # every round's seconds
    draft_nodes: float | None = None  # tr: mean draft nodes per decoding step
    probes: int | None = None  # tr: steps that verified the root alone to time a one-token pass
    cost_curve: list[float] | None = None  # tr: relative costs at the calibrated sizes, after this prompt
    identical_to_ar: bool | None = None  # None where ar did not run
    first_divergence: int | None = None
    output_ids: list[int] = field(default_factory=list)


@dataclass
class TableRow:
    """One method pooled over the prompts of a category (or "overall"): totals, then ratios of totals."""

    category: str
    method: str
    prompts: int
    tokens: int
    seconds: float
    tokens_per_s: float | None
    steps: int | None
    mat: float | None
    overhead_pct: float | None  # non-forward time as a percentage of forward time
    identical: int | None  # outputs equal to ar's; None where ar did not run
    compared: int
    baseline: str | None = None  # the fastest of ar, hf and stock in this category
    speedup: float | None = None
