"""Sampled Token Recycling draws from the model's own distribution (a chi-square goodness-of-fit test).

The exact distribution of the first three tokens is computed from the model; 2,000 generations of each
decoder are compared against it at a false-alarm rate of 0.1% per test. Seeds are fixed, so the test
is deterministic; the power check below shows it does reject a slightly wrong sampler.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tiny_models import DEVICE, tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.drafts import DynamicDrafter, TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.sampling import Sampling, next_token_probs
from tr.trees import DraftTree, best_first_template

VOCAB, LENGTH, RUNS, ALPHA = 4, 3, 2000, 1e-3
PROMPT = [1, 2, 3, 0, 1]


@pytest.fixture(scope="module")
def model():
    model = tiny_model("llama", VOCAB, seed=5)
    with torch.no_grad():  # a random init is nearly uniform; sharper logits make a wrong sampler visible
        model.get_output_embeddings().weight.mul_(4.0)
    return model


def exact_distribution(model, sampling: Sampling) -> dict[tuple[int, ...], float]:
    probs = {(): 1.0}
    with torch.no_grad():
        for _ in range(LENGTH):
            nxt = {}
            for prefix, p in probs.items():
                logits = model(torch.tensor([PROMPT + list(prefix)], device=DEVICE)).logits[0, -1]
                for token, q in enumerate(next_token_probs(logits, sampling).tolist()):
                    if q > 0:
                        nxt[prefix + (token,)] = p * q
            probs = nxt
    return probs


def chi_square_p_value(counts: Counter, expected: dict[tuple[int, ...], float], runs: int) -> float:
    """Pool cells expected fewer than 5 times into one, then the upper tail of chi-square."""
    stat, pooled_observed, pooled_expected, cells = 0.0, 0, 0.0, 0
    for seq, p in expected.items():
        e = p * runs
        if e < 5:
            pooled_observed, pooled_expected = pooled_observed + counts[seq], pooled_expected + e
            continue
        stat += (counts[seq] - e) ** 2 / e
        cells += 1
    if pooled_expected > 0:
        stat += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    assert sum(counts.values()) == runs and set(counts) <= set(expected), "a sequence the model cannot produce"
    df = cells - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


def sample_recycling(model, sampling: Sampling, drafter: str) -> tuple[Counter, int]:
    matrix = AdjacencyMatrix(VOCAB, VOCAB)
    template = None if drafter == "dynamic" else TemplateDrafter(DraftTree.from_paths(best_first_template(drafter, VOCAB)))
    counts, accepted = Counter(), 0
    for seed in range(RUNS):
        settings = Sampling(sampling.temperature, sampling.top_p, sampling.top_k, seed=seed)
        # The dynamic drafter: best-first by recorded probability, with a prompt-lookup branch; one per request.
        tree = template or DynamicDrafter(None, max_nodes=16, max_depth=4, prompt_ids=PROMPT)
        steps = list(token_recycling(model, PROMPT, LENGTH, matrix, tree, settings))
        counts[tuple(t for s in steps for t in s.tokens)] += 1
        accepted += steps[1].accepted_drafts > 0
    return counts, accepted


def sample_plain(model, sampling: Sampling) -> Counter:
    counts = Counter()
    for seed in range(RUNS):
        settings = Sampling(sampling.temperature, sampling.top_p, sampling.top_k, seed=seed)
        counts[tuple(t for s in autoregressive(model, PROMPT, LENGTH, settings) for t in s.tokens)] += 1
    return counts


@pytest.mark.parametrize("drafter", ["small-16", "dynamic"])
@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.8, top_p=0.9, top_k=3)])
def test_recycling_samples_the_model_distribution(model, sampling, drafter):
    expected = exact_distribution(model, sampling)
    counts, accepted = sample_recycling(model, sampling, drafter)
    assert accepted > RUNS // 5, "drafts were rarely accepted: the test would not exercise the tree walk"
    assert chi_square_p_value(counts, expected, RUNS) > ALPHA


def test_plain_sampling_matches_and_a_wrong_temperature_is_caught(model):
    sampling = Sampling(temperature=1.0)
    expected = exact_distribution(model, sampling)
    assert chi_square_p_value(sample_plain(model, sampling), expected, RUNS) > ALPHA
    wrong = sample_plain(model, Sampling(temperature=0.7))
    assert chi_square_p_value(wrong, expected, RUNS) < ALPHA


def test_top_k_and_top_p_filter_as_documented():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert (next_token_probs(logits, Sampling(1.0, top_k=2)) > 0).tolist() == [True, True, False, False, False]
    full = logits.softmax(-1)
    keep = (next_token_probs(logits, Sampling(1.0, top_p=float(full[0] + 1e-6))) > 0).tolist()
    assert keep == [True, True, False, False, False]  # the smallest set whose mass reaches top_p
    assert (next_token_probs(logits, Sampling(1.0, top_p=0.01)) > 0).sum() == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2)])
def test_bad_sampling_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        Sampling(**bad)
