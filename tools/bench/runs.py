"""Timing the benchmark's methods: one runner per method, every prompt through every runner, a row each.

`ar` and `tr` run through the library (`tr.generate.decode_steps`); `hf` and `pld` through transformers'
`model.generate`, with the same LM head and EOS ids, so the comparison is of decoding loops alone; `stock`
through `model.generate` on the model as transformers ships it (`tools.bench.stock`), the baseline a
user without this project has; `llama` through llama.cpp on the model's GGUF (`tools.bench.llama`); `hf-tr`
through `model.generate` with Token Recycling as its `custom_generate` (`tools.bench.custom`).
"""

from __future__ import annotations

import copy
import functools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from tr.costs import LearnedCost
from tr.passes import argmax_only
from tr.device import quantized
from tr.device.calibrate import device_curve
from tr.device.model import DTYPES, LoadedModel
from tr.generate import check_request, decode_steps
from tr.matrix import AdjacencyMatrix
from tr.records import Step, first_divergence, summarize, token_ids
from tr.specs import Method, check_prompt_tokens

from .options import BenchMethod, Kind, check_numbers
from .prompts import Question
from .rows import PromptRow
from .custom import custom_runner
from .llama import LlamaWorker
from .stock import StockWorker


@dataclass
class TreeFigures:
    """A tr run's trees."""

    draft_nodes: float | None  # mean draft nodes per decoding step; None without a decoding step
    probes: int  # steps that verified the root alone, to time a one-token pass
    cost_curve: list[float] | None  # the last step's cost curve at its calibrated sizes; None without one


@dataclass
class Run:
    """One timed generation."""

    output_ids: list[int]
    seconds: float  # wall clock
    steps: int | None = None  # None where transformers does not report them
    mat: float | None = None
    forward_s: float | None = None
    overhead_s: float | None = None
    trees: TreeFigures | None = None  # tr only


Runner = Callable[[list[int], bool], Run]  # (prompt ids, scratch) -> one timed generation


def now(device: torch.device) -> float:
    """Wall clock; on CUDA wait for queued kernels first so the time is the work's, not the launch's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cut_at_eos(ids: Sequence[int], eos_ids: Iterable[int]) -> list[int]:
    """Tokens up to and including the first EOS: how our decoders count a generation's length."""
    eos = set(eos_ids)
    for i, token in enumerate(ids):
        if token in eos:
            return list(ids[: i + 1])
    return list(ids)


def generation_config(lm: LoadedModel, max_new_tokens: int, pld_tokens: int | None) -> GenerationConfig:
    """Plain greedy settings for `model.generate`, built fresh: a checkpoint's own generation config
    may carry sampling or repetition-penalty settings that would make it decode by another rule than
    `ar`."""
    eos = lm.eos_ids
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    lookup = {} if pld_tokens is None else {"prompt_lookup_num_tokens": pld_tokens}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                            pad_token_id=pad, **lookup)


def run_hf(lm: LoadedModel, prompt_ids: list[int], config: GenerationConfig) -> Run:
    """One `model.generate` call. Greedy, so with the same LM head as `ar` (`tr.passes.argmax_only`): the
    comparison is of decoding loops, not of heads."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    with argmax_only(lm.model):
        return time_generate(lm, len(prompt_ids), lambda: lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config))


def time_generate(lm: LoadedModel, prompt_length: int, call: Callable[[], torch.Tensor]) -> Run:
    """One timed `model.generate` call (`call`): its new ids up to EOS and wall seconds; steps are not known."""
    with torch.inference_mode():
        begin = now(lm.device)
        out = call()
        seconds = now(lm.device) - begin
    return Run(cut_at_eos(out[0, prompt_length:].tolist(), lm.eos_ids), seconds)


def tree_figures(steps: list[Step]) -> TreeFigures:
    """A tr run's trees: mean draft nodes per decoding step, probe steps, and the cost curve the last step
    was sized by (one-token passes at each calibrated size; None without one)."""
    decoding, last = steps[1:], steps[-1].draft
    curve = last.curve if last else None
    return TreeFigures(
        draft_nodes=sum(s.drafted for s in decoding) / len(decoding) if decoding else None,
        probes=sum(s.draft.probe for s in decoding if s.draft),
        cost_curve=[curve.relative(n) for n in curve.sizes] if curve else None,
    )


def run_own(lm: LoadedModel, prompt_ids: list[int], method: Method, max_new_tokens: int, **options) -> Run:
    """One `decode_steps` run (ar or tr): output ids, wall seconds, and the records' own split."""
    begin = now(lm.device)
    steps = list(decode_steps(lm, prompt_ids, method, max_new_tokens, **options))
    seconds = now(lm.device) - begin
    stats = summarize(steps)
    return Run(
        output_ids=token_ids(steps),
        seconds=seconds,
        steps=stats.steps,
        # No decoding step (EOS or the limit at the prefill token) leaves MAT undefined, not 0.
        mat=stats.mat if stats.steps else None,
        forward_s=stats.forward_s,
        overhead_s=stats.overhead_s,
        trees=tree_figures(steps) if method is Method.TR else None,
    )


def tr_runner(lm: LoadedModel, method: BenchMethod, max_new_tokens: int, k: int, curve) -> Runner:
    """A runner that keeps one matrix and one learned cost curve for all prompts, with a drafter per prompt.
    A scratch run decodes on copies, so the matrix and the costs advance once per prompt, however many repeats."""
    matrix, costs = AdjacencyMatrix(lm.vocab_size, k), LearnedCost(curve) if curve else None

    def run(ids: list[int], scratch: bool) -> Run:
        return run_own(lm, ids, Method.TR, max_new_tokens, matrix=copy.deepcopy(matrix) if scratch else matrix,
                       tree=method.tree, start=method.start, costs=copy.deepcopy(costs) if scratch else costs)
    return run


def worker_runner(worker: StockWorker, max_new_tokens: int, eos_ids: list[int]) -> Runner:
    """A runner that asks a worker process for each generation."""
    def run(ids: list[int], scratch: bool) -> Run:
        output_ids, seconds = worker.generate(ids, max_new_tokens, eos_ids)
        return Run(cut_at_eos(output_ids, eos_ids), seconds)
    return run


def stock_runner(lm: LoadedModel, max_new_tokens: int, stack: ExitStack) -> Runner:
    """A runner that asks a `StockWorker` (closed with `stack`) for each generation."""
    if quantized.installed(lm.model):
        raise ValueError("stock loads transformers' own model, which has no int4 form: leave stock out with "
                         "--dtype int4 (hf runs the int4 model through transformers' generate)")
    dtype = next(name for name, value in DTYPES.items() if value == lm.dtype)
    return worker_runner(stack.enter_context(closing(StockWorker(lm.source, str(lm.device), dtype))),
                         max_new_tokens, lm.eos_ids)


def llama_runner(lm: LoadedModel, method: BenchMethod, max_new_tokens: int, stack: ExitStack) -> Runner:
    """A runner that asks a `LlamaWorker` (llama.cpp on the model's GGUF, closed with `stack`) for each generation,
    on the method's threads or torch's."""
    worker = stack.enter_context(closing(LlamaWorker(lm.name, method.threads or torch.get_num_threads())))
    print(f"tools.bench: {method.name} is {worker.info.label}", file=sys.stderr)
    return worker_runner(worker, max_new_tokens, lm.eos_ids)


def make_runners(lm: LoadedModel, methods: Sequence[BenchMethod], max_new_tokens: int, pld_tokens: int, k: int,
                 stack: ExitStack) -> dict[str, Runner]:
    """One runner per method, by name; what they hold open is closed with `stack`."""
    runners: dict[str, Runner] = {}
    # Calibrated once, and only when a tr variant runs: every variant reads the same device curve.
    curve = device_curve(lm) if any(m.kind in (Kind.TR, Kind.HF_TR) for m in methods) else None
    for method in methods:
        if method.kind is Kind.AR:
            runners[method.name] = lambda ids, scratch: run_own(lm, ids, Method.AR, max_new_tokens)
        elif method.kind is Kind.TR:
            runners[method.name] = tr_runner(lm, method, max_new_tokens, k, curve)
        elif method.kind is Kind.STOCK:
            runners[method.name] = stock_runner(lm, max_new_tokens, stack)
        elif method.kind is Kind.LLAMA:
            runners[method.name] = llama_runner(lm, method, max_new_tokens, stack)
        elif method.kind is Kind.HF_TR:
            runners[method.name] = custom_runner(lm, method.tree, method.start, k, curve,
                                                 generation_config(lm, max_new_tokens, None),
                                                 functools.partial(time_generate, lm))
        else:
            config = generation_config(lm, max_new_tokens, pld_tokens if method.kind is Kind.PLD else None)
            runners[method.name] = lambda ids, scratch, config=config: run_hf(lm, ids, config)
    return runners


def fastest(runs: Sequence[Run]) -> Run:
    """The fastest of repeated runs of one generation."""
    if any(run.output_ids != runs[0].output_ids for run in runs):
        raise ValueError("a repeated generation gave other tokens: decoding is not deterministic here")
    return min(runs, key=lambda run: run.seconds)


def prompt_row(question: Question, method: str, runs: Sequence[Run]) -> PromptRow:
    """The row of the fastest run, with every run's seconds beside it."""
    best = fastest(runs)
    tokens, trees = len(best.output_ids), best.trees
    return PromptRow(
        question_id=question.question_id, category=question.category, method=method, tokens=tokens,
        seconds=best.seconds, tokens_per_s=tokens / best.seconds if best.seconds > 0 else None,
        steps=best.steps, mat=best.mat, forward_s=best.forward_s, overhead_s=best.overhead_s,
        repeat_seconds=[run.seconds for run in runs],
        draft_nodes=trees.draft_nodes if trees else None, probes=trees.probes if trees else None,
        cost_curve=trees.cost_curve if trees else None, output_ids=best.output_ids,
    )


def compare_to_ar(rows: list[PromptRow]) -> list[PromptRow]:
    """Fill identical_to_ar / first_divergence against the `ar` output of the same question
    (left None where `ar` did not run)."""
    reference = {r.question_id: r.output_ids for r in rows if r.method == Kind.AR}
    for row in rows:
        if row.question_id in reference:
            index = first_divergence(reference[row.question_id], row.output_ids)
            row.identical_to_ar, row.first_divergence = index is None, index
    return rows


def encode_all(lm: LoadedModel, questions: Sequence[Question], max_new_tokens: int) -> list[list[int]]:
    """Every prompt encoded and checked first, so a too-long one fails before minutes of timing."""
    encoded = [lm.encode(q.prompt) for q in questions]
    for ids in encoded:
        check_prompt_tokens(len(ids))  # the limit the app applies to a visitor's prompt
        check_request(lm, ids, max_new_tokens)
    return encoded


def run_benchmark(
    lm: LoadedModel,
    questions: Sequence[Question],
    methods: Sequence[BenchMethod],
    max_new_tokens: int = 128,
    *,
    pld_tokens: int = 10,
    k: int = 8,
    warmup: int = 1,
    repeats: int = 1,
    progress: bool = True,
    time_limit: float | None = None,
) -> list[PromptRow]:
    """A row for every (question, method) pair, compared with `ar` where it ran. With `repeats` > 1 every
    generation is timed that many times, in rounds over all methods, and the fastest time is kept. With
    `time_limit`, no prompt but the first starts after that many seconds: the rows are of those timed."""
    check_numbers(max_new_tokens, k, pld_tokens, warmup, repeats, time_limit)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    encoded = encode_all(lm, questions, max_new_tokens)
    with ExitStack() as stack:
        runners = make_runners(lm, methods, max_new_tokens, pld_tokens, k, stack)
        rows = time_all(questions, encoded, runners, warmup, repeats, progress, deadline)
    return compare_to_ar(rows)


def time_all(questions: Sequence[Question], encoded: Sequence[list[int]], runners: dict[str, Runner], warmup: int,
             repeats: int, progress: bool, deadline: float | None = None) -> list[PromptRow]:
    """Every runner on every prompt, after `warmup` untimed runs each on the first; no prompt but the first
    starts after `deadline` (`time.monotonic`)."""
    for runner in runners.values():
        for _ in range(warmup):
            runner(encoded[0], False)
    rows = []
    with tqdm(total=len(questions) * len(runners) * repeats, desc="bench", unit="gen", disable=not progress) as bar:
        for done, (question, ids) in enumerate(zip(questions, encoded)):
            if done and deadline is not None and time.monotonic() > deadline:
                print(f"tools.bench: time limit reached: {done} of {len(questions)} prompts timed", file=sys.stderr)
                break
            runs: dict[str, list[Run]] = {name: [] for name in runners}
            for round_ in range(repeats):
                for name, runner in runners.items():
                    bar.set_postfix_str(f"{question.category} #{question.question_id} {name}")
                    # Only the last round advances the TR matrices: every round starts from the same state.
                    runs[name].append(runner(ids, round_ < repeats - 1))
                    bar.update()
            rows += [prompt_row(question, name, runs[name]) for name in runners]
    return rows

