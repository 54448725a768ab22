"""The primed matrix: saved and loaded exactly, filling only empty rows, built from the model's own top-k,
and a primed start as lossless as any other."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from tools import priming
from tr.device import primed as primed_files
from tr.generate import decode_steps, generate
from tr.records import token_ids
from tr.matrix import AdjacencyMatrix
from tr.device.model import load_model


def random_matrix(vocab: int = 40, k: int = 4, seed: int = 0) -> AdjacencyMatrix:
    torch.manual_seed(seed)
    matrix = AdjacencyMatrix(vocab, k)
    tokens = torch.randint(0, vocab, (12,)).tolist()
    matrix.write(tokens, torch.randn(len(tokens), vocab), [-1, *tokens[:-1]])
    return matrix


def test_save_and_load_keep_rows_and_pair_rows_in_order(tmp_path):
    matrix = random_matrix()
    matrix.save(tmp_path / "m.safetensors", {"model": "x"})
    loaded = AdjacencyMatrix.load(tmp_path / "m.safetensors", 40, 4)
    assert torch.equal(loaded.table, matrix.table) and torch.equal(loaded.probs, matrix.probs)
    assert torch.equal(loaded.filled, matrix.filled) and matrix.rows_filled > 5
    assert list(loaded.pairs.items()) == list(matrix.pairs.items()) and matrix.pairs

    narrow, wide = (AdjacencyMatrix.load(tmp_path / "m.safetensors", 40, k) for k in (2, 6))
    assert torch.equal(narrow.table, matrix.table[:, :2]) and torch.equal(wide.table[:, :4], matrix.table)
    assert not wide.probs[:, 4:].any()  # missing candidates have probability 0
    assert all(len(row) == 6 and p[4:] == [0.0, 0.0] for row, p in wide.pairs.values())
    with pytest.raises(ValueError, match="vocabulary of 40 tokens, not 41"):
        AdjacencyMatrix.load(tmp_path / "m.safetensors", 41, 4)


def test_fill_from_fills_only_empty_rows_and_missing_pairs_as_the_oldest():
    primed, own = random_matrix(seed=1), random_matrix(seed=2)
    before_table, before_filled, own_pairs = own.table.clone(), own.filled.clone(), list(own.pairs.items())
    filled = own.fill_from(primed)
    assert filled == int((primed.filled & ~before_filled).sum()) > 0
    assert torch.equal(own.table[before_filled], before_table[before_filled])  # fresher rows stay
    new = primed.filled & ~before_filled
    assert torch.equal(own.table[new], primed.table[new]) and bool(own.filled[primed.filled].all())
    assert list(own.pairs.items())[-len(own_pairs):] == own_pairs  # own pairs stay the newest
    assert set(own.pairs) == set(primed.pairs) | {key for key, _ in own_pairs}
    assert own.fill_from(primed) == 0
    with pytest.raises(ValueError):
        own.fill_from(AdjacencyMatrix(40, 3))


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_priming_writes_the_models_top_k_at_every_position(tiny_lm):
    prompts = ["Name a colour.", "Count to three."]
    side = tiny_lm.tokenizer.padding_side
    matrix = priming.prime(tiny_lm, prompts, max_new_tokens=6, batch=2, k=4, progress=False)
    answers = priming.answer(tiny_lm, prompts, 6, 2)
    assert all(answers)
    ids = tiny_lm.encode(prompts[-1]) + answers[-1]  # the last text written wins every row it touches
    with torch.inference_mode():
        logits = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0]
    last = {token: i for i, token in enumerate(ids)}
    for token, i in last.items():
        top = logits[i].topk(4).indices.tolist()
        assert matrix.row(token) == top
        if i:
            assert matrix.pair_row(ids[i - 1], token)[0] == top
    assert tiny_lm.tokenizer.padding_side == side  # the shared tokenizer is left as it was


def test_primed_start_loads_the_models_file_and_stays_lossless(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("TR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(primed_files, "SHIPPED", tmp_path / "none-shipped")
    prompt = tiny_lm.encode("Say something.")
    with pytest.raises(ValueError, match="python -m tools.priming --model"):
        decode_steps(tiny_lm, prompt, "tr", 8, start="primed")
    assert "no primed matrix" in primed_files.describe_primed(tiny_lm)

    code = priming.main(["--model", tiny_lm.name, "--limit", "3", "--max-new-tokens", "8", "--k", "8"])
    assert code == 0 and primed_files.find_primed(tiny_lm) == primed_files.build_target(tiny_lm)
    primed = primed_files.load_primed(tiny_lm, 8)
    matrix = AdjacencyMatrix(tiny_lm.vocab_size, 8)
    steps = list(decode_steps(tiny_lm, prompt, "tr", 24, matrix=matrix, start="primed"))
    assert bool(matrix.filled[primed.filled].all())
    assert token_ids(steps) == generate(tiny_lm, "Say something.", "ar", max_new_tokens=24).token_ids


@pytest.mark.parametrize("args, needle", [
    (["--limit", "0"], "--limit must be a positive integer"),
    (["--k", "99"], "--k must be from 1 to 32"),
    (["--prompts", "/no/such/file"], "cannot read the prompts"),
])
def test_cli_rejects_bad_settings_in_one_line(args, needle, capsys):
    assert priming.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_model_with_the_same_tokenizer_gets_the_shipped_matrix(tiny_lm):
    # The tiny model uses the bundled tokenizer, as the hub's SmolLM2 (a Space's model) does.
    shipped = primed_files.find_primed(tiny_lm)
    assert shipped is not None and shipped.parent == primed_files.SHIPPED
    assert "SmolLM2-135M-Instruct" in primed_files.describe_primed(tiny_lm)


def test_the_tokenizer_fingerprint_is_kept_until_the_vocabulary_changes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = primed_files.tokenizer_fingerprint(tokenizer)
    assert primed_files.tokenizer_fingerprint(tokenizer) == first
    tokenizer.add_tokens(["<a-token-no-vocabulary-has>"])
    assert primed_files.tokenizer_fingerprint(tokenizer) != first


def test_the_bundled_model_ships_a_primed_matrix(real_lm):
    primed = primed_files.load_primed(real_lm, 8)
    assert primed.rows_filled > 4000 and len(primed.pairs) > 10000
    prompt = "Write two sentences about the history of printing."
    plain = generate(real_lm, prompt, "ar", max_new_tokens=32)
    assert generate(real_lm, prompt, "tr", max_new_tokens=32, start="primed").token_ids == plain.token_ids
