"""The cost curve learned from decoding steps (`tr.costs.LearnedCost`): it follows what steps really cost,
probes one-token passes only as often as it needs, and the probes keep decoding exact."""

from __future__ import annotations

import random

import pytest
import torch

from tiny_models import tiny_model
from tr.costs import PROBE_BELOW, CostCurve, LearnedCost
from tr.decoding import autoregressive, token_recycling
from tr.drafts import DynamicDrafter
from tr.matrix import AdjacencyMatrix
from tr.records import Step

SIZES = [*range(1, 17), 20, 24, 32, 48, 64, 81]
# A calibration a noisy host misled (the 2-core CPU, 2026-11-26): 4 to 13 tokens as cheap as 3.
MISLED = CostCurve(SIZES, [0.089 * r for r in [1.0, 1.0, 1.08, *[1.11] * 10, 1.14, 1.2, 1.2, 1.23, 1.38, 1.67,
                                               2.03, 2.4, 3.7]], 256, "cpu")


def true_seconds(n: int) -> float:
    """What passes really cost on that host while decoding (13 tokens: 1.49x one)."""
    return 0.0865 * (1.0 + 0.041 * (n - 1))


def likely_matrix(vocab: int = 64, k: int = 8) -> AdjacencyMatrix:
    """Rows whose first candidates are likely but not certain: the tree size then depends on the cost."""
    matrix = AdjacencyMatrix(vocab, k)
    tokens = torch.arange(vocab)
    matrix.table[:] = (tokens[:, None] + torch.arange(1, k + 1)) % vocab
    matrix.probs[:] = torch.tensor([0.75, 0.15] + [0.01] * (k - 2))
    matrix.filled[:] = True
    return matrix


def drafted_sizes(drafter: DynamicDrafter, steps: int, learn: bool, noise: float = 0.15) -> list[int]:
    rng, matrix, sizes = random.Random(0), likely_matrix(), []
    for _ in range(steps):
        draft = drafter.draft(0, matrix)
        sizes.append(draft.size)
        if learn:
            seconds = true_seconds(draft.size) * rng.uniform(1 - noise, 1 + noise)
            drafter.observe(Step(0, [], draft, forward_s=seconds))
    return sizes


def test_a_misled_calibration_is_corrected_by_the_steps_timings():
    sizes = drafted_sizes(DynamicDrafter(MISLED, lookup=False), 600, learn=True)
    unlearned = drafted_sizes(DynamicDrafter(MISLED, lookup=False), 600, learn=False)
    assert min(unlearned) >= 12  # the misled curve alone keeps drafting big trees
    late = [n for n in sizes[-200:] if n > 1]
    assert max(late) < min(unlearned)  # what the steps cost shrinks the tree
    probes = sizes.count(1)
    assert 3 <= probes <= 20  # early probes, then few (600 steps, half-life 512)


def test_learned_relative_costs_match_the_timed_ones():
    drafter = DynamicDrafter(MISLED, lookup=False)
    drafted_sizes(drafter, 600, learn=True, noise=0.0)
    costs = drafter.costs
    timed = [n for n, w in zip(SIZES, costs.weights) if w >= 2]
    assert 1 in timed and len(timed) >= 3
    for n in timed:  # a straight-line correction of a kinked prior: close, not exact
        truth = true_seconds(n) / true_seconds(1)
        assert abs(costs.relative(n) / truth - 1) < 0.08, n
    assert MISLED.relative(13) / (true_seconds(13) / true_seconds(1)) < 0.75  # what the prior alone said
    assert costs.curve.steps > 100 and costs.curve.measured  # the snapshot says how much corrected it


def test_probes_come_after_eight_trees_each_then_whenever_the_unit_goes_stale():
    costs = LearnedCost(MISLED)
    assert not costs.needs_probe()  # nothing timed yet: start from the calibration
    for _ in range(8):
        costs.observe(10, 0.12)
    assert not costs.needs_probe()  # decayed, eight timings weigh a little under 8
    costs.observe(10, 0.12)
    assert costs.needs_probe()
    costs.observe(1, 0.09)
    assert not costs.needs_probe()
    probes = 0
    for _ in range(3000):
        if costs.needs_probe():
            costs.observe(1, 0.09)
            probes += 1
        else:
            costs.observe(10, 0.12)
    assert costs.weights[0] >= PROBE_BELOW - 1
    assert 10 <= probes <= 30  # about one step in 160 once settled


def test_a_curve_without_timings_is_the_calibration():
    costs = LearnedCost(MISLED)
    assert costs.curve is MISLED and costs.relative(13) == MISLED.relative(13)
    costs.observe(13, 0.2)  # one timing is not yet evidence (SEEN)
    assert costs.curve is MISLED
    costs.observe(13, 0.2)
    costs.observe(13, 0.2)
    assert costs.relative(13) == pytest.approx(MISLED.relative(13))  # one size timed: a level, not a shape
    assert costs.curve.cost(13) == pytest.approx(0.2)


def test_probing_drafter_gives_the_greedy_tokens():
    model = tiny_model("llama", 96, seed=3)
    curve = CostCurve([1, 2, 8, 32, 81], [1.0, 1.0, 1.0, 1.0, 1.0], 64, "cpu")  # free: big trees, then probes
    costs, matrix, rng, probes = LearnedCost(curve), AdjacencyMatrix(96, 4), random.Random(3), 0
    for _ in range(40):  # trees timed, no one-token pass: steps probe until PROBE_BELOW are timed
        costs.observe(10, 1.0)
    for _ in range(3):  # a drafter per request, one learned cost for all
        prompt = [rng.randrange(96) for _ in range(rng.randint(2, 10))] * 2
        drafter = DynamicDrafter(costs, max_nodes=24, prompt_ids=prompt)
        steps = list(token_recycling(model, prompt, 60, matrix, drafter))
        assert [t for s in steps for t in s.tokens] == [t for s in autoregressive(model, prompt, 60) for t in s.tokens]
        drafts = [s.draft for s in steps[1:]]
        probes += sum(d.probe for d in drafts)
        assert all(d.size == 1 for d in drafts if d.probe)
        assert all(d.curve is not None for d in drafts)
    assert probes >= 3


def test_sizes_beyond_the_timed_ones_keep_the_nearest_timed_correction():
    """Small trees timed steeper than calibrated must not make an 81-token pass look ruinous: the line
    through their factors is read only within the sizes timed (a CPU run put 81 tokens at 3.4x its
    calibration by extrapolating one)."""
    costs = LearnedCost(MISLED)
    for i in range(400):
        n = 1 + i % 8  # sizes 1..8 only, each costing more than calibrated the larger it is
        costs.observe(n, MISLED.cost(n) * (1.0 + 0.05 * (n - 1)))
    factor = costs.curve.cost(8) / MISLED.cost(8)
    assert factor == pytest.approx(1.35, rel=0.05)
    for n in (16, 32, 81):
        assert costs.curve.cost(n) / MISLED.cost(n) == pytest.approx(factor, rel=0.05), n
    assert costs.curve.cost(1) / MISLED.cost(1) == pytest.approx(1.0, abs=0.05)
