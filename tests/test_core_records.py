"""Step records hold their draft as plain data: JSON as they are, origins as readable enums, counted by
the acceptance statistics; the decoder's tree buffers and acceptance on hand-built inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from tr.acceptance import AcceptanceStats, confidence_origin, lookup_origin
from tr.costs import CostCurve
from tr.decoding import _greedy_path, tree_buffers
from tr.records import LOOKUP, ROOT_ORIGIN, Draft, Origin, OriginKind, Step
from tr.trees import DraftTree, best_first_template


def small_draft() -> Draft:
    """Root 10; children 11 (row rank 0) and 12 (lookup copy); 11 has child 13 (pair row rank 1)."""
    return Draft(tokens=[10, 11, 12, 13], parents=[-1, 0, 0, 1], depths=[0, 1, 1, 2], ranks=[-1, 0, LOOKUP, 1],
                 origins=[ROOT_ORIGIN, Origin(OriginKind.ROW, 9), Origin(OriginKind.LOOKUP, 2), Origin(OriginKind.PAIR, 3)],
                 scores=[1.0, 0.9, 0.5, 0.3], predicted_cost=1.2, considered=[0.9, 0.5, 0.3, 0.1],
                 curve=CostCurve([1, 8], [1.0, 1.2], 64, "cpu"))


def test_origins_are_values_with_a_readable_form():
    assert Origin(OriginKind.ROW, 3) == confidence_origin(0.35) and hash(Origin(OriginKind.ROW, 3)) == hash(confidence_origin(0.35))
    assert confidence_origin(0.35, pair=True) == Origin(OriginKind.PAIR, 3) != confidence_origin(0.35)
    assert lookup_origin(2) == Origin(OriginKind.LOOKUP, 2)
    assert str(Origin(OriginKind.ROW, 3)) == "row:3" and str(ROOT_ORIGIN) == "root:0"
    assert len({Origin(OriginKind.ROW, 3), confidence_origin(0.3), Origin(OriginKind.PAIR, 3)}) == 2


def test_a_step_record_is_json_as_it_is():
    step = Step(4, [11, 13, 7], small_draft(), choices=[11, 13, 5, 7], accepted=[0, 1, 3], forward_s=0.01)
    record = json.loads(json.dumps(asdict(step)))
    assert record["draft"]["tokens"] == [10, 11, 12, 13]
    assert record["draft"]["origins"][2] == {"kind": "lookup", "level": 2}
    assert record["draft"]["curve"]["sizes"] == [1, 8]
    assert json.loads(json.dumps(asdict(Step(0, [5]))))["draft"] is None
    assert step.drafted == 3 and step.expected_tokens == pytest.approx(2.7) and Step(0, [5]).expected_tokens == 1.0


def test_statistics_count_nodes_whose_parent_was_accepted_by_origin_and_by_depth_and_rank():
    stats = AcceptanceStats(k=4)
    # Accepted 10 -> 11 -> 13; the model chose 11 after the root (so 12 was wrong) and 13 after 11.
    stats.observe(Step(4, [11, 13, 7], small_draft(), choices=[11, 13, 5, 7], accepted=[0, 1, 3]))
    assert stats.by_origin == {Origin(OriginKind.ROW, 9): [1, 1], Origin(OriginKind.LOOKUP, 2): [1, 0],
                               Origin(OriginKind.PAIR, 3): [1, 1]}
    assert stats.reached[0][0] == 1 and stats.reached[1][1] == 1 and stats.correct[1][1] == 1
    assert sum(map(sum, stats.reached)) == 2  # the lookup copy has no rank
    stats.observe(Step(0, [5]))  # a prefill: nothing to count
    assert sum(map(sum, stats.reached)) == 2
    assert stats.rate(Origin(OriginKind.ROW, 9)) > stats.rate(Origin(OriginKind.LOOKUP, 2))


def test_tree_buffers_match_the_templates_and_are_built_once_per_shape():
    tree = DraftTree.from_paths(best_first_template("small-16", 8))
    buffers = tree_buffers(tuple(tree.parents.tolist()))
    assert torch.equal(buffers.ancestors, tree.ancestors) and torch.equal(buffers.depths, tree.depths)
    assert torch.equal(buffers.parents, tree.parents.clamp(min=0))
    assert tree_buffers(tuple(tree.parents.tolist())) is buffers


def test_greedy_acceptance_takes_the_deepest_path_the_model_agrees_with():
    draft = small_draft()
    logits = torch.full((4, 20), -1.0)
    for node, choice in enumerate([11, 13, 5, 7]):  # the model's token after each node
        logits[node, choice] = 1.0
    verdict = _greedy_path(torch.tensor(draft.tokens), tree_buffers(tuple(draft.parents)), logits)
    assert verdict.path == [0, 1, 3] and verdict.bonus == 7 and verdict.choices == [11, 13, 5, 7]
    logits[0] = -1.0
    logits[0, 12] = 1.0  # now the lookup copy is right, and nothing after it was drafted
    verdict = _greedy_path(torch.tensor(draft.tokens), tree_buffers(tuple(draft.parents)), logits)
    assert verdict.path == [0, 2] and verdict.bonus == 5


def test_viz_and_the_records_load_without_torch():
    code = "import sys, viz, tr.records; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
