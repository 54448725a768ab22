"""Prompt lookup decoding: its drafter's n-gram choice, and exactness through Token Recycling's loop
(tiny models in float64, then the bundled model on a prompt whose answer copies it)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.device.model import LoadedModel
from tr.drafts import PromptLookupDrafter
from tr.generate import decode_steps
from tr.matrix import AdjacencyMatrix
from tr.records import LOOKUP, Origin, OriginKind, summarize
from tr.sampling import GREEDY, Sampling
from tr.specs import Method

VOCAB = 96
# The bundled model answers by copying the code back (with a small edit): what prompt lookup is for.
CODE_PROMPT = ("Add type hints to both functions and return the whole file:\n\n"
               "def add(a, b):\n    return a + b\n\n\n"
               "def scale(values, factor):\n    return [v * factor for v in values]\n")


def tokens_of(steps) -> list[int]:
    return [t for step in steps for t in step.tokens]


def looked_up(model, prompt, max_new, sampling=GREEDY, length=10):
    return list(token_recycling(model, prompt, max_new, None, PromptLookupDrafter(prompt, length), sampling))


@pytest.mark.parametrize(("text", "chain", "match"), [
    ([1, 2, 3, 10, 11, 9, 2, 3, 12, 1, 2, 3], [10, 11, 9, 2], 3),  # the trigram wins over a later bigram
    ([7, 8, 1, 7, 8, 2, 7, 8], [2, 7, 8], 2),  # the latest earlier occurrence, cut where the text ends
    ([4, 1, 6, 2, 1], [6, 2, 1], 1),
    ([1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4], [5, 6, 7, 8], 3),  # at most `length` tokens
])
def test_the_drafter_copies_what_followed_the_longest_final_ngram(text, chain, match):
    draft = PromptLookupDrafter(text, length=4).draft(text[-1])
    assert draft.tokens == [text[-1], *chain]
    assert draft.parents == list(range(-1, len(chain)))
    assert draft.depths == list(range(len(chain) + 1))
    assert draft.ranks == [-1] + [LOOKUP] * len(chain)
    assert draft.origins[1:] == [Origin(OriginKind.LOOKUP, match)] * len(chain)
    assert draft.scores == sorted(draft.scores, reverse=True) and draft.scores[0] == 1.0


def test_without_a_match_the_draft_is_the_root_alone():
    draft = PromptLookupDrafter([1, 2, 3]).draft(3)
    assert (draft.tokens, draft.parents, draft.probe) == ([3], [-1], False)


def repeating_prompt(rng: random.Random) -> list[int]:
    phrase = [rng.randrange(VOCAB) for _ in range(rng.randint(3, 8))]
    return (phrase * 4)[: rng.randint(12, 30)]


def own_words_prompt(model, rng: random.Random) -> list[int]:
    """Random tokens, then what the model says after them: tiny random models fall into loops, so what
    it says next repeats text already there and lookup drafts get accepted."""
    start = [rng.randrange(VOCAB) for _ in range(8)]
    return start + tokens_of(autoregressive(model, start, 48))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("seed", range(3))
def test_same_tokens_as_greedy(arch, seed):
    rng = random.Random(seed)
    model = tiny_model(arch, VOCAB, seed=seed)
    accepted = 0
    prompts = [(own_words_prompt(model, rng), 50), (repeating_prompt(rng), rng.randint(1, 50)),
               (rng.sample(range(VOCAB), rng.randint(1, 20)), rng.randint(1, 50))]  # the last repeats nothing
    for prompt, max_new in prompts:
        steps = looked_up(model, prompt, max_new, length=rng.choice([1, 4, 10]))
        assert tokens_of(steps) == tokens_of(autoregressive(model, prompt, max_new))
        assert steps[-1].finished and all(not s.finished for s in steps[:-1])
        accepted += sum(s.accepted_drafts for s in steps)
    assert accepted > 0, "the test never exercised an accepted draft"


def test_nothing_is_recycled_and_no_matrix_is_read():
    """The loop hands the drafter no matrix, writes no rows, and refuses to seed rows it has nowhere to put."""
    model = tiny_model("llama", VOCAB, seed=0)
    prompt = [5, 6, 7, 8] * 4
    drafter, given = PromptLookupDrafter(prompt), []
    drafting = drafter.draft
    drafter.draft = lambda root, matrix: given.append(matrix) or drafting(root, matrix)
    steps = list(token_recycling(model, prompt, 30, None, drafter))
    assert given and set(given) == {None}
    assert all(not s.rows_written for s in steps)
    assert any(s.draft.size > 1 for s in steps[1:])
    with pytest.raises(ValueError, match="needs a matrix"):
        next(token_recycling(model, prompt, 5, None, PromptLookupDrafter(prompt), seed_from_prompt=True))


def tiny_lm(arch: str) -> LoadedModel:
    """A tiny model behind the library's front door (no tokenizer: no EOS beyond the model's)."""
    model = tiny_model(arch, VOCAB, seed=0)
    return LoadedModel(model, SimpleNamespace(eos_token_id=None), arch, DEVICE, model.dtype)


def test_the_front_door_runs_it_and_leaves_a_given_matrix_alone():
    lm, prompt = tiny_lm("qwen2"), [9, 8, 7, 6] * 5
    matrix = AdjacencyMatrix(VOCAB)
    steps = list(decode_steps(lm, prompt, Method.PLD, 40, matrix=matrix))
    assert tokens_of(steps) == tokens_of(decode_steps(lm, prompt, Method.AR, 40))
    assert not bool(matrix.filled.any()) and not matrix.stats.by_origin


def test_sampling_draws_what_plain_sampling_draws_with_the_same_seed():
    """Each emitted token is one draw from the model at its position, in order, as in plain sampling:
    with one seed, both decoders draw the same tokens, and drafts only decide how many passes it takes."""
    model = tiny_model("qwen2", VOCAB, seed=0)
    prompt, accepted = own_words_prompt(model, random.Random(0)), 0
    for seed in range(3):
        # A random model's logits spread by ~0.1: a low temperature makes its draws as sharp as a trained
        # model's, so lookup drafts are followed often enough to matter.
        sampling = Sampling(temperature=0.02, top_p=0.95, seed=seed)
        steps = looked_up(model, prompt, 40, sampling)
        tokens = tokens_of(steps)
        assert len(tokens) == 40 and all(0 <= t < VOCAB for t in tokens)
        assert tokens == tokens_of(autoregressive(model, prompt, 40, sampling))
        accepted += sum(s.accepted_drafts for s in steps)
    assert accepted > 0, "the test never followed a draft"


def test_bundled_model_copies_the_prompt_exactly_and_faster(real_lm):
    ids = real_lm.encode(CODE_PROMPT)
    expected = tokens_of(decode_steps(real_lm, ids, Method.AR, 64))
    steps = list(decode_steps(real_lm, ids, Method.PLD, 64))
    assert tokens_of(steps) == expected
    assert {origin.kind for s in steps[1:] for origin in s.draft.origins[1:]} == {OriginKind.LOOKUP}
    assert summarize(steps).mat > 1.0
