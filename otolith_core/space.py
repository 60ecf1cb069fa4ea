"""The embedding space: a 2-D map of an encoder's embeddings and each image's nearest neighbours in it.

Both work on the embeddings as the heads see them, after the encoder's own scaling (``l2`` for learned
encoders, ``none`` for the built-ins). The map is PCA (deterministic) or, when asked and ``umap-learn`` is
installed, UMAP (seeded). Neighbours are by cosine similarity, computed exactly (no approximate index).
"""

from __future__ import annotations

import warnings
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
        from umap import UMAP  # noqa: F401  (a bare `import umap` also succeeds on a leftover empty folder)
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

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden to 1 by setting random_state": seeded is serial
            return umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit_transform(features)
    from sklearn.decomposition import PCA

    components = min(2, features.shape[1])
    # exact either way; from the (dim, dim) covariance when there are more images than dimensions (8,637 x 1,152:
    # 0.2 s instead of 3 s for the SVD of the whole matrix)
    solver = "covariance_eigh" if features.shape[0] >= features.shape[1] else "full"
    coords = PCA(n_components=components, svd_solver=solver).fit_transform(features)
    return coords if components == 2 else np.hstack([coords, np.zeros((coords.shape[0], 1))])


def nearest(features: np.ndarray, index: int, *, k: int = 8) -> Neighbours:
    """The ``k`` rows of ``features`` most cosine-similar to row ``index`` (itself excluded; ties: lower row first)."""
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    if not 0 <= index < n:
        raise ValueError(f"image {index} is not among the {n} embedded images")
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))
    norms[norms == 0] = 1.0
    similarity = (features @ features[index]) / (norms * norms[index])
    similarity[index] = -np.inf
    k = min(k, n - 1)
    if k <= 0:
        return Neighbours(np.zeros(0, dtype=int), np.zeros(0))
    threshold = np.partition(similarity, n - k)[n - k]  # the k-th largest: only rows at or above it can be in
    candidates = np.flatnonzero(similarity >= threshold)
    order = candidates[np.lexsort((candidates, -similarity[candidates]))][:k]
    return Neighbours(order, similarity[order])
