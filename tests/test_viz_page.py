"""The page's shared parts, without a browser: one palette (and the README's copy of it), the figures
that must agree (too early to tell, MAT without a prefill, the cost note), each tab's takeaway and the
lessons' answers, all from hand-built step records."""

from __future__ import annotations

import html
import re
from pathlib import Path

from tr.records import ROOT_ORIGIN, Draft, Origin, OriginKind, Step, speedup, summarize
from viz.explain import run_summary
from viz.lessons import LESSONS, LessonRun, figures
from viz.matrix import rows_read, rows_read_html
from viz.verify import caption_html
from viz.race import MIN_STEPS, compare, stats_html
from viz.style import Meaning, legend_html, legend_markdown, palette_css
from viz.takeaways import rows_takeaway, runs_takeaway, size_takeaway, verify_takeaway

README = Path(__file__).resolve().parents[1] / "README.md"


def chain(tokens: list[int], chance: float = 0.5) -> Draft:
    """A chain draft: each node the child of the one before, read from one-token rows."""
    parents = [-1, *range(len(tokens) - 1)]
    origins = [ROOT_ORIGIN] + [Origin(OriginKind.ROW, 5)] * (len(tokens) - 1)
    return Draft(tokens, parents, list(range(len(tokens))), [-1] + [0] * (len(tokens) - 1), origins,
                 [1.0] + [chance] * (len(tokens) - 1))


def race(calls: int, accepted: int, seconds_per_call: float = 0.1, base_seconds: float = 0.1
         ) -> dict[str, list[Step]]:
    """Plain decoding and a drafting lane on the same text: the lane's every call checks a 3-draft chain
    and accepts `accepted` of them."""
    lane, total = [Step(0, [1], total_tokens=1, total_forward_s=seconds_per_call)], 1
    for index in range(1, calls):
        total += accepted + 1
        lane.append(Step(index, [1] * (accepted + 1), chain([1, 2, 3, 4]), choices=[2, 3, 4, 5][:4],
                         accepted=list(range(accepted + 1)), total_tokens=total,
                         total_forward_s=seconds_per_call * (index + 1)))
    base = [Step(i, [1], total_tokens=i + 1, total_forward_s=base_seconds * (i + 1)) for i in range(total)]
    return {"ar": base, "tr": lane}


def test_one_palette_with_distinct_colours_shown_on_the_page_and_in_the_readme():
    strong = [m.strong for m in Meaning]
    assert len(set(strong)) == len(strong) and len({m.tint for m in Meaning}) == len(strong)
    assert all(f"--tr-{m.name.lower()}: {m.strong};" in palette_css() for m in Meaning)
    assert all(html.escape(m.value.label) in legend_html() for m in Meaning)
    assert legend_markdown() in README.read_text(), "README's colour table differs from viz.style.Meaning"


def test_a_speed_up_is_withheld_until_it_means_something():
    early = race(MIN_STEPS, 2)  # MIN_STEPS - 1 calls after the prefill
    page = stats_html(early, {}, False, False, False)
    assert f"too early to tell ({MIN_STEPS - 1} of {MIN_STEPS} calls)" in page and 'class="note"' not in page
    enough = race(MIN_STEPS + 1, 2)
    page = stats_html(enough, {}, True, False, False)
    assert f"<b>{speedup(enough['ar'], enough['tr']):.2f}×</b>" in page and 'class="note"' in page
    # Plain decoding's MAT is 1 by definition: never "0.00" before its first call after the prefill.
    alone = stats_html({"ar": enough["ar"][:1], "tr": enough["tr"][:1]}, {}, False, False, False)
    assert "</abbr> <b>–</b>" in alone
    assert re.search(r"<tr><td>MAT: [^<]*</td><td>–</td><td>–</td></tr>", alone)


def test_the_sum_reproduces_mat_and_the_speed_up_and_explains_a_cheaper_call():
    lanes = race(12, 2, seconds_per_call=0.09)  # a tree call timed below a plain one
    c = compare(lanes["ar"], lanes["tr"])
    text = run_summary("TR", c, True)
    tokens, calls = summarize(lanes["tr"]).tokens, len(lanes["tr"])
    assert f"MAT {tokens - 1} / {calls - 1} = {summarize(lanes['tr']).mat:.2f}" in text
    assert "only timing noise" in text and c.cost_ratio < 1
    assert 'class="note noise"' in stats_html(lanes, {}, True, False, False)  # and under the table's timings
    assert 'class="note noise"' not in stats_html(race(12, 2), {}, True, False, False)
    a, b, cost, shown = re.search(r"so ([\d,]+) / ([\d,]+) / ([\d.]+) [=≈] <b>([\d.]+)×", text).groups()
    assert (int(a), int(b), shown) == (tokens, calls, f"{c.speedup:.2f}")


def test_takeaways_say_what_each_tab_shows_in_the_runs_numbers():
    lanes = race(10, 2)
    steps = lanes["tr"]
    size = size_takeaway(steps)
    assert "Every step drafted 3 (the tree did not change" in size
    expected = sum(s.expected_tokens for s in steps[1:]) / 9
    assert f"expected {expected:.2f} tokens per call, the run got MAT {summarize(steps).mat:.2f}" in size
    assert verify_takeaway(steps).startswith("Over 9 calls the model checked 27 drafts and accepted 18 (67%)")
    assert rows_takeaway(steps) == "No matrix rows written yet."
    history = [dict(run=1, mat=1.5, template="auto", start="hot"), dict(run=2, mat=2.25, template="tiny-8",
                                                                          start="cold")]
    assert runs_takeaway(history).startswith("2 runs in this session; the highest MAT so far is 2.25 (run 2")


def test_every_lesson_answers_in_its_own_runs_figures():
    for lesson in LESSONS:
        runs = []
        for number, _ in enumerate(lesson.presets, start=1):
            lanes = race(10 + number, number)
            lanes["pld"] = race(10, 0)["tr"] if lesson.presets[0].get("prompt_lookup") else lanes["tr"]
            runs.append(LessonRun(number, lanes))
        answer = lesson.answer(runs)
        cited = set(re.findall(r"run (\d+)", answer, re.I))
        assert cited == {str(r.number) for r in runs}, (lesson.key, answer)
        for run in runs:
            if f"run {run.number}: MAT" in answer:
                assert figures(run) in answer
    assert len(LESSONS) >= 6


def test_the_rows_a_step_read_include_pair_rows_explained_where_they_appear():
    draft = chain([5, 6, 7])
    draft.origins[2] = Origin(OriginKind.PAIR, 3)  # node 2 read from the row of (5, 6)
    step = Step(1, [6, 7], draft, choices=[6, 7, 9], accepted=[0, 1, 2])
    assert rows_read(step, lambda t: f"t{t}") == [("'t5'", "row", ["#0 't6'"]), ("'t5', 't6'", "pair", ["#0 't7'"])]
    page = rows_read_html(step, lambda t: "<b>" if t == 6 else f"t{t}")
    assert "1 of them <b>pair rows</b>: keyed by the two tokens before the draft" in page
    assert "&#x27;t5&#x27;, &#x27;&lt;b&gt;&#x27;" in page and "'<b>'" not in page
    assert rows_read_html(Step(0, [1]), str) == ""


def test_the_tree_caption_is_the_steps_verdict_escaped():
    step = Step(2, [6, 9], chain([5, 6, 7]), choices=[6, 9, 8], accepted=[0, 1])
    caption = caption_html(step, lambda t: "<i>" if t == 7 else f"t{t}")
    assert caption.startswith('<p class="caption"><b>Step 2:</b> drafted 2 tokens on 1 branch; the model agreed with 1')
    assert "&lt;i&gt;" in caption and "<i>" not in caption and "2 tokens committed (1 accepted + 1 bonus)" in caption
    assert caption_html(Step(0, [1]), str).startswith('<p class="caption">Step 0 drafted nothing')
