"""Comparisons between models across the same folds: pure functions, typed results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class PairedTest:
    """A paired test of model A against model B on one metric (``mean_diff`` = mean of A - B)."""

    metric: str
    encoder_a: str
    head_a: str
    encoder_b: str
    head_b: str
    mean_diff: float
    t: float
    p_value: float
    test: str = "paired_t"


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Two-sided paired t-test of per-fold scores ``a`` against ``b``.

    Returns
    -------
    (mean of a - b, t statistic, p value); t and p are NaN when every difference is equal
    (no variance to test against), as in ``scipy.stats.ttest_rel``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-d shapes, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 folds, got {a.size}")
    d = a - b
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return mean, float("nan"), float("nan")
    t = mean / (sd / np.sqrt(d.size))
    p = float(2 * scipy_stats.t.sf(abs(t), df=d.size - 1))
    return mean, float(t), p
