"""The `hf-tr` method: Token Recycling through transformers' own entry point, `model.generate(custom_generate=
tr.hf.TokenRecycling(...))`, on the same model as `hf` and `tr` and, like them, with the greedy LM head
(`tr.passes.argmax_only`, which a user's call does not set: the comparison is of decoding loops, not of
heads), so that the price of going through `generate` (its preparation, a float32 copy of each judged row,
the stopping criteria read per token) shows beside the library's own loop. ``hf-tr`` is Token Recycling's
defaults (auto tree, primed start); ``hf-tr:TREE:START`` takes a tree and a start as ``tr:TREE:START`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tr.specs import Start, TreeSpec, parse_start, parse_tree

if TYPE_CHECKING:  # the option parser imports this module before any model loads: no torch at import
    import torch
    from transformers import GenerationConfig

    from tr.costs import CostCurve
    from tr.device.model import LoadedModel

DEFAULT_TREE, DEFAULT_START = "auto", Start.PRIMED.value  # `tr.hf.TokenRecycling`'s defaults


def parse_custom(variant: str, k: int) -> tuple[TreeSpec, Start]:
    """The TREE and START of ``hf-tr:TREE:START`` (missing parts: the callable's defaults)."""
    tree, _, start = variant.partition(":")
    return parse_tree(tree or DEFAULT_TREE, k), parse_start(start or DEFAULT_START)


def custom_runner(lm: LoadedModel, tree: TreeSpec, start: Start, k: int, curve: CostCurve | None,
                  config: GenerationConfig, timed: Callable[[int, Callable[[], torch.Tensor]], object]):
    """A runner over one `TokenRecycling`, which keeps its matrix across prompts as `tr` runners do and sizes
    trees by the same calibrated `curve`; a scratch run goes through a fork of it, so repeats start from the
    same matrix. `timed(prompt_length, call)` times one `generate` call and returns the bench's `Run`."""
    import torch

    from tr.hf import TokenRecycling
    from tr.passes import argmax_only

    recycler = TokenRecycling(k, tree, start, tokenizer=lm.tokenizer, costs=curve)

    def run(ids: list[int], scratch: bool):
        decoder = recycler.fork() if scratch else recycler
        tensor = torch.tensor([ids], device=lm.device)
        with argmax_only(lm.model):  # the LM head `hf` and `tr` run greedy decoding with
            return timed(len(ids), lambda: lm.model.generate(
                input_ids=tensor, attention_mask=torch.ones_like(tensor), generation_config=config,
                custom_generate=decoder))
    return run
