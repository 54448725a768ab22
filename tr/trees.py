"""Draft trees as data.

A template is a list of paths, Medusa style: the path ``(0, 2)`` is the node reached by taking the
root's best candidate (rank 0) and then that token's third candidate (rank 2). Node 0 is always the
root (the last committed token); template paths become nodes 1..n in the order given, which must be
sorted by depth and closed under parents. Everything the decoder needs per step (parents, ranks,
layers, the tree attention mask, position offsets) is computed once per template in `DraftTree`.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

Path_ = tuple[int, ...]

# Prior chance that the candidate of a given rank is the model's next token. Only the ordering of path
# products matters: it shapes the built-in trees (wide near the root, thin and deep along rank 0).
RANK_PRIOR = (0.6, 0.15, 0.07, 0.05, 0.035, 0.03, 0.025, 0.02)


class TreeError(ValueError):
    """A template that cannot be used as a draft tree."""


def best_first_paths(budget: int, max_depth: int, prior: tuple[float, ...] = RANK_PRIOR) -> list[Path_]:
    """The `budget` paths with the highest product of rank priors, at most `max_depth` deep.

    Products shrink along a path, so the chosen set is closed under parents; sorting by depth then
    gives a valid template.
    """
    chosen: list[Path_] = []
    heap = [(-p, (rank,)) for rank, p in enumerate(prior)]
    heapq.heapify(heap)
    while heap and len(chosen) < budget:
        neg_score, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < max_depth:
            for rank, p in enumerate(prior):
                heapq.heappush(heap, (neg_score * p, path + (rank,)))
    return sorted(chosen, key=lambda path: (len(path), path))


def expected_tokens(paths: list[Path_], prior: tuple[float, ...] = RANK_PRIOR) -> float:
    """Tokens a step over this template emits when each rank's candidate is right with its prior chance:
    the bonus token plus, for every node, the chance that its whole path is accepted."""
    return 1 + sum(math.prod(prior[rank] for rank in path) for path in paths)


def ancestor_mask(parents: list[int], depth: int) -> torch.Tensor:
    """(n, n) bool ancestors-or-self of a tree given by parent indices (-1 for the root), `depth` deep."""
    n = len(parents)
    eye = torch.eye(n, dtype=torch.bool)
    up = torch.tensor([max(p, 0) for p in parents])
    mask = eye
    for _ in range(depth):  # each round follows parent pointers one level further up
        mask = eye | mask[up]
    return mask


# 80 draft nodes, depth 6, widest in the middle layers (8, 18, 22, 14, 11, 7): the size and shape of
# the paper's default tree. The smaller ones suit devices where verifying many tokens is not free.
# Each is (draft nodes, max depth), grown with the first k ranks of the prior so any k gets the same size.
BUILTIN_TEMPLATES: dict[str, tuple[int, int]] = {
    "paper-80": (80, 6),
    "medium-32": (32, 6),
    "small-16": (16, 6),
    "tiny-8": (8, 6),
    "tiny-4": (4, 6),
}
DEFAULT_TEMPLATE = "paper-80"


def validate_paths(paths: object, k: int) -> list[Path_]:
    """Check a template and return it as a list of tuples; raise `TreeError` saying what is wrong."""
    if not isinstance(paths, (list, tuple)) or not paths:
        raise TreeError("a tree template must be a non-empty list of paths, e.g. [[0], [1], [0, 0]]")
    out: list[Path_] = []
    seen: set[Path_] = set()
    for i, path in enumerate(paths):
        if not isinstance(path, (list, tuple)) or not path:
            raise TreeError(f"path #{i} ({path!r}) must be a non-empty list of candidate ranks")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in path):
            raise TreeError(f"path #{i} ({path!r}) must contain only integers")
        path = tuple(path)
        if any(r < 0 or r >= k for r in path):
            raise TreeError(f"path #{i} {list(path)} uses a rank outside 0..{k - 1} (k={k})")
        if path in seen:
            raise TreeError(f"path #{i} {list(path)} appears twice")
        if out and len(path) < len(out[-1]):
            raise TreeError(f"paths must be sorted by depth: {list(path)} comes after {list(out[-1])}")
        if len(path) > 1 and path[:-1] not in seen:
            raise TreeError(f"path {list(path)} has no parent {list(path[:-1])} before it")
        seen.add(path)
        out.append(path)
    return out


def best_first_template(name: str, k: int) -> list[Path_]:
    """The paths of a built-in template, using the first k candidate ranks."""
    budget, max_depth = BUILTIN_TEMPLATES[name]
    return best_first_paths(budget, max_depth, RANK_PRIOR[:k])


@dataclass(frozen=True)
class DraftTree:
    """Per-template buffers, computed once. Node 0 is the root; nodes are sorted by depth."""

    paths: list[Path_]
    parents: torch.Tensor  # (n,) parent index, -1 for the root
    ranks: torch.Tensor  # (n,) which candidate of the parent's row, -1 for the root
    depths: torch.Tensor  # (n,)
    ancestors: torch.Tensor  # (n, n) bool: ancestors[i, j] is True when j is i or an ancestor of i
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per depth: (nodes, parents, ranks)

    @property
    def size(self) -> int:
        return self.parents.numel()

    @property
    def depth(self) -> int:
        return len(self.layers)

    @classmethod
    def from_paths(cls, paths: list[Path_]) -> "DraftTree":
        index = {(): 0}
        parents, ranks, depths = [-1], [-1], [0]
        for i, path in enumerate(paths, start=1):
            index[path] = i
            parents.append(index[path[:-1]])
            ranks.append(path[-1])
            depths.append(len(path))
        ancestors = ancestor_mask(parents, max(depths))
        parents_t = torch.tensor(parents)
        ranks_t = torch.tensor(ranks)
        depths_t = torch.tensor(depths)
        layers = []
        for d in range(1, max(depths) + 1):
            nodes = (depths_t == d).nonzero().flatten()
            layers.append((nodes, parents_t[nodes], ranks_t[nodes]))
        return cls(paths=list(paths), parents=parents_t, ranks=ranks_t, depths=depths_t, ancestors=ancestors,
                   layers=layers)

    def to(self, device: torch.device) -> DraftTree:
        """The same tree with its tensors on `device`."""
        return DraftTree(self.paths, self.parents.to(device), self.ranks.to(device), self.depths.to(device),
                         self.ancestors.to(device), [tuple(part.to(device) for part in layer) for layer in self.layers])

    def fill(self, root_token: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Draft tokens for every node, breadth-first from the adjacency matrix: one gather per layer, on the
        device of the root token (a zero-dimensional tensor), the tree's and the matrix's."""
        tokens = root_token.expand(self.size).clone()
        for nodes, parents, ranks in self.layers:
            tokens.index_copy_(0, nodes, matrix[tokens[parents], ranks])
        return tokens

    def chances(self, tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Each node's probability in its parent's row (`probs`, the matrix's), for the tree filled with
        `tokens`; 0 for the root."""
        return torch.cat([probs.new_zeros(1), probs[tokens[self.parents[1:]], self.ranks[1:]]])

    def choose(self, chances: torch.Tensor, size: int) -> torch.Tensor:
        """The `size` nodes of highest path products of `chances` (`most_probable`), in tree order."""
        return most_probable(path_products(self.layers, chances), size)


def path_nodes(tree: DraftTree) -> torch.Tensor:
    """(n, depth + 1): row i lists node i's path from the root, one node per depth, padded with i itself."""
    rows = []
    for node, sees in enumerate(tree.ancestors.tolist()):
        path = [a for a, seen in enumerate(sees) if seen]  # nodes are sorted by depth: root first
        rows.append(path + [node] * (tree.depth + 1 - len(path)))
    return torch.tensor(rows)


def path_products(layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], chances: torch.Tensor
                  ) -> torch.Tensor:
    """Each node's product, along its path, of `chances` (a node's probability in its parent's row; the
    root's entry is not read, its product is 1). Chances are capped at 1, so no product exceeds its parent's."""
    products = torch.ones_like(chances)
    capped = chances.clamp(max=1.0)
    for nodes, parents, _ in layers:
        products.index_copy_(0, nodes, products[parents] * capped[nodes])
    return products


def most_probable(products: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` nodes with the highest path products, ties to the earlier node, in tree order. A parent
    comes before its child with a product at least as high, so each chosen node's parent is chosen too:
    the chosen nodes form a tree, the root first."""
    return torch.sort(products, descending=True, stable=True).indices[:size].sort().values


class Subtree(NamedTuple):
    """Nodes chosen from a tree, renumbered in tree order: what a pass over them needs."""

    nodes: torch.Tensor  # (n,) the chosen nodes of the whole tree
    parents: torch.Tensor  # (n,) each node's parent among the chosen (0 for the root)
    depths: torch.Tensor  # (n,)
    ancestors: torch.Tensor  # (n, n) bool
    paths: torch.Tensor  # (n, depth + 1) as `path_nodes`, among the chosen


def subtree(tree: DraftTree, paths: torch.Tensor, nodes: torch.Tensor) -> Subtree:
    """The subtree of `tree` (its tensors on `nodes`' device; `paths` its `path_nodes`) on `nodes`, a
    parent-closed set in tree order (as `most_probable` chooses)."""
    position = torch.zeros_like(tree.parents).index_copy_(0, nodes, torch.arange(len(nodes), device=nodes.device))
    return Subtree(nodes, position[tree.parents[nodes].clamp(min=0)], tree.depths[nodes],
                   tree.ancestors[nodes][:, nodes], position[paths[nodes]])
