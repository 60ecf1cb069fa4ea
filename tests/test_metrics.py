import numpy as np
import pytest

from otolith_core.metrics import accuracy, mae, mean_sd, pm1_accuracy, rmse, score


def test_metrics_against_hand_computation():
    true = np.array([3, 4, 5, 6])
    pred = np.array([3, 5, 7, 6])
    assert accuracy(true, pred) == 0.5
    assert pm1_accuracy(true, pred) == 0.75
    assert rmse(true, pred) == pytest.approx(np.sqrt((0 + 1 + 4 + 0) / 4))
    assert mae(true, pred) == 0.75
    assert set(score(true, pred)) == {"accuracy", "pm1_accuracy", "rmse", "mae", "ape", "cv", "macro_f1"}
    assert score(true, pred)["macro_f1"] == pytest.approx(2 / 5)  # ages 3..7: F1 1, 0, 0, 1, 0


def test_mean_sd_uses_the_sample_sd():
    mean, sd = mean_sd(np.array([1.0, 2.0, 3.0]))
    assert (mean, sd) == (2.0, 1.0)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        accuracy(np.array([1, 2]), np.array([1]))


def test_ape_and_cv_follow_the_fisheries_formulas():
    from otolith_core.metrics import average_percent_error, coefficient_of_variation

    true, pred = np.array([4, 5, 0]), np.array([6, 5, 0])
    # per fish: 100*2/10 = 20, 0, and 0 by convention when both readings are 0
    assert average_percent_error(true, pred) == pytest.approx(20 / 3)
    assert coefficient_of_variation(true, pred) == pytest.approx(np.sqrt(2) * 20 / 3)
    # CV from its definition with R = 2 readings: 100 * sd / mean per fish
    per_fish = [100 * np.std([4, 6], ddof=1) / 5, 0, 0]
    assert coefficient_of_variation(true, pred) == pytest.approx(np.mean(per_fish))


def test_macro_f1_equals_scikit_learn_over_read_and_predicted_ages():
    from sklearn.metrics import f1_score

    from otolith_core.metrics import macro_f1

    rng = np.random.default_rng(0)
    for _ in range(20):
        true = rng.integers(1, 9, 60)
        pred = np.clip(true + rng.integers(-2, 3, 60), 0, 11)  # predicts ages never read, misses others
        assert macro_f1(true, pred) == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    assert macro_f1(np.array([3, 3, 5]), np.array([3, 3, 3])) == pytest.approx((0.8 + 0.0) / 2)
