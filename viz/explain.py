"""The app's teaching texts: a short account of Token Recycling, a "how to read this" per view, a
glossary, and the sentences that explain one run in its own numbers.

Kept apart from the wiring so a teacher can edit the words without touching the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: race.py imports this module
    from .race import Comparison

INTRO = """\
**Speculative decoding: guess, then check.** Token Recycling guesses the next few tokens from what the model \
ranked highly before (its *adjacency matrix*), checks all the guesses in one model call, and keeps those the \
model agrees with: same text, fewer calls. Press **Run race**, then read the tree on the right.
"""

ABOUT = """\
**Token Recycling** (Luo et al., *Turning Trash into Treasure: Accelerating Inference of Large Language Models \
with Token Recycling*, ACL 2025, [arXiv 2408.08696](https://arxiv.org/abs/2408.08696)) is a kind of \
**speculative decoding**: *guess, then check*. A language model normally writes one token per model call \
(one forward pass). Speculative decoding first guesses several next tokens cheaply (the **draft**), then lets \
the model check all of them in a single call; every guess the model agrees with is a token written without a \
call of its own, and the output is exactly what the model would have written anyway. Token Recycling gets its \
guesses for free: every call already ranks the whole vocabulary at every position, and plain decoding keeps \
the top token and throws the rest away. Token Recycling keeps that "trash": an **adjacency matrix** stores, \
for each token, the top-k tokens the model last predicted right after it. Each step it grows a **draft tree** \
from the last committed token by following those rows, checks the whole tree in **one forward pass** with \
tree attention, keeps the longest branch the model agrees with plus one token of the model's own (the bonus \
token), and overwrites the rows of every token in the pass with fresh candidates. The matrix outlives the \
request (a *hot start*), so it keeps learning what this model tends to say. Below, plain decoding and Token \
Recycling (and prompt lookup decoding, when chosen) race on the same model, one step at a time.
"""

HOWTO_RACE = """\
The decoders run on the same model in this process, never at the same time: whichever has used the least \
compute so far takes the next step, so each pane grows as that decoder would on its own. Each pane's clock \
counts only that decoder's own compute (its model calls and its drafting); the **wall time** in the message \
above is longer, because it also counts drawing the page and the decoders taking turns. Speed-ups are always \
read off the decoders' own clocks. Under greedy decoding every text must be identical to plain decoding's: \
speculative decoding is lossless.
"""

HOWTO_TREE = """\
**Root** (black square, node 0): the last token already committed; the tree guesses what follows it. \
Every other node is a candidate taken from a matrix row (hover it to see which row and which rank), rank 0 \
(the best) at the top of each group; depth grows to the right. The model checks all nodes in one pass; the \
**green path** is the longest branch where every token is what the model itself picked after its parent. The \
**amber star** is the bonus token: the model's own pick after the last accepted node, computed in that same \
pass, so it is always correct and every step writes at least one token. Faded **red** nodes are drafts that \
were rejected, or that sat on a branch the model left earlier. A `·` in a token stands for a space. Move the \
slider to replay any step; its labels point at steps worth a look.
"""

HOWTO_SIZE = """\
**Why this size**: the top panel prices a tree. Checking more drafts in one call costs more (black, in \
one-token passes: *measured cost*, timed on this device and corrected by every step since), while each extra \
draft only adds its chance of being right to the tokens the call can expect (dashed, *expected tokens per \
call*). The bottom panel divides the two: *expected speed-up = tokens ÷ cost* over plain decoding, before \
drafting's own overheads. The *auto* tree stops where that curve peaks.
"""

HOWTO_MATRIX = """\
A **row** belongs to one token and holds the k tokens the model most recently ranked highest right after it, \
best first (**rank** 0 to k−1). After each pass, the row of every token in the tree is overwritten with the \
model's new top-k at that position: candidates plain decoding would discard, recycled as the next drafts. \
Below, each row the step rewrote is shown twice: **before** the overwrite (grey; candidates that were dropped \
are struck through) and **after** it (**blue** cells are candidates the row did not hold before). The \
**root's row** (black border) is the one that drafted the tree's first layer. Rows are never averaged, only \
overwritten. A `·` in a token stands for a space. Look up any token to see its current row.
"""

HOWTO_VERIFY = """\
**Verification** is the one model call that checks the whole tree. The **tree attention mask** (right) says \
which tokens each drafted token may look at: the committed text and its own ancestors, never a sibling \
branch, so one pass gives the model's own choice after every node as if each branch were run alone. The \
table (left) walks the tree node by node: the matrix cell each draft came from, what the model chose after \
its parent, and the verdict: ✓ accepted, ✗ the first disagreement on its branch (everything below it is cut), \
★ the bonus token, the model's own choice after the last accepted node. Under sampling the model draws only \
along the path it walks, so nodes off that path were never checked.
"""

MAT_TEXT = (
    "**MAT** (*mean accepted tokens*) is the tokens written per model call after the prefill: the drafts the "
    "model accepted plus its bonus token, so plain decoding has MAT 1 and a call that accepted 2 drafts wrote 3 "
    "tokens. Other papers count the same thing differently: EAGLE's *acceptance length* τ includes the bonus "
    "token, like MAT; \"accepted drafts per step\" leaves it out, which is MAT − 1."
)


def howto_charts(device: str, mean_drafts: float | None = None, cost_per_call: float | None = None) -> str:
    """MAT against speed-up. After a run, `mean_drafts` (drafted tokens a Token Recycling call checked on
    average) and `cost_per_call` (its time per call over plain decoding's) make the point in that run's
    numbers; before one, only `device` (a torch device type, "cpu" or "cuda") shapes the sentence."""
    if mean_drafts is not None and cost_per_call is not None:
        where = (
            f"In this run a call checked {mean_drafts:.1f} drafts on average ({mean_drafts:.1f} drafts + the root "
            f"= {mean_drafts + 1:.1f} tokens in one pass) and cost {cost_per_call:.2f}× a one-token call, so the "
            f"speed-up is about MAT ÷ {cost_per_call:.2f}."
        )
    elif device == "cpu":
        where = ("On a small CPU a pass over many tokens costs several times a one-token pass (the paper's tree: "
                 "80 drafts + the root = 81 tokens), so the speed-up stays well below MAT; smaller trees accept a "
                 "little less per call but cost much less.")
    else:
        where = "On a GPU a pass over a few dozen tokens costs about as much as a one-token pass, so the speed-up " \
                "comes close to MAT."
    return (
        f"{MAT_TEXT} **Speed-up** counts *seconds*: a decoder's tokens per second over plain decoding's, each on "
        f"its own compute clock. They differ because a call over drafts is not free: speed-up = (tokens per call "
        f"÷ plain decoding's) ÷ (time per call ÷ plain decoding's). {where} The MAT chart is a running average: "
        "early calls weigh most, so it swings at first and settles towards the run's MAT."
    )


def run_summary(title: str, c: Comparison, finished: bool) -> str:
    """One run's speed-up in its own numbers, as one HTML sentence whose arithmetic gives the speed-up:
    model calls saved (the prefill counted as one call on both sides, as in the table), divided by what
    each call cost more than a plain one. MAT, tokens after the prefill over calls after it, is spelled
    out as that fraction so every shown number reproduces the others."""
    verb = "wrote" if finished else "has written"
    mat = (f"MAT {c.tokens - 1:,} / {c.calls - 1:,} = {(c.tokens - 1) / (c.calls - 1):.2f}" if c.calls > 1
           else "no call after the prefill yet")
    gained = (f"{verb} {c.tokens:,} tokens in {c.calls:,} model calls (the prefill wrote 1, then {mat}), "
              f"plain decoding {c.base_tokens:,} in {c.base_calls:,}")
    per_call = f"each call cost {c.cost_ratio:.2f}× a plain one"
    if c.mean_drafts:
        per_call += f" (checking {c.mean_drafts:.1f} drafts on average)"
    if c.cost_ratio < 1:  # a bigger pass cannot really be cheaper: the clocks caught other work
        per_call += (" — cheaper than a plain call, which only timing noise on a shared machine can explain: "
                     "read this speed-up as rough")
    if c.tokens == c.base_tokens:
        expression, shown = f"{c.base_calls:,} / {c.calls:,} / {c.cost_ratio:.2f}", c.base_calls / c.calls
    else:
        expression = f"{c.tokens_per_call:.2f} / {c.base_tokens_per_call:.2f} / {c.cost_ratio:.2f}"
        shown = round(c.tokens_per_call, 2) / round(c.base_tokens_per_call, 2)
    # The shown numbers are rounded: say "≈" where they do not give the speed-up to the last digit.
    sign = "=" if f"{shown / round(c.cost_ratio, 2):.2f}" == f"{c.speedup:.2f}" else "≈"
    return (f"<b>{title}</b> {gained}; {per_call}; so {expression} {sign} <b>{c.speedup:.2f}×</b> plain decoding's "
            "speed.")


HOWTO_CONTROLS = """\
**Start**: *hot* keeps this session's matrix from earlier runs, *cold* clears it first, *seeded* keeps it \
and also fills rows from the prompt's own prefill, *primed* keeps it and fills its empty rows from the rows \
the model wrote answering 560 generic instructions (the matrix a server has after a while); rows this session \
wrote itself take precedence over the primed ones. **k**: candidates kept per row (changing it starts a fresh \
matrix). **Tree**: *auto* (the default) grows a fresh tree every step, best candidates first by their \
estimated chance of being accepted, adds a branch copied from the last repeated phrase in the text (prompt \
lookup), and stops where checking one more token would cost more than it is expected to bring on this device; \
*auto-nolookup* is the same without the copied branch; *paper-80* is the paper's fixed tree (80 drafts + the \
root = 81 tokens per call), and the smaller fixed trees suit slow devices. A custom tree is a JSON list of \
paths of candidate ranks, each path's parent listed before it, e.g. `[[0], [1], [0, 0]]`.
"""

GLOSSARY = """\
- **Speculative decoding**: guess, then check. Draft several next tokens cheaply, let the model check them all \
in one call, keep the ones it agrees with. The output does not change; only the number of model calls does.
- **Draft**: the guessed tokens of one step (a chain, or a tree of alternatives) hanging off the root, the \
last committed token.
- **Verification**: the one model call over the root and all drafts (tree attention lets each draft see only \
its own ancestors), which gives the model's own choice after every node.
- **Forward pass / model call**: one run of the model over some new tokens; the unit both clocks are spent on. \
Plain decoding makes one per token.
- **Prefill**: the first call, over the whole prompt; it writes the first token. Counted as a model call, not \
in MAT.
- **Committed token**: a token that is final: part of the output.
- **Accepted token**: a draft the model agreed with: its token is what the model chose after its parent, and \
so was every token before it on its branch.
- **Bonus token**: the model's own choice after the last accepted draft, computed in the same call; always \
correct, so every call writes at least one token.
- **MAT** (mean accepted tokens): tokens written per model call after the prefill, accepted drafts plus the \
bonus token; plain decoding has MAT 1. EAGLE's *acceptance length* τ counts the same; "accepted drafts per \
step" is MAT − 1.
- **Tree attention**: an attention mask that lets a whole draft tree be checked in one call, each node seeing \
only the committed text and its own ancestors.
- **Adjacency matrix**: Token Recycling's memory: one row per token, holding the tokens the model last ranked \
highest right after it.
- **Row**: the k candidates stored for one token (or, for a *pair row*, for two tokens in a row), best first.
- **Rank**: a candidate's place in its row, 0 the best.
- **k**: how many candidates a row keeps.
- **Hot / cold / seeded / primed start**: keep the session's matrix from earlier runs / clear it / keep it and \
also fill rows from the prompt's prefill / keep it and fill empty rows from a matrix built in advance.
- **Prompt lookup decoding**: a simpler speculative method: when the text's last few tokens appeared earlier \
(in the prompt or the output), draft the tokens that followed them there, as one chain. No matrix.
- **Speed-up**: a decoder's tokens per second over plain decoding's, each on its own compute clock: (tokens \
per call ÷ plain decoding's) ÷ (time per call ÷ plain decoding's).
- **Compute clock vs wall time**: a decoder's clock counts only its own model calls and drafting; wall time \
also counts drawing the page and the other decoder's turns, so it is longer than either clock.
- **Lossless**: the output is exactly plain decoding's (greedy), or drawn from exactly the same distribution \
(sampling).
- **Prompt**: read as plain text inside the model's chat template. Control tokens typed into it (such as \
`<|im_end|>`) are spelled out as ordinary characters, never obeyed, and the token limit counts what the model sees.
"""
