"""Online statistics of draft acceptance by tree depth and candidate rank.

For every tree node whose parent was on the accepted path, count whether the node's token was the
model's own choice after that parent. These rates drive the `auto` tree.
"""

from __future__ import annotations

import torch

from .trees import RANK_PRIOR

MAX_DEPTH = 8
PRIOR_WEIGHT = 4.0  # pseudo-observations that keep early estimates near RANK_PRIOR


class AcceptanceStats:
    """Acceptance counts by (depth, rank), kept beside the matrix and updated from step records."""

    def __init__(self, k: int, max_depth: int = MAX_DEPTH):
        self.k, self.max_depth = k, max_depth
        self.reset()

    def reset(self) -> None:
        # Plain lists: a step touches up to ~80 cells, and tensor element updates would cost ~1 ms.
        self.reached = [[0] * self.k for _ in range(self.max_depth)]
        self.correct = [[0] * self.k for _ in range(self.max_depth)]

    def observe(self, step) -> None:
        """Count the nodes of one step record (a `tr.decoding.Step`)."""
        if len(step.tree_tokens) < 2:
            return
        on_path = set(step.accepted)
        for node in range(1, len(step.tree_tokens)):
            parent = step.tree_parents[node]
            depth, rank = step.tree_depths[node] - 1, step.tree_ranks[node]
            if parent not in on_path or depth >= self.max_depth or step.choices[parent] < 0:
                continue
            self.reached[depth][rank] += 1
            self.correct[depth][rank] += step.tree_tokens[node] == step.choices[parent]

    def rates(self) -> torch.Tensor:
        """(max_depth, k) estimated chance that a reached node of that depth and rank is right."""
        prior = torch.tensor([RANK_PRIOR[r] if r < len(RANK_PRIOR) else RANK_PRIOR[-1] / 2 for r in range(self.k)],
                             dtype=torch.float64)
        correct = torch.tensor(self.correct, dtype=torch.float64)
        reached = torch.tensor(self.reached, dtype=torch.float64)
        return (correct + PRIOR_WEIGHT * prior) / (reached + PRIOR_WEIGHT)
