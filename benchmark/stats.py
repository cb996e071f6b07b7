"""Statistics over seeds: Student-t intervals, tests against a baseline, Holm's correction, Δp, rounding.

Every distribution comes from SciPy (``scipy.stats.t``, ``ttest_rel``, ``ttest_ind``); only Holm's
step-down adjustment is written here (SciPy ships Benjamini-Hochberg, not Holm).

Effects are *improvements*: ``mean(method) - mean(baseline)``, negated where lower is better, so a
positive effect always means the method is better.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
PAIRED, WELCH = "paired t", "Welch t"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """Mean, std (ddof 1), the half-width of the two-sided Student-t interval and the count."""

    mean: float
    std: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The Student-t interval of the mean, ``mean ± t_{n-1, (1+c)/2} s / sqrt(n)`` (NaN below 2 values)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return Interval(float(x[0]), math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(float(x.mean()), std, half, n)


@dataclass(frozen=True)
class Comparison:
    """A method against a reference on one metric.

    Attributes:
        test: :data:`PAIRED` (both ran on the same seeds and task instances) or :data:`WELCH`.
        effect: the improvement of the method's mean over the reference's (positive: better).
        low, high: the ``CONFIDENCE`` interval of the effect (of the paired differences for the paired
            test, Welch-Satterthwaite for Welch's).
        p: the two-sided p-value (NaN when a side has fewer than 2 runs, or both are constant).
        n, n_reference: the runs on each side.
    """

    test: str
    effect: float
    low: float
    high: float
    p: float
    n: int
    n_reference: int


def compare(
    method: pd.Series, reference: pd.Series, higher_is_better: bool, confidence: float = CONFIDENCE
) -> Comparison:
    """Test ``method`` against ``reference``, each one value per run indexed by its pairing key (seed
    and task instance): paired t-test (``scipy.stats.ttest_rel``) when both hold the same keys, Welch's
    t-test (``ttest_ind(equal_var=False)``) otherwise."""
    sign = 1.0 if higher_is_better else -1.0
    paired = len(method) >= 2 and set(method.index) == set(reference.index)
    test, effect = PAIRED if paired else WELCH, sign * (float(method.mean()) - float(reference.mean()))
    counts = len(method), len(reference)
    if min(counts) < 2:
        return Comparison(test, effect, math.nan, math.nan, math.nan, *counts)
    with warnings.catch_warnings():  # (nearly) identical runs, as of deterministic methods: SciPy warns
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        if paired:
            result = stats.ttest_rel(method.to_numpy(float), reference[method.index].to_numpy(float))
        else:
            result = stats.ttest_ind(method.to_numpy(float), reference.to_numpy(float), equal_var=False)
    ci = result.confidence_interval(confidence)
    low, high = sorted((sign * float(ci.low), sign * float(ci.high)))
    return Comparison(test, effect, low, high, float(result.pvalue), *counts)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values, in the input order; NaNs stay NaN and do not count.

    With the m finite p-values sorted ascending, ``p_(i) * (m - i + 1)`` (i from 1), made
    non-decreasing by a running maximum and capped at 1; rejecting where the adjusted value is below
    alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def verdict(comparisons: Sequence[Comparison], adjusted: Sequence[float], alpha: float = ALPHA) -> str:
    """A claim "better than each reference": :data:`SUPPORTED` when every comparison is significantly
    better (Holm-adjusted p below ``alpha``, positive effect), :data:`NOT_SUPPORTED` when any is
    significantly worse, else :data:`INCONCLUSIVE` (not enough evidence either way)."""
    better = [p < alpha and c.effect > 0 for c, p in zip(comparisons, adjusted, strict=True)]
    worse = [p < alpha and c.effect < 0 for c, p in zip(comparisons, adjusted, strict=True)]
    if comparisons and all(better):
        return SUPPORTED
    return NOT_SUPPORTED if any(worse) else INCONCLUSIVE


def relative_changes(
    means: pd.Series, reference: pd.Series, higher_is_better: pd.Series
) -> pd.Series:
    """Per metric, ``(−1)^{h} (M_m − M_b) / M_b`` (h = 1 where higher is better): negative is better."""
    sign = np.where(higher_is_better.astype(bool), -1.0, 1.0)
    return sign * (means - reference) / reference


def delta_m(changes: pd.Series) -> float:
    """Δm% (Maninis et al. 2019; Navon et al. 2022): the mean relative change over all K metrics, in %."""
    return 100.0 * float(changes.mean())


def delta_p(changes: pd.Series, tasks: Mapping[Hashable, Hashable]) -> float:
    """Δp (LibMTL, Lin & Zhang 2023): the mean relative change within each task first, then the mean
    over tasks, in %. ``tasks`` maps a metric to its task; a metric it leaves out is a task of its own."""
    groups = [str(tasks.get(name, f"metric {name}")) for name in changes.index]
    changes = pd.Series(changes.to_numpy(), index=groups)
    return 100.0 * float(changes.groupby(level=0).mean().mean())


def round_to_spread(mean: float, half_width: float, digits: int = 2) -> tuple[str, str]:
    """``mean`` and ``half_width`` as text, the half-width to ``digits`` significant digits and the mean
    to the same decimal place (``0.91234, 0.00421`` -> ``"0.9123", "0.0042"``). Without a finite,
    positive spread, the mean keeps 4 significant digits and the spread is ``""``."""
    if not math.isfinite(mean):
        return "—", ""
    if not (math.isfinite(half_width) and half_width > 0):
        return f"{mean:.4g}", ""
    decimals = digits - 1 - math.floor(math.log10(half_width))
    rounded = round(half_width, decimals)
    if rounded >= 10 ** (digits - decimals):  # 0.0996 -> 0.10: one digit fewer
        decimals -= 1
    places = max(decimals, 0)
    return f"{round(mean, decimals):.{places}f}", f"{round(half_width, decimals):.{places}f}"
