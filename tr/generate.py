"""The library's front door: a loaded model and typed specs in, step records or text out.

It joins the method core (`tr.decoding`, `tr.drafts`) to what a machine and a model provide
(`tr.device`: the cost curve, the primed matrix).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .costs import CostCurve, LearnedCost
from .decoding import Picker, autoregressive, token_recycling
from .device.calibrate import device_curve
from .device.model import LoadedModel
from .device.fixed import FIXED_ROWS
from .device.primed import load_primed
from .device.resident import resident_autoregressive, resident_token_recycling
from .drafts import Drafter, DynamicDrafter, PromptLookupDrafter, TemplateDrafter
from .matrix import AdjacencyMatrix
from .records import Stats, Step, summarize, token_ids
from .sampling import GREEDY, Sampling
from .specs import CHOSEN_DEPTH, MAX_NEW_TOKENS, Method, Start, TreeKind, TreeSpec, chosen_tree, default_tree
from .trees import RANK_PRIOR, DraftTree, best_first_paths, expected_tokens


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    steps: list[Step] = field(repr=False)
    stats: Stats


def check_request(lm: LoadedModel, prompt_ids: list[int], max_new_tokens: int) -> None:
    """Reject requests the model cannot serve, with a message a user can act on."""
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    room = lm.max_length - max_new_tokens
    if len(prompt_ids) > room:
        raise ValueError(
            f"the prompt is too long: {len(prompt_ids)} tokens, but this model fits {lm.max_length} positions "
            f"and {max_new_tokens} are reserved for new tokens"
        )


@functools.lru_cache(maxsize=16)
def template_tree(paths: tuple[tuple[int, ...], ...]) -> DraftTree:
    """A template's buffers, built once per template."""
    return DraftTree.from_paths(list(paths))


def _snapshot(curve: CostCurve | LearnedCost | None) -> CostCurve | None:
    """The curve as it stands, for drafters that only report their predicted cost."""
    return curve.curve if isinstance(curve, LearnedCost) else curve


def make_drafter(lm: LoadedModel, tree: TreeSpec, curve: CostCurve | LearnedCost | None = None, *,
                 prompt_ids: Sequence[int]) -> Drafter:
    """A fresh drafter for one tree spec and one request (`prompt_ids`: the text prompt lookup copies from).

    Trees sized by cost need the device's cost curve: without `curve`, it is calibrated on first use
    (a few seconds) and cached on disk; a `LearnedCost` carries what earlier drafters learned from their
    steps. Other trees take it only to report their predicted cost.
    """
    if tree.kind is TreeKind.DYNAMIC:
        return DynamicDrafter(None, max_nodes=tree.nodes, prompt_ids=prompt_ids)
    if tree.kind is TreeKind.CHOSEN:
        return TemplateDrafter(template_tree(tree.paths), _snapshot(curve), size=tree.nodes + 1)
    if tree.sized_by_cost:
        curve = curve or device_curve(lm)
        return DynamicDrafter(curve, lookup=tree.kind is TreeKind.AUTO, prompt_ids=prompt_ids)
    return TemplateDrafter(template_tree(tree.paths), _snapshot(curve))


CHOSEN_SIZES = (4, 8, 16, 32, 48, 64, 80, FIXED_ROWS - 1)  # what `auto` weighs on a device, the root not counted


def device_tree(curve: CostCurve, k: int, fixed: bool) -> TreeSpec:
    """What trees sized by cost become where steps run on the device, which fills and chooses on the device
    but grows no tree best-first: each step the most probable nodes of a large template (`TreeKind.CHOSEN`),
    as many as give the most expected tokens (by the rank prior) per unit of the device's cost for their
    pass. With `fixed` shapes every pass has `FIXED_ROWS` rows, so every size costs the same: the largest."""
    def tokens_per_cost(nodes: int) -> float:
        expected = expected_tokens(best_first_paths(nodes, CHOSEN_DEPTH, RANK_PRIOR[:k]), RANK_PRIOR[:k])
        return expected / curve.relative(FIXED_ROWS if fixed else nodes + 1)

    return chosen_tree(max(CHOSEN_SIZES, key=tokens_per_cost), k)


def decode_steps(
    lm: LoadedModel,
    prompt_ids: list[int],
    method: Method = Method.TR,
    max_new_tokens: int = 128,
    sampling: Sampling = GREEDY,
    matrix: AdjacencyMatrix | None = None,
    tree: TreeSpec | None = None,
    start: Start = Start.HOT,
    costs: CostCurve | LearnedCost | None = None,
    picker: Picker | None = None,
) -> Iterator[Step]:
    """Step records of one method on one prompt; `matrix` persists across calls unless `start` is cold.
    `tree` is the draft tree (by default the paper's template); `costs` the device's cost curve for trees
    sized by cost (see `make_drafter`). Prompt lookup decoding (`Method.PLD`) keeps no matrix and no tree:
    it ignores `matrix`, `tree` and `start`, and takes `costs` only to report each draft's predicted cost.
    Where `lm.resident`, greedy plain decoding and greedy Token Recycling over a template of at most
    `FIXED_ROWS` nodes (not seeded) run each step wholly on the device (`tr.device.resident`): the same
    tokens and records. There trees sized by cost become the chosen trees of `device_tree`. A `picker`
    (Token Recycling and prompt lookup only) picks every token in place of `sampling` (`tr.decoding.Picker`)."""
    method, start = Method(method), Start(start)  # the enums, or their values
    check_request(lm, prompt_ids, max_new_tokens)
    if picker is not None and method is Method.AR:
        raise ValueError("a picker serves Token Recycling and prompt lookup; plain decoding takes a Sampling")
    if method is Method.AR and lm.resident and sampling.greedy:
        return resident_autoregressive(lm.model, prompt_ids, max_new_tokens, lm.eos_ids, fixed=lm.fixed)
    if method is Method.AR:
        return autoregressive(lm.model, prompt_ids, max_new_tokens, sampling, lm.eos_ids, lm.passes)
    if method is Method.PLD:
        drafter = PromptLookupDrafter(prompt_ids, curve=_snapshot(costs))
        return token_recycling(lm.model, prompt_ids, max_new_tokens, None, drafter, sampling, lm.eos_ids,
                               passes=lm.passes, picker=picker)
    matrix = matrix or AdjacencyMatrix(lm.vocab_size)
    tree = tree or default_tree(matrix.k)
    if tree.k > matrix.k:
        raise ValueError(f"the tree {tree.label!r} uses candidate ranks up to k={tree.k}, but the matrix keeps "
                         f"k={matrix.k} per row: parse the tree with k={matrix.k}")
    # The prefill of a seeded start writes rows on the host; a picker reads the text there.
    on_device = lm.resident and sampling.greedy and picker is None and start is not Start.SEEDED
    if on_device and tree.sized_by_cost:
        costs = costs or device_curve(lm)
        tree = device_tree(_snapshot(costs), matrix.k, lm.fixed)
    drafter = make_drafter(lm, tree, costs, prompt_ids=prompt_ids)
    if start is Start.PRIMED:
        matrix.fill_from(load_primed(lm, matrix.k))
    if start is Start.COLD:
        matrix.reset()
    if on_device and isinstance(drafter, TemplateDrafter) and drafter.max_size <= FIXED_ROWS:
        return resident_token_recycling(lm.model, prompt_ids, max_new_tokens, matrix, drafter, lm.eos_ids,
                                        fixed=lm.fixed)
    return token_recycling(lm.model, prompt_ids, max_new_tokens, matrix, drafter, sampling, lm.eos_ids,
                           seed_from_prompt=start is Start.SEEDED, passes=lm.passes, picker=picker)


def generate(lm: LoadedModel, prompt: str, method: Method = Method.TR, **options) -> Generation:
    """Decode a text prompt (chat template applied); options as for `decode_steps`."""
    steps = list(decode_steps(lm, lm.encode(prompt), method, **options))
    ids = token_ids(steps)
    return Generation(lm.decode(ids), ids, steps, summarize(steps))
