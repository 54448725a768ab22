"""The race as an MCP tool: `token_recycling_race`, served by Gradio's MCP server at /gradio_api/mcp/.

The tool is a `gr.api` endpoint in the Run button's queue group (one race on the model at a time, across
browser sessions and MCP calls) and takes the Run button's path, `Handlers.run`: the same checks, the
same limits, the same one-line messages.

Callers are strangers to each other. Each call races in a session of its own, which ends with the call
(no run, history or download outlives it); all that calls share is one matrix, bounded like a visitor's,
so Token Recycling stays hot from call to call. A matrix only proposes drafts, and verification decides
every token, so it never brings one caller's text into another's result.

Gradio's MCP server makes a tool of every public endpoint, and calls any of them by name, listed or not.
The page's own endpoints (run, stop, replay, lookup…) act on a browser session's state: they stay in the
API for Gradio's client libraries, each client a session of its own, and `webapp.edge.OneTool` takes them
out of the MCP server as it is built, before it serves, so MCP reaches the race tool alone.
"""

# No `from __future__ import annotations`: gradio reads the tool's return type from the signature as is.
import json
import warnings
from collections.abc import Callable
from typing import Any

import gradio as gr

from tr.device.primed import find_primed
from tr.matrix import MAX_K, AdjacencyMatrix
from tr.records import speedup, summarize, token_ids
from tr.sampling import MIN_TEMPERATURE
from tr.specs import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, Start

from .handlers import Handlers
from .session import Run, Session
from .settings import DECODING, TEMPLATES, TOP_TEMPERATURE

TOOL_NAME = "token_recycling_race"
LANES = {"ar": "plain_decoding", "tr": "token_recycling", "pld": "prompt_lookup_decoding"}  # names in the result

DOC = f"""Race plain decoding against Token Recycling on the app's language model, on the same prompt.

Token Recycling (Luo et al., ACL 2025) is lossless speculative decoding: it drafts a tree of likely next
tokens from an adjacency matrix of the model's own recent top-k predictions and verifies the whole tree in
one forward pass, so it needs fewer passes for exactly the same output. Every decoder continues the prompt
(in the model's chat template, as plain text: control tokens typed in it are not obeyed). Races run one
at a time on the model; the matrix stays hot across calls, and nothing else of a call outlives it.
A bad value is answered with one line that names the field and what is allowed.
The result is JSON: identical (whether the outputs match), first_difference (the index of the first token
where they differ, or null), speedup (plain decoding's compute time over Token Recycling's), mat (tokens
per Token Recycling forward pass), then token_recycling, plain_decoding and, with prompt_lookup,
prompt_lookup_decoding (each: text, tokens, steps, which are forward passes after the prefill, mat,
seconds and, but for plain decoding, speedup), and message (how the run went).

Args:
    prompt: the user message to continue (at most {MAX_PROMPT_TOKENS:,} tokens).
    max_new_tokens: tokens each decoder may write, a whole number from 1 to {MAX_NEW_TOKENS}.
    template: the draft tree, one of {", ".join(TEMPLATES)} (auto sizes each tree by the device's cost).
    custom_json: only with the template "{TEMPLATES[-1]}": a JSON list of rank paths such as [[0], [0, 0], [1]].
    k: candidates per matrix row, a whole number from 1 to {MAX_K}.
    decoding: {" or ".join(DECODING)}; greedy ignores temperature, top_p and seed.
    temperature: the sampling temperature, a number in [{MIN_TEMPERATURE}, {TOP_TEMPERATURE}].
    top_p: the nucleus sampling threshold, a number in (0, 1].
    seed: the sampling seed, a whole number from 0 to {2**31 - 1}.
    start: what the matrix holds as the race begins, one of {", ".join(s.value for s in Start)}.
    prompt_lookup: true to race prompt lookup decoding (n-gram copies from the prompt) as a third lane.
"""


def lane(handlers: Handlers, run: Run, name: str) -> dict[str, Any]:
    """One decoder's output and numbers; a drafting lane's speed-up over plain decoding too."""
    steps = run.steps[name]
    ids, stats = token_ids(steps), summarize(steps)
    numbers = {"text": handlers.lm.decode(ids), "tokens": len(ids), "steps": stats.steps, "mat": round(stats.mat, 3),
               "seconds": round(stats.seconds, 4)}
    if name != "ar":
        ratio = speedup(run.steps["ar"], steps)
        numbers["speedup"] = round(ratio, 3) if ratio else None
    return numbers


def result(handlers: Handlers, run: Run, message: str) -> dict[str, Any]:
    """What a finished race tells an MCP client: the verdict and Token Recycling's numbers first."""
    lanes = {LANES[name]: lane(handlers, run, name) for name in run.steps}
    first_difference, tr = run.difference(), lanes["token_recycling"]
    return {"identical": first_difference is None, "first_difference": first_difference,
            "speedup": tr["speedup"], "mat": tr["mat"], **lanes, "message": message}


def race(handlers: Handlers, session: Session, values: dict[str, Any]) -> str:
    """Run the race through the Run button's handler; its JSON result, or gr.Error with its one line."""
    error = message = ""
    for views_by_name in handlers.run(session, values, ""):
        message = views_by_name.get("message", message)
        error = views_by_name.get("error", error)
    handlers.forget(session)  # no download for an MCP call: remove the record Handlers.run wrote
    run = session.run
    if error or run is None or not run.finished:
        # Already logged in one line (rejected) or with its traceback and id (unexpected).
        raise gr.Error(error or "the race did not finish", print_exception=False)
    return json.dumps(result(handlers, run, message), ensure_ascii=False)


class SharedMatrix:
    """The one matrix every call races with (a new one when a call asks for another k)."""

    def __init__(self) -> None:
        self.matrix: AdjacencyMatrix | None = None

    def session(self) -> Session:
        """A new session for one call, holding the shared matrix."""
        return Session(matrix=self.matrix)

    def keep(self, session: Session) -> None:
        """Take back the call's matrix; nothing else of its session is kept."""
        self.matrix = session.matrix


def race_tool(handlers: Handlers, default_start: str) -> Callable[..., str]:
    """The tool's function: typed, with the page's defaults (gradio builds the tool's schema from them)."""
    shared = SharedMatrix()

    def token_recycling_race(prompt: str, max_new_tokens: int = 128, template: str = TEMPLATES[0],
                             custom_json: str = "", k: int = 8, decoding: str = DECODING[0],
                             temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
                             start: str = default_start, prompt_lookup: bool = False) -> str:
        values = dict(prompt=prompt, max_new_tokens=max_new_tokens, template=template, custom_json=custom_json,
                      k=k, decoding=decoding, temperature=temperature, top_p=top_p, seed=seed, start=start,
                      prompt_lookup=prompt_lookup)
        session = shared.session()
        try:
            return race(handlers, session, values)
        finally:
            shared.keep(session)

    token_recycling_race.__doc__ = DOC
    return token_recycling_race


def add_mcp_tool(demo: gr.Blocks, handlers: Handlers) -> None:
    """Register the race tool on `demo` (a `webapp.edge.OneTool` page, whose MCP server serves nothing else)."""
    start = (Start.PRIMED if find_primed(handlers.lm) is not None else Start.HOT).value  # as the page's default
    with demo:
        # The Run button's queue group: one race on the model at a time.
        gr.api(race_tool(handlers, start), api_name=TOOL_NAME, concurrency_limit=1, concurrency_id="model")
    # Gradio warns at launch about every public endpoint with a gr.State input, before `OneTool` leaves the
    # page's own endpoints out of the MCP server: none of them is a tool.
    warnings.filterwarnings("ignore", "This MCP server includes a tool that has a gr.State input", UserWarning)
