"""The `auto` draft tree: the tree that maximises expected accepted tokens per second.

From `AcceptanceStats.rates()` (kept with the matrix) and under the model that a node at
depth d and rank r is right with probability p[d, r], independently along a path, a node is accepted
with the product of p along its path, and a tree's expected tokens per step are 1 (the bonus) plus
the sum of those products. Growing the tree best-first by that product gives, for every size n, the
tree with the most expected tokens; the `CostCurve` says what verifying n+1 tokens costs; `auto`
picks the size with the best ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .calibrate import CostCurve
from .trees import DraftTree, Path_, grow


@dataclass
class TreeChoice:
    paths: list[Path_]
    expected_tokens: float  # per step, bonus included
    tokens_per_s: float  # expected_tokens / cost of verifying the tree
    candidates: list[tuple[int, float, float]]  # (draft nodes, expected tokens, tokens/s) for every size tried


def choose_tree(rates: torch.Tensor, curve: CostCurve, max_nodes: int = 80, max_depth: int = 6) -> TreeChoice:
    """The best-first tree whose size maximises expected tokens per second of verification."""
    grown = grow(rates.tolist(), max_nodes, max_depth)
    candidates, expected = [], 1.0
    for n, (_, p) in enumerate(grown, start=1):
        expected += p
        candidates.append((n, expected, expected / curve.cost(n + 1)))
    best = max(candidates, key=lambda c: c[2]) if candidates else (0, 1.0, 1.0 / curve.cost(1))
    paths = sorted((path for path, _ in grown[: best[0]]), key=lambda p: (len(p), p))
    return TreeChoice(paths, best[1], best[2], candidates)


def auto_tree(matrix_stats_rates: torch.Tensor, curve: CostCurve, device: torch.device | str = "cpu",
              max_nodes: int = 80) -> tuple[DraftTree, TreeChoice]:
    """The auto tree's buffers and the reasoning behind it, for the current statistics."""
    choice = choose_tree(matrix_stats_rates, curve, max_nodes)
    return DraftTree.from_paths(choice.paths, device), choice
