"""Figures and HTML built from decoding step records (`tr.records.Step`): the draft tree of a step,
the matrix rows it rewrote, charts over whole runs and the generated text banded by step.

Pure functions of their inputs: no model, no UI framework; plotly and networkx only.
"""

from .charts import accepted_histogram, mat_over_steps, speedup_over_steps, tokens_vs_time
from .cost import tree_size_figure
from .matrix import matrix_summary, row_lookup_html, rows_table_html, token_lookup_html
from .race import Comparison, compare, history_markdown, markdown_text, stats_html, verdict_html
from .replay import replay_html
from . import lessons, takeaways
from .style import empty_figure, legend_html, palette_css
from .text import banded_html, pane_html, plain_html
from .tree import interesting_step, marks_for, most_accepted_step, tree_figure
from .verify import attention_mask_figure, caption_html, verification_html, verification_summary

__all__ = [
    "Comparison", "compare", "history_markdown", "markdown_text", "replay_html", "stats_html", "verdict_html",
    "interesting_step", "marks_for",
    "accepted_histogram", "banded_html", "empty_figure", "mat_over_steps", "matrix_summary", "plain_html",
    "most_accepted_step", "pane_html", "row_lookup_html", "rows_table_html", "speedup_over_steps",
    "token_lookup_html", "tokens_vs_time", "tree_figure", "tree_size_figure",
    "attention_mask_figure", "caption_html", "verification_html", "verification_summary",
    "legend_html", "lessons", "palette_css", "takeaways",
]
