"""The benchmark CLI: end to end on the tiny random model, the table arithmetic, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from tools import bench
from tools.bench import stock
from tools.bench.cli import read_template
from tools.bench.options import BenchMethod, Kind, Template
from tr.device import kernels
from tr.device import primed as primed_files
from tr.device.model import load_model
from tr.generate import decode_steps
from tr.records import first_divergence
from tr.specs import MAX_TREE_NODES, TREE_NAMES, Start, TreeKind, parse_tree
from tr.trees import TreeError

PROMPTS = [
    {"question_id": 1, "category": "alpha", "turns": ["Write a haiku about rain.", "Now another."]},
    {"question_id": 2, "category": "beta", "turns": ["Translate into French: good morning."]},
    {"question_id": 3, "category": "alpha", "turns": ["List three prime numbers."]},
    {"question_id": 4, "category": "alpha", "turns": ["This one is past --per-category 2."]},
]
FIELDS = {
    "question_id", "category", "method", "tokens", "seconds", "tokens_per_s", "steps", "mat", "forward_s",
    "overhead_s", "repeat_seconds", "identical_to_ar", "first_divergence", "output_ids",
}
MAX_NEW = 12


def write_prompts(path: Path, records: list[dict] = PROMPTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """The CLI calibrates the device and caches the curve: keep the tiny model's out of ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


METHODS = ("ar", "hf", "stock", "pld", "tr:small-16")  # a plain `tr` is named after its --template


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir, tmp_path_factory):
    """One CLI run of all five methods on three prompts; (exit code, stdout, JSON document)."""
    folder = tmp_path_factory.mktemp("bench")
    prompts = write_prompts(folder / "prompts.jsonl")
    out = folder / "results.json"
    code, stdout, _ = run_main([
        "--model", str(tiny_model_dir), "--prompts", str(prompts), "--per-category", "2",
        "--max-new-tokens", str(MAX_NEW), "--methods", "ar,hf,stock,pld,tr", "--template", "small-16",
        "--out", str(out),
    ])
    assert code == 0
    return code, stdout, json.loads(out.read_text())


def test_cli_writes_every_figure(cli_run):
    _, stdout, doc = cli_run
    cost = doc["machine"]["forward_cost"]
    assert cost["sizes"][0] == 1 and len(cost["seconds"]) == len(cost["sizes"]) and min(cost["seconds"]) > 0
    assert "forward cost of n new tokens" in stdout
    results = doc["results"]
    # First two alpha prompts in file order, the one beta prompt; five methods each.
    assert [(r["question_id"], r["method"]) for r in results] == [
        (q, m) for q in (1, 2, 3) for m in METHODS
    ]
    for row in results:
        assert set(row) >= FIELDS
        assert row["tokens"] == len(row["output_ids"]) > 0
        assert row["seconds"] > 0 and row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
    by_method = {m: [r for r in results if r["method"] == m] for m in METHODS}
    assert all(r["mat"] == 1.0 and r["steps"] == r["tokens"] - 1 for r in by_method["ar"])
    assert all(r["mat"] is not None and r["steps"] >= 1 and r["forward_s"] > 0 for r in by_method["tr:small-16"])
    # transformers does not expose its steps: nothing is made up for hf, stock and pld.
    assert all(r[key] is None for m in ("hf", "stock", "pld") for r in by_method[m]
               for key in ("steps", "mat", "forward_s", "overhead_s"))
    assert doc["settings"]["methods"] == list(METHODS)
    assert doc["settings"]["max_new_tokens"] == MAX_NEW and doc["settings"]["k"] == 8
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["dtype"] == "float32"
    assert doc["machine"]["dtype_note"] == "float32 (as asked)"
    assert doc["machine"]["native_bf16"] == kernels.native_bf16(torch.device("cpu"))
    assert doc["machine"]["cpu_flags"] == sorted(kernels.cpu_flags())
    assert doc["settings"]["prompts"] == [str(Path(doc["settings"]["prompts"][0]).resolve())]
    assert doc["machine"]["threads"] >= 1 and doc["machine"]["torch"]
    assert "machine:" in stdout and "overall" in stdout and "dtype float32" in stdout


def test_all_methods_reproduce_ar_exactly(cli_run, tiny_model_dir):
    _, _, doc = cli_run
    for row in doc["results"]:
        assert row["identical_to_ar"] is True, row
        assert row["first_divergence"] is None
    # The ar reference is the project's own greedy decoder, not something the benchmark made up.
    lm = load_model(str(tiny_model_dir))
    ar = next(r for r in doc["results"] if r["method"] == "ar" and r["question_id"] == 2)
    steps = decode_steps(lm, lm.encode(PROMPTS[1]["turns"][0]), "ar", MAX_NEW)
    assert ar["output_ids"] == [t for s in steps for t in s.tokens]


def test_table_speedup_is_the_hand_computation(cli_run):
    _, stdout, doc = cli_run
    results = doc["results"]
    lines = stdout.splitlines()
    for category in ("alpha", "beta", "overall"):
        rows = [r for r in results if category == "overall" or r["category"] == category]
        speed = {m: sum(r["tokens"] for r in rows if r["method"] == m) / sum(r["seconds"] for r in rows
                 if r["method"] == m) for m in METHODS}
        baseline = max(speed["ar"], speed["hf"], speed["stock"])
        for method in METHODS:
            row = next(t for t in doc["table"] if t["category"] == category and t["method"] == method)
            assert row["speedup"] == pytest.approx(speed[method] / baseline)
            assert row["tokens_per_s"] == pytest.approx(speed[method])
            printed = next(line.split() for line in lines if line.split()[:2] == [category, method])
            assert printed[6] == f"{speed[method] / baseline:.2f}x"
            assert printed[7] == "yes"
    # The table in the JSON is what summarize_table makes of the per-prompt rows.
    assert [asdict(t) for t in bench.summarize_table([bench.PromptRow(**r) for r in results])] == doc["table"]


def test_summarize_table_on_hand_made_rows():
    def row(qid, category, method, tokens, seconds, steps=None, mat=None, forward=None, overhead=None, same=True):
        return bench.PromptRow(qid, category, method, tokens, seconds, tokens / seconds, steps=steps, mat=mat,
                               forward_s=forward, overhead_s=overhead, identical_to_ar=same)

    results = [
        row(1, "c1", "ar", 10, 2.0, steps=9, mat=1.0, forward=1.8, overhead=0.2),
        row(1, "c1", "hf", 10, 1.0),
        row(1, "c1", "tr", 10, 0.5, steps=3, mat=3.0, forward=0.4, overhead=0.1),
        row(2, "c2", "ar", 20, 1.0, steps=19, mat=1.0, forward=0.9, overhead=0.1),
        row(2, "c2", "hf", 20, 2.0),
        row(2, "c2", "tr", 30, 1.0, steps=5, mat=5.8, forward=0.8, overhead=0.2, same=False),
    ]
    table = {(t.category, t.method): t for t in bench.summarize_table(results)}
    # c1: hf (10 tok/s) beats ar (5 tok/s); tr does 20 tok/s.
    assert table["c1", "tr"].baseline == "hf" and table["c1", "tr"].speedup == pytest.approx(2.0)
    assert table["c1", "ar"].speedup == pytest.approx(0.5)
    # c2: ar (20 tok/s) beats hf (10 tok/s); tr does 30 tok/s.
    assert table["c2", "tr"].baseline == "ar" and table["c2", "tr"].speedup == pytest.approx(1.5)
    # overall pools prompts: ar 30/3 = 10, hf 30/3 = 10, tr 40/1.5; a tie goes to ar.
    assert table["overall", "tr"].baseline == "ar"
    assert table["overall", "tr"].speedup == pytest.approx(40 / 1.5 / 10)
    assert table["overall", "tr"].mat == pytest.approx((9 + 29) / 8)  # decoded tokens / steps
    assert table["overall", "tr"].overhead_pct == pytest.approx(100 * 0.3 / 1.2)
    assert table["overall", "hf"].mat is None and table["overall", "hf"].steps is None
    assert bench.identical_text(table["overall", "tr"]) == "1 of 2"
    assert bench.identical_text(table["c1", "tr"]) == "yes"


def test_first_divergence_and_eos_cut():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert bench.cut_at_eos([4, 2, 9, 2], [2]) == [4, 2]
    assert bench.cut_at_eos([4, 5], [2]) == [4, 5]


def test_load_questions_keeps_file_order_per_category(tmp_path, monkeypatch):
    path = write_prompts(tmp_path / "p.jsonl")
    assert [q.question_id for q in bench.load_questions(path, 1)] == [1, 2]
    assert [q.question_id for q in bench.load_questions(path)] == [1, 2, 3, 4]
    assert bench.load_questions(path)[0].prompt == "Write a haiku about rain."  # first turn only
    monkeypatch.chdir(tmp_path)  # the default file is found through the package, from any cwd
    assert len(bench.load_questions(bench.DEFAULT_PROMPTS)) >= 7


def test_several_prompt_files_are_read_in_turn(tmp_path):
    first = write_prompts(tmp_path / "a.jsonl")
    second = write_prompts(tmp_path / "b.jsonl", [{"question_id": 9, "category": "alpha", "turns": ["Hi."]}])
    # --per-category applies within each file.
    assert [q.question_id for q in bench.load_question_files([first, second], 1)] == [1, 2, 9]
    clash = write_prompts(tmp_path / "c.jsonl", [{"question_id": 2, "category": "gamma", "turns": ["Hi."]}])
    with pytest.raises(ValueError, match="question_id 2 is in both"):
        bench.load_question_files([first, clash])


def test_dtype_auto_is_accepted_and_recorded(tiny_model_dir, tmp_path, monkeypatch):
    # A CPU without native bf16: auto falls back to float32 and the JSON says why.
    monkeypatch.setattr(kernels, "read_cpuinfo", lambda: "flags\t: fpu avx2 avx512f\n")
    out = tmp_path / "auto.json"
    code, stdout, _ = run_main(["--model", str(tiny_model_dir), "--prompts", str(write_prompts(tmp_path / "p.jsonl")),
                                "--per-category", "1", "--max-new-tokens", "4", "--methods", "ar",
                                "--dtype", "auto", "--out", str(out)])
    assert code == 0
    machine = json.loads(out.read_text())["machine"]
    assert machine["dtype"] == "float32" and machine["native_bf16"] is None
    assert machine["cpu_flags"] == ["avx2", "avx512f", "fpu"]
    assert machine["dtype_note"].startswith("float32 (this CPU has no native bf16")
    assert "dtype float32 (this CPU has no native bf16" in stdout
    assert machine["passes"] == "LeanPasses" and "CUDA graphs" not in stdout  # the lean forward; graphs: GPUs only
    assert machine["resident_steps"] is False and "steps on the device" not in stdout  # by default, with graphs only


def test_resident_steps_can_be_asked_for_on_a_cpu_and_reproduce_ar(tiny_model_dir, tmp_path):
    out = tmp_path / "resident.json"
    code, stdout, _ = run_main(["--model", str(tiny_model_dir), "--prompts", str(write_prompts(tmp_path / "p.jsonl")),
                                "--per-category", "1", "--max-new-tokens", "12", "--methods", "ar,tr:small-16",
                                "--resident-steps", "on", "--fixed-shapes", "on", "--out", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["machine"]["resident_steps"] is True and document["machine"]["fixed_shapes"] is True
    assert "greedy steps on the device in fixed shapes" in stdout
    assert all(row["identical_to_ar"] for row in document["results"] if row["method"] == "tr:small-16")


def test_a_time_limit_times_every_method_on_the_prompts_before_it(tiny_model_dir, tmp_path):
    out = tmp_path / "limited.json"
    code, _, stderr = run_main(["--model", str(tiny_model_dir), "--prompts", str(write_prompts(tmp_path / "p.jsonl")),
                                "--max-new-tokens", "4", "--methods", "ar,tr:tiny-4", "--time-limit", "1e-9",
                                "--out", str(out)])
    assert code == 0
    assert "time limit reached: 1 of 4 prompts timed" in stderr
    rows = json.loads(out.read_text())["results"]
    assert [(row["question_id"], row["method"]) for row in rows] == [(1, "ar"), (1, "tr:tiny-4")]


@pytest.mark.parametrize("args, needle", [
    (["--prompts", "{tmp}/missing.jsonl"], "cannot read prompts file"),
    (["--methods", "ar,beam"], "unknown method 'beam'"),
    (["--methods", " , "], "no methods"),
    (["--template", "no-such-tree"], "unknown tree 'no-such-tree'"),
    (["--template", "{tmp}/tree.json"], "not valid JSON"),  # a file is read, then parsed as a tree
    (["--template", "[[5]]", "--k", "4"], "rank outside"),
    (["--k", "0"], "--k must be from 1"),
    (["--k", "33"], "--k must be from 1"),
    (["--k", "eight"], "invalid int value"),
    (["--model", "{tmp}/no-such-model"], "could not load model"),
    (["--dtype", "float8"], "invalid choice"),
    (["--per-category", "0"], "--per-category must be at least 1"),
    (["--prompts", "{tmp}/bad.jsonl"], "not valid JSON"),
    (["--out", "{tmp}/no/such/folder/r.json"], "does not exist"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be from 1"),
    (["--pld-tokens", "0"], "--pld-tokens must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--time-limit", "0"], "--time-limit must be more than 0"),
    (["--time-limit", "nan"], "--time-limit must be more than 0"),
    (["--time-limit", "1e9"], "at most 86400 seconds"),
    (["--start", "lukewarm"], "invalid choice"),
    (["--cuda-graphs", "maybe"], "invalid choice"),
    (["--resident-steps", "maybe"], "invalid choice"),
    (["--fixed-shapes", "maybe"], "invalid choice"),
    (["--methods", "ar,tr:auto:lukewarm"], "unknown start mode 'lukewarm'"),
    (["--methods", "ar,hf:auto"], "unknown method 'hf:auto'"),
    (["--methods", "tr:paper-81"], "unknown tree 'paper-81'"),
    (["--methods", "tr:dynamic-0"], "dynamic-N with N from 1 to 256"),
    (["--methods", "tr:dynamic-x"], "dynamic-N with N from 1 to 256"),
    # Found only once the model is loaded (its position limit): still one error line, after the load bars.
    (["--model", "{tiny}", "--prompts", "{tmp}/long.jsonl"], "the prompt is too long"),
    (["--model", "{tiny}", "--prompts", "{tmp}/long.jsonl"], "at most 2,048 are accepted"),  # the app's limit
    (["--model", "{tiny}", "--methods", "ar,tr:auto:primed"], "there is no primed matrix"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, tiny_model_dir, monkeypatch):
    # The tiny model shares the bundled tokenizer: hide the shipped primed matrix so none is found.
    monkeypatch.setattr(primed_files, "SHIPPED", tmp_path / "none-shipped")
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "category": "x", "turns": ["hi"]}\n{oops\n')
    (tmp_path / "tree.json").write_text("[[0], oops")
    write_prompts(tmp_path / "long.jsonl", [{"question_id": 1, "category": "x", "turns": ["word " * 3000]}])
    argv = [a.format(tmp=tmp_path, tiny=tiny_model_dir) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "r.json")]
    code, stdout, stderr = run_main(argv)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert needle in lines[-1] and lines[-1].startswith("tools.bench: error: ")
    assert "Traceback" not in stderr
    if "{tiny}" not in args:  # everything else is caught before the model load prints anything
        assert len(lines) == 1
    assert not (tmp_path / "r.json").exists()


def test_tree_variants_run_side_by_side_and_stay_identical(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TR_CACHE_DIR", str(tmp_path))  # calibration is cached there, not in ~/.cache
    out = tmp_path / "variants.json"
    code, stdout, _ = run_main([
        "--model", str(tiny_model_dir), "--prompts", str(write_prompts(tmp_path / "p.jsonl")), "--per-category", "1",
        "--max-new-tokens", str(MAX_NEW), "--template", "auto", "--out", str(out),
        "--methods", "ar,tr,tr:paper-80,tr:auto-nolookup:seeded,tr:dynamic-5,tr:chosen-6,tr:auto:hot",  # last = `tr`
    ])
    assert code == 0
    doc = json.loads(out.read_text())
    variants = ["tr:auto", "tr:paper-80", "tr:auto-nolookup:seeded", "tr:dynamic-5", "tr:chosen-6"]
    assert doc["settings"]["methods"] == ["ar", *variants]
    assert [r["method"] for r in doc["results"]] == ["ar", *variants] * 2
    assert all(r["identical_to_ar"] for r in doc["results"])
    assert all(any(line.split()[:2] == ["overall", v] for line in stdout.splitlines()) for v in variants)
    assert list(tmp_path.glob("calibration-*.json"))
    assert {r["draft_nodes"] for r in doc["results"] if r["method"] == "tr:chosen-6"} == {6.0}


def test_repeats_keep_the_fastest_and_start_each_round_from_the_same_matrix(tiny_model_dir, tmp_path, monkeypatch):
    """Repeated rounds change the timing only: tokens, steps and MAT equal a single round's, and the
    matrix carried to the next prompt is the one a single round leaves. (`auto` sizes trees by the
    steps' own timings, so only its tokens must repeat.)"""
    monkeypatch.setenv("TR_CACHE_DIR", str(tmp_path))
    prompts = write_prompts(tmp_path / "p.jsonl")
    docs = {}
    for repeats in (1, 3):
        out = tmp_path / f"r{repeats}.json"
        code, stdout, _ = run_main([
            "--model", str(tiny_model_dir), "--prompts", str(prompts), "--max-new-tokens", str(MAX_NEW),
            "--methods", "ar,hf,tr:dynamic-8,tr:auto", "--repeats", str(repeats), "--out", str(out),
        ])
        assert code == 0
        docs[repeats] = json.loads(out.read_text())["results"]
        # auto's rows carry the curve its steps corrected, reported after the machine; fixed trees' the prior.
        sizes = json.loads(out.read_text())["machine"]["forward_cost"]["sizes"]
        assert "tr:auto: cost after the last prompt, corrected by decoding steps" in stdout
        assert "tr:dynamic-8: cost" not in stdout
        for row in docs[repeats]:
            tr_row = row["method"].startswith("tr:")
            assert (row["cost_curve"] is not None) == (row["method"] == "tr:auto")
            assert (row["draft_nodes"] is not None and row["probes"] is not None) == tr_row
            if row["cost_curve"]:
                assert len(row["cost_curve"]) == len(sizes) and row["cost_curve"][0] == 1.0
    same = ("method", "output_ids", "steps", "mat")
    for once, thrice in zip(docs[1], docs[3]):
        fields = same if once["method"] != "tr:auto" else same[:2]
        assert [once[f] for f in fields] == [thrice[f] for f in fields]
        assert len(thrice["repeat_seconds"]) == 3 and thrice["seconds"] == min(thrice["repeat_seconds"])
        assert once["repeat_seconds"] == [once["seconds"]]


def test_fastest_refuses_runs_that_disagree():
    runs = [bench.Run([1, 2], 2.0), bench.Run([1, 2], 1.0)]
    assert bench.fastest(runs).seconds == 1.0
    with pytest.raises(ValueError, match="not deterministic"):
        bench.fastest([*runs, bench.Run([1, 3], 0.5)])


def tr(tree: str, start: Start = Start.HOT, k: int = 8) -> BenchMethod:
    return BenchMethod(Kind.TR, parse_tree(tree, k), start)


@pytest.mark.parametrize("text, template, start, expected", [
    ("ar", "paper-80", "hot", [BenchMethod(Kind.AR)]),
    ("ar, hf ,pld", "paper-80", "hot", [BenchMethod(Kind.AR), BenchMethod(Kind.HF), BenchMethod(Kind.PLD)]),
    ("tr", "paper-80", "hot", [tr("paper-80")]),
    ("tr", "auto", "seeded", [tr("auto", Start.SEEDED)]),
    ("tr:dynamic-5", "auto", "cold", [tr("dynamic-5", Start.COLD)]),
    ("tr:auto:primed,tr:auto-nolookup", "paper-80", "hot", [tr("auto", Start.PRIMED), tr("auto-nolookup")]),
    ("tr::cold", "small-16", "hot", [tr("small-16", Start.COLD)]),
    ("tr,tr:auto:hot,ar,ar", "auto", "hot", [tr("auto"), BenchMethod(Kind.AR)]),  # repeats run once
])
def test_parse_methods_accepts(text, template, start, expected):
    methods = bench.parse_methods(text, 8, Template(template, template), Start(start))
    assert methods == expected
    assert all(isinstance(m.tree.kind, TreeKind) for m in methods if m.kind is Kind.TR)


@pytest.mark.parametrize("text, needle", [
    ("beam", "unknown method 'beam'"),
    ("hf:auto", "unknown method 'hf:auto'"),
    ("tr:paper-81", "unknown tree 'paper-81'"),
    ("tr:dynamic-0", "dynamic-N with N from 1 to 256"),
    ("tr:auto:lukewarm", "unknown start mode 'lukewarm'"),
    ("tr:[[9]]", "rank outside"),
    (" , ", "no methods"),
])
def test_parse_methods_rejects(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as caught:
        bench.parse_methods(text, 4)
    if "unknown" in needle and "start" not in needle:  # the message names every tree the user could have meant
        assert all(name in str(caught.value) for name in TREE_NAMES)
        assert "dynamic-N" in str(caught.value) and str(MAX_TREE_NODES) in str(caught.value)


def test_template_file_is_read_by_the_cli_and_named_by_its_path(tmp_path):
    file = tmp_path / "tree.json"
    file.write_text("[[0], [1], [0, 0]]")
    template = read_template(str(file))
    (method,) = bench.parse_methods("tr", 8, template)
    assert method.name == f"tr:{file}" and method.tree.paths == ((0,), (1,), (0, 0))
    assert read_template("auto") == Template("auto", "auto")
    file.write_text("[[0], oops")
    with pytest.raises(TreeError, match="not valid JSON"):
        bench.parse_methods("tr", 8, read_template(str(file)))


def test_the_stock_worker_loads_the_model_as_shipped_with_our_thread_count(monkeypatch):
    seen = {}

    class FakeProcess:
        def __init__(self, command, **options):
            seen.update(command=command)
            self.stdout = io.StringIO('{"ready": true}\n')

    monkeypatch.setattr(stock.subprocess, "Popen", FakeProcess)
    stock.StockWorker("some/model", "cpu", "float32")
    assert f"serve('some/model', 'cpu', 'float32', {torch.get_num_threads()})" in seen["command"][-1]
