"""The fp32 speed targets, checked against the tables `python -m tools.bench` wrote.

    python -m tools.targets benchmarks/spec-bench-fp32-cpu-*.json

For every Token Recycling method of every file: its speed-up overall and in its weakest category (over
the fastest of ``ar``, ``hf`` and ``stock``, as the bench computes it), prompt lookup's overall and in summarization
beside its own, how many outputs equal ``ar``'s, and which targets hold. Speed-ups are printed to three
decimals, so one just under a target is not read as meeting it. The targets (the constants below):

- a speed-up of at least `OVERALL` overall and at least `EVERY_CATEGORY` in every category;
- faster than ``pld`` overall and in `LOOKUP_CATEGORY`;
- every output identical to ``ar``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tr.records import read_bench

OVERALL = 1.5  # speed-up over the faster baseline, all prompts pooled
EVERY_CATEGORY = 1.2  # the same, in the weakest category
LOOKUP_CATEGORY = "summarization"  # where prompt lookup is strongest, and Token Recycling must still win


def is_token_recycling(method: str) -> bool:
    """Whether a table row's method is a Token Recycling variant (written ``tr:TREE[:START]`` by the bench)."""
    return method.partition(":")[0] == "tr"


@dataclass
class Standing:
    """One method of one bench table against the targets."""

    method: str
    overall: float
    mat: float | None
    weakest: tuple[str, float]
    summarization: float | None
    pld: float | None  # prompt lookup overall, when it ran
    pld_summarization: float | None
    identical: int
    compared: int

    @property
    def failures(self) -> list[str]:
        """The targets that do not hold, in words (empty: all hold)."""
        missed = []
        if self.overall < OVERALL:
            missed.append(f"overall {self.overall:.3f}x < {OVERALL}x")
        if self.weakest[1] < EVERY_CATEGORY:
            missed.append(f"{self.weakest[0]} {self.weakest[1]:.3f}x < {EVERY_CATEGORY}x")
        if self.pld is None:
            missed.append("pld not run")
        else:
            if self.overall <= self.pld:
                missed.append(f"not faster than pld overall ({self.pld:.3f}x)")
            if self.summarization is None or self.pld_summarization is None:
                missed.append(f"no {LOOKUP_CATEGORY} prompts")
            elif self.summarization <= self.pld_summarization:
                missed.append(f"not faster than pld in {LOOKUP_CATEGORY} ({self.pld_summarization:.3f}x)")
        if self.identical < self.compared:
            missed.append(f"{self.compared - self.identical} outputs differ from ar")
        return missed


def standings(table: Sequence[dict]) -> list[Standing]:
    """The standing of every `tr` method in a bench table (the JSON document's `table` rows)."""
    cell = {(row["category"], row["method"]): row for row in table}

    def speedup(category: str, method: str) -> float | None:
        row = cell.get((category, method))
        return row["speedup"] if row else None

    categories = [c for c in dict.fromkeys(row["category"] for row in table) if c != "overall"]
    found = []
    for method in dict.fromkeys(row["method"] for row in table):
        if not is_token_recycling(method) or ("overall", method) not in cell:
            continue
        rows = {c: cell[(c, method)] for c in categories if (c, method) in cell}
        weakest = min(((c, row["speedup"]) for c, row in rows.items()), key=lambda pair: pair[1])
        found.append(Standing(
            method, speedup("overall", method), cell[("overall", method)].get("mat"), weakest,
            speedup(LOOKUP_CATEGORY, method), speedup("overall", "pld"), speedup(LOOKUP_CATEGORY, "pld"),
            sum(row["identical"] for row in rows.values()), sum(row["compared"] for row in rows.values()),
        ))
    return found


def describe(standing: Standing) -> str:
    s = standing
    mat = f"MAT {s.mat:.2f}" if s.mat else "MAT -"
    pld = f"pld {s.pld:.3f}x" if s.pld is not None else "pld -"
    missed = s.failures
    verdict = "all targets hold" if not missed else "misses: " + "; ".join(missed)
    return (f"  {s.method:22s} {s.overall:.3f}x  {mat}  weakest {s.weakest[0]} {s.weakest[1]:.3f}x  {pld}  "
            f"identical {s.identical}/{s.compared}  -> {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m tools.targets BENCH.json [BENCH.json ...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            data = read_bench(path)
        except ValueError as err:
            print(f"tools.targets: error: {err}", file=sys.stderr)
            return 2
        table, machine = data["table"], data.get("machine", {})
        print(f"{path}: {machine.get('cpu') or machine.get('gpu') or '?'}, {machine.get('dtype', '?')}, "
              f"{machine.get('threads', '?')} threads")
        for standing in standings(table):
            print(describe(standing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
