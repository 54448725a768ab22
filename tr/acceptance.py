"""Online statistics of draft acceptance, kept beside the matrix and updated from step records.

For every tree node whose parent was on the accepted path, count whether the node's token was the
model's own choice after that parent, two ways:

- by tree depth and candidate rank (the axes the paper's static templates are shaped along);
- by where the node came from (its source): a candidate from a one-token row (q0..q9) or from a pair
  row (c0..c9), bucketed by the probability the model gave it when the row was written, or a
  prompt-lookup copy, by the length of the n-gram match. These rates are the dynamic drafter's
  estimate that a node of that source is right.
"""

from __future__ import annotations

MAX_DEPTH = 8
PRIOR_WEIGHT = 4.0  # pseudo-observations that keep early estimates near their prior
CONFIDENCE_BUCKETS = 10
LOOKUP_PRIOR = 0.5  # an n-gram continuation, before any evidence (prompt lookup is often right in copies)
# Probabilities recorded in an earlier context overstate the chance in the current one (measured on the
# bundled model: candidates given 90-100% were right about 75% of the time).
STALE_FACTOR = 0.7


_SOURCE_NAMES = {pair: [f"{'c' if pair else 'q'}{i}" for i in range(CONFIDENCE_BUCKETS)] for pair in (False, True)}


def confidence_source(probability: float, pair: bool = False) -> str:
    """The source key of a candidate the model gave `probability`: q0 (under 10%) .. q9 from a
    one-token row, c0 .. c9 from a pair row."""
    # Called for every candidate a dynamic tree weighs: names are looked up, not formatted.
    return _SOURCE_NAMES[pair][min(int(probability * CONFIDENCE_BUCKETS), CONFIDENCE_BUCKETS - 1)]


def lookup_source(match_length: int) -> str:
    return f"lookup{match_length}"


def source_prior(source: str) -> float:
    if source[0] in "qc":
        return STALE_FACTOR * (int(source[1:]) + 0.5) / CONFIDENCE_BUCKETS  # from the bucket's middle
    return LOOKUP_PRIOR


class AcceptanceStats:
    """Acceptance counts by (depth, rank) and by source."""

    def __init__(self, k: int, max_depth: int = MAX_DEPTH):
        self.k, self.max_depth = k, max_depth
        self.reset()

    def reset(self) -> None:
        # Plain lists and dicts: a step touches up to ~80 cells, and tensor element updates would cost ~1 ms.
        self.reached = [[0] * self.k for _ in range(self.max_depth)]
        self.correct = [[0] * self.k for _ in range(self.max_depth)]
        self.by_source: dict[str, list[int]] = {}  # source -> [reached, correct]

    def observe(self, step) -> None:
        """Count the nodes of one step record (a `tr.decoding.Step`)."""
        if len(step.tree_tokens) < 2:
            return
        on_path = set(step.accepted)
        for node in range(1, len(step.tree_tokens)):
            parent = step.tree_parents[node]
            if parent not in on_path or step.choices[parent] < 0:
                continue
            right = step.tree_tokens[node] == step.choices[parent]
            counts = self.by_source.setdefault(step.tree_sources[node], [0, 0])
            counts[0] += 1
            counts[1] += right
            depth, rank = step.tree_depths[node] - 1, step.tree_ranks[node]
            if 0 <= rank < self.k and depth < self.max_depth:
                self.reached[depth][rank] += 1
                self.correct[depth][rank] += right

    def rate(self, source: str) -> float:
        """Estimated chance that a reached node from `source` is right."""
        reached, correct = self.by_source.get(source, (0, 0))
        return (correct + PRIOR_WEIGHT * source_prior(source)) / (reached + PRIOR_WEIGHT)
