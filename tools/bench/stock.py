"""The `stock` baseline: transformers' greedy `model.generate` on the model exactly as transformers loads it,
in a process of its own, so that none of this project's kernel choices reach it (the invariant products
and attention and the screened head are installed on our model only, but switching cuDNN's attention off
on CUDA is process-wide).

The benchmark starts one worker per run (`StockWorker`, which runs `serve`) and sends it each prompt in turn,
between the other methods, so its figures are side by side with theirs; the worker times only its
`generate` call and idles between prompts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # where `tools` imports from


def serve(model: str, device: str, dtype: str, threads: int) -> None:
    """Answer generation requests on stdin with {"ids", "seconds"} lines on stdout until stdin closes."""
    from transformers import AutoModelForCausalLM

    from tr.device.model import pick_dtype, resolve

    torch.set_num_threads(threads)
    lm = AutoModelForCausalLM.from_pretrained(resolve(model), dtype=pick_dtype(dtype)).to(device).eval()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ids = torch.tensor([request["ids"]], device=device)
        with torch.inference_mode():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            begin = time.perf_counter()
            out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                              max_new_tokens=request["max_new_tokens"], eos_token_id=request["eos"],
                              pad_token_id=request["eos"][0])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - begin
        print(json.dumps({"ids": out[0, ids.shape[1]:].tolist(), "seconds": seconds}), flush=True)


class StockWorker:
    """The client side: one worker process, asked one generation at a time."""

    def __init__(self, model: str, device: str, dtype: str):
        call = f"serve({model!r}, {device!r}, {dtype!r}, {torch.get_num_threads()})"
        command = [sys.executable, "-c", f"from tools.bench.stock import serve; {call}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        if not self._read().get("ready"):
            raise OSError("the stock baseline's worker did not start")

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise OSError(f"the stock baseline's worker ended (exit status {self.process.wait()})")
        return json.loads(line)

    def generate(self, ids: Sequence[int], max_new_tokens: int, eos: Sequence[int]) -> tuple[list[int], float]:
        """The worker's greedy output ids and the seconds its `generate` call took."""
        request = {"ids": list(ids), "max_new_tokens": max_new_tokens, "eos": list(eos)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        return answer["ids"], answer["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()

