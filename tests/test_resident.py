"""Token Recycling with the whole step on the device (`tr.device.resident`): the host loop's tokens, records
and matrix rows, with and without the next step queued ahead.

On a CPU the step runs eagerly, which checks every tensor operation, the read back and the queueing; with a
GPU (`TR_TEST_DEVICE=cuda`, or any machine with CUDA for the last test) it is captured as one CUDA graph.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from tiny_models import ARCHITECTURES, DEVICE, tiny_model
from tr.decoding import autoregressive, token_recycling
from tr.device import graphs, kernels
from tr.device.fixed import FIXED_ROWS
from tr.device.model import LoadedModel
from tr.device.resident import DeviceRows, DeviceStep, resident_autoregressive, resident_token_recycling
from tr.drafts import TemplateDrafter
from tr.costs import CostCurve
from tr.generate import decode_steps, device_tree
from tr.matrix import AdjacencyMatrix
from tr.sampling import Sampling
from tr.specs import Method, Start, TreeKind, parse_tree
from tr.trees import DraftTree, best_first_paths, best_first_template, expected_tokens, path_nodes

VOCAB = 96


def tokens_of(steps) -> list[int]:
    return [t for step in steps for t in step.tokens]


def template(name: str = "paper-80", k: int = 8, size: int | None = None) -> TemplateDrafter:
    return TemplateDrafter(DraftTree.from_paths(best_first_template(name, k)), size=size)


def same_rows(a: AdjacencyMatrix, b: AdjacencyMatrix) -> bool:
    return torch.equal(a.table, b.table) and torch.equal(a.probs, b.probs) and torch.equal(a.filled, b.filled)


def record(step) -> tuple:
    """What a step record says, timings aside."""
    draft = step.draft
    shown = None if draft is None else (draft.tokens, draft.parents, draft.ranks, draft.origins, draft.scores)
    rows = [(w.token, w.old, w.new, w.was_filled) for w in step.rows_written]
    return step.index, step.tokens, step.accepted, step.choices, shown, rows, step.finished, step.total_tokens


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("ahead", [False, True])
def test_steps_on_the_device_give_the_host_loops_tokens_records_and_rows(arch, ahead):
    """Plain decoding and Token Recycling, each against its host loop, with EOS and room ending requests."""
    rng = random.Random(arch)
    model = tiny_model(arch, VOCAB, seed=len(arch))
    host, device = AdjacencyMatrix(VOCAB, 8), AdjacencyMatrix(VOCAB, 8)
    accepted, ended_by = 0, set()
    # Later prompts meet hot matrices; a size chooses that many of the template's nodes each step.
    for name, size in (("paper-80", None), ("small-16", None), ("paper-80", 12), ("tiny-4", None), ("medium-32", 9)):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 140))]  # past the largest bucket too
        max_new = rng.randint(20, 60)
        plain = tokens_of(autoregressive(model, prompt, max_new))
        eos = [plain[len(plain) // 2]] if name == "paper-80" else []  # an EOS the text reaches half way
        plain = list(autoregressive(model, prompt, max_new, eos_ids=eos))
        expected = tokens_of(plain)
        resident_plain = list(resident_autoregressive(model, prompt, max_new, eos, ahead))
        assert [record(s) for s in resident_plain] == [record(s) for s in plain]
        steps = list(token_recycling(model, prompt, max_new, host, template(name, size=size), eos_ids=eos))
        resident = list(resident_token_recycling(model, prompt, max_new, device, template(name, size=size), eos,
                                                 ahead))
        assert tokens_of(steps) == tokens_of(resident) == expected
        assert [record(s) for s in resident] == [record(s) for s in steps]
        assert same_rows(device, host), "the rows differ from the host loop's (a queued step wrote some?)"
        assert device.stats.by_origin == host.stats.by_origin
        accepted += sum(s.accepted_drafts for s in resident)
        ended_by.add("eos" if eos and expected[-1] in eos else "room")
        assert all(s.draft.size == (size or len(best_first_template(name, 8)) + 1) for s in resident[1:])
    assert accepted > 0, "the test never exercised an accepted draft"
    assert ended_by == {"eos", "room"}


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the batch-invariant kernels are the CPU's")
def test_with_the_cpus_invariant_kernels_static_passes_keep_the_eager_tokens():
    """float32 with `tr.device.invariant` installed: the static cache's passes (a new mask view per pass,
    keys past the pass unused) give plain decoding's tokens, and Token Recycling on them equals it."""
    model = tiny_model("llama", 512, seed=4, dtype=torch.float32)
    kernels.install_kernels(model)
    matrix, rng = AdjacencyMatrix(512, 8), random.Random(4)
    for _ in range(3):
        prompt = [rng.randrange(512) for _ in range(rng.randint(2, 40))]
        expected = tokens_of(autoregressive(model, prompt, 30))
        assert tokens_of(autoregressive(model, prompt, 30, passes=graphs.GraphedPasses)) == expected
        assert tokens_of(resident_autoregressive(model, prompt, 30)) == expected
        assert tokens_of(resident_token_recycling(model, prompt, 30, matrix, template())) == expected


def test_path_nodes_list_each_nodes_path_one_node_per_depth():
    tree = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert path_nodes(tree).tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 2, 2], [0, 1, 3, 3], [0, 1, 4, 4],
                                         [0, 2, 5, 5], [0, 1, 3, 6]]


@pytest.mark.parametrize("ahead", [False, True])
def test_records_time_every_interval_and_a_closed_request_writes_its_rows_back(ahead):
    model = tiny_model("llama", VOCAB, seed=0)
    matrix = AdjacencyMatrix(VOCAB, 8)
    run = resident_token_recycling(model, list(range(5, 30)), 40, matrix, template(), ahead=ahead)
    seen = [next(run) for _ in range(4)]
    for step in seen:
        assert step.forward_s >= 0 and step.overhead_s >= 0
        assert step.total_forward_s + step.total_overhead_s == pytest.approx(step.elapsed_s)
    run.close()  # abandoned after three steps: the rows they wrote reach the matrix, the workspace the pool
    latest_rows = {w.token: w.new for step in seen for w in step.rows_written}
    assert latest_rows and all(bool(matrix.filled[token]) for token in latest_rows)
    if not ahead:  # with a step queued ahead, its rows (never shown in a record) may be newer still
        assert all(matrix.table[token].tolist() == new for token, new in latest_rows.items())
    pool = graphs._pool(model)
    assert any(ws.steps for idle in pool.idle.values() for ws in idle), "the workspace was not handed back"


def test_a_token_drafted_twice_writes_its_row_once_from_its_last_occurrence():
    rows = DeviceRows(VOCAB, 8, 5, DEVICE)
    tokens = torch.tensor([7, 9, 7, 9, 3], device=rows.table.device)
    spare = VOCAB
    assert rows.targets(tokens, torch.tensor(False, device=tokens.device)).tolist() == [spare, spare, 7, 9, 3]
    after_the_end = rows.targets(tokens, torch.tensor(True, device=tokens.device))
    assert after_the_end.tolist() == [spare] * 5  # a step queued after the last changes no row


def test_a_workspace_builds_each_templates_step_once():
    model = tiny_model("qwen2", VOCAB, seed=1)
    drafter, matrix = template("small-16"), AdjacencyMatrix(VOCAB, 8)
    for _ in range(2):
        list(resident_token_recycling(model, [3, 4, 5], 10, matrix, drafter))
    steps = [step for idle in graphs._pool(model).idle.values() for ws in idle for step in ws.steps.values()]
    assert len(steps) == 1 and isinstance(steps[0], DeviceStep)


def test_a_request_names_a_bounded_number_of_end_ids():
    model = tiny_model("llama", VOCAB, seed=0)
    with pytest.raises(ValueError, match="at most 16 end-of-sequence ids"):
        list(resident_token_recycling(model, [1, 2], 5, AdjacencyMatrix(VOCAB, 8), template(), list(range(17))))


def test_decode_steps_runs_greedy_steps_on_the_device_where_the_model_says_so(monkeypatch):
    model = tiny_model("llama", VOCAB, seed=0)

    def loaded(device: str, **options) -> LoadedModel:
        return LoadedModel(model, None, "tiny", torch.device(device), torch.float64, **options)

    assert loaded("cuda").resident
    assert not loaded("cuda", resident_steps=False).resident and not loaded("cuda", cuda_graphs=False).resident
    assert not loaded("cpu").resident  # a CPU has no host to overlap with: the host loop is as fast there

    lm = loaded("cpu", resident_steps=True)  # asked for: then also on a CPU
    assert lm.resident
    assert lm.fixed  # without the CPU's invariant kernels (not installed on this tiny model): fixed shapes
    assert not loaded("cpu", fixed_shapes=False).fixed
    if DEVICE.type == "cpu":  # with them, by default no fixed shapes: those kernels are invariant already
        with_kernels = tiny_model("llama", VOCAB, seed=0, dtype=torch.float32)
        kernels.install_kernels(with_kernels)
        assert not LoadedModel(with_kernels, None, "tiny", DEVICE, torch.float32).fixed
    monkeypatch.setattr(LoadedModel, "eos_ids", property(lambda self: []))
    prompt, paper = list(range(4, 20)), parse_tree("paper-80", 8)

    def runner(**options) -> str:
        return decode_steps(lm, prompt, max_new_tokens=8, matrix=AdjacencyMatrix(VOCAB, 8), **options).__name__

    assert runner(tree=paper) == "resident_token_recycling"
    wide = parse_tree(json.dumps(best_first_paths(FIXED_ROWS, 6)), 8)  # with its root, more than a fixed pass
    assert runner(tree=wide) == "token_recycling"
    assert decode_steps(lm, prompt, Method.AR, 8).__name__ == "resident_autoregressive"
    assert decode_steps(lm, prompt, Method.AR, 8, Sampling(temperature=1.0, seed=0)).__name__ == "autoregressive"
    assert runner(tree=parse_tree("dynamic-8", 8)) == "token_recycling"  # dynamic trees are built on the host
    assert runner(tree=paper, sampling=Sampling(temperature=1.0, seed=0)) == "token_recycling"
    assert runner(tree=paper, start=Start.SEEDED) == "token_recycling"  # the prefill writes rows on the host
    flat = CostCurve([1, 96], [1.0, 1.0], 0, "test")
    auto = decode_steps(lm, prompt, max_new_tokens=8, matrix=AdjacencyMatrix(VOCAB, 8), tree=parse_tree("auto", 8),
                        costs=flat)
    assert auto.__name__ == "resident_token_recycling"  # auto: the most probable nodes, chosen on the device
    assert len(next(s for s in auto if s.draft).draft.tokens) == FIXED_ROWS  # fixed shapes: a full pass


def test_auto_on_the_device_chooses_as_many_nodes_as_give_most_tokens_per_cost():
    flat, steep = CostCurve([1, 96], [1.0, 1.0], 0, "test"), CostCurve([1, 96], [1.0, 96.0], 0, "test")
    assert device_tree(flat, 8, fixed=False).nodes == FIXED_ROWS - 1  # verification nearly free: the most
    assert device_tree(steep, 8, fixed=False).nodes == 4  # cost in proportion to rows: the fewest
    assert device_tree(steep, 8, fixed=True).nodes == FIXED_ROWS - 1  # fixed shapes: every pass costs alike
    spec = device_tree(flat, 4, fixed=True)
    assert spec.kind is TreeKind.CHOSEN and len(spec.paths) > FIXED_ROWS and max(map(max, spec.paths)) == 3
    assert expected_tokens([(0,), (1,), (0, 0)], (0.5, 0.25)) == 1 + 0.5 + 0.25 + 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_step_is_captured_on_cuda_and_gives_the_eager_tokens():
    model = tiny_model("llama", VOCAB, seed=0).to("cuda")  # float64: eager and graphed kernels round alike
    prompt = list(range(3, 40))
    expected = tokens_of(autoregressive(model, prompt, 50))
    assert tokens_of(resident_autoregressive(model, prompt, 50)) == expected
    host, device = AdjacencyMatrix(VOCAB, 8), AdjacencyMatrix(VOCAB, 8)
    for _ in range(2):
        assert tokens_of(token_recycling(model, prompt, 50, host, template())) == expected
        assert tokens_of(resident_token_recycling(model, prompt, 50, device, template())) == expected
        assert same_rows(device, host)
    steps = [step for idle in graphs._pool(model).idle.values() for ws in idle for step in ws.steps.values()]
    assert steps and all(step.graph is not None for step in steps)
