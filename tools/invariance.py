"""Is verification batch-invariant? A token's logits in a one-token pass against the same token inside a
pass of n tokens (a chain, or the all-rank-0 path of a tree among other nodes), bit for bit, and the
first operation on the path where they part.

Token Recycling is lossless by construction only where these agree: plain decoding computes each token
alone, verification computes it among the drafts of its tree.

    python -m tools.invariance                          # the bundled model, float32 and bfloat16
    python -m tools.invariance --dtypes bfloat16 --sizes 2 8 81 --contexts 0 250

Prints one JSON document: per dtype, cached context and pass, how many of the compared tokens have
identical logits, how many logits differ, and the first module whose output differs. `--contexts`: the
tokens cached before the passes (0: the prompt as it is; more: its tokens repeated to that length), so
that passes start inside, and cross, the chunks of `tr.device.invariant`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from tr.passes import forward, tree_mask
from tr.device import invariant
from tr.device.kernels import cpu_flags
from tr.device.model import BUNDLED, DTYPES, INT4, LoadedModel, load_model
from tr.kv_cache import PreallocatedCache
from tr.trees import DraftTree, ancestor_mask, best_first_template

PROMPT = "Explain in a few sentences how a bicycle's gears make climbing a hill easier."


class Recorder:
    """Every leaf module's input and output during a pass, in call order: `name <` for what went in,
    `name` for what came out. An input that differs while the module before agreed points at work done
    between modules (attention's softmax and weighted sum, residual adds)."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: dict[str, torch.Tensor] = {}
        self.hooks = [module.register_forward_hook(self._hook(name)) for name, module in model.named_modules()
                      if name and not list(module.children())]

    def _hook(self, name: str):
        def record(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            if args and isinstance(args[0], torch.Tensor):
                self.outputs[f"{name} <"] = args[0].detach().clone()
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output.detach().clone()
        return record

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def prefilled(lm: LoadedModel, prompt: list[int], room: int) -> PreallocatedCache:
    cache = PreallocatedCache(len(prompt) + room)
    forward(lm.model, cache, torch.tensor(prompt, device=lm.device), torch.arange(len(prompt), device=lm.device),
            last_only=True)
    return cache


def row(tensor: torch.Tensor, index: int) -> torch.Tensor:
    """Row `index` of a module's tensor over the pass's tokens: (1, n, ...) or (n, ...)."""
    return tensor[0, index] if tensor.dim() >= 2 and tensor.shape[0] == 1 else tensor[index]


@torch.inference_mode()
def one_token_passes(lm: LoadedModel, prompt: list[int], chain: list[int], masked: bool = False
                     ) -> list[dict[str, torch.Tensor]]:
    """Each chain token alone, behind the prompt and the chain tokens before it: every module's output.
    `masked`: with an explicit (all-visible) attention mask, as a tree pass has, instead of none, as
    plain decoding runs today."""
    cache, recorder, seen = prefilled(lm, prompt, len(chain)), Recorder(lm.model), []
    alone = torch.ones(1, 1, dtype=torch.bool)
    try:
        for offset, token in enumerate(chain):
            position = torch.tensor([len(prompt) + offset], device=lm.device)
            mask = tree_mask(alone, cache.length, lm.dtype, lm.device) if masked else None
            forward(lm.model, cache, torch.tensor([token], device=lm.device), position, mask)
            seen.append({name: row(out, 0) for name, out in recorder.outputs.items()})
    finally:
        recorder.close()
    return seen


@torch.inference_mode()
def tree_pass(lm: LoadedModel, prompt: list[int], tokens: list[int], parents: list[int], depths: list[int]
              ) -> dict[str, torch.Tensor]:
    """One pass over a draft tree (its root first) behind the prompt, as verification runs it."""
    cache, recorder = prefilled(lm, prompt, len(tokens)), Recorder(lm.model)
    try:
        mask = tree_mask(ancestor_mask(parents, max(depths)), cache.length, lm.dtype, lm.device)
        forward(lm.model, cache, torch.tensor(tokens, device=lm.device),
                torch.tensor(depths, device=lm.device) + cache.length, mask)
        return dict(recorder.outputs)
    finally:
        recorder.close()


def compare(alone: list[dict[str, torch.Tensor]], together: dict[str, torch.Tensor], nodes: Sequence[int]) -> dict:
    """Per compared token: identical logits or not; the first module (in call order) that differs."""
    identical, differing_logits, first = 0, 0, {}
    for offset, node in enumerate(nodes):
        logits_alone, logits_together = alone[offset]["lm_head"], row(together["lm_head"], node)
        same = torch.equal(logits_alone, logits_together)
        identical += same
        differing_logits += int((logits_alone != logits_together).sum())
        for name, output in alone[offset].items():
            if not torch.equal(output, row(together[name], node)):
                first[name] = first.get(name, 0) + 1
                break
    return {"tokens": len(nodes), "identical": identical, "differing_logits": differing_logits,
            "first_difference": first}


def context(lm: LoadedModel, tokens: int) -> list[int]:
    """The prompt's tokens, repeated or cut to `tokens` (0: as it is)."""
    prompt = lm.encode(PROMPT)
    return (prompt * (tokens // len(prompt) + 1))[:tokens] if tokens else prompt


def measure(lm: LoadedModel, sizes: Sequence[int], masked: bool = False, cached: int = 0) -> dict:
    prompt = context(lm, cached)
    generator = torch.Generator().manual_seed(0)
    results = {}
    for size in sizes:
        chain = torch.randint(lm.vocab_size, (size,), generator=generator).tolist()
        alone = one_token_passes(lm, prompt, chain, masked)
        # A chain: token i's parent is token i - 1; the first token is the pass's root.
        results[f"chain-{size}"] = compare(alone, tree_pass(lm, prompt, chain, [-1, *range(size - 1)],
                                                             list(range(size))), range(size))
        if size > 7:  # the chain as the all-rank-0 path of a best-first tree of `size` nodes, among others
            tree = DraftTree.from_paths(best_first_template("paper-80", 8)[: size - 1])
            path = [0] + [i for i, p in enumerate(tree.paths, start=1) if set(p) == {0}]
            tokens = torch.randint(lm.vocab_size, (tree.size,), generator=generator).tolist()
            for node, token in zip(path, chain):
                tokens[node] = token
            together = tree_pass(lm, prompt, tokens, tree.parents.tolist(), tree.depths.tolist())
            results[f"tree-{tree.size}"] = compare(alone[: len(path)], together, path)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.invariance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=BUNDLED)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=[*DTYPES, INT4])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 8, 16, 32, 81])
    parser.add_argument("--contexts", nargs="+", type=int, default=[0, 250],
                        help="tokens cached before each pass (0: the prompt as it is)")
    parser.add_argument("--masked-alone", action="store_true",
                        help="give one-token passes an explicit all-visible mask, as tree passes have")
    args = parser.parse_args(argv)
    if any(not 2 <= size <= 81 for size in args.sizes):
        parser.error("--sizes must be from 2 to 81")
    flags = cpu_flags()
    report = {"cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}), "masked_alone": args.masked_alone,
              "attention": {}, "results": {}}
    for dtype in args.dtypes:
        lm = load_model(args.model, args.device, dtype)
        report["device"] = str(lm.device)
        report["invariant_kernels"] = invariant.installed(lm.model)
        report["attention"][dtype] = lm.model.config._attn_implementation
        report["results"][dtype] = {f"context-{len(context(lm, tokens))}": measure(lm, args.sizes, args.masked_alone,
                                                                                    tokens)
                                    for tokens in args.contexts}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
