"""Greedy Token Recycling emits exactly the tokens of plain greedy decoding (tiny models, float64)."""

from __future__ import annotations

import random

import pytest
import torch

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.drafts import TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.trees import BUILTIN_TEMPLATES, DraftTree, best_first_template

VOCAB = 96


def random_template(rng: random.Random, k: int, size: int, max_depth: int) -> list[tuple[int, ...]]:
    """A random parent-closed template of up to `size` paths, sorted by depth."""
    paths: set[tuple[int, ...]] = set()
    for _ in range(size):
        path: tuple[int, ...] = ()
        while len(path) < max_depth and (not path or rng.random() < 0.6):
            path += (min(int(rng.expovariate(0.7)), k - 1),)
        for depth in range(1, len(path) + 1):
            paths.add(path[:depth])
    return sorted(paths, key=lambda p: (len(p), p))


def tokens_of(steps) -> list[int]:
    return [t for step in steps for t in step.tokens]


def greedy(model, prompt, max_new, eos=()):
    return tokens_of(autoregressive(model, prompt, max_new, eos_ids=eos))


def recycled(model, prompt, max_new, matrix, paths, eos=(), seed_from_prompt=False):
    drafter = TemplateDrafter(DraftTree.from_paths(paths))
    return list(token_recycling(model, prompt, max_new, matrix, drafter, eos_ids=eos, seed_from_prompt=seed_from_prompt))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("seed", range(6))
def test_same_tokens_as_greedy(arch, seed):
    rng = random.Random(seed)
    model = tiny_model(arch, VOCAB, seed=seed)
    k = rng.choice([1, 2, 3, 8, 32])
    paths = (
        best_first_template(rng.choice(list(BUILTIN_TEMPLATES)), k)
        if seed % 2
        else random_template(rng, k, size=rng.randint(1, 40), max_depth=rng.randint(1, 7))
    )
    matrix = AdjacencyMatrix(VOCAB, k)
    accepted_drafts = 0
    for _ in range(3):  # the second and third prompts see a hot matrix from the earlier ones
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
        max_new = rng.randint(1, 50)
        expected = greedy(model, prompt, max_new)
        steps = recycled(model, prompt, max_new, matrix, paths, seed_from_prompt=rng.random() < 0.5)
        assert tokens_of(steps) == expected
        assert len(expected) == max_new
        assert steps[-1].finished and all(not s.finished for s in steps[:-1])
        accepted_drafts += sum(s.accepted_drafts for s in steps)
    assert accepted_drafts > 0, "the test never exercised an accepted draft"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stops_at_eos_inside_an_accepted_run(arch):
    """EOS in the middle of the tokens a step accepts ends the output right after it, as in greedy."""
    model = tiny_model(arch, VOCAB, seed=0)
    prompt = list(range(5, 15))
    full = greedy(model, prompt, 60)
    matrix = AdjacencyMatrix(VOCAB, 8)
    paths = best_first_template("paper-80", 8)
    recycled(model, prompt, 60, matrix, paths)  # hot matrix: later runs accept long runs
    checked = 0
    for position in range(1, 40):
        eos = full[position]
        if eos in full[:position]:
            continue
        expected = greedy(model, prompt, 60, eos=[eos])
        assert expected == full[: position + 1]
        assert tokens_of(recycled(model, prompt, 60, matrix, paths, eos=[eos])) == expected
        checked += 1
    assert checked >= 5


def test_max_new_tokens_cuts_inside_an_accepted_run():
    model = tiny_model("qwen2", VOCAB, seed=0)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    matrix = AdjacencyMatrix(VOCAB, 8)
    paths = best_first_template("paper-80", 8)
    recycled(model, prompt, 80, matrix, paths)
    for max_new in range(1, 25):
        steps = recycled(model, prompt, max_new, matrix, paths)
        assert tokens_of(steps) == greedy(model, prompt, max_new)
        assert steps[-1].total_tokens == max_new


def test_hot_matrix_raises_acceptance_and_stays_exact():
    model = tiny_model("gpt2", VOCAB, seed=1)
    prompt = [7, 8, 9, 10, 11]
    matrix = AdjacencyMatrix(VOCAB, 8)
    paths = best_first_template("small-16", 8)
    cold = recycled(model, prompt, 60, matrix, paths)
    hot = recycled(model, prompt, 60, matrix, paths)
    assert tokens_of(hot) == tokens_of(cold) == greedy(model, prompt, 60)
    assert len(hot) < len(cold)


def test_matrix_rows_hold_top_k_of_the_last_pass():
    """After a step, the row of every token in the pass is its top-k from that pass's logits."""
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 4)
    steps = recycled(model, [1, 2, 3], 20, matrix, best_first_template("tiny-8", 4))
    last = steps[-1]
    written = {w.token: w.new for w in last.rows_written}
    assert set(written) == set(last.draft.tokens)
    for token, new in written.items():
        assert matrix.row(token) == new
    prefix = [1, 2, 3] + tokens_of(steps[:-1])
    root = last.draft.tokens[0]
    with torch.no_grad():
        logits = model(torch.tensor([prefix], device=DEVICE)).logits[0, -1]
    assert written[root] == logits.topk(4).indices.tolist()


def test_prompt_seeding_fills_prompt_rows():
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 8)
    prompt = [10, 20, 30, 40]
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("tiny-4", 8)))
    first = next(token_recycling(model, prompt, 5, matrix, drafter,
                                 seed_from_prompt=True))
    assert sorted(w.token for w in first.rows_written) == prompt
    with torch.no_grad():
        logits = model(torch.tensor([prompt], device=DEVICE)).logits[0]
    for i, token in enumerate(prompt):
        assert matrix.row(token) == logits[i].topk(8).indices.tolist()


def test_the_caller_is_not_left_in_inference_mode_between_steps():
    """A decoder is consumed step by step (the app renders, gradio copies its state): tensors the caller
    makes between steps must be normal ones, and the matrix must stay writable outside the decoder (an
    app session's Reset button once failed on an inference-mode matrix)."""
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 4)
    tree = TemplateDrafter(DraftTree.from_paths(best_first_template("small-16", 4)))
    for steps in (autoregressive(model, [1, 2, 3], 6), token_recycling(model, [1, 2, 3], 6, matrix, tree)):
        for _ in steps:
            assert not torch.is_inference_mode_enabled()
            assert not torch.zeros(1).is_inference()
    matrix.reset()  # in place, outside inference mode
