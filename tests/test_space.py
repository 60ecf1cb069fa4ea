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
    assert set(values[0]) == {"x", "y", "image", "reader_age", "model_age"}  # names and ages, no pixels
