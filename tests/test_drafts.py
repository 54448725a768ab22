"""Calibration, acceptance statistics and the dynamic (`auto`) drafter: sizing, prompt lookup, exactness."""

from __future__ import annotations

import random

import pytest
import torch

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.acceptance import confidence_origin
from tr.device.calibrate import calibrate
from tr.costs import CostCurve, LearnedCost, monotone
from tr.decoding import autoregressive, token_recycling
from tr.drafts import DynamicDrafter, NgramIndex, TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.records import LOOKUP, Origin, OriginKind
from tr.trees import DraftTree, best_first_template, most_probable, path_products

VOCAB = 96
FREE = CostCurve([1, 8, 16, 32, 81], [0.010, 0.0101, 0.0102, 0.0104, 0.0108], 256, "cuda")
EXPENSIVE = CostCurve([1, 2, 8, 16, 32, 81], [0.056, 0.060, 0.078, 0.090, 0.123, 0.213], 256, "cpu")


def tokens_of(steps) -> list[int]:
    return [t for step in steps for t in step.tokens]


def confident_matrix(k: int = 8) -> AdjacencyMatrix:
    """Every row filled, rank r holding token (t + r + 1) with probability 0.9 for rank 0, 0.01 after."""
    matrix = AdjacencyMatrix(VOCAB, k)
    tokens = torch.arange(VOCAB)
    matrix.table[:] = (tokens[:, None] + torch.arange(1, k + 1)) % VOCAB
    matrix.probs[:] = torch.tensor([0.9] + [0.01] * (k - 1))
    matrix.filled[:] = True
    return matrix


def test_auto_grows_a_large_tree_when_verification_is_free_and_a_small_one_when_not():
    matrix = confident_matrix()
    large = DynamicDrafter(FREE, lookup=False).draft(0, matrix)
    small = DynamicDrafter(EXPENSIVE, lookup=False).draft(0, matrix)
    assert large.size - 1 >= 70
    assert 1 <= small.size - 1 <= 16
    assert small.predicted_cost == pytest.approx(EXPENSIVE.relative(small.size))
    for draft in (large, small):
        assert all(p < i for i, p in enumerate(draft.parents) if i)  # parents come first
        assert draft.scores == sorted(draft.scores, reverse=True)  # best-first
    # The confident rank-0 chain comes first: its nodes score 0.9^depth under the prior-only statistics.
    assert small.tokens[:4] == [0, 1, 2, 3]


def test_a_noisy_flat_curve_still_gets_a_large_tree():
    """Calibration noise on a GPU: one size timed well under a one-token pass. The fitted curve
    cannot dip, so the dip does not decide the tree."""
    sizes = [1, 2, 4, 8, 16, 32, 48, 64, 81]
    measured = [1.00, 0.93, 0.90, 0.87, 0.95, 0.96, 0.96, 0.99, 1.06]  # an H100's curve, in one-token passes
    assert monotone(measured) == sorted(monotone(measured))
    assert monotone([1.0, 1.2, 1.1, 1.5]) == pytest.approx([1.0, 1.15, 1.15, 1.5])
    assert monotone([1.0, 1.1, 1.3]) == [1.0, 1.1, 1.3]  # a rising curve is left alone
    doubtful = confident_matrix()
    doubtful.probs[:, 0] = 0.3  # trees whose expected tokens grow slowly, so a dip can win
    raw = DynamicDrafter(CostCurve(sizes, measured, 256, "cuda"), lookup=False).draft(0, doubtful)
    fitted_curve = CostCurve(sizes, monotone(measured), 256, "cuda", measured)
    fitted = DynamicDrafter(fitted_curve, lookup=False).draft(0, doubtful)
    assert raw.size - 1 <= 16 and fitted.size - 1 >= 40


def test_tree_size_follows_confidence():
    """Same cost curve: confident rows earn a deeper tree than doubtful ones."""
    sure, unsure = confident_matrix(), confident_matrix()
    unsure.probs[:] = 0.12
    drafter = DynamicDrafter(EXPENSIVE, lookup=False)
    assert drafter.draft(0, sure).expected_tokens > drafter.draft(0, unsure).expected_tokens


def test_a_template_drafter_with_a_size_drafts_the_most_probable_nodes_deep_or_wide():
    tree = DraftTree.from_paths(best_first_template("paper-80", 8))
    drafter = TemplateDrafter(tree, size=10)
    # Rank 0 at 0.9, the rest at 0.01: rank 0's chain to the template's depth (0.9 ** 6 = 0.53), then
    # ranks 1 to 3 of the root (0.01 each, ties to the earlier node; 0.9 * 0.01 under the chain is less).
    deep = drafter.draft(0, confident_matrix())
    assert deep.depths == [0, 1, 1, 1, 1, 2, 3, 4, 5, 6] and deep.ranks == [-1, 0, 1, 2, 3, 0, 0, 0, 0, 0]
    assert deep.parents == [-1, 0, 0, 0, 0, 1, 5, 6, 7, 8]
    # Chances 0.3, 0.25, 0.2, 0.1, ...: ranks 0 to 3 of the root, then the likeliest pairs under them.
    flat = confident_matrix()
    flat.probs[:] = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02])
    wide = drafter.draft(0, flat)
    assert wide.depths == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert [(wide.ranks[wide.parents[i]], wide.ranks[i]) for i in range(5, 10)] == [(0, 0), (0, 1), (0, 2), (1, 0),
                                                                                     (1, 1)]
    assert TemplateDrafter(tree).draft(0, flat).size == tree.size  # without a size: the whole template


def test_most_probable_nodes_form_a_tree_whatever_the_chances():
    generator = torch.Generator().manual_seed(0)
    tree = DraftTree.from_paths(best_first_template("paper-80", 8))
    for trial in range(50):
        chances = torch.rand(tree.size, generator=generator)
        if trial % 2:
            chances = (chances * 4).round() / 4  # many ties (0, 0.25, ..., 1), the first wins them
        chances[trial % tree.size] = 1.5  # capped at 1: no product above its parent's
        nodes = most_probable(path_products(tree.layers, chances), 1 + trial).tolist()
        assert nodes[0] == 0 and nodes == sorted(set(nodes)) and len(nodes) == 1 + trial
        assert all(tree.parents[node] in nodes for node in nodes[1:])


def test_ngram_index_finds_the_latest_earlier_continuation():
    index = NgramIndex(max_n=3)
    index.extend([1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3])
    assert index.continuation(3) == ([5, 6, 2], 2)  # "2 3" last followed by 5; no earlier "9 2 3"... match
    index.extend([5])
    assert index.continuation(2) == ([6, 2], 3)  # "2 3 5" occurred before
    assert NgramIndex().continuation(4) == ([], 0)
    single = NgramIndex()
    single.extend([7, 7])
    assert single.continuation(5) == ([7], 1)


def test_lookup_branch_is_drafted_from_the_text():
    matrix = AdjacencyMatrix(VOCAB, 8)  # cold: every draft comes from prompt lookup
    drafter = DynamicDrafter(None, max_nodes=6, lookup=True, prompt_ids=[10, 11, 12, 13, 14, 15, 10, 11])
    draft = drafter.draft(11, matrix)
    assert draft.tokens == [11, 12, 13, 14, 15, 10, 11]
    assert draft.ranks[1:] == [LOOKUP] * 6 and draft.origins[1] == Origin(OriginKind.LOOKUP, 2)


def random_curve(rng: random.Random) -> CostCurve | None:
    if rng.random() < 0.25:
        return None
    slope = rng.choice([0.0, 0.001, 0.01])  # steeper curves draft nothing on a random model's flat guesses
    sizes = [1, 2, 8, 32, 81]
    return CostCurve(sizes, [1.0 + slope * (n - 1) for n in sizes], 64, "cpu")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("seed", range(6))
def test_dynamic_trees_give_the_greedy_tokens(arch, seed):
    rng = random.Random(100 + seed)
    model = tiny_model(arch, VOCAB, seed=seed)
    k = rng.choice([1, 2, 4, 8])
    curve = random_curve(rng)
    costs = LearnedCost(curve) if curve else None  # learned across requests, like the app's
    options = dict(max_nodes=rng.randint(1, 40), max_depth=rng.randint(1, 10), lookup=rng.random() < 0.8)
    matrix = AdjacencyMatrix(VOCAB, k)
    accepted = 0
    for _ in range(3):  # later prompts see a hot matrix
        # Repeats in the prompt give prompt lookup something to copy.
        chunk = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 8))]
        prompt = (chunk * rng.randint(1, 3) + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 6))])
        max_new = rng.randint(1, 50)
        expected = tokens_of(autoregressive(model, prompt, max_new))
        drafter = DynamicDrafter(costs, prompt_ids=prompt, **options)
        steps = list(token_recycling(model, prompt, max_new, matrix, drafter, seed_from_prompt=rng.random() < 0.5))
        assert tokens_of(steps) == expected
        assert steps[-1].finished and all(not s.finished for s in steps[:-1])
        for step in steps[1:]:
            accepted += step.accepted_drafts
            assert step.draft.size <= drafter.max_size
    assert accepted > 0, "the test never exercised an accepted draft"


def test_prompt_lookup_is_accepted_on_repetitive_text_and_exact():
    """A model that continues a repeated pattern: lookup copies are accepted, and output stays greedy."""
    model = tiny_model("llama", VOCAB, seed=3)
    prompt = list(range(20, 40)) * 3
    expected = tokens_of(autoregressive(model, prompt, 60))
    drafter = DynamicDrafter(EXPENSIVE, lookup=True, prompt_ids=prompt)
    steps = list(token_recycling(model, prompt, 60, AdjacencyMatrix(VOCAB, 8), drafter))
    assert tokens_of(steps) == expected
    looked_up = sum(s.draft.ranks[n] == LOOKUP for s in steps[1:] for n in s.accepted[1:])
    drafted = sum(r == LOOKUP for s in steps[1:] for r in s.draft.ranks)
    assert drafted > 0 and looked_up > 0


def test_statistics_count_reached_and_correct_nodes():
    model = tiny_model("qwen2", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 8)
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("small-16", 8)))
    steps = list(token_recycling(model, [4, 5, 6], 40, matrix, drafter))
    stats = matrix.stats
    accepted = sum(s.accepted_drafts for s in steps)
    # every accepted draft is a reached, correct node (siblings sharing a token can be correct too)
    assert sum(map(sum, stats.reached)) >= sum(map(sum, stats.correct)) >= accepted > 0
    root_children = sum(1 for s in steps[1:] for d in s.draft.depths if d == 1)
    assert sum(stats.reached[0]) == root_children  # every first-layer node is reached (the root always is)
    by_origin = sum(reached for reached, _ in stats.by_origin.values())
    assert by_origin == sum(map(sum, stats.reached))  # a template's nodes are all matrix candidates
    matrix.reset()
    assert sum(map(sum, stats.reached)) == 0 and not stats.by_origin


def test_matrix_keeps_candidate_probabilities():
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 4)
    prompt = [1, 2, 3]
    next(token_recycling(model, prompt, 5, matrix, TemplateDrafter(DraftTree.from_paths(best_first_template("tiny-4", 4))),
                         seed_from_prompt=True))
    with torch.no_grad():
        probs = model(torch.tensor([prompt], device=DEVICE)).logits[0, -1].softmax(-1)
    top = probs.topk(4)
    assert matrix.row(3) == top.indices.tolist()
    assert torch.allclose(matrix.probs[3].double(), top.values.cpu(), atol=1e-6)
    assert confidence_origin(0.999) == Origin(OriginKind.ROW, 9) and confidence_origin(0.0) == Origin(OriginKind.ROW, 0)
    assert confidence_origin(0.35, pair=True) == Origin(OriginKind.PAIR, 3)


def test_calibration_measures_growing_costs_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TR_CACHE_DIR", str(tmp_path))
    model = tiny_model("llama", VOCAB, seed=0, dtype=torch.float32)
    curve = calibrate(model, "tiny", sizes=(1, 4, 64), context=32, repeats=2)
    assert curve.sizes == [1, 4, 64] and all(s > 0 for s in curve.seconds)
    assert list(tmp_path.glob("calibration-*.json"))
    assert calibrate(model, "tiny", sizes=(1, 4, 64), context=32, repeats=2) == curve  # read back
    monkeypatch.setattr("tr.device.calibrate.kernels_version", lambda: "other kernel code")
    calibrate(model, "tiny", sizes=(1, 4, 64), context=32, repeats=2)  # measured afresh, cached apart
    assert len(list(tmp_path.glob("calibration-*.json"))) == 2
    assert curve.seconds == monotone(curve.measured) and len(curve.measured) == 3
    assert curve.relative(1) == 1.0 and curve.cost(2) > 0


def test_children_never_claim_more_than_their_parent():
    """Siblings exclude one another (at most one is the model's choice), so their chances sum to at most 1."""
    matrix = confident_matrix()
    matrix.probs[:] = torch.tensor([0.95, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5])  # rows that overstate
    draft = DynamicDrafter(FREE, lookup=False).draft(0, matrix)
    for node, score in enumerate(draft.scores):
        children = [draft.scores[c] for c, p in enumerate(draft.parents) if p == node and c]
        assert sum(children) <= score + 1e-9


def test_pair_rows_hold_top_k_after_two_tokens_and_are_drafted_from():
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 4)
    prompt = [1, 2, 3]
    drafter = DynamicDrafter(None, max_nodes=4, prompt_ids=prompt)
    steps = list(token_recycling(model, prompt, 12, matrix, drafter, seed_from_prompt=True))
    committed = prompt + tokens_of(steps[:-1])  # the last step's root is committed[-1]
    with torch.no_grad():
        logits = model(torch.tensor([committed], device=DEVICE)).logits[0, -1]
    assert steps[-1].draft.tokens[0] == committed[-1]
    assert matrix.pair_row(committed[-2], committed[-1])[0] == logits.topk(4).indices.tolist()
    assert matrix.pair_row(2, 3) is not None  # seeded from the prompt
    # A drafter rooted at a pair it has seen drafts from that pair's row first.
    drafter = DynamicDrafter(None, max_nodes=1, lookup=False, prompt_ids=[7, 8])
    matrix.reset()
    matrix.pairs[(7, 8)] = ([42, 43, 44, 45], [0.9, 0.05, 0.03, 0.02])
    draft = drafter.draft(8, matrix)
    assert draft.tokens == [8, 42] and draft.origins[1] == Origin(OriginKind.PAIR, 9)
