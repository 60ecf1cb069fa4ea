from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.svm import SVC

from otolith_core.data import Dataset, ImageRecord
from otolith_core.embeddings import EmbeddingSet
from otolith_core.evaluation import compare, make_folds
from otolith_core.heads import HeadSpec


def _dataset(n=150, seed=0):
    rng = np.random.default_rng(seed)
    ages = np.repeat(np.arange(1, 6), n // 5)
    records = tuple(ImageRecord(path=Path(f"/x/{i}.png"), image=f"{i}.png", age=int(a))
                    for i, a in enumerate(ages))
    data = Dataset(Path("/x"), "folder", records)
    a = rng.normal(size=(n, 20)) + ages[:, None] * 0.4
    b = rng.normal(size=(n, 8)) + ages[:, None] * 0.1
    return data, {"enc-a": EmbeddingSet("enc-a", a.astype(np.float32), np.arange(n)),
                  "enc-b": EmbeddingSet("enc-b", b.astype(np.float32), np.arange(n))}


def test_cv_numbers_equal_a_direct_scikit_learn_loop():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=10, seed=0)
    X = sets["enc-a"].features.astype(np.float64)
    y = data.ages
    ridge_pred, svc_pred = np.empty_like(y), np.empty_like(y)
    for train, test in StratifiedKFold(10, shuffle=True, random_state=0).split(X, y):
        ridge = Ridge(alpha=6.0).fit(normalize(X[train]), y[train])
        ridge_pred[test] = np.clip(np.rint(ridge.predict(normalize(X[test]))), y[train].min(), y[train].max())
        svc_pred[test] = SVC(kernel="linear", C=0.1).fit(normalize(X[train]), y[train]).predict(normalize(X[test]))
    by_key = {(r.encoder, r.head.label): r for r in result.results}
    np.testing.assert_array_equal(by_key["enc-a", "ridge"].pred_age, ridge_pred)
    np.testing.assert_array_equal(by_key["enc-a", "svc"].pred_age, svc_pred)
    folds = result.folds_frame()
    ridge_folds = folds[(folds.encoder == "enc-a") & (folds["head"] == "ridge")]
    expected = [np.mean(ridge_pred[t] == y[t]) for _, t in StratifiedKFold(10, shuffle=True, random_state=0).split(X, y)]
    np.testing.assert_allclose(ridge_folds.accuracy.to_numpy(), expected)


def test_every_encoder_and_head_sees_the_same_folds():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=5, seed=3)
    folds = [r.fold for r in result.results]
    assert all(np.array_equal(folds[0], f) for f in folds)
    np.testing.assert_array_equal(folds[0], make_folds(data.ages, n_folds=5, seed=3)[0])
    assert len(result.tests) == 6 * 3  # 4 models -> 6 pairs, 3 metrics each


def test_images_missing_from_one_encoder_are_left_out_for_all():
    data, sets = _dataset()
    b = sets["enc-b"]
    sets["enc-b"] = EmbeddingSet("enc-b", b.features[1:], b.rows[1:])
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5)
    assert all("0.png" not in r.images for r in result.results)
    assert [s.path for s in result.skipped] == ["0.png"]


def test_sparse_ages_are_named_with_remedies():
    ages = np.array([1] * 3 + [2] * 20 + [3] * 20)
    folds, notes = make_folds(ages, n_folds=10)
    assert "age 1: 3" in notes[0] and "--age-range" in notes[0] and "--folds" in notes[0]
    with pytest.raises(ValueError, match="every age has fewer images"):
        make_folds(np.array([1, 1, 2, 2]), n_folds=3)
