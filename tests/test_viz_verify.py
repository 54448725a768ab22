"""Tests of the verification view (`viz.verify`): the tree attention mask and the node-by-node table, on
hand-built steps and on real greedy and sampled runs of a tiny random model."""

from __future__ import annotations

import html
import re

import pytest

from test_viz import draft
from tiny_models import tiny_model
from tr.decoding import token_recycling
from tr.drafts import DynamicDrafter, TemplateDrafter
from tr.matrix import AdjacencyMatrix
from tr.records import LOOKUP, Origin, OriginKind, Step
from tr.sampling import Sampling
from tr.trees import DraftTree, ancestor_mask, best_first_template
from viz import attention_mask_figure, verification_html, verification_summary
from viz.style import note_of
from viz.verify import MASK_LEGEND, visibility

PROMPT = [1, 2, 3, 4, 5, 1, 2, 3]


def token_text(token: int) -> str:
    return f"t{token}"


def hostile_text(token: int) -> str:
    return f"<script>{token}</script>&\"'"


def build(tokens: list[int], parents: list[int], choices: list[int], accepted: list[int],
          ranks: list[int] | None = None, emitted: list[int] | None = None) -> Step:
    """A hand-built step; nodes come from one-token rows (LOOKUP ranks from a 2-token match)."""
    last = choices[accepted[-1]]
    tokens_out = emitted if emitted is not None else [tokens[i] for i in accepted[1:]] + [last]
    return Step(4, tokens_out, draft(tokens, parents, ranks), choices=choices, accepted=accepted)


def branching_step(choices: list[int] | None = None) -> Step:
    """Root 10 -> 11 (node 1), 12 (node 2); 11 -> 13 (node 3), 14 (node 4); 12 -> 15 (node 5) -> 16 (node 6).
    The model chose 11 after the root and 13 after 11, then 7: nodes 0, 1, 3 accepted, 7 the bonus."""
    return build([10, 11, 12, 13, 14, 15, 16], [-1, 0, 0, 1, 1, 2, 5],
                 choices if choices is not None else [11, 13, 15, 7, 8, 16, 9], [0, 1, 3], [-1, 0, 1, 0, 1, 0, 0])


def table_rows(page: str) -> dict[str, tuple[str, str]]:
    """Row class and cell text by data-node ("0", "1", ..., "bonus")."""
    rows = re.findall(r'<tr class="([^"]+)" data-node="([^"]+)">(.*?)</tr>', page)
    return {node: (cls, html.unescape(re.sub(r"<[^>]+>", "|", cells))) for cls, node, cells in rows}


def cells(page: str, node: str) -> list[str]:
    return [c for c in table_rows(page)[node][1].split("|") if c]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", 96)


@pytest.fixture(scope="module")
def greedy_steps(model) -> list[Step]:
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("paper-80", 8)))
    return list(token_recycling(model, PROMPT, 30, AdjacencyMatrix(96, 8), drafter))


@pytest.fixture(scope="module")
def sampled_steps(model) -> list[Step]:
    drafter = DynamicDrafter(max_nodes=16, prompt_ids=PROMPT)
    return list(token_recycling(model, PROMPT, 30, AdjacencyMatrix(96, 8), drafter, sampling=Sampling(1.0, seed=3)))


# --- the mask --------------------------------------------------------------------------------------

def test_mask_lets_each_node_see_itself_and_its_ancestors_only():
    step = branching_step()
    z = attention_mask_figure(step, token_text).data[0].z
    ancestors = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 1, 4}, 5: {0, 2, 5}, 6: {0, 2, 5, 6}}
    assert len(z) == 7 and all(len(row) == 7 for row in z)
    for i in range(7):
        assert {j for j in range(7) if z[i][j]} == ancestors[i]


def test_mask_is_the_one_decoding_verifies_with(greedy_steps):
    step = next(s for s in greedy_steps[1:] if s.draft.size == 81)
    expected = ancestor_mask(step.draft.parents, max(step.draft.depths)).tolist()
    assert visibility(step.draft.parents) == expected
    z = attention_mask_figure(step, token_text).data[0].z
    assert [[bool(v) for v in row] for row in z] == expected


def test_mask_highlights_the_accepted_rows_and_explains_its_colours():
    fig = attention_mask_figure(branching_step(), token_text)
    z = fig.data[0].z
    assert {i for i, row in enumerate(z) if 2 in row} == {0, 1, 3}
    assert all(v in (0, 1) for i in (2, 4, 5, 6) for v in z[i])
    assert [t.name for t in fig.data[1:]] == list(MASK_LEGEND)
    labels = list(fig.layout.yaxis.ticktext)
    assert labels[3] == "<b>node 3: 't13'</b>" and labels[2] == "node 2: 't12'"
    assert "committed text before the pass" in fig.layout.title.subtitle.text


def test_mask_of_80_nodes_stays_legible(greedy_steps):
    step = next(s for s in greedy_steps[1:] if s.draft.size == 81)
    small, big = attention_mask_figure(branching_step(), token_text), attention_mask_figure(step, hostile_text)
    assert big.layout.font.size < small.layout.font.size
    assert len(big.layout.xaxis.tickvals) < 81 and len(big.layout.yaxis.tickvals) == 81
    assert all(len(html.unescape(label)) <= 40 for label in big.layout.yaxis.ticktext)
    assert 81 * 9 <= big.layout.height <= 1200


def test_mask_escapes_token_text():
    fig = attention_mask_figure(branching_step(), hostile_text)
    texts = list(fig.layout.yaxis.ticktext) + list(fig.layout.xaxis.ticktext)
    texts += [h for row in fig.data[0].hovertext for h in row]
    assert texts and not any("<script>" in t for t in texts)
    assert any("&lt;script&gt;" in t for t in texts)


def test_mask_without_a_tree_says_why():
    step = Step(0, [5])
    assert "no tree" in note_of(attention_mask_figure(step, token_text)).lower()
    assert "no draft tree" in verification_html(step, token_text)


# --- the table -------------------------------------------------------------------------------------

def test_each_row_lists_its_drafted_token_and_the_models_choice_at_its_parent():
    step = branching_step()
    page = verification_html(step, token_text)
    for node in range(1, 7):
        row = cells(page, str(node))
        parent = step.draft.parents[node]
        assert row[:4] == [str(node), str(step.draft.depths[node]), str(parent), f"t{step.draft.tokens[node]}"]
        assert row[5] == f"t{step.choices[parent]}"
    assert cells(page, "0")[2:4] == ["—", "t10"]


def test_verdicts_mark_the_first_disagreement_and_the_cut_nodes():
    page = verification_html(branching_step(), token_text)
    rows = table_rows(page)
    assert {n: cls for n, (cls, _) in rows.items()} == {
        "0": "v-root", "1": "v-accepted", "3": "v-accepted", "2": "v-rejected", "4": "v-rejected",
        "5": "v-cut", "6": "v-cut", "bonus": "v-bonus"}
    assert "first disagreement: the model chose 't11', the tree had 't12'" in rows["2"][1]
    assert "first disagreement: the model chose 't13', the tree had 't14'" in rows["4"][1]
    # Node 5 matched the model (15 after 12) but hangs below rejected node 2: it never counted.
    assert "cut: below node 2" in rows["5"][1] and "cut: below node 2" in rows["6"][1]
    bonus = cells(page, "bonus")
    assert bonus[:3] == ["+", "3", "3"] and "t7" in bonus and "bonus" in bonus[-1]


def test_a_matching_duplicate_that_lost_is_not_called_a_disagreement():
    # Two children carry token 11 (a cold row repeats a token): the model took node 1's branch.
    step = build([10, 11, 11, 13], [-1, 0, 0, 1], [11, 13, 13, 4], [0, 1, 3], [-1, 0, 1, 0])
    page = verification_html(step, token_text)
    assert table_rows(page)["2"][0] == "v-unkept" and "matched, but node 1 was kept" in table_rows(page)["2"][1]
    assert "matched, not kept" in page  # its legend line


def test_every_mark_in_the_table_has_a_legend_line():
    for step in (branching_step(), build([10, 11, 11], [-1, 0, 0], [11, 4, 4], [0, 1], [-1, 0, 1])):
        page = verification_html(step, token_text)
        legend = page[page.index('<ul class="tr-verify-legend">'):]
        for cls, _ in table_rows(page).values():
            assert f'class="swatch {cls}"' in legend


def test_where_each_node_came_from():
    step = build([10, 11, 12, 13, 14], [-1, 0, 0, 1, 1], [11, 13, 0, 0, 0], [0, 1, 3], [-1, 0, LOOKUP, 2, 1])
    step.draft.origins[4] = Origin(OriginKind.PAIR, 8)
    page = verification_html(step, token_text)
    assert cells(page, "1")[4].startswith("row of 't10', rank 0")
    assert cells(page, "2")[4].startswith("copied from the text")
    assert cells(page, "3")[4].startswith("row of 't11', rank 2")
    assert cells(page, "4")[4].startswith("row of ('t10', 't11'), rank 1")
    step.draft.origins[1] = Origin(OriginKind.PAIR, 8)  # the root's pair row: keyed by the token before it
    assert "token before" in cells(verification_html(step, token_text), "1")[4]


def test_hostile_token_text_is_escaped():
    page = verification_html(branching_step(), hostile_text)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "first disagreement" in page
    # Attributes too: a quote in token text must not end a title attribute.
    for title in re.findall(r'title="([^"]*)"', page):
        assert "<" not in title


def test_sampling_mode_speaks_of_draws():
    # Sampling draws only along the walked path: -1 elsewhere (see tr.decoding._sampled_path).
    step = branching_step(choices=[11, 13, -1, 7, -1, -1, -1])
    page = verification_html(step, token_text)
    assert "draw at this depth" in page and "model&#x27;s choice after parent" not in page
    assert "accepted: matched the draw" in table_rows(page)["3"][1]
    assert "first disagreement: the draw was 't11', the tree had 't12'" in table_rows(page)["2"][1]
    assert cells(page, "5")[5] == "not drawn" and "cut: below node 2, not drawn" in table_rows(page)["5"][1]
    assert "not drawn</span>: sampling draws only" in page
    assert verification_summary(step, token_text).startswith(
        "drafted 6 tokens on 3 branches; the draws matched 2 in a row, then the model reached the end of its"
        " branch and drew 't7' as the bonus")


def test_sampling_mode_can_be_stated_when_nothing_was_left_undrawn():
    chain = build([10, 11, 12], [-1, 0, 1], [11, 12, 5], [0, 1, 2])
    assert "draw at this depth" not in verification_html(chain, token_text)
    assert "draw at this depth" in verification_html(chain, token_text, sampling=True)


def test_summary_sentence():
    assert verification_summary(branching_step(), token_text) == (
        "drafted 6 tokens on 3 branches; the model agreed with 2 in a row, then reached the end of its branch"
        " and chose 't7' as the bonus; 3 tokens committed (2 accepted + 1 bonus)")
    wrong = build([10, 11, 12, 13], [-1, 0, 0, 1], [11, 9, 5, 5], [0, 1])
    assert verification_summary(wrong, token_text) == (
        "drafted 3 tokens on 2 branches; the model agreed with 1 in a row, then chose 't9' where the tree had"
        " 't13'; 2 tokens committed (1 accepted + 1 bonus)")
    missed = build([10, 11, 12, 11], [-1, 0, 0, 0], [5, 1, 1, 1], [0])
    assert "the model chose 't5' where the tree had 't11' or 't12';" in verification_summary(missed, token_text)
    cut = build([10, 11, 12], [-1, 0, 1], [11, 12, 5], [0, 1, 2], emitted=[11, 12])
    assert "2 tokens committed (2 accepted + 1 bonus, cut short" in verification_summary(cut, token_text)


# --- real runs -------------------------------------------------------------------------------------

def check_real_step(step: Step, sampled: bool) -> None:
    """Every verdict follows from the records: the accepted path, choices at parents, cuts below."""
    draft, on_path = step.draft, set(step.accepted)
    rows = table_rows(verification_html(step, token_text, sampling=sampled))
    assert len(rows) == draft.size + 1
    for node in range(1, draft.size):
        cls, text = rows[str(node)]
        parent, token = draft.parents[node], draft.tokens[node]
        assert f"|t{token}|" in text
        if step.choices[parent] >= 0:
            assert f"|t{step.choices[parent]}|" in text
        if node in on_path:
            assert cls == "v-accepted" and step.choices[parent] == token
        elif parent in on_path:
            assert cls == ("v-unkept" if step.choices[parent] == token else "v-rejected")
        else:
            assert cls == "v-cut"
    assert f"|t{step.tokens[-1]}|" in rows["bonus"][1]


def test_real_greedy_run(greedy_steps):
    steps = [s for s in greedy_steps[1:] if s.draft.size > 1]
    assert any(s.accepted_drafts for s in steps) and any(len(s.accepted) < max(s.draft.depths) + 1 for s in steps)
    marks = set()
    for step in steps:
        check_real_step(step, sampled=False)
        marks |= {cls for cls, _ in table_rows(verification_html(step, token_text)).values()}
        fig = attention_mask_figure(step, token_text)
        assert len(fig.data[0].z) == step.draft.size
    assert {"v-accepted", "v-rejected", "v-cut"} <= marks
    best = max(steps, key=lambda s: s.accepted_drafts)
    assert f"the model agreed with {best.accepted_drafts} in a row" in verification_summary(best, token_text)


def test_real_sampled_run(sampled_steps):
    steps = [s for s in sampled_steps[1:] if s.draft.size > 1]
    assert any(any(c < 0 for c in s.choices) for s in steps)
    for step in steps:
        check_real_step(step, sampled=True)
        if any(c < 0 for c in step.choices):
            assert "draw at this depth" in verification_html(step, token_text)
