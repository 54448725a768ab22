"""Drafters: where each step's draft tree comes from (the draft phase).

A drafter is made for one request (`tr.generate.make_drafter`) and offers one call,
`draft(root, matrix) -> Draft`: the tree one verification pass checks, rooted at the last committed
token and built on the CPU beside the matrix. A drafter that learns also offers `observe(step)`, which
the decoder calls with every step record, the prefill's included. Verification makes every drafter
lossless, so a drafter only decides speed.

- `TemplateDrafter`: the paper's method, a fixed template filled breadth-first from the matrix; given a
  size, each step's most probable nodes of it (what `auto` becomes where steps run on the device).
- `DynamicDrafter` (the `auto` tree): a fresh tree each step, grown best-first by each node's estimated
  chance of being accepted (the product, along its path, of the acceptance rate of its origin: matrix
  candidates by the probability the model gave them, prompt-lookup copies by n-gram length). It drafts
  from the row of the node's token and, where there is one, from the row of the pair (parent token,
  token), which knows one more token of context. Beside the matrix candidates it offers the
  continuation of the latest earlier occurrence of the text's last n-gram (prompt lookup), which is
  what wins on summaries and retrieval answers. It stops growing at the size that maximises expected
  tokens per unit of verification cost, read off the device's cost curve (calibrated, then corrected
  by the steps' own forward times: `tr.costs.LearnedCost`): a large tree where verification is nearly
  free, a small one where it is not.
- `PromptLookupDrafter` (prompt lookup decoding, Saxena 2023): no matrix at all, only a chain copied from
  the latest earlier occurrence of the text's last 1-3 tokens, verified by the same loop.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch

from .acceptance import AcceptanceStats, confidence_origin, lookup_origin
from .costs import CostCurve, LearnedCost
from .matrix import AdjacencyMatrix
from .records import LOOKUP, ROOT_ORIGIN, Draft, Origin, Step
from .trees import DraftTree


class Drafter(Protocol):
    """The draft phase. A drafter may also define `observe(step: Step) -> None`, its one feedback hook:
    the decoder then hands it every step record (the prefill's included) before yielding it."""

    max_size: int  # most nodes a draft can have, the root included: the decoder reserves cache room for them

    def draft(self, root: int, matrix: AdjacencyMatrix | None) -> Draft:
        """The tree to verify after the committed token `root`, from the matrix's current rows (None in a
        run that keeps no matrix, which only a drafter that reads none is given)."""
        ...


def path_scores(parents: Sequence[int], origins: Sequence[Origin], stats: AcceptanceStats) -> list[float]:
    scores = [1.0]
    for parent, origin in zip(parents[1:], origins[1:]):
        scores.append(scores[parent] * stats.rate(origin))
    return scores


class TemplateDrafter:
    """A fixed template (`DraftTree`) filled from the matrix: one gather per layer. With a `size` below the
    template's, each step drafts only the `size` nodes (the root included) with the highest products of the
    probabilities the matrix holds along their paths (`tr.trees.most_probable`): the template is the pool
    a tree of that size is chosen from, deep where the rows are confident and wide where they are not."""

    def __init__(self, tree: DraftTree, curve: CostCurve | None = None, size: int | None = None):
        self.tree, self.curve = tree, curve
        self.parents = tree.parents.tolist()
        self.depths = tree.depths.tolist()
        self.ranks = tree.ranks.tolist()
        self.max_size = tree.size if size is None else min(size, tree.size)

    @property
    def chooses(self) -> bool:
        """Whether each step chooses its nodes from the template (rather than drafting all of it)."""
        return self.max_size < self.tree.size

    def draft(self, root: int, matrix: AdjacencyMatrix) -> Draft:
        tree = self.tree
        tokens = tree.fill(torch.tensor(root), matrix.table)
        chances = tree.chances(tokens, matrix.probs)
        nodes = tree.choose(chances, self.max_size) if self.chooses else torch.arange(tree.size)
        return self.record(nodes.tolist(), tokens[nodes].tolist(), chances[nodes][1:].tolist(), matrix.stats)

    def record(self, nodes: list[int], tokens: list[int], probabilities: list[float], stats: AcceptanceStats
               ) -> Draft:
        """The draft of the template's `nodes` (tree order, parent-closed) filled with `tokens`, given the
        probability each node after the root had in its parent's row (`tr.device.resident` fills and
        chooses on the device and reads these back)."""
        position = {node: i for i, node in enumerate(nodes)}
        parents = [-1] + [position[self.parents[node]] for node in nodes[1:]]
        origins = [ROOT_ORIGIN] + [confidence_origin(p) for p in probabilities]
        scores = path_scores(parents, origins, stats)
        cost = self.curve.relative(len(nodes)) if self.curve else 0.0
        return Draft(tokens, parents, [self.depths[node] for node in nodes], [self.ranks[node] for node in nodes],
                     origins, scores, cost, curve=self.curve)


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


# Draft tokens per prompt-lookup chain: the reference method's default (Saxena's `num_pred_tokens`, the
# value transformers' docs pass as `prompt_lookup_num_tokens`), so this drafter is the method as
# published, a baseline rather than one tuned to this device. A chain is drafted only where the text
# repeats; elsewhere a step is a plain one-token pass and costs nothing extra.
LOOKUP_CHAIN = 10


class PromptLookupDrafter:
    """Prompt lookup decoding for one request: a chain of up to `length` tokens copied from what followed
    the latest earlier occurrence of the text's longest matching final n-gram (n = 3, 2, 1), or the root
    alone (a plain decoding step) when nothing matches. It reads no matrix.

    `prompt_ids` start the text and `observe` adds each step's tokens, so the text always ends with the
    root. `curve`, when given, only prices the drafts (`Draft.predicted_cost`); it never sizes them.
    """

    def __init__(self, prompt_ids: Sequence[int] = (), length: int = LOOKUP_CHAIN, curve: CostCurve | None = None):
        if length < 1:
            raise ValueError(f"a lookup chain needs at least one token, got length {length}")
        self.length, self.curve = length, curve
        self.max_size = length + 1  # the root included
        self.index = NgramIndex()
        self.index.extend(prompt_ids)
        # Lookup rates by n-gram length, learned from this request's steps: the drafts' scores (no matrix
        # keeps statistics here). Ranks are all LOOKUP, so one rank column is enough.
        self.stats = AcceptanceStats(k=1)

    def observe(self, step: Step) -> None:
        """Follow the text and count which copies the model agreed with."""
        self.index.extend(step.tokens)
        self.stats.observe(step)

    def draft(self, root: int, matrix: AdjacencyMatrix | None = None) -> Draft:
        chain, match = self.index.continuation(self.length)
        size = len(chain) + 1
        parents = list(range(-1, len(chain)))  # a chain: each node's parent is the node before it
        origins = [ROOT_ORIGIN] + [lookup_origin(match)] * len(chain)
        return Draft([root, *chain], parents, list(range(size)), [-1] + [LOOKUP] * len(chain), origins,
                     path_scores(parents, origins, self.stats), self.curve.relative(size) if self.curve else 0.0,
                     curve=self.curve)


# --- the dynamic tree: nodes, a frontier of candidates, an expansion rule ---------------------------


class Row(NamedTuple):
    """A matrix row a node's children are drawn from, best candidate first."""

    tokens: list[int]
    probs: list[float]
    pair: bool  # a pair row (two tokens of context) rather than a one-token row


class Candidate(NamedTuple):
    """A possible child on the frontier: rank `rank` of `row`, or (rank LOOKUP) the lookup copy `token`."""

    parent: int
    rank: int
    chance: float  # estimated chance it is right, given its parent is
    row: Row | None  # None for a lookup copy
    token: int  # the lookup copy's token (-1 for a row candidate: read from the row)
    successor_offered: bool = False  # the next rank of `row` is already on the frontier


@dataclass(slots=True)
class Node:
    token: int
    parent: int
    rank: int
    origin: Origin
    score: float  # chance the node is accepted: the product of chances along its path
    depth: int
    children: set[int] = field(default_factory=set)  # tokens of its children so far
    claimed: float = 0.0  # chance its children took already (at most one child is right)
    chain_next: int | None = None  # on the lookup branch: index in the chain of the token after it


class Frontier:
    """Candidates by score (the parent's score times their chance), ties by the order they were offered,
    so trees are deterministic."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Candidate]] = []
        self._order = itertools.count()

    def offer(self, score: float, candidate: Candidate) -> None:
        heapq.heappush(self._heap, (-score, next(self._order), candidate))

    def best(self) -> Candidate:
        return heapq.heappop(self._heap)[2]

    def __bool__(self) -> bool:
        return bool(self._heap)


class Sizing:
    """Where to stop growing: the size with the most expected tokens per unit of cost so far, looking
    past it by `lookahead` nodes or by that size again, whichever is more (on a flat GPU curve the best
    size can lie far beyond a small one that is nearly as good). Without costs, every size is best."""

    def __init__(self, cost: Callable[[int], float], lookahead: int, sized: bool):
        self.cost, self.lookahead, self.sized = cost, lookahead, sized
        self.expected, self.best_size, self.best_ratio = 1.0, 1, 1.0 / cost(1)

    def grown(self, size: int, score: float) -> bool:
        """Count a node that made the tree `size` big; False once growing further cannot pay."""
        self.expected += score
        ratio = self.expected / self.cost(size)
        if ratio >= self.best_ratio or not self.sized:
            self.best_size, self.best_ratio = size, ratio
        elif size - self.best_size >= max(self.lookahead, self.best_size):
            return False
        return True


class TreeGrowth:
    """One step's best-first growth from `root`: take the frontier's best candidate, add it as a node
    unless its parent already has that token or better siblings left it too little chance, expand it."""

    def __init__(self, drafter: DynamicDrafter, root: int, matrix: AdjacencyMatrix):
        self.drafter, self.matrix = drafter, matrix
        index = drafter.index
        self.chain, match = index.continuation(drafter.max_depth) if drafter.lookup else ([], 0)
        self.lookup_origin = lookup_origin(match)
        self.before_root = index.tokens[-2] if len(index.tokens) >= 2 else -1
        self.rates: dict[Origin, float] = {}
        self.nodes = [Node(root, -1, -1, ROOT_ORIGIN, 1.0, 0, chain_next=0)]
        self.frontier = Frontier()

    def rate(self, origin: Origin) -> float:
        if origin not in self.rates:
            self.rates[origin] = self.matrix.stats.rate(origin)
        return self.rates[origin]

    def grow(self, sizing: Sizing) -> None:
        self.expand(0)
        while self.frontier and len(self.nodes) <= self.drafter.max_nodes:
            node = self.take(self.frontier.best())
            if node is not None:
                if not sizing.grown(len(self.nodes), node.score):
                    return
                self.expand(len(self.nodes) - 1)

    def offer_row(self, parent: int, row: Row, rank: int, ceiling: float) -> None:
        # A row's candidates are offered one at a time, each when the one before it leaves the frontier,
        # so a step costs heap work for the nodes it weighs, not for all k candidates of every row.
        # Their chances never rise along a row: the model ranked them, and a noisy rate must not put a
        # lower-ranked candidate first.
        _, probs, pair = row
        chance = min(self.rate(confidence_origin(probs[rank], pair)), ceiling)
        self.frontier.offer(self.nodes[parent].score * chance, Candidate(parent, rank, chance, row, -1))

    def expand(self, index: int) -> None:
        """Offer the node's children: its pair row's best, its own row's best, and the lookup copy."""
        node, matrix = self.nodes[index], self.matrix
        if node.depth >= self.drafter.max_depth:
            return
        previous = self.nodes[node.parent].token if index else self.before_root
        pair = matrix.pair_row(previous, node.token)
        if pair is not None:
            self.offer_row(index, Row(*pair, True), 0, 1.0)
        if bool(matrix.filled[node.token]):
            row = Row(matrix.table[node.token].tolist(), matrix.probs[node.token].tolist(), False)
            self.offer_row(index, row, 0, 1.0)
        j = node.chain_next
        if j is not None and j < len(self.chain):
            chance = self.rate(self.lookup_origin)
            self.frontier.offer(node.score * chance, Candidate(index, LOOKUP, chance, None, self.chain[j]))

    def take(self, candidate: Candidate) -> Node | None:
        """The candidate as a new node, or None when its parent has its token already or too little
        chance left for it (then it returns to the frontier with only what is left)."""
        parent_index, rank, chance, row, token, successor_offered = candidate
        if row is None:
            origin = self.lookup_origin
        else:
            tokens, probs, pair = row
            token, origin = tokens[rank], confidence_origin(probs[rank], pair)
            if not successor_offered and rank + 1 < len(tokens):
                self.offer_row(parent_index, row, rank + 1, chance)
        parent = self.nodes[parent_index]
        if token in parent.children:
            return None
        room = 1.0 - parent.claimed
        if chance > room + 1e-9:  # better siblings took most of the parent's chance: worth only the rest
            if room > 1e-6:
                self.frontier.offer(parent.score * room, candidate._replace(chance=room, successor_offered=True))
            return None
        parent.claimed += chance
        parent.children.add(token)
        j = parent.chain_next
        on_chain = j is not None and j < len(self.chain) and self.chain[j] == token
        node = Node(token, parent_index, rank, origin, parent.score * chance, parent.depth + 1,
                    chain_next=j + 1 if on_chain else None)
        self.nodes.append(node)
        return node

    def draft(self, size: int) -> Draft:
        """The first `size` nodes as a draft; every node weighed is kept in `considered`."""
        drafter, nodes = self.drafter, self.nodes[:size]
        return Draft(
            tokens=[n.token for n in nodes], parents=[n.parent for n in nodes], depths=[n.depth for n in nodes],
            ranks=[n.rank for n in nodes], origins=[n.origin for n in nodes], scores=[n.score for n in nodes],
            predicted_cost=drafter.cost(size) if drafter.costs else 0.0,
            considered=[n.score for n in self.nodes[1:]], curve=drafter.costs.curve if drafter.costs else None,
        )


class DynamicDrafter:
    """Best-first trees with a prompt-lookup branch, sized by the device's cost curve, for one request.

    `prompt_ids` start the text prompt lookup copies from; `observe` adds each step's tokens. `curve`
    None means a fixed budget of `max_nodes` (no calibration); otherwise the tree stops at the size with
    the most expected tokens per unit of cost (`Sizing`). A calibrated `CostCurve` is corrected from this
    drafter's own steps; pass a `LearnedCost` to share what one drafter learned with the next.
    """

    def __init__(self, curve: CostCurve | LearnedCost | None = None, max_nodes: int = 80, max_depth: int = 10,
                 lookup: bool = True, lookahead: int = 8, prompt_ids: Sequence[int] = ()):
        if not 1 <= max_nodes <= 256:
            raise ValueError(f"max_nodes must be from 1 to 256, got {max_nodes}")
        self.costs = LearnedCost(curve) if isinstance(curve, CostCurve) else curve
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.lookup, self.lookahead = lookup, lookahead
        self.max_size = max_nodes + 1  # the root included
        self.index = NgramIndex()
        self.index.extend(prompt_ids)

    def observe(self, step: Step) -> None:
        """Follow the text, and learn what verifying the step's tree cost."""
        self.index.extend(step.tokens)
        if self.costs and step.draft is not None:
            self.costs.observe(step.draft.size, step.forward_s)

    def cost(self, n: int) -> float:
        return self.costs.relative(n) if self.costs else 1.0

    def draft(self, root: int, matrix: AdjacencyMatrix) -> Draft:
        if self.costs and self.costs.needs_probe():
            return Draft([root], [-1], [0], [-1], [ROOT_ORIGIN], [1.0], 1.0, curve=self.costs.curve, probe=True)
        growth = TreeGrowth(self, root, matrix)
        sizing = Sizing(self.cost, self.lookahead, sized=self.costs is not None)
        growth.grow(sizing)
        return growth.draft(sizing.best_size)
