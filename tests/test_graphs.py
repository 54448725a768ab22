"""The static passes CUDA graphs replay (`tr.device.graphs`): the same tokens as eager passes.

On a CPU the static passes run eagerly, which checks everything but the capture: the slot cache, the
bucket padding, the masks over the whole capacity, long passes in chunks, the workspace pool. With a GPU
(`TR_TEST_DEVICE=cuda`, or any machine with CUDA for the last test) they are captured and replayed.
"""

from __future__ import annotations

import random

import pytest
import torch

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.device import graphs
from tr.device.graphs import BUCKETS, GraphedPasses, bucket, workspace_capacity
from tr.device.model import LoadedModel
from tr.drafts import DynamicDrafter, TemplateDrafter
from tr.kv_cache import CacheFullError
from tr.matrix import AdjacencyMatrix
from tr.passes import EagerPasses, chain
from tr.trees import DraftTree, ancestor_mask, best_first_template

VOCAB = 96


def tokens_of(steps) -> list[int]:
    return [t for step in steps for t in step.tokens]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("seed", range(3))
def test_graphed_passes_give_the_tokens_of_eager_passes(arch, seed):
    rng = random.Random(seed)
    model = tiny_model(arch, VOCAB, seed=seed)
    matrix, accepted = AdjacencyMatrix(VOCAB, 8), 0
    for _ in range(3):  # later prompts meet a hot matrix and reuse the pooled workspace
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 140))]  # past the largest bucket too
        max_new = rng.randint(1, 60)
        expected = tokens_of(autoregressive(model, prompt, max_new))
        assert tokens_of(autoregressive(model, prompt, max_new, passes=GraphedPasses)) == expected
        template = TemplateDrafter(DraftTree.from_paths(best_first_template("paper-80", 8)))
        dynamic = DynamicDrafter(None, max_nodes=rng.choice([5, 30, 80]), prompt_ids=prompt)
        for drafter in (template, dynamic):
            steps = list(token_recycling(model, prompt, max_new, matrix, drafter, passes=GraphedPasses))
            assert tokens_of(steps) == expected
            accepted += sum(s.accepted_drafts for s in steps)
    assert accepted > 0, "the test never exercised an accepted draft"


def test_logits_match_eager_passes_for_prefill_chunks_and_trees():
    """A prompt of three chunks, then a tree: every row's logits as eager passes give them (float64)."""
    model = tiny_model("llama", VOCAB, seed=3)
    prompt = torch.randint(0, VOCAB, (2 * BUCKETS[-1] + 7,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    parents = [-1, 0, 0, 1, 1, 2, 3, 5]
    tree = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12], device=DEVICE)
    depths = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3], device=DEVICE)
    ancestors = ancestor_mask(parents, 3)
    runs = [EagerPasses(model, 400), GraphedPasses(model, 400)]
    with torch.inference_mode():
        prefills = [run(prompt, torch.arange(len(prompt), device=DEVICE)) for run in runs]
        torch.testing.assert_close(prefills[1], prefills[0], rtol=1e-9, atol=1e-9)
        trees = [run(tree, depths + len(prompt), ancestors) for run in runs]
        torch.testing.assert_close(trees[1], trees[0], rtol=1e-9, atol=1e-9)
        for run in runs:
            run.keep(len(prompt), [0, 2, 5])
        nexts = [run(tree[:1], torch.tensor([len(prompt) + 3], device=DEVICE), last_only=True) for run in runs]
        torch.testing.assert_close(nexts[1], nexts[0], rtol=1e-9, atol=1e-9)
    assert [run.length for run in runs] == [len(prompt) + 4] * 2
    runs[1].close()


def test_buckets_and_capacity():
    assert [bucket(n) for n in (1, 2, 3, 5, 81, BUCKETS[-1])] == [1, 2, 4, 8, 96, BUCKETS[-1]]
    assert workspace_capacity(10) == graphs.MIN_CAPACITY
    assert workspace_capacity(1000) == 2048  # room for the padding of a full bucket behind the last token
    assert all(workspace_capacity(c) >= c + BUCKETS[-1] for c in (1, 100, 929, 930, 5000))


def test_workspaces_are_pooled_per_model_and_never_shared_by_open_requests():
    model = tiny_model("qwen2", VOCAB, seed=0)
    first, second = GraphedPasses(model, 50), GraphedPasses(model, 60)  # one capacity, both open
    assert first.workspace is not second.workspace
    kept = first.workspace
    with torch.inference_mode():
        first(torch.tensor([1, 2, 3], device=DEVICE), torch.arange(3, device=DEVICE))
    first.close()
    first.close()  # closing twice hands back once
    again = GraphedPasses(model, 70)
    assert again.workspace is kept and again.length == 0
    other = GraphedPasses(tiny_model("qwen2", VOCAB, seed=1), 50)
    assert other.workspace is not kept
    for run in (second, again, other):
        run.close()


def test_a_request_cannot_pass_its_own_capacity():
    model = tiny_model("llama", VOCAB, seed=0)
    run = GraphedPasses(model, 5)
    with torch.inference_mode():
        run(torch.tensor([1, 2, 3], device=DEVICE), torch.arange(3, device=DEVICE))
        with pytest.raises(CacheFullError, match="holds 5 positions, 6 needed"):
            run(torch.tensor([1, 2, 3], device=DEVICE), torch.arange(3, 6, device=DEVICE), chain(3))
    run.close()


def test_a_loaded_model_decodes_with_graphs_on_a_gpu_only():
    model = tiny_model("llama", VOCAB, seed=0)

    def loaded(device: str, cuda_graphs: bool = True) -> LoadedModel:
        return LoadedModel(model, None, "tiny", torch.device(device), torch.float64, cuda_graphs=cuda_graphs)

    assert loaded("cpu").passes is EagerPasses
    assert loaded("cuda").passes is GraphedPasses
    assert loaded("cuda", cuda_graphs=False).passes is EagerPasses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_are_captured_and_replay_the_eager_tokens():
    model = tiny_model("llama", VOCAB, seed=0).to("cuda")  # float64: eager and graphed kernels round alike
    prompt = list(range(3, 40))
    expected = tokens_of(autoregressive(model, prompt, 50))
    assert tokens_of(autoregressive(model, prompt, 50, passes=GraphedPasses)) == expected
    matrix = AdjacencyMatrix(VOCAB, 8)
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("paper-80", 8)))
    assert tokens_of(token_recycling(model, prompt, 50, matrix, drafter, passes=GraphedPasses)) == expected
    plain, tree = GraphedPasses(model, len(prompt) + 50), GraphedPasses(model, len(prompt) + 50 + drafter.max_size)
    assert plain.workspace.capture and plain.workspace.buckets[1].graph is not None
    assert tree.workspace.capture and tree.workspace.buckets[bucket(drafter.max_size)].graph is not None
    plain.close()
    tree.close()
