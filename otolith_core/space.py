"""The embedding space: a 2-D map of an encoder's embeddings and each image's nearest neighbours in it.

Both work on the embeddings as the heads see them, after the encoder's own scaling (``l2`` for learned
encoders, ``none`` for the built-ins). The map is PCA (deterministic) or, when asked and ``umap-learn`` is
installed, UMAP (seeded). Neighbours are by cosine similarity, computed exactly (no approximate index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAP_METHODS = ("pca", "umap")


@dataclass(frozen=True)
class Neighbours:
    """The ``k`` images most similar to one image (itself excluded), most similar first."""

    index: np.ndarray  # (k,) positions in the feature matrix
    similarity: np.ndarray  # (k,) cosine similarity, in [-1, 1]


def scaled(features: np.ndarray, scaling: str) -> np.ndarray:
    """``features`` ``(n, dim)`` scaled as a head would scale them on all images (``none|l2|standardize``)."""
    from sklearn.preprocessing import Normalizer, StandardScaler

    features = np.asarray(features, dtype=np.float64)
    if scaling == "l2":
        return Normalizer().fit_transform(features)
    if scaling == "standardize":
        return StandardScaler().fit_transform(features)
    if scaling == "none":
        return features
    raise ValueError(f"unknown scaling {scaling!r}; choose from none, l2, standardize")


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def project(features: np.ndarray, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Coordinates ``(n, 2)`` of each row of ``features`` on a 2-D map.

    ``pca``: the first two principal components (scikit-learn's ``PCA``, full SVD, so it is deterministic).
    ``umap``: ``umap.UMAP(n_components=2, metric="cosine", random_state=seed)``; raises ``ImportError`` with
    the install command when ``umap-learn`` is missing.
    """
    features = np.asarray(features, dtype=np.float64)
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map {method!r}; choose from {list(MAP_METHODS)}")
    if features.ndim != 2 or features.shape[0] < 3:
        raise ValueError(f"a map needs at least 3 images with features, got shape {features.shape}")
    if method == "umap":
        if not umap_available():
            raise ImportError("UMAP needs umap-learn: pip install umap-learn (PCA works without it)")
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(features)
    from sklearn.decomposition import PCA

    components = min(2, features.shape[1])
    coords = PCA(n_components=components, svd_solver="full").fit_transform(features)
    return coords if components == 2 else np.hstack([coords, np.zeros((coords.shape[0], 1))])


def nearest(features: np.ndarray, index: int, *, k: int = 8) -> Neighbours:
    """The ``k`` rows of ``features`` most cosine-similar to row ``index`` (itself excluded; ties: lower row first)."""
    features = np.asarray(features, dtype=np.float64)
    if not 0 <= index < features.shape[0]:
        raise ValueError(f"image {index} is not among the {features.shape[0]} embedded images")
    norms = np.linalg.norm(features, axis=1)
    unit = features / np.where(norms > 0, norms, 1.0)[:, None]
    similarity = unit @ unit[index]
    similarity[index] = -np.inf
    order = np.lexsort((np.arange(similarity.size), -similarity))[: min(k, features.shape[0] - 1)]
    return Neighbours(order, similarity[order])
