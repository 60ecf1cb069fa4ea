import numpy as np
import pytest
from scipy.stats import ttest_rel

from otolith_core.stats import paired_t_test


def test_paired_t_equals_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.random(10), rng.random(10)
    diff, t, p = paired_t_test(a, b)
    reference = ttest_rel(a, b)
    assert diff == pytest.approx(np.mean(a - b))
    assert t == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)


def test_paired_t_by_hand():
    a, b = np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.4, 0.4])  # d = 0.1, 0.2, 0.3
    diff, t, _ = paired_t_test(a, b)
    assert diff == pytest.approx(0.2) and t == pytest.approx(0.2 / (0.1 / np.sqrt(3)))


def test_identical_differences_give_nan_not_infinity():
    diff, t, p = paired_t_test(np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    assert diff == 0 and np.isnan(t) and np.isnan(p)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        paired_t_test(np.ones(3), np.ones(4))


def test_corrected_t_by_hand():
    from otolith_core.stats import corrected_t_test

    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.00])
    diff, t, p = corrected_t_test(d, np.zeros(6), test_train_ratio=1 / 9)
    expected_t = d.mean() / np.sqrt((1 / 6 + 1 / 9) * d.var(ddof=1))
    assert diff == pytest.approx(d.mean()) and t == pytest.approx(expected_t)
    from scipy.stats import t as student

    assert p == pytest.approx(2 * student.sf(abs(expected_t), df=5))
    naive = paired_t_test(d, np.zeros(6))[1]
    assert abs(t) < abs(naive)  # the correction widens the interval


def test_mcnemar_against_statsmodels_on_a_hand_table():
    from statsmodels.stats.contingency_tables import mcnemar

    from otolith_core.stats import mcnemar_test

    # both right 10, only A right 5, only B right 1, both wrong 4
    a = np.array([1] * 10 + [1] * 5 + [0] * 1 + [0] * 4, dtype=bool)
    b = np.array([1] * 10 + [0] * 5 + [1] * 1 + [0] * 4, dtype=bool)
    diff, statistic, p = mcnemar_test(a, b)
    reference = mcnemar(np.array([[10, 5], [1, 4]]), exact=True)
    assert diff == pytest.approx((15 - 11) / 20) and statistic == 1 and p == pytest.approx(reference.pvalue)
    assert p == pytest.approx(2 * (1 + 6) / 2**6)  # binomial(6, 1/2): P(X <= 1) doubled


def test_bowker_by_hand_and_against_statsmodels():
    from statsmodels.stats.contingency_tables import SquareTable

    from otolith_core.stats import bowker_symmetry

    table = np.array([[5, 2, 1], [3, 6, 2], [0, 4, 7]])
    true = np.repeat(np.repeat([1, 2, 3], 3), table.ravel())
    pred = np.repeat(np.tile([1, 2, 3], 3), table.ravel())
    statistic, df, p = bowker_symmetry(true, pred)
    assert statistic == pytest.approx((2 - 3) ** 2 / 5 + (1 - 0) ** 2 / 1 + (2 - 4) ** 2 / 6) and df == 3
    reference = SquareTable(table, shift_zeros=False).symmetry()
    assert statistic == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)


def test_evans_hoenig_pools_the_off_diagonals_by_distance_by_hand():
    """The Bowker table above: 1 year apart, above the diagonal 2 + 2, below 3 + 4; 2 years apart, 1 above and 0
    below: X2 = (4 - 7)^2 / 11 + (1 - 0)^2 / 1 = 20/11 on 2 df, whose chi-square tail is exp(-X2 / 2)."""
    from otolith_core.stats import evans_hoenig_symmetry

    table = np.array([[5, 2, 1], [3, 6, 2], [0, 4, 7]])
    first = np.repeat(np.repeat([1, 2, 3], 3), table.ravel())
    second = np.repeat(np.tile([1, 2, 3], 3), table.ravel())
    statistic, df, p = evans_hoenig_symmetry(first, second)
    assert statistic == pytest.approx(20 / 11) and df == 2 and p == pytest.approx(np.exp(-10 / 11))
    assert evans_hoenig_symmetry(second, first)[0] == pytest.approx(20 / 11)  # symmetric in the two readers
    statistic, df, p = evans_hoenig_symmetry([3, 4, 5], [3, 4, 5])
    assert (statistic, df) == (0.0, 0) and np.isnan(p)
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        evans_hoenig_symmetry([1, 2], [1, 2, 3])


@pytest.mark.slow
def test_holm_matches_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests

    from otolith_core.stats import holm_adjust

    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    adjusted = holm_adjust(p)
    assert np.isnan(adjusted[2])
    np.testing.assert_allclose(adjusted[[0, 1, 3, 4]], multipletests(p[[0, 1, 3, 4]], method="holm")[1])
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):  # ties, values clipped at 1, unsorted input
        p = np.round(rng.random(n) ** 2, 2)
        np.testing.assert_allclose(holm_adjust(p), multipletests(p, method="holm")[1])


def test_age_bias_uses_a_t_interval():
    from scipy.stats import t as student

    from otolith_core.stats import age_bias

    rows = age_bias(np.array([3, 3, 3, 4]), np.array([3, 4, 5, 4]))
    three = rows[0]
    half = student.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert three["n"] == 3 and three["mean_pred"] == 4.0
    assert three["ci_low"] == pytest.approx(4 - half) and three["ci_high"] == pytest.approx(4 + half)
    assert np.isnan(rows[1]["ci_low"])  # one fish: no interval


@pytest.mark.slow
def test_wilcoxon_with_ties_and_zeros_equals_scipy_exactly():
    from scipy import stats as scipy_stats

    from otolith_core.stats import wilcoxon_test

    rng = np.random.default_rng(0)
    # 13: the largest n scipy enumerates every sign (2 s a draw there: scipy calls its statistic once per sign
    # pattern), so one draw checks that limit; ties and zeros are checked by four draws each at 5 and 10. 14: past
    # the limit, scipy's normal approximation is used as it is.
    for n, draws in ((5, 4), (10, 4), (13, 1), (14, 4)):
        for _ in range(draws):
            a = rng.integers(0, 6, n) / 10  # coarse scores: ties and zero differences, as fold accuracies have
            b = rng.integers(0, 6, n) / 10
            if not np.any(a != b):
                continue
            expected = scipy_stats.wilcoxon(a - b)
            _, statistic, p = wilcoxon_test(a, b)
            assert statistic == expected.statistic and p == pytest.approx(expected.pvalue, rel=1e-12), (a, b)


def test_bootstrap_intervals_equal_a_plain_loop_over_the_documented_draws():
    from otolith_core.stats import bootstrap_intervals

    rng = np.random.default_rng(5)
    true = rng.integers(1, 8, 90)
    pred = np.clip(true + rng.integers(-2, 3, 90), 1, 9)
    groups = np.array([f"fish{i // 2:03d}" for i in range(90)])  # two photos per fish
    got = bootstrap_intervals(true, pred, groups, draws=200, seed=7)
    fish = np.unique(groups)
    draws = np.random.default_rng(7).integers(0, fish.size, size=(200, fish.size))
    acc, pm1, rmse = [], [], []
    for draw in draws:
        take = np.concatenate([np.flatnonzero(groups == fish[f]) for f in draw])  # every image of each drawn fish
        t, p = true[take], pred[take]
        acc.append(np.mean(t == p))
        pm1.append(np.mean(np.abs(t - p) <= 1))
        rmse.append(np.sqrt(np.mean((t - p) ** 2)))
    for metric, values in (("accuracy", acc), ("pm1_accuracy", pm1), ("rmse", rmse)):
        assert got[metric] == pytest.approx((np.percentile(values, 2.5), np.percentile(values, 97.5)))
    low, high = got["accuracy"]
    assert low < np.mean(true == pred) < high
