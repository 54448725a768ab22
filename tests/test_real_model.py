"""The bundled SmolLM2-135M-Instruct in float32: Token Recycling emits exactly plain greedy's tokens,
and bad requests fail with clear messages."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tr.specs import parse_tree
from tr.generate import decode_steps, generate
from tr.matrix import AdjacencyMatrix
from tr.device.model import ModelLoadError, load_model

MAX_NEW = 32
TEMPLATES = ("paper-80", "small-16", "tiny-8")


def spread_over_categories(questions: list[dict], count: int) -> list[dict]:
    """The first question of each category, then the second of each, ... until `count`."""
    by_category: dict[str, list[dict]] = {}
    for q in questions:
        by_category.setdefault(q["category"], []).append(q)
    rounds = zip(*by_category.values()) if len(by_category) > 1 else ([q] for q in questions)
    picked = [q for group in rounds for q in group]
    return picked[:count]


def test_recycling_is_lossless_on_spec_bench(real_lm, spec_bench_questions):
    matrix = AdjacencyMatrix(real_lm.vocab_size)
    trees = [parse_tree(name, 8) for name in TEMPLATES]
    questions = spread_over_categories(spec_bench_questions, 10)
    assert len({q["category"] for q in questions}) == 10
    drafts = 0
    for i, q in enumerate(questions):
        prompt, tree = q["turns"][0], trees[i % len(trees)]
        plain = generate(real_lm, prompt, "ar", max_new_tokens=MAX_NEW)
        recycled = generate(real_lm, prompt, "tr", max_new_tokens=MAX_NEW, matrix=matrix, tree=tree)
        assert recycled.token_ids == plain.token_ids, f"question {q['question_id']} ({q['category']})"
        assert recycled.text == plain.text
        drafts += sum(s.accepted_drafts for s in recycled.steps)
    assert drafts > len(questions) * 5  # Token Recycling really accepted drafts along the way


def test_steps_on_the_device_are_lossless_on_the_real_model(real_lm, spec_bench_questions):
    """The GPU's default (`tr.device.resident`), run eagerly here over the static cache: Token Recycling
    emits the tokens plain decoding emits on the same path, with the CPU's invariant kernels."""
    resident = dataclasses.replace(real_lm, resident_steps=True, fixed_shapes=False)
    matrix, drafts = AdjacencyMatrix(real_lm.vocab_size), 0
    for i, q in enumerate(spread_over_categories(spec_bench_questions, 3)):
        plain = generate(resident, q["turns"][0], "ar", max_new_tokens=MAX_NEW)
        tree = parse_tree(TEMPLATES[i % 2], 8)
        recycled = generate(resident, q["turns"][0], "tr", max_new_tokens=MAX_NEW, matrix=matrix, tree=tree)
        assert recycled.token_ids == plain.token_ids, f"question {q['question_id']} ({q['category']})"
        assert recycled.steps[1].draft is not None and recycled.steps[1].forward_s > 0
        drafts += sum(s.accepted_drafts for s in recycled.steps)
    assert drafts > 15


def test_fixed_shapes_are_lossless_on_the_real_model(real_lm):
    """The GPU's fixed shapes (`tr.device.fixed`, its attention in place of the CPU's), on a primed matrix so
    that a few steps accept drafts: slow here (every pass 96 rows), so one short answer."""
    fixed = dataclasses.replace(real_lm, resident_steps=True, fixed_shapes=True)
    prompt = "List the days of the week."
    plain = generate(fixed, prompt, "ar", max_new_tokens=12)
    recycled = generate(fixed, prompt, "tr", max_new_tokens=12, matrix=AdjacencyMatrix(real_lm.vocab_size),
                        tree=parse_tree("small-16", 8), start="primed")
    assert recycled.token_ids == plain.token_ids
    assert sum(s.accepted_drafts for s in recycled.steps) > 0


def test_the_screened_head_changes_no_greedy_token(real_lm):
    """Greedy decoding screens the LM head in half precision (`tr.passes.argmax_only`); on the real model
    its argmax is the fp32 head's at every position, and the error bound it relies on holds."""
    head = real_lm.model.get_output_embeddings()
    hidden: list[torch.Tensor] = []
    width = head.weight.shape[1]
    hook = head.register_forward_pre_hook(lambda module, args: hidden.append(args[0].reshape(-1, width).clone()))
    try:
        screened = generate(real_lm, "Explain how a rainbow forms.", "tr", max_new_tokens=MAX_NEW)
    finally:
        hook.remove()
    rows = torch.cat(hidden)
    assert len(rows) > MAX_NEW  # tree passes, several rows each
    head.argmax_only = True
    try:
        with torch.inference_mode():
            approx, exact = head(rows), rows @ head.weight.t()
    finally:
        head.argmax_only = False
    assert torch.equal(approx.argmax(1), exact.argmax(1))
    assert ((approx - exact).abs() <= head.screen.bound * rows.norm(dim=1, keepdim=True)).all()
    packed, head.screen.packed = head.screen.packed, None  # the exact head everywhere
    try:
        plain = generate(real_lm, "Explain how a rainbow forms.", "ar", max_new_tokens=MAX_NEW)
    finally:
        head.screen.packed = packed
    assert screened.token_ids == plain.token_ids


def test_seeded_and_cold_starts_are_lossless_too(real_lm):
    prompt = "List three fruits that are red."
    plain = generate(real_lm, prompt, "ar", max_new_tokens=MAX_NEW)
    for start in ("cold", "seeded"):
        assert generate(real_lm, prompt, "tr", max_new_tokens=MAX_NEW, start=start).token_ids == plain.token_ids


def test_chat_template_is_applied(real_lm):
    ids = real_lm.encode("Hello")
    assert real_lm.tokenizer.decode(ids).count("<|im_start|>") >= 2  # system + user turns


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda lm: lm.encode("   "), "prompt is empty"),
        (lambda lm: list(decode_steps(lm, [1] * 9000, "ar", 10)), "prompt is too long"),
        (lambda lm: list(decode_steps(lm, [1, 2], "ar", 0)), "max_new_tokens"),
        (lambda lm: list(decode_steps(lm, [1, 2], "beam", 5)), "not a valid Method"),
        (lambda lm: list(decode_steps(lm, [1, 2], "tr", 5, start="warm")), "not a valid Start"),
        (lambda lm: AdjacencyMatrix(lm.vocab_size, k=0), "k must be an integer from 1 to 32"),
        (lambda lm: AdjacencyMatrix(lm.vocab_size, k=33), "k must be an integer from 1 to 32"),
    ],
)
def test_bad_requests_raise_clear_errors(real_lm, call, message):
    with pytest.raises(ValueError, match=message):
        call(real_lm)


def test_unknown_model_raises_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("bundled", dtype="float8")
