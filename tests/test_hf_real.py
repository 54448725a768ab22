"""On the bundled SmolLM2-135M-Instruct (float32, the project's kernels): `model.generate` with Token
Recycling as its `custom_generate` gives plain `model.generate`'s tokens on the 20 prompts BENCHMARKS.md
times (the first of each category of Spec-Bench and of assets/prompts.jsonl), one matrix kept across them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SPEC_BENCH
from tools.bench.prompts import load_question_files
from tr.hf import TokenRecycling

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW = 64  # as the benchmark run that BENCHMARKS.md reports for this


def test_the_callable_equals_plain_generate_on_the_benchmark_prompts(real_lm):
    if not SPEC_BENCH.is_file():
        pytest.skip(f"Spec-Bench questions not found at {SPEC_BENCH} (the repo's ../shared is absent)")
    questions = load_question_files([SPEC_BENCH, ROOT / "assets" / "prompts.jsonl"], per_category=1)
    assert len(questions) == 20
    model, recycler = real_lm.model, TokenRecycling()  # auto tree, primed start: the defaults
    options = dict(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=real_lm.eos_ids,
                   pad_token_id=real_lm.eos_ids[0])
    for question in questions:
        ids = torch.tensor([real_lm.encode(question.prompt)])
        expected = model.generate(ids, **options)
        out = model.generate(ids, custom_generate=recycler, **options)
        assert torch.equal(out, expected), f"question {question.question_id} ({question.category})"
    matrix = recycler.matrix(model)
    assert sum(sum(row) for row in matrix.stats.correct) > len(questions) * 5  # drafts were accepted all along
