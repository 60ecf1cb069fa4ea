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
