"""A primed matrix: the adjacency matrix a long-running server would have, built once and shipped.

Hot start means the matrix persists across requests, so a server that has answered many requests
drafts from rows the model wrote in earlier answers. A fresh process has none: on the bundled model
20-40% of decoding steps in essays, code and science answers draft nothing at all, because the last
token has never been through the model yet. Priming fills the matrix the way serving would: the model
answers a fixed set of generic instructions (`assets/priming_prompts.txt`, written for this project,
none taken from Spec-Bench), and every position of each prompt and answer writes its row and pair row
with the model's own top-k there. Nothing is trained; decoding stays exactly as lossless as ever,
since verification decides every emitted token.

    python -m tools.priming                     # the bundled model -> the cache folder's primed/
    python -m tools.priming --model ID --limit 64

The answers are generated in batches with `model.generate` (greedy). The `primed` start mode finds
the file by the model's tokenizer (`tr.device.primed`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tr.matrix import MAX_K, AdjacencyMatrix
from tr.device.model import BUNDLED, DTYPES, LoadedModel, ModelLoadError, load_model
from tr.device.primed import build_target, tokenizer_fingerprint

PROMPTS = Path(__file__).resolve().parents[1] / "assets" / "priming_prompts.txt"


def read_prompts(path: str | Path = PROMPTS, limit: int | None = None) -> list[str]:
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return prompts[:limit]


def answer(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int, batch: int) -> list[list[int]]:
    """The model's greedy answers to `prompts` (chat template applied), batch by batch, cut at EOS."""
    tokenizer, eos = lm.tokenizer, set(lm.eos_ids)
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    tokenizer.pad_token = pad or tokenizer.eos_token
    answers = []
    try:
        for i in range(0, len(prompts), batch):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=False) for p in prompts[i : i + batch]]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            with torch.inference_mode():
                out = lm.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
            for row in out[:, encoded["input_ids"].shape[1] :].tolist():
                answers.append(row[: next((j for j, t in enumerate(row) if t in eos), len(row))])
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    return answers


def prime(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 192, batch: int = 32,
          k: int = 8, progress: bool = True) -> AdjacencyMatrix:
    """A matrix whose rows the model wrote while reading each prompt followed by its own answer."""
    matrix = AdjacencyMatrix(lm.vocab_size, k)
    begin = time.perf_counter()
    answers = answer(lm, prompts, max_new_tokens, batch)
    if progress:
        print(f"answered {len(prompts)} prompts ({sum(map(len, answers))} tokens) in "
              f"{time.perf_counter() - begin:.0f} s", file=sys.stderr)
    with torch.inference_mode():
        for prompt, reply in zip(prompts, answers):
            ids = lm.encode(prompt) + reply
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0]
            matrix.write(ids, logits, [-1, *ids[:-1]])
    if progress:
        print(f"primed {matrix.rows_filled} rows and {len(matrix.pairs)} pair rows in "
              f"{time.perf_counter() - begin:.0f} s", file=sys.stderr)
    return matrix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.priming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=BUNDLED, help="bundled, a local folder or a hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--prompts", default=str(PROMPTS), help="instructions, one per line")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="answer length per prompt")
    parser.add_argument("--batch", type=int, default=32, help="prompts answered together")
    parser.add_argument("--k", type=int, default=8, help=f"candidates per row (1..{MAX_K})")
    parser.add_argument("--out", default=None, help="file to write (default: the cache folder, where the primed start also looks)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    numbers = {"--limit": 1 if args.limit is None else args.limit, "--max-new-tokens": args.max_new_tokens,
               "--batch": args.batch}
    bad = [f"{name} must be a positive integer" for name, value in numbers.items() if value < 1]
    if not 1 <= args.k <= MAX_K:
        bad.append(f"--k must be from 1 to {MAX_K}")
    try:
        prompts = read_prompts(args.prompts, args.limit)
    except OSError as error:
        bad.append(f"cannot read the prompts: {error}")
        prompts = []
    if not bad and not prompts:
        bad.append(f"{args.prompts} holds no prompts")
    if bad:
        print("error: " + "; ".join(bad), file=sys.stderr)
        return 2
    try:
        lm = load_model(args.model, args.device, args.dtype)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    matrix = prime(lm, prompts, args.max_new_tokens, args.batch, args.k)
    out = Path(args.out) if args.out else build_target(lm)
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix.save(out, {"model": lm.name, "tokenizer": tokenizer_fingerprint(lm.tokenizer), "prompts": str(len(prompts)), "max_new_tokens": str(args.max_new_tokens),
                      "command": "python -m tools.priming " + " ".join(argv if argv is not None else sys.argv[1:])})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
