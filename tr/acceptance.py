"""Online statistics of draft acceptance, kept beside the matrix and updated from step records.

For every tree node whose parent was on the accepted path, count whether the node's token was the
model's own choice after that parent, two ways:

- by tree depth and candidate rank (the axes the paper's static templates are shaped along);
- by the node's `Origin`: a candidate from a one-token row (ROW) or from a pair row (PAIR), bucketed
  by the probability the model gave it when the row was written, or a prompt-lookup copy (LOOKUP), by
  the length of the n-gram match. These rates are the dynamic drafter's estimate that a node of that
  origin is right.
"""

from __future__ import annotations

from .records import Origin, OriginKind, Step

MAX_DEPTH = 8
PRIOR_WEIGHT = 4.0  # pseudo-observations that keep early estimates near their prior
CONFIDENCE_BUCKETS = 10
LOOKUP_PRIOR = 0.5  # an n-gram continuation, before any evidence (prompt lookup is often right in copies)
# Probabilities recorded in an earlier context overstate the chance in the current one: candidates the
# bundled model gave 90-100% were right clearly less often.
STALE_FACTOR = 0.7


# Called for every candidate a dynamic tree weighs: origins are looked up, not built.
_CONFIDENCE_ORIGINS = {
    pair: [Origin(OriginKind.PAIR if pair else OriginKind.ROW, i) for i in range(CONFIDENCE_BUCKETS)]
    for pair in (False, True)
}


def confidence_origin(probability: float, pair: bool = False) -> Origin:
    """The origin of a candidate the model gave `probability`: its bucket 0 (under 10%) .. 9, from a
    one-token row (ROW) or a pair row (PAIR)."""
    return _CONFIDENCE_ORIGINS[pair][min(int(probability * CONFIDENCE_BUCKETS), CONFIDENCE_BUCKETS - 1)]


def lookup_origin(match_length: int) -> Origin:
    return Origin(OriginKind.LOOKUP, match_length)


def origin_prior(origin: Origin) -> float:
    if origin.kind in (OriginKind.ROW, OriginKind.PAIR):
        return STALE_FACTOR * (origin.level + 0.5) / CONFIDENCE_BUCKETS  # from the bucket's middle
    return LOOKUP_PRIOR


class AcceptanceStats:
    """Acceptance counts by (depth, rank) and by origin."""

    def __init__(self, k: int, max_depth: int = MAX_DEPTH):
        self.k, self.max_depth = k, max_depth
        self.reset()

    def reset(self) -> None:
        # Plain lists and dicts: a step touches up to ~80 cells, too few for tensor updates to pay.
        self.reached = [[0] * self.k for _ in range(self.max_depth)]
        self.correct = [[0] * self.k for _ in range(self.max_depth)]
        self.by_origin: dict[Origin, list[int]] = {}  # origin -> [reached, correct]

    def observe(self, step: Step) -> None:
        """Count the nodes of one step record's draft."""
        draft = step.draft
        if draft is None or draft.size < 2:
            return
        on_path = set(step.accepted)
        for node in range(1, draft.size):
            parent = draft.parents[node]
            if parent not in on_path or step.choices[parent] < 0:
                continue
            right = draft.tokens[node] == step.choices[parent]
            counts = self.by_origin.setdefault(draft.origins[node], [0, 0])
            counts[0] += 1
            counts[1] += right
            depth, rank = draft.depths[node] - 1, draft.ranks[node]
            if 0 <= rank < self.k and depth < self.max_depth:
                self.reached[depth][rank] += 1
                self.correct[depth][rank] += right

    def rate(self, origin: Origin) -> float:
        """Estimated chance that a reached node of this origin is right."""
        reached, correct = self.by_origin.get(origin, (0, 0))
        return (correct + PRIOR_WEIGHT * origin_prior(origin)) / (reached + PRIOR_WEIGHT)
