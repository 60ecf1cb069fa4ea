import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.preprocessing import normalize
from sklearn.svm import SVC

from otolith_core.heads import HeadSpec, build_head, predict


def _data(seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.integers(1, 8, 120)
    features = rng.normal(size=(120, 12)) + ages[:, None] * 0.3
    return features, ages


def test_ridge_rounds_and_clips_to_the_training_age_range():
    X, y = _data()
    head = build_head(HeadSpec("ridge", alpha=6.0, scaling="l2")).fit(X[:100], y[:100])
    pred, raw = predict(head, X[100:] * 5)  # push predictions beyond the training range
    reference = Ridge(alpha=6.0).fit(normalize(X[:100]), y[:100]).predict(normalize(X[100:] * 5))
    np.testing.assert_allclose(raw, reference)
    np.testing.assert_array_equal(pred, np.clip(np.rint(reference), y[:100].min(), y[:100].max()))


@pytest.mark.parametrize("scaling,C", [("none", 0.1), ("l2", 50.0), ("standardize", 0.1)])
def test_svc_predicts_exactly_as_the_papers_linear_one_vs_one_svc(scaling, C):
    """Solved on a precomputed Gram matrix for speed, but the same model as SVC(kernel="linear", C=0.1)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    rng = np.random.default_rng(2)
    y = rng.integers(1, 11, 600)
    X = rng.normal(size=(600, 300)) + y[:, None] * 0.05
    head = build_head(HeadSpec("svc", C=C, scaling=scaling)).fit(X[:500], y[:500])
    scaler = {"none": [], "l2": [Normalizer()], "standardize": [StandardScaler()]}[scaling]
    reference = make_pipeline(*scaler, SVC(kernel="linear", C=C)).fit(X[:500], y[:500])
    np.testing.assert_array_equal(predict(head, X[500:])[0], reference.predict(X[500:]))
    assert len(set(reference.predict(X[500:]))) > 3  # a non-trivial comparison, not the majority class


def test_labels_name_non_default_parameters():
    assert HeadSpec("ridge").label == "ridge"
    assert HeadSpec("svc", C=1.0).label == "svc(C=1.0)"
    assert HeadSpec("ridge", scaling="none").label == "ridge"  # the scaling is a column of its own, not a name


@pytest.mark.parametrize("kwargs,match", [({"name": "lasso"}, "unknown head"), ({"name": "ridge", "alpha": 0}, "alpha"),
                                          ({"name": "svc", "scaling": "max"}, "unknown scaling")])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadSpec(**kwargs)


def _photos_of_fish(n_fish=120, photos=3, seed=0):
    """The issue's case: no age signal at all, and the photos of one fish nearly alike (``(features, ages, fish)``)."""
    rng = np.random.default_rng(seed)
    fish = np.repeat(np.arange(n_fish), photos)
    ages = rng.integers(1, 5, n_fish)[fish]
    features = rng.normal(size=(n_fish, 16))[fish] + 0.05 * rng.normal(size=(n_fish * photos, 16))
    return features, ages, fish


def _fish_on_one_side(splits, fish):
    return all(not set(fish[train]) & set(fish[validation]) for train, validation in splits)


def test_knn_given_the_fish_chooses_k_on_inner_splits_that_never_split_a_fish():
    """Ungrouped, a photo's nearest neighbour is its own fish's other photo: k = 1 scores 0.99 on ages that carry
    no signal. Grouped, the inner validation holds only unseen fish, and the leaked choice goes."""
    from otolith_core.heads import fit_head

    X, y, fish = _photos_of_fish()
    leaked = fit_head(HeadSpec("knn", scaling="l2"), X, y).named_steps["model"]
    assert leaked.best_ == {"n_neighbors": 1} and leaked.best_score_ > 0.95
    assert not _fish_on_one_side(leaked.splits_, fish)
    grouped = fit_head(HeadSpec("knn", scaling="l2"), X, y, groups=fish).named_steps["model"]
    assert len(grouped.splits_) == 5 and _fish_on_one_side(grouped.splits_, fish)
    assert grouped.best_["n_neighbors"] > 1 and grouped.best_score_ < 0.5


@pytest.mark.parametrize("n_fish,dim", [(120, 16), (20, 100)])  # fewer and more features than images
def test_ridge_cv_given_the_fish_chooses_alpha_on_grouped_folds_and_without_them_by_leave_one_out(n_fish, dim):
    """Grouped, alpha is the one ``RidgeCV`` would choose on the same group-aware splits (computed faster)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import StratifiedGroupKFold

    from otolith_core.heads import RIDGE_CV_ALPHAS, fit_head

    X, y, fish = _photos_of_fish(n_fish=n_fish)
    X = np.hstack([X, np.random.default_rng(1).normal(size=(X.shape[0], dim - X.shape[1]))])
    Xs = normalize(X)
    ungrouped = fit_head(HeadSpec("ridge-cv", scaling="l2"), X, y).named_steps["model"]
    assert ungrouped.splits_ is None
    assert ungrouped.alpha_ == RidgeCV(alphas=RIDGE_CV_ALPHAS).fit(Xs, y.astype(float)).alpha_  # as always
    grouped = fit_head(HeadSpec("ridge-cv", scaling="l2"), X, y, groups=fish).named_steps["model"]
    assert _fish_on_one_side(grouped.splits_, fish)
    splits = StratifiedGroupKFold(5, shuffle=True, random_state=0).split(Xs, y, fish)
    reference = RidgeCV(alphas=RIDGE_CV_ALPHAS, cv=splits, scoring="neg_mean_squared_error").fit(Xs, y.astype(float))
    assert grouped.alpha_ == reference.alpha_
    assert grouped.alpha_ > ungrouped.alpha_  # no signal: grouped, the penalty grows; leave-one-photo-out keeps it low


def test_inner_splits_with_few_fish_leave_one_fish_out_and_a_single_fish_is_split_by_photo():
    from otolith_core.heads import inner_cv, inner_splits

    fish = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 2, 0, 1])  # 4 fish, fewer than the 5 inner folds
    ages = np.array([1, 2, 3, 2])[fish]
    splits = inner_splits(ages, fish)
    assert sorted(np.unique(fish[validation]).tolist() for _, validation in splits) == [[0], [1], [2], [3]]
    one_fish = np.full(10, 3)
    alone = inner_splits(one_fish, np.zeros(10))
    expected = inner_cv().split(np.zeros((10, 1)), one_fish)
    assert all(np.array_equal(a, b) for pair in zip(alone, expected) for a, b in zip(*pair))


def test_l2_applied_once_gives_exactly_the_pipelines_numbers():
    """l2 scaling learns nothing from a fold, so it is applied once to every image; every head's out-of-fold
    predictions are the same as with the l2 step inside each fold's pipeline (bit for bit), combined parts too."""
    import numpy as np

    from otolith_core.cross_validation import _fit_fold, cross_validate_head
    from otolith_core.folds import make_folds
    from otolith_core.heads import HeadSpec, scale_rows_once

    rng = np.random.default_rng(0)
    ages = np.repeat(np.arange(1, 6), 16)
    features = rng.normal(size=(ages.size, 12)) + ages[:, None] * 0.3
    folds, _ = make_folds(ages, n_folds=4, seed=0)
    for head in (HeadSpec("ridge", scaling="l2"), HeadSpec("svc", scaling="l2"), HeadSpec("knn", scaling="l2"),
                 HeadSpec("ridge", scaling="auto"),
                 HeadSpec("ridge").for_encoder("l2+standardize", (5, 7))):
        once = cross_validate_head(features, ages, folds, head, n_jobs=1)
        in_pipeline = [_fit_fold(features, ages, folds == k, head, None) for k in range(4)]
        for k, (pred, raw, chosen, _) in enumerate(in_pipeline):
            np.testing.assert_array_equal(once.pred[folds == k], pred)
            np.testing.assert_array_equal(once.raw[folds == k], raw)
            np.testing.assert_equal(once.params[k], chosen)  # NaN where a parameter is not the head's
        _, fitted = scale_rows_once(head, features)
        assert "l2" not in fitted.scaling and "auto" not in fitted.scaling


def test_the_inner_cv_runs_on_training_sets_too_small_to_stratify():
    """A learning curve's smallest fractions leave every age with fewer images (or fish) than inner folds: the
    inner CV then splits without stratifying (grouped: by fish) instead of failing; ridge-cv, logistic and knn
    all fit."""
    import numpy as np

    from otolith_core.heads import HeadSpec, fit_head, inner_splits

    rng = np.random.default_rng(0)
    ages = np.repeat(np.arange(1, 7), 3)  # 3 images per age, 5 inner folds
    fish = np.array([f"F{i // 2}" for i in range(ages.size)])
    features = rng.normal(size=(ages.size, 4)) + ages[:, None]
    for groups in (None, fish):
        splits = inner_splits(ages, groups)
        assert len(splits) >= 2 and all(len(validation) for _, validation in splits)
        if groups is not None:
            assert all(not set(fish[train]) & set(fish[validation]) for train, validation in splits)
        for name in ("ridge-cv", "logistic", "knn"):
            fit_head(HeadSpec(name), features, ages, groups=groups).predict(features)
    assert len(inner_splits(ages[:4])) == 4  # fewer images than folds: leave one out
