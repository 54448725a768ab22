"""One line per view, computed from a run's step records: what a tab shows in a sentence, so each tab
opens with the point before the detail. Plain text (numbers and fixed words only); callers escape or
place it as Markdown.
"""

from __future__ import annotations

from tr.records import Step, summarize

from .race import MIN_STEPS, compare, too_early


def _decoding(steps: list[Step]) -> list[Step]:
    return steps[1:]  # step 0 is the prefill: no draft, no choice of size


def size_takeaway(steps: list[Step]) -> str:
    """The tree sizes of the run, whether they changed, and what they were expected to bring against
    what the run got (MAT)."""
    decoding = [s for s in _decoding(steps) if s.draft is not None]
    if not decoding:
        return "No step has drafted yet."
    sizes = [s.drafted for s in decoding]
    shape = (f"Every step drafted {sizes[0]} (the tree did not change: on this device that size stays the best "
             "buy)" if min(sizes) == max(sizes) else
             f"Trees of {min(sizes)} to {max(sizes)} drafts, {sum(sizes) / len(sizes):.1f} on average")
    expected = sum(s.expected_tokens for s in decoding) / len(decoding)
    mat = summarize(steps).mat
    if abs(mat - expected) < 0.05:
        how = "as predicted"
    elif mat > expected:
        how = "more: the model accepted more often than the drafts' estimated chances said"
    else:
        how = "fewer: the estimated chances were too hopeful for this text"
    return f"{shape}; expected {expected:.2f} tokens per call, the run got MAT {mat:.2f}, {how}."


def verify_takeaway(steps: list[Step]) -> str:
    """How many drafts the run's verifications checked and accepted."""
    decoding = _decoding(steps)
    drafted = sum(s.drafted for s in decoding)
    if not drafted:
        return "No drafts checked yet: each verification below is one model call over a whole tree."
    accepted = sum(s.accepted_drafts for s in decoding)
    return (f"Over {len(decoding)} calls the model checked {drafted:,} drafts and accepted {accepted:,} "
            f"({accepted / drafted:.0%}); each call also added one token of its own.")


def rows_takeaway(steps: list[Step]) -> str:
    """How much the run rewrote the matrix."""
    writes = [w for s in steps for w in s.rows_written]
    if not writes:
        return "No matrix rows written yet."
    new = sum(len(set(w.new) - set(w.old if w.was_filled else ())) for w in writes)
    total = sum(len(w.new) for w in writes)
    first = sum(1 for w in writes if not w.was_filled)
    return (f"The run rewrote {len(writes):,} rows ({first:,} written for the first time); {new / total:.0%} of "
            "the candidates it wrote were new to their row.")


def charts_takeaway(lanes: dict[str, list[Step]]) -> str:
    """Where the race ended, in the charts' terms."""
    tr = lanes.get("tr", [])
    c = compare(lanes.get("ar", []), tr)
    if c is None:
        return "No race yet: the charts fill as one runs."
    if too_early(tr):
        return f"Too early to tell: under {MIN_STEPS} Token Recycling calls after the prefill so far."
    return (f"Token Recycling ended at MAT {summarize(tr).mat:.2f} and {c.speedup:.2f}× plain decoding's speed; "
            "the MAT chart settles towards the first figure.")


def runs_takeaway(history: list[dict]) -> str:
    """The session's runs in one line."""
    if not history:
        return "No runs yet in this session."
    best = max(history, key=lambda h: h["mat"])
    return (f"{len(history)} run{'s' if len(history) != 1 else ''} in this session; the highest MAT so far is "
            f"{best['mat']:.2f} (run {best['run']}, {best['template']} tree, {best['start']} start).")
