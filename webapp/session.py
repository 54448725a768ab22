"""A race session, independent of any UI: validated settings, the runs of plain decoding against Token
Recycling on one model, their history and their JSON record.

The app keeps one `Session` per browser session: its adjacency matrix (hot start across runs), its
latest `Run` and a bounded history. Every value a user or an API client sends goes through
`parse_settings`, whose messages say what is wrong and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tr.costs import CostCurve, LearnedCost
from tr.device.model import LoadedModel
from tr.generate import DYNAMIC_TREES, START_MODES, decode_steps, make_drafter
from tr.matrix import MAX_K, AdjacencyMatrix
from tr.race import race
from tr.records import Step, difference, speedup, summarize, token_ids
from tr.sampling import Sampling
from tr.trees import BUILTIN_TEMPLATES, TreeError, load_template

PAPER = ("Luo et al., Turning Trash into Treasure: Accelerating Inference of Large Language Models with "
         "Token Recycling, ACL 2025, arXiv 2408.08696")
NAMES = {"ar": "Autoregressive (plain decoding)", "tr": "Token Recycling"}
CUSTOM = "custom JSON"
TEMPLATES = (*DYNAMIC_TREES, *BUILTIN_TEMPLATES, CUSTOM)  # the first, auto, is the default
CUSTOM_EXAMPLE = "[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]"
DECODING = ("greedy", "sampling")
MAX_NEW_TOKENS = 1024
MAX_PROMPT_CHARS = 8000
MAX_TREE_NODES = 256  # a custom tree larger than this would make one step take seconds on a CPU
MAX_TREE_JSON_CHARS = 20_000
HISTORY_LIMIT = 20
EXAMPLES_FILE = Path(__file__).resolve().parents[1] / "assets" / "prompts.jsonl"


@dataclass
class Settings:
    """One validated request, as the user set it."""

    prompt: str
    max_new_tokens: int
    template: str
    custom_json: str
    k: int
    decoding: str
    temperature: float
    top_p: float
    seed: int
    start: str

    def sampling(self) -> Sampling:
        if self.decoding == "greedy":
            return Sampling()
        return Sampling(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def tree_paths(self) -> list[tuple[int, ...]]:
        """The template's paths; raises TreeError with a readable reason."""
        if self.template != CUSTOM:
            return load_template(self.template, self.k)
        text = self.custom_json.strip()
        if not text:
            raise TreeError(f"the custom tree is empty: give a JSON list of paths, e.g. {CUSTOM_EXAMPLE}")
        if len(text) > MAX_TREE_JSON_CHARS:
            raise TreeError(f"the custom tree JSON is too long ({len(text):,} characters, at most "
                            f"{MAX_TREE_JSON_CHARS:,})")
        # Parse here rather than handing the text to load_template, which would read a file by that name.
        try:
            paths = json.loads(text)
        except json.JSONDecodeError as err:
            raise TreeError(f"the custom tree is not valid JSON: {err}") from None
        if not isinstance(paths, list):
            raise TreeError(f"the custom tree must be a JSON list of paths, e.g. {CUSTOM_EXAMPLE}")
        paths = load_template(paths, self.k)
        if len(paths) > MAX_TREE_NODES:
            raise TreeError(f"the custom tree has {len(paths)} nodes; at most {MAX_TREE_NODES} are allowed here")
        return paths


@dataclass
class Run:
    """One race: the settings and every step record of both sides, in the order they were computed."""

    number: int
    settings: Settings
    curve: CostCurve | None = None  # the device's verification cost as the run began (steps carry their own)
    steps: dict[str, list[Step]] = field(default_factory=lambda: {"ar": [], "tr": []})
    wall_s: float = 0.0  # wall time of the whole race, rendering included (both sides, one after the other)
    finished: bool = False
    stopped: bool = False

    def speedup(self) -> float | None:
        return speedup(self.steps["ar"], self.steps["tr"])

    def difference(self) -> int | None:
        return difference(self.steps["ar"], self.steps["tr"], self.finished)

    def advance(self, events: Iterator[tuple[str, Step]], budget_s: float) -> bool:
        """Take race steps for up to `budget_s` of wall time; True once both sides have finished or the
        run was stopped (checked every step: a UI's cancel may only take effect at its next update)."""
        deadline = time.perf_counter() + budget_s
        for name, step in events:
            self.steps[name].append(step)
            if self.stopped:
                return True
            if time.perf_counter() >= deadline:
                return False
        return True

    def tree_note(self) -> str:
        """What the auto trees were like over the run, and why: one sentence for a message line."""
        steps = self.steps["tr"][1:]
        if self.settings.template not in DYNAMIC_TREES or not steps:
            return ""
        sizes = [len(s.tree_tokens) - 1 for s in steps]
        expected = sum(s.expected_tokens for s in steps) / len(steps)
        cost = sum(s.predicted_cost for s in steps) / len(steps)
        return (f" (auto tree: {sum(sizes) / len(sizes):.1f} draft nodes on average, from {min(sizes)} to "
                f"{max(sizes)}; expected {expected:.2f} tokens per pass for {cost:.2f}× the cost of a one-token "
                f"pass on this device, got {summarize(self.steps['tr']).mat:.2f})")

    def record(self, lm: LoadedModel) -> dict[str, Any]:
        """Everything about the run, for a JSON download: settings, both outputs, every step record."""
        outputs = {}
        for name, steps in self.steps.items():
            ids = token_ids(steps)
            stats = summarize(steps) if steps else None
            outputs[name] = {
                "method": NAMES[name],
                "text": lm.decode(ids),
                "token_ids": ids,
                "stats": dict(asdict(stats), seconds=stats.seconds, tokens_per_s=stats.tokens_per_s) if stats else None,
            }
        diff = self.difference()
        return {
            "paper": PAPER,
            "model": lm.name,
            "device": str(lm.device),
            "run": self.number,
            "finished": self.finished,
            "settings": asdict(self.settings),
            "outputs": outputs,
            "identical": diff is None,
            "first_difference": diff,
            "speedup": self.speedup(),
            "wall_s": self.wall_s,
            "steps": {name: [asdict(s) for s in steps] for name, steps in self.steps.items()},
        }


@dataclass
class Session:
    """What one browser session owns: its matrix (created lazily with its k), its runs, its download file."""

    matrix: AdjacencyMatrix | None = None
    run: Run | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0
    download_path: str | None = None

    def matrix_for(self, lm: LoadedModel, k: int) -> tuple[AdjacencyMatrix, bool]:
        """The session's matrix for this k, and whether an older one (with another k) was replaced."""
        if self.matrix is not None and self.matrix.k == k:
            return self.matrix, False
        replaced = self.matrix is not None
        self.matrix = AdjacencyMatrix(lm.vocab_size, k)
        return self.matrix, replaced

    def start(self, lm: LoadedModel, settings: Settings, costs: LearnedCost | None
              ) -> tuple[Run, Iterator[tuple[str, Step]], str]:
        """Check what only the model and tr can check, then set up both decoders as a race; raises
        ValueError. Returns the run, its events and a note for the user ("" or why the matrix is new).
        `costs` is the device's cost curve, corrected by every earlier run's steps and by this one's."""
        sampling = settings.sampling()
        prompt_ids = lm.encode(settings.prompt)
        matrix, replaced = self.matrix_for(lm, settings.k)
        dynamic = settings.template in DYNAMIC_TREES
        drafter = make_drafter(lm, settings.template if dynamic else settings.tree_paths(), settings.k, costs)
        runners = {
            "ar": decode_steps(lm, prompt_ids, "ar", settings.max_new_tokens, sampling),
            "tr": decode_steps(lm, prompt_ids, "tr", settings.max_new_tokens, sampling, matrix, drafter,
                               settings.start),
        }
        self.runs += 1
        self.run = Run(self.runs, settings, costs.curve if costs else None)
        note = f" (k changed: this run started a fresh matrix with k={settings.k})" if replaced else ""
        return self.run, race(runners), note

    def remember(self, run: Run) -> None:
        """Add a finished (or stopped) run to the history."""
        tr_steps, ratio = run.steps["tr"], run.speedup()
        self.history.append({
            "run": run.number, "prompt": run.settings.prompt, "template": run.settings.template, "k": run.settings.k,
            "start": run.settings.start, "tokens": len(token_ids(tr_steps)),
            "mat": summarize(tr_steps).mat if tr_steps else 0.0,
            "speedup": f"{ratio:.2f}×" if ratio else "–",
            "identical": ("yes" if run.difference() is None else "no") + (" so far (stopped)" if run.stopped else ""),
        })
        del self.history[:-HISTORY_LIMIT]

    def write_download(self, lm: LoadedModel, run: Run) -> str:
        """Write the run's JSON to this session's own file (overwritten each run, so files do not pile up)."""
        if self.download_path is None:
            handle, self.download_path = tempfile.mkstemp(prefix="token-recycling-run-", suffix=".json")
            os.close(handle)
        Path(self.download_path).write_text(json.dumps(run.record(lm)))
        return self.download_path

    def forget(self) -> None:
        """Remove the download file (the session is being dropped)."""
        if self.download_path:
            Path(self.download_path).unlink(missing_ok=True)


def _whole(name: str, value: Any, low: int, high: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if low_open else low <= value) or not value <= high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def parse_settings(prompt: Any, max_new_tokens: Any, template: Any, custom_json: Any, k: Any, decoding: Any,
                   temperature: Any, top_p: Any, seed: Any, start: Any) -> Settings:
    """Check every widget value (the API can send anything) and say exactly what is wrong."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: type some text or pick one of the examples.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is too long: {len(prompt):,} characters, at most {MAX_PROMPT_CHARS:,}.")
    if template not in TEMPLATES:
        raise ValueError(f"Unknown tree template {template!r}: choose one of {', '.join(TEMPLATES)}.")
    if decoding not in DECODING:
        raise ValueError(f"Decoding must be one of {', '.join(DECODING)}, got {decoding!r}.")
    if start not in START_MODES:
        raise ValueError(f"Start mode must be one of {', '.join(START_MODES)}, got {start!r}.")
    sampled = decoding == "sampling"
    return Settings(
        prompt=prompt,
        max_new_tokens=_whole("Max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
        template=template,
        custom_json=custom_json if isinstance(custom_json, str) else "",
        k=_whole("k", k, 1, MAX_K),
        decoding=decoding,
        # Sampling parameters only matter (and are only checked) when sampling.
        temperature=_number("Temperature", temperature, 0.0, 2.0, low_open=True) if sampled else 0.0,
        top_p=_number("Top-p", top_p, 0.0, 1.0, low_open=True) if sampled else 1.0,
        seed=_whole("Seed", seed, 0, 2**31 - 1) if sampled else 0,
        start=start,
    )


def load_examples(path: Path = EXAMPLES_FILE) -> tuple[list[list[str]], list[str]]:
    """Example prompts and their labels ("code: Write a Python…") from the project's Spec-Bench-style file."""
    prompts, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            text = item["turns"][0]
            prompts.append([text])
            labels.append(f"{item['label']}: {text[:32]}…" if len(text) > 32 else f"{item['label']}: {text}")
    return prompts, labels
