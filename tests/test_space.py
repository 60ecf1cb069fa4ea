import numpy as np
import pytest
from sklearn.decomposition import PCA

from otolith_core.charts import embedding_map
from otolith_core.space import nearest, project, scaled, umap_available


def _features(n=60, dim=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)) + np.linspace(0, 3, n)[:, None]


def test_the_pca_map_equals_scikit_learns():
    features = scaled(_features(), "l2")
    np.testing.assert_allclose(project(features), PCA(n_components=2, svd_solver="full").fit_transform(features))
    assert project(features[:, :1]).shape == (60, 2)  # one feature: a line


def test_neighbours_equal_a_brute_force_cosine_search():
    features = _features()
    found = nearest(features, 7, k=5)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    brute = sorted(((float(unit[7] @ unit[j]), j) for j in range(60) if j != 7), key=lambda t: (-t[0], t[1]))[:5]
    assert found.index.tolist() == [j for _, j in brute]
    np.testing.assert_allclose(found.similarity, [s for s, _ in brute])
    assert 7 not in found.index
    with pytest.raises(ValueError, match="not among the 60"):
        nearest(features, 60)


def test_neighbours_with_ties_take_the_lower_row_first():
    features = np.vstack([np.ones((1, 3)), np.tile([[1.0, 2, 3]], (5, 1)), [[0.0, 0, 0]], [[1.0, 1, 1.1]]])
    found = nearest(features, 0, k=3)
    assert found.index.tolist() == [7, 1, 2]  # the near-copy, then the tied copies in row order
    blank = nearest(features, 6, k=2)  # a row of zeros is as similar to every row (0): row order decides
    assert blank.index.tolist() == [0, 1] and blank.similarity.tolist() == [0.0, 0.0]
    assert len(nearest(features[:1], 0, k=3).index) == 0


def test_the_map_of_a_wide_matrix_equals_scikit_learns_too():
    features = scaled(_features(n=20, dim=50), "l2")  # fewer images than dimensions: the full SVD
    np.testing.assert_allclose(project(features), PCA(n_components=2, svd_solver="full").fit_transform(features))


def test_scaling_is_the_heads_and_unknown_ones_are_named():
    features = _features()
    np.testing.assert_allclose(np.linalg.norm(scaled(features, "l2"), axis=1), 1.0)
    np.testing.assert_allclose(scaled(features, "standardize").std(axis=0), 1.0)
    with pytest.raises(ValueError, match="unknown scaling 'max'"):
        scaled(features, "max")


def test_umap_without_the_package_says_how_to_install_it():
    if umap_available():
        assert project(_features(), method="umap", seed=0).shape == (60, 2)
    else:
        with pytest.raises(ImportError, match="pip install umap-learn"):
            project(_features(), method="umap")


def test_the_map_chart_carries_no_image_data_and_a_click_selection():
    import pandas as pd

    points = pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "image": ["a.jpg", "b.jpg"], "reader_age": [3, 4],
                           "model_age": [3, 5]})
    spec = embedding_map(points, title="enc").to_dict()
    assert spec["params"][0]["name"] == "picked" and spec["params"][0]["select"]["fields"] == ["image"]
    assert spec["params"][0]["select"]["nearest"]  # a click anywhere picks the closest point: no pixel hunting
    values = next(iter(spec["datasets"].values()))
    # names, ages and whether the point is in the box selection (a boolean): no pixels
    assert set(values[0]) == {"x", "y", "image", "reader_age", "model_age", "selected"}
    assert {v["selected"] for v in values} == {False}
