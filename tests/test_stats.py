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
