"""Load and soak the app as strangers would: it starts `app.py` (the bundled model) on a free port and
drives it through `gradio_client`, reading the server's memory from /proc.

    python -m tools.load visitors --count 40     # concurrent visitors: served, told the queue is full, errors
    python -m tools.load soak --runs 100         # one visitor, a hot matrix: time and memory, and a verdict
    python -m tools.load sessions --k 32         # what one session's matrix can cost, at its bounds
    python -m tools.load longest                 # the longest prompt accepted: time to read it, memory

Each prints one JSON document (the figures README.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(prompt="Explain in two sentences why the sky is blue.", max_new_tokens=32, template="auto",
           custom_json="", k=8, decoding="greedy", temperature=0.7, top_p=0.9, seed=0, start="primed",
           prompt_lookup=False, lookup="the")
# A soak passes when the last tenth of its races is at most this much slower than the first tenth (the
# 2-core host's own noise is about 5% between tenths).
SLOWDOWN = 1.1


def reset_peak(pid: int) -> None:
    """Start the process's peak resident memory afresh (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[key].split()[0]) / 1024 for name, key in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


class App:
    """`python app.py` in a subprocess on a free port, until the with-block ends."""

    def __enter__(self) -> App:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"tools-load-{self.port}.log", "w+")
        self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port)], cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "Serving on" not in Path(self.log.name).read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the app did not start:\n{Path(self.log.name).read_text()}")
            time.sleep(0.5)
        time.sleep(3)  # the server binds just after printing its address
        self.url = f"http://127.0.0.1:{self.port}/"
        return self

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, analytics_enabled=False)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def visit(app: App, index: int) -> str:
    """One visitor's race: 'served', 'queue full' or the error."""
    try:
        message = app.client().predict(**(RUN | {"prompt": f"{RUN['prompt']} ({index})"}), api_name="/run")[0]
    except Exception as err:  # gradio_client raises what the server answered
        return "queue full" if "queue is full" in str(err).lower() else f"error: {err}"
    return "served" if message.startswith("Done") else f"error: {message}"


def visitors(count: int) -> dict:
    with App() as app:
        app.client().predict(**RUN, api_name="/run")  # warm: the calibration and first allocations
        before = memory_mb(app.process.pid)
        reset_peak(app.process.pid)
        begin = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda i: visit(app, i), range(count)))
        after = memory_mb(app.process.pid)
    tally = {kind: outcomes.count(kind) for kind in sorted(set(outcomes))}
    return {"visitors": count, "outcomes": tally, "seconds": round(time.perf_counter() - begin, 1),
            "memory_before": before, "memory_after": after}


def soak(runs: int) -> dict:
    """One visitor's races in a row on a hot matrix: time and resident memory every tenth of the runs,
    and a verdict. The session's matrix may grow up to its bounds (`session_matrix_bytes`); any growth
    of memory beyond that, counted from the first tenth on, or a slowdown, fails."""
    with App() as app:
        client, seconds, memory = app.client(), [], []
        for index in range(runs):
            begin = time.perf_counter()
            message = client.predict(**RUN, api_name="/run")[0]
            if not message.startswith("Done"):
                raise SystemExit(f"run {index}: {message}")
            seconds.append(time.perf_counter() - begin)
            memory.append(memory_mb(app.process.pid)["rss_mb"])
    tenth = max(runs // 10, 1)
    pair_rows, matrix_bytes = session_matrix_bytes(RUN["k"])
    return {"runs": runs, "first_tenth_s": round(mean(seconds[:tenth]), 2),
            "last_tenth_s": round(mean(seconds[-tenth:]), 2), "rss_mb_after_first": round(memory[0]),
            "rss_mb_after_tenth": round(memory[tenth - 1]), "rss_mb_last": round(memory[-1]),
            "rss_mb_max": round(max(memory)),
            "every_tenth": [{"runs": end, "mean_s": round(mean(seconds[end - tenth:end]), 2),
                             "rss_mb": round(memory[end - 1])} for end in range(tenth, runs + 1, tenth)],
            "matrix_bound_mb": round(matrix_bytes / 1e6, 1), "matrix_bound_pair_rows": pair_rows,
            "verdict": soak_verdict(seconds, memory, tenth, matrix_bytes / 1e6)}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def soak_verdict(seconds: list[float], memory: list[float], tenth: int, bound_mb: float) -> str:
    """One line: whether memory grew past the session matrix's bound after the first tenth of the runs
    (by then the process has made its first allocations), and whether races slowed down."""
    growth, ratio = max(memory[tenth - 1:]) - memory[tenth - 1], mean(seconds[-tenth:]) / mean(seconds[:tenth])
    memory_ok, time_ok = growth <= bound_mb, ratio <= SLOWDOWN
    return (f"{'pass' if memory_ok and time_ok else 'FAIL'}: resident memory grew {growth:.0f} MB after the "
            f"first tenth ({'within' if memory_ok else 'beyond'} the session matrix's bound of {bound_mb:.0f} MB); "
            f"the last tenth's races took {ratio:.2f}x the first tenth's ({'no slowdown' if time_ok else 'slower'})")


def longest_prompt() -> str:
    """A prompt of as many tokens as the app accepts (chat template included)."""
    from transformers import AutoTokenizer

    from tr.device.model import BUNDLED, resolve
    from tr.specs import MAX_PROMPT_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(resolve(BUNDLED))

    def tokens(text: str) -> int:  # as the app counts them: in the chat template
        chat = [{"role": "user", "content": text}]
        return len(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])

    ids = tokenizer(" ".join((ROOT / "README.md").read_text().split() * 4))["input_ids"][:MAX_PROMPT_TOKENS]
    while tokens(text := tokenizer.decode(ids)) > MAX_PROMPT_TOKENS:
        ids = ids[:-4]
    return text


def longest() -> dict:
    """Read the longest accepted prompt (both decoders, the seeded start: the most work a prompt can
    cause), then the same with a Stop sent at once: how long the model is held, and memory."""
    prompt = longest_prompt()
    with App() as app:
        client = app.client()
        client.predict(**RUN, api_name="/run")  # warm
        before = memory_mb(app.process.pid)
        reset_peak(app.process.pid)
        begin = time.perf_counter()
        message = client.predict(**(RUN | dict(prompt=prompt, max_new_tokens=1, start="seeded")), api_name="/run")[0]
        read_s = time.perf_counter() - begin
        peak = memory_mb(app.process.pid)
        job = client.submit(**(RUN | dict(prompt=prompt, max_new_tokens=1024, start="seeded")), api_name="/run")
        while not job.outputs():
            time.sleep(0.01)
        begin = time.perf_counter()
        client.predict("the", api_name="/stop")
        client.predict(**(RUN | dict(max_new_tokens=1)), api_name="/run")  # runs once the model is free
        freed_s = time.perf_counter() - begin
        time.sleep(2)
        after = memory_mb(app.process.pid)
    return {"message": message[:60], "read_s": round(read_s, 2), "stop_to_next_run_s": round(freed_s, 2),
            "memory_before": before, "memory_after_read": peak, "memory_after": after}


def session_matrix_bytes(k: int) -> tuple[int, int]:
    """One session's matrix with every row and the most pair rows written: its pair rows, and its bytes
    (the tensors, and the Python objects of the pair rows as tracemalloc counts them)."""
    import torch

    from tr.matrix import AdjacencyMatrix
    from webapp.session import SESSION_PAIRS

    vocab = 49152
    tracemalloc.start()
    matrix = AdjacencyMatrix(vocab, k, max_pairs=SESSION_PAIRS)
    logits = torch.randn(64, vocab)
    for start in range(0, SESSION_PAIRS, 64):  # exactly the bound: one more write would trim a quarter
        tokens = [(start + i) % vocab for i in range(64)]
        matrix.write(tokens, logits, [(start // vocab + i) % vocab for i in range(64)])
    python_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return len(matrix.pairs), python_bytes + matrix.nbytes


def sessions(k: int) -> dict:
    """The bytes of one session's matrix at its bounds, and of every session the app keeps."""
    from webapp.session import STATE_SESSIONS

    pair_rows, total = session_matrix_bytes(k)
    return {"k": k, "pair_rows": pair_rows, "session_mb": round(total / 1e6, 1),
            "sessions_kept": STATE_SESSIONS, "all_sessions_gb": round(total * STATE_SESSIONS / 1e9, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.load", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("visitors").add_argument("--count", type=int, default=40)
    commands.add_parser("soak").add_argument("--runs", type=int, default=100)
    commands.add_parser("sessions").add_argument("--k", type=int, default=32)
    commands.add_parser("longest")
    args = parser.parse_args(argv)
    if args.command == "visitors":
        result = visitors(args.count)
    elif args.command == "soak":
        result = soak(args.runs)
    elif args.command == "longest":
        result = longest()
    else:
        result = sessions(args.k)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
