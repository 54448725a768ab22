"""The soak's verdict (`tools.load.soak_verdict`): memory may grow up to the session matrix's bound
after the first tenth of the runs, and races may not slow down; anything else fails."""

from __future__ import annotations

from tools.load import SLOWDOWN, soak_verdict

TENTH = 2
STEADY_S = [3.0] * 20


def test_growth_within_the_matrix_bound_passes() -> None:
    memory = [1250.0, 1260.0] + [1260.0 + i for i in range(18)]  # 17 MB after the first tenth
    assert soak_verdict(STEADY_S, memory, TENTH, bound_mb=33.0).startswith("pass")


def test_growth_beyond_the_matrix_bound_fails() -> None:
    memory = [1250.0, 1260.0] + [1260.0 + 2 * i for i in range(18)]  # a steady leak: 34 MB
    verdict = soak_verdict(STEADY_S, memory, TENTH, bound_mb=33.0)
    assert verdict.startswith("FAIL") and "beyond" in verdict


def test_growth_before_the_first_tenth_ends_is_not_counted() -> None:
    memory = [900.0, 1260.0] + [1260.0] * 18  # first allocations, then flat
    assert soak_verdict(STEADY_S, memory, TENTH, bound_mb=33.0).startswith("pass")


def test_a_slowdown_fails() -> None:
    seconds = [3.0] * 18 + [3.0 * SLOWDOWN * 1.05] * 2
    verdict = soak_verdict(seconds, [1260.0] * 20, TENTH, bound_mb=33.0)
    assert verdict.startswith("FAIL") and "slower" in verdict
