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


# ---- the inner searches against scikit-learn's exhaustive grid, and class weights --------------------------------

def _ages_and_features(n=150, dim=12, n_ages=5, seed=0, uneven=False):
    rng = np.random.default_rng(seed)
    ages = rng.choice(np.arange(1, n_ages + 1), n, p=np.linspace(3, 1, n_ages) / np.linspace(3, 1, n_ages).sum()
                      if uneven else None)
    return normalize(rng.normal(size=(n, dim)) + 0.4 * ages[:, None] * rng.normal(size=dim)), ages


def _exhaustive_logistic(X, y, splits, balanced):
    """scikit-learn's exhaustive grid, each fit to full precision (its default tolerance leaves near ties to chance).

    By Newton steps (``newton-cg``): at ``tol=1e-10`` they reach the optimum's probabilities to about 1e-11 (as
    ``newton-cholesky`` does), where L-BFGS stopped about 5e-7 short of it, and in a third to a half of its time."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    from otolith_core.heads import LOGISTIC_CS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GridSearchCV(LogisticRegression(solver="newton-cg", max_iter=100_000, tol=1e-10,
                                               class_weight="balanced" if balanced else None),
                            {"C": list(LOGISTIC_CS)}, cv=splits,
                            scoring="balanced_accuracy" if balanced else "accuracy").fit(X, y)


@pytest.mark.parametrize("grouped,balanced,wide", [(False, False, False), (True, False, False), (False, True, False),
                                                   (False, False, True)], ids=["plain", "fish", "balanced", "wide"])
def test_logistic_search_chooses_as_the_exhaustive_grid_and_fits_the_same_model(grouped, balanced, wide):
    """Every split's validation score, the chosen C and the refitted model's probabilities equal scikit-learn's
    GridSearchCV over LogisticRegression (grouped by fish: the same grouped inner splits; balanced: class_weight
    "balanced" scored by balanced accuracy; wide: more features than images, as pixels of a small set)."""
    from otolith_core.heads import fit_head

    X, y = _ages_and_features(n=90, dim=300) if wide else _ages_and_features(uneven=balanced)
    fish = np.arange(y.size) // 2 if grouped else None
    model = fit_head(HeadSpec("logistic", scaling="none", class_weight="balanced" if balanced else "none"), X, y,
                     groups=fish).named_steps["model"]
    if grouped:
        assert _fish_on_one_side(model.splits_, fish)
    search = _exhaustive_logistic(X, y, model.splits_, balanced)
    reference = np.array([search.cv_results_[f"split{s}_test_score"] for s in range(len(model.splits_))])
    np.testing.assert_allclose(model.scores_, reference)
    assert model.best_["C"] == search.best_params_["C"]
    assert len(set(reference.mean(axis=0).round(6))) > 2  # the grid's scores differ: a real choice
    np.testing.assert_array_equal(model.classes_, search.classes_)
    np.testing.assert_allclose(model.predict_proba(X), search.predict_proba(X), atol=1e-3)  # searches.PRECISION


def test_logistic_on_two_ages_is_scikit_learns_binomial_model():
    """scikit-learn fits two classes as one binomial model (not a two-column multinomial one): the same numbers."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from otolith_core.searches import logistic_search

    X, y = _ages_and_features(n=80, n_ages=2)
    search = logistic_search(X, y, [(np.arange(40, 80), np.arange(40))], [1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LogisticRegression(C=1.0, max_iter=100_000, tol=1e-10).fit(X, y)
    logits = X @ search.coef + search.intercept
    np.testing.assert_allclose(np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1), reference.predict_proba(X)[:, 1],
                               atol=1e-4)


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "fish"])
def test_knn_search_scores_every_k_as_the_exhaustive_grid(grouped):
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier

    from otolith_core.heads import fit_head

    X, y = _ages_and_features(n=200, dim=8)
    fish = np.arange(y.size) // 2 if grouped else None
    model = fit_head(HeadSpec("knn", scaling="none"), X, y, groups=fish).named_steps["model"]
    search = GridSearchCV(KNeighborsClassifier(metric="cosine", algorithm="brute"), {"n_neighbors": [1, 3, 5, 7, 11, 15, 21]},
                          cv=model.splits_).fit(X, y)
    reference = np.array([search.cv_results_[f"split{s}_test_score"] for s in range(len(model.splits_))])
    np.testing.assert_array_equal(model.scores_, reference)
    assert model.best_ == search.best_params_
    np.testing.assert_array_equal(model.predict(X[:50] + 0.01), search.predict(X[:50] + 0.01))


def test_balanced_ridge_ridge_cv_and_svc_equal_scikit_learn_fitted_with_the_same_weights():
    """ridge and ridge-cv: sample weights compute_sample_weight("balanced") (ridge-cv's leave-one-out search weighted
    as RidgeCV weighs it; grouped, each split fitted and scored with its rows' weights); svc: class_weight."""
    from sklearn.linear_model import RidgeCV
    from sklearn.utils.class_weight import compute_sample_weight

    from otolith_core.heads import RIDGE_CV_ALPHAS, fit_head, predict

    X, y = _ages_and_features(n=160, uneven=True)
    weights = compute_sample_weight("balanced", y)
    head = fit_head(HeadSpec("ridge", scaling="none", class_weight="balanced"), X, y)
    np.testing.assert_allclose(predict(head, X)[1], Ridge(alpha=6.0).fit(X, y, sample_weight=weights).predict(X))
    assert not np.allclose(predict(head, X)[1], Ridge(alpha=6.0).fit(X, y).predict(X))  # the weights change the fit
    ungrouped = fit_head(HeadSpec("ridge-cv", scaling="none", class_weight="balanced"), X, y).named_steps["model"]
    assert ungrouped.alpha_ == RidgeCV(alphas=RIDGE_CV_ALPHAS).fit(X, y.astype(float), sample_weight=weights).alpha_
    fish = np.arange(y.size) // 2
    grouped = fit_head(HeadSpec("ridge-cv", scaling="none", class_weight="balanced"), X, y, groups=fish)
    errors = [np.mean([np.average((y[v] - Ridge(alpha=a).fit(X[t], y[t], sample_weight=weights[t]).predict(X[v])) ** 2,
                                  weights=weights[v]) for t, v in grouped.named_steps["model"].splits_])
              for a in RIDGE_CV_ALPHAS]
    assert grouped.named_steps["model"].alpha_ == RIDGE_CV_ALPHAS[int(np.argmin(errors))]
    svc = fit_head(HeadSpec("svc", C=1.0, scaling="none", class_weight="balanced"), X, y)
    reference = SVC(kernel="linear", C=1.0, class_weight="balanced").fit(X, y)
    np.testing.assert_array_equal(predict(svc, X)[0], reference.predict(X))


def test_knn_has_no_class_weights_and_a_note_says_so():
    from otolith_core.heads import class_weight_notes, fit_head

    X, y = _ages_and_features()
    weighted = fit_head(HeadSpec("knn", scaling="none", class_weight="balanced"), X, y)
    plain = fit_head(HeadSpec("knn", scaling="none"), X, y)
    np.testing.assert_array_equal(weighted.predict(X), plain.predict(X))
    assert HeadSpec("knn", class_weight="balanced").fitted_class_weight == "none"
    heads = [HeadSpec("ridge", class_weight="balanced"), HeadSpec("knn", class_weight="balanced")]
    notes = class_weight_notes(heads)
    assert len(notes) == 1 and notes[0].severity == "warning" and "knn has no class weights" in notes[0].message
    assert class_weight_notes([HeadSpec("knn")]) == []
    with pytest.raises(ValueError, match="unknown class weight"):
        HeadSpec("ridge", class_weight="inverse")


# ---- knn's neighbour lists: float32 search, float64 order, any subset read exactly ------------------------------

def _brute_nearest(X, queries, candidates, k):
    """The k nearest candidates (positions in ``candidates``) by float64 cosine distance, as scikit-learn finds them."""
    from sklearn.metrics.pairwise import cosine_distances

    distance = cosine_distances(X[queries], X[candidates])
    return np.argsort(distance, axis=1, kind="stable")[:, :k]


def test_cosine_neighbours_read_the_exact_nearest_of_any_subset_even_where_float32_cannot_tell_them_apart():
    """Each query's lists are found in float32 but ordered in float64: two candidates whose cosines differ by 1e-9 (far
    below float32's resolution) come out in scikit-learn's order. A subset (restrict, allowed) reads the same answer
    as a search of that subset alone, from the lists where they hold enough and computed in full where not."""
    from otolith_core.searches import cosine_neighbours

    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 24))
    direction = rng.normal(size=24)
    X[150:] = direction + 1e-4 * rng.normal(size=(10, 24))  # ten near-twins: cosines within ~1e-8 of each other
    table = cosine_neighbours(X, depth=12)
    np.testing.assert_array_equal(table.nearest(10, queries=np.arange(150, 160)),
                                  _brute_nearest(X, np.arange(150, 160), np.arange(160), 10))
    allowed = rng.random(160) < 0.4  # most lists hold fewer than k allowed entries: those rows computed in full
    queries = np.flatnonzero(~allowed)
    np.testing.assert_array_equal(table.nearest(7, queries=queries, allowed=allowed),
                                  np.flatnonzero(allowed)[_brute_nearest(X, queries, np.flatnonzero(allowed), 7)])
    train, test = np.arange(40, 160), np.arange(40)
    restricted = table.restrict(test, train)
    np.testing.assert_array_equal(restricted.nearest(5), _brute_nearest(X, test, train, 5))
    with pytest.raises(ValueError, match="k = 121 neighbours asked of 120 allowed"):
        restricted.nearest(121)


def test_cosine_neighbours_trust_no_list_whose_end_float32_cannot_place():
    """A query with twelve candidates at cosine 0.9 +- 1e-9 (float32 rounds them alike) and lists of 5: which ones the
    float32 search leaves out is chance, so the rounding bound trusts no list there and the query is computed in
    float64 (with no allowance for float32's rounding, this list would be read as complete, and be wrong)."""
    from otolith_core.searches import cosine_neighbours

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 24))
    q, side = normalize(rng.normal(size=(2, 24)))
    side = normalize([side - (side @ q) * q])[0]
    ring = 0.9 * q + np.sqrt(1 - 0.81) * side + 1e-9 * rng.normal(size=(12, 1)) * q
    Y = np.vstack([X, q, ring])
    np.testing.assert_array_equal(cosine_neighbours(Y, depth=5).nearest(4, queries=[100]),
                                  _brute_nearest(Y, [100], np.arange(len(Y)), 4))


def test_knn_votes_break_ties_for_the_smallest_class_as_scikit_learn():
    """With many ages, three neighbours often hold three ages: the smallest wins, as scikit-learn's mode gives it."""
    from scipy.stats import mode

    from otolith_core.searches import majority_votes

    codes = np.random.default_rng(0).integers(0, 6, (500, 7))
    votes = majority_votes(codes, [1, 2, 3, 5, 7], 6)
    for j, k in enumerate([1, 2, 3, 5, 7]):
        np.testing.assert_array_equal(votes[:, j], mode(codes[:, :k], axis=1).mode.ravel())


@pytest.mark.parametrize("lists", ["own", "shared", "shared-short"])
def test_knn_fold_chooses_k_and_predicts_as_grid_search_and_scikit_learn(lists):
    """One outer fold of the knn head: its own lists, a table of every image restricted to the fold (as
    cross_validate_head shares it), or one so short that most rows are computed in full. Every inner split's score,
    the chosen k and the test fold's predictions equal GridSearchCV's over KNeighborsClassifier."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier

    from otolith_core.cross_validation import _fit_fold
    from otolith_core.heads import KNN_KS, fit_head, shared_neighbours
    from otolith_core.searches import cosine_neighbours

    X, y = _ages_and_features(n=240, dim=8, n_ages=7)
    test = np.arange(y.size) % 4 == 0
    spec = HeadSpec("knn", scaling="none")
    table = {"own": None, "shared": shared_neighbours(spec, X), "shared-short": cosine_neighbours(X, depth=6)}[lists]
    pred, _, chosen, _ = _fit_fold(X, y, test, spec, None, table)
    model = fit_head(spec, X[~test], y[~test]).named_steps["model"]  # the same inner splits
    search = GridSearchCV(KNeighborsClassifier(metric="cosine", algorithm="brute"), {"n_neighbors": list(KNN_KS)},
                          cv=model.splits_).fit(X[~test], y[~test])
    np.testing.assert_array_equal(model.scores_, np.array([search.cv_results_[f"split{s}_test_score"]
                                                           for s in range(len(model.splits_))]))
    assert chosen["k"] == search.best_params_["n_neighbors"]
    assert len(set(search.cv_results_["mean_test_score"].round(6))) > 2  # the ks score differently: a real choice
    np.testing.assert_array_equal(pred, search.predict(X[test]))
