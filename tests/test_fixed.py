"""Batch invariance by fixed shapes (`tr.device.fixed`), checked on a CPU with torch's stock kernels (no
`tr.device.invariant`): a token's logits inside a tree pass equal, bit for bit, its logits in a one-token
pass of plain decoding, while the same passes without fixed shapes differ.
"""

from __future__ import annotations

import random

import pytest
import torch

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.device.fixed import CHUNK, FIXED_ROWS, fixed_attention
from tr.device import graphs
from tr.device.graphs import Workspace, workspace_capacity
from tr.device.resident import (ROOT_ONLY, DeviceStep, reserved_positions, resident_autoregressive,
                               resident_token_recycling)
from tr.drafts import TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.passes import tree_mask
from tr.trees import DraftTree, ancestor_mask, best_first_paths, best_first_template, path_nodes

VOCAB = 512


def logits_alone_and_in_tree(model, prompt: torch.Tensor, tree: DraftTree, tokens: torch.Tensor, fixed: bool):
    """Each node's logits from one-token passes along its path (plain decoding), and the tree pass's."""
    with torch.inference_mode():
        spaces = [Workspace(model, 1024) for _ in range(2)]
        for space in spaces:
            space.run(prompt, torch.arange(len(prompt), device=DEVICE), None, last_only=True, greedy=False)
        plain, verifier = DeviceStep(spaces[0], ROOT_ONLY, None, fixed), DeviceStep(spaces[1], tree, None, fixed)
        start = torch.tensor(len(prompt), device=DEVICE)
        together = verifier.verify(tokens, start).clone()
        alone = []
        for row, depth in zip(path_nodes(tree).tolist(), tree.depths.tolist()):
            path = row[: depth + 1]
            for i, node in enumerate(path):  # each path from the root again: its keys overwrite the last path's
                logits = plain.verify(tokens[node].view(1), start + i)
            alone.append(logits[0].clone())
    return torch.stack(alone), together


@pytest.mark.parametrize("dtype, context, template", [
    (torch.float32, 5, "small-16"),
    (torch.float32, 2 * CHUNK + 40, "paper-80"),  # the cache spans chunks: the sums cross chunk boundaries
    (torch.bfloat16, CHUNK - 3, "small-16"),  # the tree crosses into the next chunk
])
def test_a_tree_node_gets_its_one_token_logits_bit_for_bit_in_fixed_shapes(dtype, context, template):
    model = tiny_model("llama", VOCAB, seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(context)
    prompt = torch.randint(VOCAB, (context,), generator=generator).to(DEVICE)
    tree = DraftTree.from_paths(best_first_template(template, 8))
    tokens = torch.randint(VOCAB, (tree.size,), generator=generator).to(DEVICE)
    alone, together = logits_alone_and_in_tree(model, prompt, tree, tokens, fixed=True)
    assert torch.equal(alone, together)
    if dtype == torch.float32 and DEVICE.type == "cpu":  # where torch's float32 product varies with the rows
        alone, together = logits_alone_and_in_tree(model, prompt, tree, tokens, fixed=False)
        assert not torch.equal(alone, together), "the stock kernels were invariant here: the test shows nothing"


def test_fixed_attention_computes_attention():
    """Against torch's attention in float64: a tree behind a cache that crosses a chunk, padded rows that see
    only themselves, unused keys after the pass."""
    generator = torch.Generator().manual_seed(0)
    keys, start, parents = 4 * CHUNK, CHUNK + 60, [-1, 0, 0, 1, 1, 3]
    n, rows = len(parents), 8
    query = torch.randn(1, 6, rows, 16, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(1, 2, keys, 16, generator=generator, dtype=torch.float64) for _ in range(2))
    mask = torch.full((1, 1, rows, keys), torch.finfo(torch.float64).min, dtype=torch.float64)
    mask[0, 0, :n, :start] = 0
    mask[0, 0, :n, start : start + n] = tree_mask(ancestor_mask(parents, 3), 0, torch.float64, torch.device("cpu"))
    for row in range(n, rows):
        mask[0, 0, row, start + row] = 0
    out, _ = fixed_attention(None, query, key, value, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, mask, enable_gqa=True)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-12, atol=1e-12)
    assert FIXED_ROWS >= 81  # the paper's tree fits one fixed pass


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_resident_decoding_in_fixed_shapes_keeps_recycling_equal_to_plain_decoding(arch):
    model = tiny_model(arch, VOCAB, seed=2, dtype=torch.float32)
    matrix, rng, accepted = AdjacencyMatrix(VOCAB, 8), random.Random(arch), 0
    for name in ("paper-80", "small-16"):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(2, 150))]
        plain = [t for step in resident_autoregressive(model, prompt, 40, fixed=True) for t in step.tokens]
        drafter = TemplateDrafter(DraftTree.from_paths(best_first_template(name, 8)))
        steps = list(resident_token_recycling(model, prompt, 40, matrix, drafter, fixed=True))
        assert [t for step in steps for t in step.tokens] == plain
        accepted += sum(step.accepted_drafts for step in steps)
    assert accepted > 0


def test_a_tree_wider_than_a_fixed_pass_is_refused():
    tree = DraftTree.from_paths(best_first_paths(FIXED_ROWS, 6))  # the root makes it one node too many
    with pytest.raises(ValueError, match=f"up to {FIXED_ROWS} nodes"):
        DeviceStep(Workspace(tiny_model("llama", VOCAB), 256), tree, None, fixed=True)


def test_plain_decoding_and_token_recycling_of_a_request_get_one_workspace_size():
    """A workspace's capacity is every fixed pass's key count: one size for both decoders of a request,
    or their attention would run in two shapes (tested with a prompt where the trees' own room differs)."""
    model = tiny_model("llama", VOCAB, seed=1)
    prompt, new = list(range(3, 103)), 20
    list(resident_autoregressive(model, prompt, new, fixed=True))
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("paper-80", 8)))
    list(resident_token_recycling(model, prompt, new, AdjacencyMatrix(VOCAB, 8), drafter, fixed=True))
    assert list(graphs._pool(model).idle) == [workspace_capacity(reserved_positions(len(prompt), new, 1, True))]
    assert reserved_positions(100, 20, 1, False) < reserved_positions(100, 20, drafter.tree.size, False)
