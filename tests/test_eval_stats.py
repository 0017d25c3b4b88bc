"""hsr_eval.stats: Wilson intervals, the exact McNemar test and the paired bootstrap of RSR, on
hand-computed cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsr_eval.stats import (
    mcnemar_exact,
    paired_bootstrap_rsr,
    rate_summary,
    rsr,
    wilson_interval,
)

Z = 1.959963984540054  # the 97.5% quantile of the standard normal


def test_wilson_interval_matches_the_closed_form_by_hand():
    # 0 of 10: the lower end is 0 and the upper one z^2/n / (1 + z^2/n)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx((Z * Z / 10) / (1 + Z * Z / 10), abs=1e-12)
    # 5 of 10: symmetric around 1/2, half-width z*sqrt(1/40 + z^2/400) / (1 + z^2/10)
    low, high = wilson_interval(5, 10)
    half = Z * math.sqrt(0.025 + Z * Z / 400) / (1 + Z * Z / 10)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # the published table's values
    assert wilson_interval(10, 10) == (pytest.approx(1 - high_of(0, 10)), 1.0)


def high_of(k: int, n: int) -> float:
    return wilson_interval(k, n)[1]


@given(st.integers(1, 400), st.data())
def test_wilson_intervals_hold_the_rate_and_widen_as_n_shrinks(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    wide_low, wide_high = wilson_interval(k, n, confidence=0.99)
    assert wide_low <= low and high <= wide_high
    if n % 2 == 0 and k % 2 == 0:  # the same rate on half the trials
        half_low, half_high = wilson_interval(k // 2, n // 2)
        assert half_high - half_low >= high - low


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="at least one trial, got n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"k must lie in \[0, n\]: k=4, n=3"):
        wilson_interval(4, 3)


def test_rate_summary_counts_k_of_n():
    summary = rate_summary([1, 0, 1, 1])
    assert (summary["k"], summary["n"], summary["rate"]) == (3, 4, 0.75)
    assert summary["ci95"] == list(wilson_interval(3, 4))
    with pytest.raises(ValueError, match="an outcome is 0 or 1, got 0.5"):
        rate_summary([0.5])


def test_mcnemar_exact_counts_only_the_discordant_prompts():
    before = {i: int(i != 11) for i in range(12)}  # unsafe under the pruned model
    after = {i: int(i >= 9) for i in range(13)}  # under HSR; prompt 12 is not shared
    result = mcnemar_exact(before, after)
    # discordant: 0..8 fixed by HSR (b = 9); 11 broken by it (c = 1); 9, 10 unsafe under both
    assert (result["b"], result["c"], result["n"]) == (9, 1, 12)
    assert result["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)  # 22/1024
    tie = mcnemar_exact({0: 1, 1: 0}, {0: 0, 1: 1})
    assert (tie["b"], tie["c"], tie["p_value"]) == (1, 1, 1.0)
    assert mcnemar_exact({0: 1}, {0: 1})["p_value"] == 1.0
    with pytest.raises(ValueError, match="share no prompt"):
        mcnemar_exact({0: 1}, {1: 1})


def test_rsr_is_the_share_of_lost_safety_won_back():
    assert rsr(0.1, 0.5, 0.3) == pytest.approx(0.5)
    assert rsr(0.2, 0.2, 0.1) is None


def _models(n: int, dense: int, pruned: int, realigned: int):
    """0/1 unsafe outcomes on n prompts: the first `dense`, `pruned`, `realigned` are unsafe."""
    return tuple({i: int(i < count) for i in range(n)} for count in (dense, pruned, realigned))


def test_the_bootstrap_is_seeded_holds_the_estimate_and_widens_as_n_shrinks():
    big = _models(400, 40, 200, 120)  # RSR (200 - 120) / (200 - 40) = 0.5
    first, again = paired_bootstrap_rsr(*big, seed=3), paired_bootstrap_rsr(*big, seed=3)
    assert first == again and first.resamples == 2000 and first.n == 400
    assert first.low < 0.5 < first.high
    other_seed = paired_bootstrap_rsr(*big, seed=4)
    assert (other_seed.low, other_seed.high) != (first.low, first.high)
    small = paired_bootstrap_rsr(*_models(40, 4, 20, 12), seed=3)  # the same rates, n / 10
    assert small.high - small.low > first.high - first.low
    assert first.as_json() == {
        "ci95": [first.low, first.high],
        "resamples": 2000,
        "undefined_resamples": first.undefined,
        "seed": 3,
        "n": 400,
    }


def test_a_bootstrap_where_pruning_costs_nothing_has_no_interval():
    same = paired_bootstrap_rsr(*_models(50, 5, 5, 5), resamples=200)
    assert (same.low, same.high, same.undefined) == (None, None, 200)
    with pytest.raises(ValueError, match="resamples must be >= 1, got 0"):
        paired_bootstrap_rsr(*_models(5, 1, 2, 1), resamples=0)
