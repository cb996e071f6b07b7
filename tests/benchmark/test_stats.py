"""Statistics against hand-computed values and against SciPy's own tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PAIRED,
    SUPPORTED,
    WELCH,
    Comparison,
    compare,
    delta_m,
    delta_p,
    holm,
    relative_changes,
    round_to_spread,
    t_interval,
    verdict,
)


def test_t_interval_by_hand() -> None:
    # 1, 2, 3: mean 2, s = 1, t_{2, 0.975} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert (interval.mean, interval.std, interval.n) == (2.0, 1.0, 3)
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)


def test_t_interval_agrees_with_scipy_and_needs_two_values() -> None:
    x = [0.3, 0.9, 0.4, 0.7]
    low, high = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    interval = t_interval(x)
    assert (interval.low, interval.high) == pytest.approx((low, high))
    one = t_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.half_width)


def test_paired_test_by_hand_and_against_scipy() -> None:
    method = pd.Series([3.0, 5.0, 4.0], index=[0, 1, 2])
    base = pd.Series([1.0, 4.0, 2.0], index=[2, 0, 1])  # pairs by key, not by position
    # differences by seed: 3-4, 5-2, 4-1 = -1, 3, 3: mean 5/3, s = 2.3094, t = 1.25, df 2
    c = compare(method, base, higher_is_better=True)
    assert c.test == PAIRED and c.effect == pytest.approx(4.0 - 7.0 / 3.0)
    assert c.p == pytest.approx(sps.ttest_rel([3, 5, 4], [4, 2, 1]).pvalue)
    assert c.p == pytest.approx(2 * sps.t.sf(1.25, 2))
    half = sps.t.ppf(0.975, 2) * 2.309401 / math.sqrt(3)
    assert (c.low, c.high) == pytest.approx((5 / 3 - half, 5 / 3 + half), abs=1e-5)


def test_welch_test_when_the_runs_do_not_share_seeds_and_sign_of_lower_is_better() -> None:
    method = pd.Series([1.0, 2.0, 3.0], index=[0, 1, 2])
    base = pd.Series([4.0, 6.0, 8.0, 6.0], index=[0, 1, 2, 3])
    c = compare(method, base, higher_is_better=False)
    expected = sps.ttest_ind([1, 2, 3], [4, 6, 8, 6], equal_var=False)
    assert c.test == WELCH and c.p == pytest.approx(expected.pvalue)
    assert c.effect == pytest.approx(4.0)  # lower is better: 6 - 2
    ci = expected.confidence_interval(0.95)
    assert (c.low, c.high) == pytest.approx((-ci.high, -ci.low))
    # Welch by hand: se^2 = 1/3 + (8/3)/4 = 1; t = -4; p = 2 sf(4, df)
    df = 1.0 / ((1 / 3) ** 2 / 2 + (2 / 3) ** 2 / 3)
    assert c.p == pytest.approx(2 * sps.t.sf(4.0, df))


def test_one_run_gives_no_p_value() -> None:
    c = compare(pd.Series([1.0]), pd.Series([0.0, 1.0]), True)
    assert math.isnan(c.p) and c.effect == 0.5


def test_holm_on_a_hand_example() -> None:
    # sorted 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (running max), 0.5
    adjusted = holm([0.03, 0.5, 0.01, math.nan, 0.02])
    assert adjusted[[0, 1, 2, 4]] == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert math.isnan(adjusted[3])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0


def comparison(effect: float) -> Comparison:
    return Comparison(PAIRED, effect, effect - 1, effect + 1, 0.0, 3, 3)


def test_verdicts() -> None:
    assert verdict([comparison(1.0), comparison(2.0)], [0.01, 0.02]) == SUPPORTED
    assert verdict([comparison(1.0), comparison(2.0)], [0.01, 0.2]) == INCONCLUSIVE
    assert verdict([comparison(1.0), comparison(-2.0)], [0.01, 0.01]) == NOT_SUPPORTED
    assert verdict([], []) == INCONCLUSIVE


def test_delta_m_and_delta_p_by_hand() -> None:
    means = pd.Series({"acc/a": 0.9, "acc/b": 0.6, "loss/a": 1.5, "mean": 2.0})
    ref = pd.Series({"acc/a": 0.8, "acc/b": 0.8, "loss/a": 1.0, "mean": 2.0})
    higher = pd.Series({"acc/a": True, "acc/b": True, "loss/a": False, "mean": True})
    changes = relative_changes(means, ref, higher)
    assert changes.to_numpy() == pytest.approx([-0.125, 0.25, 0.5, 0.0])
    assert delta_m(changes) == pytest.approx(100 * 0.625 / 4)
    # tasks: a = (-0.125 + 0.5) / 2 = 0.1875, b = 0.25, "mean" its own task = 0 -> mean 0.145833
    tasks = {"acc/a": "a", "loss/a": "a", "acc/b": "b"}
    assert delta_p(changes, tasks) == pytest.approx(100 * (0.1875 + 0.25 + 0.0) / 3)
    assert delta_p(changes, {}) == pytest.approx(delta_m(changes))


@pytest.mark.parametrize(
    ("mean", "half", "expected"),
    [
        (0.91234, 0.00421, ("0.9123", "0.0042")),
        (0.91234, 0.0996, ("0.91", "0.10")),
        (4567.8, 123.0, ("4570", "120")),
        (0.5, math.nan, ("0.5", "")),
        (1.23456, 0.0, ("1.235", "")),
        (math.nan, 0.1, ("—", "")),
    ],
)
def test_rounding_to_the_spread(mean: float, half: float, expected: tuple[str, str]) -> None:
    assert round_to_spread(mean, half) == expected
