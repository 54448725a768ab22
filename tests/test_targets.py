"""tools.targets: which of the fp32 speed targets a bench table meets, from the table alone."""

from __future__ import annotations

import json

from tools import targets


def row(category: str, method: str, speedup: float, identical: int = 2, mat: float | None = None) -> dict:
    return {"category": category, "method": method, "speedup": speedup, "identical": identical, "compared": 2,
            "mat": mat}


def table(auto_weakest: float = 1.25, auto_summary: float = 1.4, identical: int = 2) -> list[dict]:
    return [
        row("writing", "ar", 1.0), row("writing", "pld", 1.1), row("writing", "tr:auto", 1.7),
        row("stem", "ar", 1.0), row("stem", "pld", 0.9), row("stem", "tr:auto", auto_weakest, identical),
        row("summarization", "ar", 1.0), row("summarization", "pld", 1.3),
        row("summarization", "tr:auto", auto_summary),
        row("overall", "ar", 1.0), row("overall", "pld", 1.2), row("overall", "tr:auto", 1.55, mat=1.9),
    ]


def test_a_table_that_meets_every_target():
    (standing,) = targets.standings(table())
    assert standing.method == "tr:auto" and standing.weakest == ("stem", 1.25)
    assert (standing.identical, standing.compared) == (6, 6)
    assert standing.failures == []


def test_each_missed_target_is_named():
    (standing,) = targets.standings(table(auto_weakest=1.197, auto_summary=1.25, identical=1))
    missed = " | ".join(standing.failures)
    assert "stem 1.197x < 1.2x" in missed  # three decimals: 1.197 is not read as 1.20
    assert "not faster than pld in summarization" in missed
    assert "1 outputs differ from ar" in missed
    assert "overall" not in missed


def test_without_prompt_lookup_the_comparison_is_missing_not_won():
    rows = [r for r in table() if r["method"] != "pld"]
    (standing,) = targets.standings(rows)
    assert standing.failures == ["pld not run"]


def test_cli_reads_bench_files_and_rejects_what_is_not_one(tmp_path, capsys):
    good = tmp_path / "bench.json"
    good.write_text(json.dumps({"table": table(), "machine": {"cpu": "test CPU", "dtype": "float32", "threads": 2}}))
    assert targets.main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "test CPU" in out and "tr:auto" in out and "all targets hold" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert targets.main([str(bad)]) == 2
    assert "cannot read a bench table" in capsys.readouterr().err
    assert targets.main([]) == 2
