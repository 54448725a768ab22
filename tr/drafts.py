"""Drafters: where each step's draft tree comes from.

A drafter turns the last committed token into a `Draft`, the tree one verification pass checks. Its
interface is four calls: `begin(prompt_ids)` and `commit(tokens)` let it follow the text,
`draft(root, matrix)` builds the tree, on the CPU beside the matrix (the decoder moves it to the model's
device), and `observe(size, seconds)` tells it what verifying that tree cost. Verification makes every
drafter lossless, so a drafter only decides speed.

- `TemplateDrafter`: the paper's method, a fixed template filled breadth-first from the matrix.
- `DynamicDrafter` (the `auto` tree): a fresh tree each step, grown best-first by each node's estimated
  chance of being accepted (the product, along its path, of the acceptance rate of its source: matrix
  candidates by the probability the model gave them, prompt-lookup copies by n-gram length). It drafts
  from the row of the node's token and, where there is one, from the row of the pair (parent token,
  token), which knows one more token of context. Beside the matrix candidates it offers the
  continuation of the latest earlier occurrence of the text's last n-gram (prompt lookup), which is
  what wins on summaries and retrieval answers. It stops growing at the
  size that maximises expected tokens per unit of verification cost, read off the device's cost curve
  (calibrated, then corrected by the steps' own forward times: `tr.costs.LearnedCost`): a large tree
  where verification is nearly free, a small one where it is not.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .acceptance import AcceptanceStats, confidence_source, lookup_source
from .costs import CostCurve, LearnedCost
from .matrix import AdjacencyMatrix
from .records import LOOKUP
from .trees import DraftTree, ancestor_mask



@dataclass
class Draft:
    """One step's tree. Node 0 is the root (the last committed token); parents come before children."""

    tokens: torch.Tensor  # (n,)
    parents: list[int]
    ranks: list[int]  # candidate rank in the parent's row; -1 for the root, LOOKUP for n-gram copies
    sources: list[str]  # acceptance-statistics key of each node ("" for the root)
    scores: list[float]  # estimated chance each node is accepted (1 for the root)
    depths: torch.Tensor  # (n,)
    ancestors: torch.Tensor  # (n, n) bool: ancestors[i, j] when j is i or an ancestor of i
    predicted_cost: float = 0.0  # verification cost in one-token forward passes, when calibrated
    considered: list[float] = field(default_factory=list)  # scores of every node weighed, best first (kept first)
    curve: CostCurve | None = None  # the cost curve the size was chosen by
    probe: bool = False  # the root alone, to time a one-token pass (`LearnedCost.needs_probe`)

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def expected_tokens(self) -> float:
        """Expected tokens this step emits: the bonus plus each node's chance of acceptance."""
        return sum(self.scores)


def path_scores(parents: Sequence[int], sources: Sequence[str], stats: AcceptanceStats) -> list[float]:
    scores = [1.0]
    for parent, source in zip(parents[1:], sources[1:]):
        scores.append(scores[parent] * stats.rate(source))
    return scores


class TemplateDrafter:
    """A fixed template (`DraftTree`) filled from the matrix: one gather per layer."""

    def __init__(self, tree: DraftTree, curve: CostCurve | None = None):
        self.tree, self.curve = tree, curve
        self.parents = tree.parents.tolist()
        self.ranks = tree.ranks.tolist()
        self.max_size = tree.size

    def begin(self, prompt_ids: Sequence[int]) -> None:
        pass

    def commit(self, tokens: Sequence[int]) -> None:
        pass

    def observe(self, size: int, seconds: float) -> None:
        pass

    def draft(self, root: int, matrix: AdjacencyMatrix) -> Draft:
        tree = self.tree
        tokens = tree.fill(torch.tensor(root), matrix.table)
        probabilities = matrix.probs[tokens[tree.parents[1:]], tree.ranks[1:]].tolist()
        sources = [""] + [confidence_source(p) for p in probabilities]
        scores = path_scores(self.parents, sources, matrix.stats)
        cost = self.curve.relative(tree.size) if self.curve else 0.0
        return Draft(tokens, self.parents, self.ranks, sources, scores, tree.depths, tree.ancestors, cost,
                     curve=self.curve)


class NgramIndex:
    """Where each n-gram (n = 1..max_n) of the text last occurred with a token after it."""

    def __init__(self, max_n: int = 3):
        self.max_n = max_n
        self.tokens: list[int] = []
        self.next_position: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            end = len(self.tokens)
            # The n-grams ending just before `token` now have a continuation: `token`, at `end`.
            for n in range(1, min(self.max_n, end) + 1):
                self.next_position[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def continuation(self, length: int) -> tuple[list[int], int]:
        """Up to `length` tokens that followed the latest earlier occurrence of the longest matching
        suffix of the text, and that suffix's length (0: no match)."""
        for n in range(min(self.max_n, len(self.tokens)), 0, -1):
            start = self.next_position.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + length], n
        return [], 0


class DynamicDrafter:
    """Best-first trees with a prompt-lookup branch, sized by the device's cost curve.

    `curve` None means a fixed budget of `max_nodes` (no calibration); otherwise the tree stops at
    the size with the most expected tokens per unit of cost, looking past the best size so far by
    `lookahead` nodes or by that size again, whichever is more: on a flat (GPU) curve the best size
    can lie far beyond a small one that is nearly as good. A calibrated `CostCurve` is corrected from
    this drafter's own steps; pass a `LearnedCost` to share what one drafter learned with another.
    """

    def __init__(self, curve: CostCurve | LearnedCost | None = None, max_nodes: int = 80, max_depth: int = 10,
                 lookup: bool = True, lookahead: int = 8):
        if not 1 <= max_nodes <= 256:
            raise ValueError(f"max_nodes must be from 1 to 256, got {max_nodes}")
        self.costs = LearnedCost(curve) if isinstance(curve, CostCurve) else curve
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.lookup, self.lookahead = lookup, lookahead
        self.max_size = max_nodes + 1  # the root included
        self.index = NgramIndex()

    def begin(self, prompt_ids: Sequence[int]) -> None:
        self.index = NgramIndex()
        self.index.extend(prompt_ids)

    def commit(self, tokens: Sequence[int]) -> None:
        self.index.extend(tokens)

    def observe(self, size: int, seconds: float) -> None:
        if self.costs:
            self.costs.observe(size, seconds)

    def _cost(self, n: int) -> float:
        return self.costs.relative(n) if self.costs else 1.0

    def draft(self, root: int, matrix: AdjacencyMatrix) -> Draft:
        if self.costs and self.costs.needs_probe():
            return Draft(torch.tensor([root]), [-1], [-1], [""], [1.0], torch.zeros(1, dtype=torch.long),
                         ancestor_mask([-1], 0), 1.0, curve=self.costs.curve, probe=True)
        chain, match = self.index.continuation(self.max_depth) if self.lookup else ([], 0)
        stats, rates = matrix.stats, {}
        before_root = self.index.tokens[-2] if len(self.index.tokens) >= 2 else -1

        def rate(source: str) -> float:
            if source not in rates:
                rates[source] = stats.rate(source)
            return rates[source]

        tokens, parents, ranks, sources, scores, depths = [root], [-1], [-1], [""], [1.0], [0]
        children: list[set[int]] = [set()]
        claimed = [0.0]  # per node: the chance its children already took (one child at most is right)
        chain_next = {0: 0}  # node on the lookup branch -> index in `chain` of the token after it
        # Heap entries: (-score, order, parent, rank, chance, row, next_pushed). `row` is (candidates,
        # probabilities, from_pair) for a matrix candidate, or the token itself for a lookup copy.
        heap: list[tuple] = []
        order = itertools.count()  # ties break by push order, so trees are deterministic

        def push(parent: int, rank: int, chance: float, row, next_pushed: bool = False) -> None:
            heapq.heappush(heap, (-scores[parent] * chance, next(order), parent, rank, chance, row, next_pushed))

        def push_candidate(parent: int, row: tuple, rank: int, ceiling: float) -> None:
            # A row's candidates are pushed one at a time, each when the one before it leaves the heap,
            # so a step costs heap work for the nodes it weighs, not for all k candidates of every row.
            # Their chances never rise along a row: the model ranked them, and a noisy rate must not
            # put a lower-ranked candidate first.
            chance = min(rate(confidence_source(row[1][rank], row[2])), ceiling)
            push(parent, rank, chance, row)

        def expand(node: int) -> None:
            if depths[node] >= self.max_depth:
                return
            token = tokens[node]
            pair = matrix.pair_row(tokens[parents[node]] if node else before_root, token)
            if pair is not None:
                push_candidate(node, (*pair, True), 0, 1.0)
            if bool(matrix.filled[token]):
                push_candidate(node, (matrix.table[token].tolist(), matrix.probs[token].tolist(), False), 0, 1.0)
            j = chain_next.get(node)
            if j is not None and j < len(chain):
                push(node, LOOKUP, rate(lookup_source(match)), chain[j])

        expand(0)
        expected, best_size, best_ratio = 1.0, 1, 1.0 / self._cost(1)
        while heap and len(tokens) <= self.max_nodes:
            _, _, parent, rank, chance, row, next_pushed = heapq.heappop(heap)
            if rank == LOOKUP:
                token, source = row, lookup_source(match)
            else:
                token, source = row[0][rank], confidence_source(row[1][rank], row[2])
                if not next_pushed and rank + 1 < len(row[0]):
                    push_candidate(parent, row, rank + 1, chance)
            if token in children[parent]:
                continue
            room = 1.0 - claimed[parent]
            if chance > room + 1e-9:  # better siblings took most of the parent's chance: worth only the rest
                if room > 1e-6:
                    push(parent, rank, room, row, next_pushed=True)
                continue
            claimed[parent] += chance
            node = len(tokens)
            children[parent].add(token)
            children.append(set())
            claimed.append(0.0)
            tokens.append(token), parents.append(parent), ranks.append(rank), sources.append(source)
            scores.append(scores[parent] * chance), depths.append(depths[parent] + 1)
            j = chain_next.get(parent)
            if j is not None and j < len(chain) and chain[j] == token:
                chain_next[node] = j + 1
            expected += scores[node]
            ratio = expected / self._cost(node + 1)
            if ratio >= best_ratio or self.costs is None:
                best_size, best_ratio = node + 1, ratio
            elif node + 1 - best_size >= max(self.lookahead, best_size):
                break
            expand(node)
        n = best_size
        return Draft(
            tokens=torch.tensor(tokens[:n]), parents=parents[:n], ranks=ranks[:n], sources=sources[:n],
            scores=scores[:n], depths=torch.tensor(depths[:n]), ancestors=ancestor_mask(parents[:n], max(depths[:n])),
            predicted_cost=self._cost(n) if self.costs else 0.0, considered=scores[1:],
            curve=self.costs.curve if self.costs else None,
        )


Drafter = TemplateDrafter | DynamicDrafter
