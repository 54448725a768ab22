"""Text in, text out: the decoders behind one call, plus summary statistics from step records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .device.calibrate import calibrate
from .costs import CostCurve, LearnedCost
from .decoding import autoregressive, token_recycling
from .records import Stats, Step, summarize, token_ids
from .drafts import Drafter, DynamicDrafter, TemplateDrafter
from .matrix import AdjacencyMatrix
from .device.model import LoadedModel
from tools.priming import load_primed
from .sampling import GREEDY, Sampling
from .trees import DEFAULT_TEMPLATE, DraftTree, TreeError, load_template

METHODS = ("ar", "tr")
AUTO = "auto"  # dynamic best-first trees with a prompt-lookup branch, sized by the device's cost curve
AUTO_NO_LOOKUP = "auto-nolookup"  # the same without prompt lookup, to measure what lookup adds
DYNAMIC_TREES = (AUTO, AUTO_NO_LOOKUP)
FIXED_DYNAMIC = "dynamic-"  # dynamic-N: the same best-first tree with lookup, always N drafts (no calibration)
# hot: keep the matrix; cold: clear it first; seeded: keep it and seed it from the prompt; primed: keep it
# and fill its empty rows from the model's primed matrix (`tools.priming`), as a long-running server would have
START_MODES = ("hot", "cold", "seeded", "primed")
MAX_NEW_TOKENS = 4096


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


def fixed_dynamic_size(template: str) -> int:
    """N of a ``dynamic-N`` tree name; raises `TreeError` when N is not a whole number from 1 to 256."""
    size = template.removeprefix(FIXED_DYNAMIC)
    if not size.isdigit() or not 1 <= int(size) <= 256:
        raise TreeError(f"{template!r}: a fixed dynamic tree is dynamic-N with N from 1 to 256, e.g. dynamic-16")
    return int(size)


def check_tree(template: str | list, k: int) -> None:
    """Raise `TreeError` for a tree `make_drafter` would reject, without needing the model."""
    if isinstance(template, str) and template.startswith(FIXED_DYNAMIC):
        fixed_dynamic_size(template)
    elif template not in DYNAMIC_TREES:
        load_template(template, k)


def make_drafter(lm: LoadedModel, template: str | list, k: int, curve: CostCurve | LearnedCost | None = None
                 ) -> Drafter:
    """The drafter for `auto` / `auto-nolookup` / `dynamic-N` or a named, JSON-file or listed template.

    Sized dynamic trees need the device's cost curve: without `curve`, it is calibrated on first use
    (a few seconds) and cached on disk; a `LearnedCost` carries what earlier drafters learned from their
    steps. Other trees take it only to report their predicted cost.
    """
    if isinstance(template, str) and template.startswith(FIXED_DYNAMIC):
        return DynamicDrafter(None, max_nodes=fixed_dynamic_size(template))
    if template in DYNAMIC_TREES:
        curve = curve or calibrate(lm.model, lm.name)
        return DynamicDrafter(curve, lookup=template == AUTO)
    snapshot = curve.curve if isinstance(curve, LearnedCost) else curve
    return TemplateDrafter(DraftTree.from_paths(load_template(template, k)), snapshot)


def decode_steps(
    lm: LoadedModel,
    prompt_ids: list[int],
    method: str = "tr",
    max_new_tokens: int = 128,
    sampling: Sampling = GREEDY,
    matrix: AdjacencyMatrix | None = None,
    tree: DraftTree | Drafter | None = None,
    start: str = "hot",
) -> Iterator[Step]:
    """Step records of one method on one prompt; `matrix` persists across calls unless `start` is cold.
    `tree` is a template's `DraftTree` or a drafter (`make_drafter`); by default the paper's template."""
    check_request(lm, prompt_ids, max_new_tokens)
    if method == "ar":
        return autoregressive(lm.model, prompt_ids, max_new_tokens, sampling, lm.eos_ids)
    if method != "tr":
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if start not in START_MODES:
        raise ValueError(f"unknown start mode {start!r}: use one of {', '.join(START_MODES)}")
    matrix = matrix or AdjacencyMatrix(lm.vocab_size)
    if start == "primed":
        matrix.fill_from(load_primed(lm, matrix.k))
    tree = tree or DraftTree.from_paths(load_template(DEFAULT_TEMPLATE, matrix.k))
    if start == "cold":
        matrix.reset()
    return token_recycling(
        lm.model, prompt_ids, max_new_tokens, matrix, tree, sampling, lm.eos_ids, seed_from_prompt=start == "seeded"
    )


def generate(lm: LoadedModel, prompt: str, method: str = "tr", **options) -> Generation:
    """Decode a text prompt (chat template applied); options as for `decode_steps`."""
    steps = list(decode_steps(lm, lm.encode(prompt), method, **options))
    ids = token_ids(steps)
    return Generation(lm.decode(ids), ids, steps, summarize(steps))
