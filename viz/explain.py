"""The app's teaching texts: a short account of Token Recycling and a "how to read this" per view.

Kept apart from the wiring so a teacher can edit the words without touching the app.
"""

from __future__ import annotations

ABOUT = """\
**Token Recycling** (Luo et al., *Turning Trash into Treasure: Accelerating Inference of Large Language Models \
with Token Recycling*, ACL 2025, [arXiv 2408.08696](https://arxiv.org/abs/2408.08696)) makes a language model \
generate faster without training anything and without changing a single output token. Every forward pass \
already ranks the whole vocabulary at every position; plain decoding keeps the top token and throws the rest \
away. Token Recycling keeps that "trash": an **adjacency matrix** stores, for each token, the top-k tokens the \
model last predicted right after it. Each step it grows a **draft tree** from the last committed token by \
following those rows breadth-first, checks the whole tree in **one forward pass** with tree attention, keeps \
the longest branch the model agrees with plus one token of the model's own, and overwrites the rows of every \
token in the pass with fresh candidates. The matrix outlives the request (a *hot start*), so it keeps learning \
what this model tends to say. Below, both decoders race on the same model, one step at a time.
"""

HOWTO_RACE = """\
Both decoders run on the same model in this process, never at the same time: whichever has used less compute \
so far takes the next step, so each pane grows as that decoder would on its own (rendering is not timed). \
In the Token Recycling pane each coloured band is one forward pass: the longer the band, the more drafted \
tokens that pass accepted. Under greedy decoding both texts must be identical: Token Recycling is lossless.
"""

HOWTO_TREE = """\
**Root** (dark square, node 0): the last token already committed; the tree guesses what follows it. \
Every other node is a candidate taken from its parent's matrix row, rank 0 (the best) at the top of each \
group; depth grows to the right. The model scores all nodes in one pass; the **green path** is the longest \
branch where every token is what the model itself picked after its parent. The **gold star** is the bonus \
token: the model's own pick after the last accepted node, computed in that same pass, so it is always \
correct and every step emits at least one token. Grey nodes were wrong guesses. Move the slider to replay \
any step; hover a node for details.
"""

HOWTO_SIZE = """\
**Why this size**: verifying more drafts in one pass costs more (red: circles timed on this device when the \
app started and corrected by the forward times of every step since, the line the closest curve to them that \
never falls, since a dip is timing noise), while each \
extra draft adds only its chance of being right to the tokens a step can expect (blue). \
Their ratio (green) is the speed-up the step can expect over plain decoding; the *auto* tree stops at its peak.
"""

HOWTO_MATRIX = """\
A **row** belongs to one token and holds the k tokens the model most recently ranked highest right after it, \
best first. After each pass, the row of every token in the tree is overwritten with the model's new top-k at \
that position: candidates plain decoding would discard, recycled as the next drafts. **Highlighted** cells \
are candidates the row did not hold before; the **root's row** (green) is the one that drafted the first \
layer. Rows are never averaged, only overwritten. Look up any token to see its current row.
"""


def howto_charts(device: str) -> str:
    """The MAT vs speed-up explanation; its last sentence depends on where the model runs."""
    where = (
        "On this CPU a forward pass over an 81-token tree costs several times a one-token forward, so the "
        "speed-up stays well below MAT (and can fall below 1); a smaller tree (small-16, tiny-8) accepts a little "
        "less per pass but costs much less: compare their speed-ups."
        if device == "cpu" else
        "On a GPU a pass over a few dozen tokens costs about as much as a one-token pass, so the speed-up "
        "comes close to MAT."
    )
    return (
        "**MAT** (mean accepted tokens) counts *tokens per forward pass*: accepted drafts plus the bonus token, "
        "averaged over decoding steps; plain decoding has MAT 1. **Speed-up** counts *seconds*: Token "
        "Recycling's tokens per second over plain decoding's, each on its own compute clock. They differ because "
        f"a pass over a tree is not free. {where} The MAT curve rises as the matrix warms up: run the same "
        "prompt twice with a hot start and compare."
    )


HOWTO_CONTROLS = """\
**Start**: *hot* keeps this session's matrix from earlier runs, *cold* clears it first, *seeded* keeps it \
and also fills rows from the prompt's own prefill, *primed* keeps it and fills its empty rows from the rows \
the model wrote answering 560 generic instructions (the matrix a server has after a while; rows written \
since win). **k**: candidates kept per row (changing it starts a fresh matrix). **Tree**: *auto* (the \
default) grows a fresh tree every step, best candidates first by their estimated chance of being accepted, \
adds a branch copied from the last repeated phrase in the text (prompt lookup), and stops where verifying \
one more token would cost more than it is expected to bring on this device; *auto-nolookup* is the same \
without the copied branch; *paper-80* is the paper's fixed 80-node tree, and the smaller fixed trees suit \
slow devices. A custom tree is a JSON list of paths of candidate ranks, each path's parent listed before it, \
e.g. `[[0], [1], [0, 0]]`.
"""
