"""A browser session's state, independent of any UI: its adjacency matrix (hot start across runs), its
latest `Run`, a bounded history and the JSON record of a run.

Runs are computed by `webapp.runner` (in this process, or in a ZeroGPU worker whose steps come back
as plain records); a `Run` only collects what arrives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from viz.lessons import Lesson
from tr.costs import CostCurve
from tr.device.model import LoadedModel
from tr.matrix import AdjacencyMatrix
from tr.records import Step, difference, speedup, summarize, token_ids

from .runner import CHUNK_S
from .settings import Settings
from .stepping import Stepper

PAPER = ("Luo et al., Turning Trash into Treasure: Accelerating Inference of Large Language Models with "
         "Token Recycling, ACL 2025, arXiv 2408.08696")
NAMES = {"ar": "Autoregressive (plain decoding)", "tr": "Token Recycling", "pld": "Prompt lookup decoding"}
HISTORY_LIMIT = 20
# What the app keeps per visitor, bounded: Gradio keeps at most STATE_SESSIONS sessions (the oldest go
# first), each with one matrix whose pair rows stop at SESSION_PAIRS (`python -m tools.load sessions`
# measures the worst case; README.md states it).
STATE_SESSIONS = 32
SESSION_PAIRS = 1 << 15  # above the shipped primed matrix's 22,929 pair rows, so a primed start keeps them all


@dataclass
class Run:
    """One race: the settings and every step record of both sides, in the order they were computed."""

    number: int
    settings: Settings
    curve: CostCurve | None = None  # the device's verification cost as the run began (steps carry their own)
    steps: dict[str, list[Step]] = field(default_factory=dict)  # per lane ("ar", "tr", "pld"), baseline first
    wall_s: float = 0.0  # wall time of the race, rendering included (both sides, one after the other; not pauses)
    budget_s: float = CHUNK_S  # compute per chunk of steps the runner is asked for (0: one step per chunk)
    note: str = ""  # what the visitor should know about how it began
    finished: bool = False
    stopped: bool = False

    def __post_init__(self) -> None:
        self.steps = {lane.value: [] for lane in self.settings.lanes}

    def add(self, steps: list[tuple[str, Step]]) -> None:
        for name, step in steps:
            self.steps[name].append(step)

    def speedup(self) -> float | None:
        return speedup(self.steps["ar"], self.steps["tr"])

    def difference(self) -> int | None:
        """The first token where any drafting lane differs from plain decoding (None: all identical)."""
        found = [difference(self.steps["ar"], steps, self.finished)
                 for lane, steps in self.steps.items() if lane != "ar"]
        return min((d for d in found if d is not None), default=None)

    def tree_note(self) -> str:
        """The tree sizes of the run, in a few words for the status line (the "why this size" tab says
        what they were expected to bring)."""
        sizes = [s.drafted for s in self.steps["tr"][1:]]
        if not sizes:
            return ""
        label = self.settings.tree.label
        return (f"{label} trees of {sizes[0]} drafts" if min(sizes) == max(sizes)
                else f"{label} trees of {min(sizes)}–{max(sizes)} drafts")

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
            "model": lm.display_name,
            "device": str(lm.device),
            "run": self.number,
            "finished": self.finished,
            "settings": self.settings.record(),
            "outputs": outputs,
            "identical": diff is None,
            "first_difference": diff,
            "speedup": self.speedup(),
            "speedups": {lane: speedup(self.steps["ar"], steps) for lane, steps in self.steps.items() if lane != "ar"},
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
    download_path: str | None = None  # the latest run's record (`webapp.downloads`)
    replay_path: str | None = None  # the latest replay page made (`Handlers.replay`)
    stepper: Stepper | None = None  # the latest run, while it is paused in step mode
    lesson: Lesson | None = None  # the lesson picked, run by Run or Next step (`webapp.lessons`)
    lesson_runs: list[Run] = field(default_factory=list)  # the lesson's runs finished so far

    def matrix_for(self, vocab_size: int, k: int) -> tuple[AdjacencyMatrix, bool]:
        """The session's matrix for this k, and whether an older one (with another k) was replaced."""
        if self.matrix is not None and self.matrix.k == k:
            return self.matrix, False
        replaced = self.matrix is not None
        self.matrix = AdjacencyMatrix(vocab_size, k, max_pairs=SESSION_PAIRS)
        return self.matrix, replaced

    def begin(self, settings: Settings, curve: CostCurve | None) -> Run:
        """A new run, the session's latest from this moment (so Stop reaches it at once)."""
        self.runs += 1
        self.run = Run(self.runs, settings, curve)
        return self.run

    def remember(self, run: Run) -> None:
        """Add a finished (or stopped) run to the history."""
        tr_steps, ratio = run.steps["tr"], run.speedup()
        self.history.append({
            "run": run.number, "prompt": run.settings.prompt, "template": run.settings.tree.label,
            "k": run.settings.k, "start": run.settings.start.value, "tokens": len(token_ids(tr_steps)),
            "mat": summarize(tr_steps).mat if tr_steps else 0.0,
            "speedup": f"{ratio:.2f}×" if ratio else "–",
            "identical": ("yes" if run.difference() is None else "no") + (" so far (stopped)" if run.stopped else ""),
        })
        del self.history[:-HISTORY_LIMIT]
