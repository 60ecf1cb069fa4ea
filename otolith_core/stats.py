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
    p_holm: float = float("nan")


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


def corrected_t_test(a: np.ndarray, b: np.ndarray, *, test_train_ratio: float) -> tuple[float, float, float]:
    """Nadeau & Bengio's (2003) corrected resampled t-test over all R x k folds.

    ``t = mean(d) / sqrt((1/J + n_test/n_train) * var(d))`` with ``J`` folds, ``var`` with ddof=1 and
    ``J - 1`` degrees of freedom, two-sided. The ``n_test/n_train`` term accounts for folds sharing
    training images, which the plain paired t-test ignores.

    Returns
    -------
    (mean of a - b, t statistic, p value); NaN t and p when every difference is equal.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"corrected t-test needs two equal 1-d arrays of at least 2 folds, got {a.shape} and {b.shape}")
    if not test_train_ratio > 0:
        raise ValueError(f"test/train size ratio must be > 0, got {test_train_ratio!r}")
    d = a - b
    variance = float(d.var(ddof=1))
    mean = float(d.mean())
    if variance == 0.0:
        return mean, float("nan"), float("nan")
    t = mean / np.sqrt((1.0 / d.size + test_train_ratio) * variance)
    return mean, float(t), float(2 * scipy_stats.t.sf(abs(t), df=d.size - 1))


def wilcoxon_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Wilcoxon signed-rank test on per-fold differences: (mean of a - b, statistic, p); NaN when all differences are 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-d shapes, got {a.shape} and {b.shape}")
    d = a - b
    if not np.any(d != 0):
        return float(d.mean()), float("nan"), float("nan")
    nonzero = np.abs(d[d != 0])
    if d.size <= EXACT_FLIP_MAX and (nonzero.size < d.size or np.unique(nonzero).size < nonzero.size):
        # Ties or zeros: scipy runs an exact permutation test here, one Python call per sign pattern (0.3 s
        # for 10 folds, most of a comparison's time); the same statistic and p-value, all patterns at once:
        return float(d.mean()), *_sign_flip_test(d)
    result = scipy_stats.wilcoxon(d)
    return float(d.mean()), float(result.statistic), float(result.pvalue)


EXACT_FLIP_MAX = 13  # scipy's own limit for an exact sign-flip test when there are ties or zeros


def _sign_flip_test(d: np.ndarray) -> tuple[float, float]:
    """(min of the positive and negative rank sums, two-sided exact p over all 2^n sign flips), zeros dropped and
    ties given average ranks, as ``scipy.stats.wilcoxon`` computes them with ``permutation_test`` for n <= 13."""
    nonzero = d[d != 0]
    ranks = scipy_stats.rankdata(np.abs(nonzero))  # average ranks for ties
    observed = float(ranks[nonzero > 0].sum())
    statistic = min(observed, float(ranks.sum()) - observed)
    flips = (np.arange(2 ** nonzero.size)[:, None] >> np.arange(nonzero.size)) & 1  # every sign pattern
    null = flips @ ranks
    gamma = abs(1e-14 * observed)  # scipy's tolerance for ties between the observed and null statistics
    less = np.mean(null <= observed + gamma)
    greater = np.mean(null >= observed - gamma)
    return statistic, float(min(1.0, 2 * min(less, greater)))


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float, float]:
    """Exact McNemar test on per-image correctness of two models on the same images.

    Returns
    -------
    (accuracy of a - accuracy of b, statistic = min of the discordant counts, exact two-sided p)
    """
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-image correctness needs equal 1-d shapes, got {a.shape} and {b.shape}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    result = mcnemar(table, exact=True)
    return float(a.mean() - b.mean()), float(result.statistic), float(result.pvalue)


def bowker_symmetry(true: np.ndarray, pred: np.ndarray) -> tuple[float, int, float]:
    """Bowker's test that the reader-vs-model age table is symmetric (no systematic age bias).

    Returns
    -------
    (chi-square statistic, degrees of freedom, p value); pairs of cells that are both empty do not count.
    """
    true, pred = np.asarray(true, dtype=int), np.asarray(pred, dtype=int)
    ages = np.union1d(true, pred)
    index = {a: i for i, a in enumerate(ages)}
    table = np.zeros((ages.size, ages.size))
    np.add.at(table, ([index[a] for a in true], [index[a] for a in pred]), 1)
    upper = np.triu_indices(ages.size, k=1)
    above, below = table[upper], table.T[upper]
    used = (above + below) > 0
    if not used.any():
        return 0.0, 0, float("nan")
    statistic = float(np.sum((above[used] - below[used]) ** 2 / (above[used] + below[used])))
    df = int(used.sum())
    return statistic, df, float(scipy_stats.chi2.sf(statistic, df))


def evans_hoenig_symmetry(first: np.ndarray, second: np.ndarray) -> tuple[float, int, float]:
    """Evans & Hoenig's (1998) test that two readers' age table is symmetric, its off-diagonals pooled by distance.

    In the table of ``first`` (rows) against ``second`` (columns), the cells ``k`` years above the diagonal
    (``second - first == k``) are pooled into ``above_k`` and those ``k`` years below into ``below_k``;
    ``X2 = sum_k (above_k - below_k)^2 / (above_k + below_k)`` over the distances ``k >= 1`` with any image,
    chi-square with that many degrees of freedom. Pooling by distance makes it sensitive to one reader ageing
    systematically older or younger, which Bowker's cell-by-cell test (:func:`bowker_symmetry`) spreads thin.

    Parameters
    ----------
    first, second : ``(n_images,)`` whole ages of the same images by two readers (or a reader and a model).

    Returns
    -------
    (chi-square statistic, degrees of freedom, p value); (0, 0, NaN) when the two always agree.
    """
    first, second = np.asarray(first, dtype=int), np.asarray(second, dtype=int)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"two readings of the same images need equal 1-d shapes, got {first.shape} and {second.shape}")
    difference = second - first
    distances = np.unique(np.abs(difference[difference != 0]))
    if not distances.size:
        return 0.0, 0, float("nan")
    above = np.array([np.sum(difference == k) for k in distances], dtype=float)
    below = np.array([np.sum(difference == -k) for k in distances], dtype=float)
    statistic = float(np.sum((above - below) ** 2 / (above + below)))
    df = int(distances.size)
    return statistic, df, float(scipy_stats.chi2.sf(statistic, df))


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted.

    statsmodels' ``multipletests(method="holm")`` written out (the tests check they agree): that function
    runs a full garbage collection on every call, 0.06 s each once a run holds large arrays.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size:
        order = valid[np.argsort(p[valid], kind="stable")]
        stepped = np.maximum.accumulate(p[order] * np.arange(order.size, 0, -1))
        adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def age_bias(true: np.ndarray, pred: np.ndarray, *, confidence: float = 0.95) -> list[dict]:
    """Campana's age-bias table: per reader age, n, mean model age and its t confidence interval."""
    true, pred = np.asarray(true, dtype=int), np.asarray(pred, dtype=float)
    rows = []
    for age in np.unique(true):
        values = pred[true == age]
        mean = float(values.mean())
        if values.size > 1 and values.std(ddof=1) > 0:
            half = float(scipy_stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
        else:
            half = 0.0 if values.size > 1 else float("nan")
        rows.append({"true_age": int(age), "n": int(values.size), "mean_pred": mean,
                     "ci_low": mean - half, "ci_high": mean + half})
    return rows


BOOTSTRAP_METRICS = ("accuracy", "pm1_accuracy", "rmse")


def bootstrap_intervals(true: np.ndarray, pred: np.ndarray, groups: np.ndarray, *, draws: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy, ±1 accuracy and RMSE, resampling whole fish.

    Parameters
    ----------
    true, pred : ``(n_images,)`` reader and predicted ages (one out-of-fold prediction per image).
    groups : ``(n_images,)`` the fish of each image (its own id when it has none); fish are drawn with
        replacement and each brings all of its images, so photos of one fish never count as independent.
    draws : bootstrap samples; the fish of draw b are ``default_rng(seed).integers(0, n_fish, (draws,
        n_fish))[b]``, fish numbered in sorted order of their labels (the same draws for every model of a
        run, so intervals are paired).

    Returns
    -------
    ``{metric: (low, high)}`` at the ``confidence`` level (percentiles of the draws).
    """
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    if true.shape != pred.shape or true.ndim != 1 or len(groups) != true.size:
        raise ValueError(f"true {true.shape}, pred {pred.shape} and groups ({len(groups)}) must be equal 1-d lengths")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    fish, unit = np.unique(np.asarray(groups), return_inverse=True)
    chosen = np.random.default_rng(seed).integers(0, fish.size, size=(draws, fish.size))
    # how often each fish is drawn in each draw: one bincount over (draw, fish) pairs
    counts = np.bincount((np.arange(draws)[:, None] * fish.size + chosen).ravel(),
                         minlength=draws * fish.size).reshape(draws, fish.size).astype(np.float64)
    # per fish: images, exact hits, hits within a year, squared error; each draw's totals by one product
    error = pred - true
    per_image = np.stack([np.ones_like(true), error == 0, np.abs(error) <= 1, error**2], axis=1)
    per_fish = np.stack([np.bincount(unit, weights=column, minlength=fish.size) for column in per_image.T], axis=1)
    totals = counts @ per_fish
    n = totals[:, 0]
    values = {"accuracy": totals[:, 1] / n, "pm1_accuracy": totals[:, 2] / n, "rmse": np.sqrt(totals[:, 3] / n)}
    tail = 100 * (1 - confidence) / 2
    return {m: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for m, v in values.items()}
