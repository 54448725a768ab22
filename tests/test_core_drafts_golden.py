"""The dynamic drafter grows exactly the trees it grew before its rewrite into nodes, a frontier and an
expansion rule: same nodes, same order, same scores, bit for bit, over many random matrices.

`_ReferenceDynamicDrafter` is the former `tr.drafts.DynamicDrafter.draft` (one function, a heap of
tuples beside parallel lists, origins as strings such as "q3", "c9", "lookup2"), kept here verbatim
but for its inputs: the n-gram index is given, string keys are formatted here, and rates are read
through `_rate` (the key as an `Origin`).
"""

from __future__ import annotations

import heapq
import itertools
import random

import pytest
import torch

from tr.acceptance import AcceptanceStats
from tr.costs import CostCurve, LearnedCost
from tr.drafts import Candidate, DynamicDrafter, Frontier, NgramIndex, Sizing
from tr.matrix import AdjacencyMatrix
from tr.records import LOOKUP, Origin, OriginKind

_KIND_OF_PREFIX = {"q": OriginKind.ROW, "c": OriginKind.PAIR}


def _origin(source: str) -> Origin:
    """The former string key as an `Origin`: "" the root, "q3" row bucket 3, "c9" pair bucket 9, "lookup2"."""
    if not source:
        return Origin(OriginKind.ROOT)
    if source.startswith("lookup"):
        return Origin(OriginKind.LOOKUP, int(source[len("lookup"):]))
    return Origin(_KIND_OF_PREFIX[source[0]], int(source[1:]))


def _rate(stats: AcceptanceStats, source: str) -> float:
    return stats.rate(_origin(source))


def _confidence_source(probability: float, pair: bool = False) -> str:
    return f"{'c' if pair else 'q'}{min(int(probability * 10), 9)}"


def _lookup_source(match_length: int) -> str:
    return f"lookup{match_length}"


class _ReferenceDynamicDrafter:
    """The drafter as it was: the regression reference. Returns the tree as plain lists."""

    def __init__(self, costs, index: NgramIndex, max_nodes: int, max_depth: int, lookup: bool, lookahead: int):
        self.costs, self.index = costs, index
        self.max_nodes, self.max_depth, self.lookup, self.lookahead = max_nodes, max_depth, lookup, lookahead

    def _cost(self, n: int) -> float:
        return self.costs.relative(n) if self.costs else 1.0

    def draft(self, root: int, matrix: AdjacencyMatrix) -> dict:
        if self.costs and self.costs.needs_probe():
            return dict(tokens=[root], parents=[-1], ranks=[-1], sources=[""], scores=[1.0], depths=[0],
                        predicted_cost=1.0, considered=[], probe=True)
        chain, match = self.index.continuation(self.max_depth) if self.lookup else ([], 0)
        stats, rates = matrix.stats, {}
        before_root = self.index.tokens[-2] if len(self.index.tokens) >= 2 else -1

        def rate(source: str) -> float:
            if source not in rates:
                rates[source] = _rate(stats, source)
            return rates[source]

        tokens, parents, ranks, sources, scores, depths = [root], [-1], [-1], [""], [1.0], [0]
        children: list[set[int]] = [set()]
        claimed = [0.0]
        chain_next = {0: 0}
        heap: list[tuple] = []
        order = itertools.count()

        def push(parent: int, rank: int, chance: float, row, next_pushed: bool = False) -> None:
            heapq.heappush(heap, (-scores[parent] * chance, next(order), parent, rank, chance, row, next_pushed))

        def push_candidate(parent: int, row: tuple, rank: int, ceiling: float) -> None:
            chance = min(rate(_confidence_source(row[1][rank], row[2])), ceiling)
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
                push(node, LOOKUP, rate(_lookup_source(match)), chain[j])

        expand(0)
        expected, best_size, best_ratio = 1.0, 1, 1.0 / self._cost(1)
        while heap and len(tokens) <= self.max_nodes:
            _, _, parent, rank, chance, row, next_pushed = heapq.heappop(heap)
            if rank == LOOKUP:
                token, source = row, _lookup_source(match)
            else:
                token, source = row[0][rank], _confidence_source(row[1][rank], row[2])
                if not next_pushed and rank + 1 < len(row[0]):
                    push_candidate(parent, row, rank + 1, chance)
            if token in children[parent]:
                continue
            room = 1.0 - claimed[parent]
            if chance > room + 1e-9:
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
        return dict(tokens=tokens[:n], parents=parents[:n], ranks=ranks[:n], sources=sources[:n], scores=scores[:n],
                    depths=depths[:n], predicted_cost=self._cost(n) if self.costs else 0.0, considered=scores[1:],
                    probe=False)


def _source(origin: Origin) -> str:
    """An `Origin` as the former string key."""
    if origin.kind is OriginKind.ROOT:
        return ""
    if origin.kind is OriginKind.LOOKUP:
        return _lookup_source(origin.level)
    return f"{'c' if origin.kind is OriginKind.PAIR else 'q'}{origin.level}"


def _as_reference(draft) -> dict:
    return dict(tokens=list(draft.tokens), parents=draft.parents, ranks=draft.ranks,
                sources=[_source(o) for o in draft.origins], scores=draft.scores, depths=list(draft.depths),
                predicted_cost=draft.predicted_cost, considered=draft.considered, probe=draft.probe)


def random_matrix(rng: random.Random, vocab: int, k: int) -> AdjacencyMatrix:
    """Rows with coarse probabilities (many ties), some rows never written, pair rows for some pairs, and
    acceptance statistics that have seen some of every origin."""
    matrix = AdjacencyMatrix(vocab, k)
    levels = [0.9, 0.6, 0.35, 0.2, 0.1, 0.05, 0.02, 0.0]
    for token in range(vocab):
        if rng.random() < 0.8:
            row = rng.sample(range(vocab), k)
            probs = sorted((rng.choice(levels) for _ in range(k)), reverse=True)
            matrix.table[token] = torch.tensor(row)
            matrix.probs[token] = torch.tensor(probs)
            matrix.filled[token] = True
    for _ in range(vocab * vocab // 3):
        key = (rng.randrange(vocab), rng.randrange(vocab))
        matrix.pairs[key] = (rng.sample(range(vocab), k), sorted((rng.choice(levels) for _ in range(k)), reverse=True))
    for _ in range(rng.randint(0, 30)):
        source = rng.choice([_confidence_source(rng.random(), rng.random() < 0.5), _lookup_source(rng.randint(1, 3))])
        reached = rng.randint(1, 50)
        matrix.stats.by_origin[_origin(source)] = [reached, rng.randint(0, reached)]
    return matrix


def random_costs(rng: random.Random) -> tuple[CostCurve | LearnedCost | None, str]:
    """No curve (a fixed budget), a calibrated curve, or one corrected by steps (sometimes due a probe)."""
    choice = rng.choice(["none", "curve", "learned"])
    if choice == "none":
        return None, choice
    sizes = [1, 2, 8, 32, 81]
    slope = rng.choice([0.0, 0.002, 0.02, 0.1])
    curve = CostCurve(sizes, [1.0 + slope * (n - 1) for n in sizes], 64, "cpu")
    if choice == "curve":
        return curve, choice
    learned = LearnedCost(curve)
    timed = rng.choice([[1, 3, 9, 20], [9, 20]])  # trees alone: due a one-token probe
    for _ in range(rng.randint(0, 60)):
        n = rng.choice(timed)
        learned.observe(n, curve.cost(n) * rng.uniform(0.8, 1.4))
    return learned, choice


def random_text(rng: random.Random, vocab: int) -> list[int]:
    """Text with repeats, so prompt lookup finds matches of every length."""
    chunk = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
    return chunk * rng.randint(1, 3) + [rng.randrange(vocab) for _ in range(rng.randint(0, 5))] + chunk[:rng.randint(0, 4)]


@pytest.mark.parametrize("seed", range(60))
def test_dynamic_drafter_grows_the_reference_trees(seed):
    rng = random.Random(seed)
    vocab, k = rng.choice([(12, 4), (24, 8), (64, 8), (40, 3)])
    matrix = random_matrix(rng, vocab, k)
    costs, kind = random_costs(rng)
    options = dict(max_nodes=rng.choice([1, 4, 16, 40, 80]), max_depth=rng.randint(1, 10), lookup=rng.random() < 0.7,
                   lookahead=rng.choice([0, 2, 8]))
    text = random_text(rng, vocab)
    drafter = DynamicDrafter(costs, prompt_ids=text, **options)
    reference_index = NgramIndex()
    reference_index.extend(text)
    # Both read one LearnedCost; a bare curve each wraps their own, equal and uncorrected.
    reference_costs = LearnedCost(costs) if kind == "curve" else costs
    reference = _ReferenceDynamicDrafter(reference_costs, reference_index, **options)
    for _ in range(4):  # the text grows between drafts, as committed tokens do
        root = reference_index.tokens[-1]
        got, expected = _as_reference(drafter.draft(root, matrix)), reference.draft(root, matrix)
        assert got == expected
        more = [rng.randrange(vocab) for _ in range(rng.randint(1, 3))]
        drafter.index.extend(more)
        reference_index.extend(more)


def test_frontier_gives_the_best_score_first_and_ties_in_the_order_offered():
    frontier = Frontier()
    for parent, score in enumerate([0.5, 0.9, 0.5, 0.7]):
        frontier.offer(score, Candidate(parent, 0, score, None, parent))
    taken = []
    while frontier:
        taken.append(frontier.best().parent)
    assert taken == [1, 3, 0, 2]


def test_sizing_keeps_the_best_ratio_and_stops_past_its_lookahead():
    sizing = Sizing(lambda n: 1.0 + 0.5 * (n - 1), lookahead=2, sized=True)
    assert sizing.grown(2, 0.9)  # 1.9 tokens for 1.5: better than 1 for 1
    assert sizing.grown(3, 0.1) and sizing.best_size == 2  # 2.0 for 2.0: worse, still looking
    assert not sizing.grown(4, 0.1)  # two nodes past the best without beating it
    fixed = Sizing(lambda n: 1.0, lookahead=0, sized=False)
    assert fixed.grown(2, 0.0) and fixed.best_size == 2  # a fixed budget keeps every node
