"""Property-based tests (hypothesis): random valid and invalid trees, settings, matrices and token
sequences thrown at the parser, the engine and the app's request handler. Nothing escapes but a clear
validation error, and every valid greedy run emits exactly plain decoding's tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny_models import tiny_model
from tr.costs import CostCurve, LearnedCost
from tr.decoding import autoregressive, token_recycling
from tr.drafts import DynamicDrafter, TemplateDrafter
from tr.matrix import MAX_K, AdjacencyMatrix
from tr.specs import MAX_TREE_NODES, TreeKind, parse_tree
from tr.trees import DraftTree, TreeError
from webapp.settings import TEMPLATES, parse_settings

VOCAB = 64
MODEL = tiny_model("llama", VOCAB, seed=3)  # float64: a tree pass and a one-token pass agree exactly
CURVE = CostCurve([1, 2, 8, 32], [0.01, 0.011, 0.014, 0.025], 64, "cpu")
ANYTHING = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30) | st.lists(
    st.integers(), max_size=3)
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def templates(draw, k: int) -> list[list[int]]:
    """A valid template: each new path extends an earlier one (or the root) by one rank, sorted by depth."""
    paths: list[tuple[int, ...]] = []
    for _ in range(draw(st.integers(1, 24))):
        parent = draw(st.sampled_from([(), *paths]))
        child = parent + (draw(st.integers(0, k - 1)),)
        if child not in paths:
            paths.append(child)
    return [list(p) for p in sorted(paths, key=lambda p: (len(p), p))]


@QUICK
@given(st.text(max_size=60) | st.builds(json.dumps, st.recursive(st.integers(-3, 40), st.lists, max_leaves=12)))
def test_any_tree_text_parses_or_says_why(text):
    try:
        spec = parse_tree(text, 8)
    except TreeError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert spec.kind in TreeKind and len(spec.paths) <= MAX_TREE_NODES


@QUICK
@given(st.integers(1, MAX_K).flatmap(lambda k: st.tuples(st.just(k), templates(k))))
def test_every_valid_template_is_accepted_as_written(case):
    k, paths = case
    assert [list(p) for p in parse_tree(json.dumps(paths), k).paths] == paths


def settings_values(valid: bool):
    field = {
        "prompt": st.text(min_size=1, max_size=40).filter(str.strip),
        "max_new_tokens": st.integers(1, 12),
        "template": st.sampled_from([t for t in TEMPLATES if t != "custom JSON"]),
        "custom_json": st.text(max_size=20),
        "k": st.integers(1, MAX_K),
        "decoding": st.sampled_from(["greedy", "sampling"]),
        "temperature": st.floats(0.05, 2.0),
        "top_p": st.floats(0.05, 1.0),
        "seed": st.integers(0, 2**31 - 1),
        "start": st.sampled_from(["hot", "cold", "seeded"]),
        "prompt_lookup": st.booleans(),
    }
    if valid:
        return st.fixed_dictionaries(field)
    return st.fixed_dictionaries({name: strategy | ANYTHING for name, strategy in field.items()})


@QUICK
@given(settings_values(valid=False))
def test_any_settings_parse_or_say_which_field_is_wrong(values):
    try:
        parsed = parse_settings(values)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert 1 <= parsed.max_new_tokens and 1 <= parsed.k <= MAX_K
        assert math.isfinite(parsed.sampling.temperature)


def random_matrix(data, k: int) -> AdjacencyMatrix:
    """A matrix with random rows already written, as any earlier request could leave it."""
    matrix = AdjacencyMatrix(VOCAB, k)
    for _ in range(data.draw(st.integers(0, 6))):
        tokens = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8))
        logits = torch.tensor(data.draw(st.lists(st.lists(st.floats(-5, 5), min_size=VOCAB, max_size=VOCAB),
                                                 min_size=len(tokens), max_size=len(tokens))), dtype=torch.float64)
        matrix.write(tokens, logits, [-1, *tokens[:-1]])
    return matrix


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_greedy_recycling_emits_plain_decodings_tokens_from_any_matrix_and_tree(data):
    k = data.draw(st.integers(1, 8))
    prompt = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12))
    max_new = data.draw(st.integers(1, 16))
    matrix = random_matrix(data, k)
    if data.draw(st.booleans()):
        drafter = TemplateDrafter(DraftTree.from_paths([tuple(p) for p in data.draw(templates(k))]))
    else:
        drafter = DynamicDrafter(LearnedCost(CURVE) if data.draw(st.booleans()) else None,
                                 max_nodes=data.draw(st.integers(1, 24)), prompt_ids=prompt)
    plain = [t for s in autoregressive(MODEL, prompt, max_new) for t in s.tokens]
    recycled = [t for s in token_recycling(MODEL, prompt, max_new, matrix, drafter) for t in s.tokens]
    assert recycled == plain


served: list[bool] = []  # which requests the handler test got through to a race


@pytest.fixture(scope="module")
def handlers(tiny_model_dir):
    from tr.device.model import load_model
    from webapp.downloads import Downloads
    from webapp.handlers import Handlers
    from webapp.runner import race_runner

    lm = load_model(str(tiny_model_dir))
    downloads = Downloads()
    yield Handlers(lm, LearnedCost(CURVE), race_runner(lm), downloads)
    downloads.close()


@pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request: the toast is not shown
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(values=settings_values(valid=True) | settings_values(valid=False), lookup=ANYTHING)
def test_the_request_handler_answers_anything_with_views(handlers, values, lookup):
    from webapp.session import Session

    session = Session()
    updates = list(handlers.run(session, values, lookup))
    assert updates and all(isinstance(u, dict) and u.get("session") is session for u in updates)
    last = updates[-1]["message"]
    assert last.startswith(("Done", "⚠️")) and "error id" not in last, last
    served.append("Done" in last)
    if "Done" in last:
        record = session.run.record(handlers.lm)
        assert record["identical"] or record["settings"]["decoding"] == "sampling"


def test_the_handler_test_raced_valid_requests_too(handlers):
    assert any(served) and not all(served), "both races and rejections were exercised"
