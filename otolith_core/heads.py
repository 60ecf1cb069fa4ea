"""Shallow heads fitted on frozen embeddings: name -> scikit-learn estimator.

``ridge``: Ridge regression on age (the paper's alpha = 6); its continuous prediction is rounded to
the nearest age and clipped to the training fold's age range. ``svc``: ``SVC(kernel="linear",
C=0.1)``, one-vs-one, as in the paper. ``ridge-cv``: the same rounded ridge with alpha chosen inside
each training fold by efficient leave-one-out CV over ``RIDGE_CV_ALPHAS`` (the test fold is never
seen). ``logistic``: multinomial logistic regression, C chosen inside each training fold by a stratified
inner CV over ``LOGISTIC_CS``; it gives class probabilities. ``knn``: cosine k-nearest neighbours (the
majority age of the k most similar training images; the few-shot view), k chosen by the same inner CV
over ``KNN_KS``. Feature scaling is part of the head, so it is fitted inside each training fold: ``none``,
``l2`` (each embedding to unit length) or ``standardize``; ``auto`` (the default) takes the scaling the
encoder's registry entry states (``HeadSpec.for_encoder``). It never renames a head.

``class_weight="balanced"`` weighs each image by ``n / (n_ages * images of its age)`` in the training fold, so that rare
(old) ages count as much as common ones: ridge and ridge-cv through sample weights (ridge-cv's inner search scores by
the weighted squared error), svc and logistic through ``class_weight="balanced"`` (logistic's inner search scores by
balanced accuracy); knn has no class weights (its rows are unweighted, and a Note says so: :func:`class_weight_notes`).

When the outer folds keep a fish's photos together, so does every inner search (:func:`fit_head` with
``groups``, :func:`inner_splits`): otherwise a photo is validated against its own fish's other photos, and the
search rewards memorising fish (k = 1, the weakest penalty).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut, LeaveOneOut, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from .covariates import COVARIATE_SCALING, CovariateEncoding
from .encoders.spec import SCALINGS  # the scalings an encoder's registry entry may state
from .folds import FastStratifiedGroupKFold
from .notes import Note
from .searches import (CosineNeighbours, cosine_neighbours, first_best, knn_search, logistic_search,
                       majority_votes, neighbour_depth)

HEADS = ("ridge", "svc", "ridge-cv", "logistic", "knn")
PROBABILISTIC_HEADS = ("logistic",)  # their out-of-fold class probabilities are kept (probabilities.csv, Review page)
BASELINE_HEAD = "most-frequent"  # the no-skill reference: always the most common training age (not a choice)
RIDGE_CV_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))  # searched inside each training fold
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))  # searched inside each training fold
KNN_KS = (1, 3, 5, 7, 11, 15, 21)
INNER_FOLDS = 5  # the inner CV choosing C or k inside one training fold (stratified, seed 0; grouped: see inner_splits)
SEARCHED_HEADS = ("ridge-cv", "logistic", "knn")  # heads whose parameter an inner CV chooses: they take ``groups``
AUTO_SCALING = "auto"  # each encoder's own scaling (its registry entry; l2 for embeddings from files)
CLASS_WEIGHTS = ("none", "balanced")
WEIGHTED_HEADS = ("ridge", "svc", "ridge-cv", "logistic")  # heads that take class weights (knn has none)


@dataclass(frozen=True)
class HeadSpec:
    """A head and its parameters; ``label`` names it in tables (``ridge``, ``svc``, or with parameters)."""

    name: str
    alpha: float = 6.0  # ridge
    C: float = 0.1  # svc
    scaling: str = AUTO_SCALING  # auto: the encoder's own; none | l2 | standardize: the same for every encoder
    blocks: tuple[int, ...] = ()  # a combined encoder: each part's width; ``scaling`` then names one per part, "l2+none"
    covariates: CovariateEncoding | None = None  # how a part scaled ``covariates`` is encoded (set by for_encoder)
    class_weight: str = "none"  # "balanced": rare ages weigh as much as common ones (a head without weights: none)

    def __post_init__(self) -> None:
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"unknown class weight {self.class_weight!r}; choose from {list(CLASS_WEIGHTS)}")
        if self.name not in HEADS and self.name != BASELINE_HEAD:
            raise ValueError(f"unknown head {self.name!r}; choose from {list(HEADS)}")
        parts = self.scaling.split("+") if self.blocks else [self.scaling]
        if COVARIATE_SCALING in parts and self.covariates is None:
            raise ValueError("a covariate part needs its encoding (HeadSpec.for_encoder sets it)")
        if any(p not in (AUTO_SCALING, COVARIATE_SCALING, *SCALINGS) for p in parts):
            raise ValueError(f"unknown scaling {self.scaling!r}; choose from {[AUTO_SCALING, *SCALINGS]}")
        if self.blocks and len(parts) != len(self.blocks):
            raise ValueError(f"a combined encoder of {len(self.blocks)} parts needs one scaling per part, got {self.scaling!r}")
        if not self.alpha > 0:
            raise ValueError(f"ridge alpha must be > 0, got {self.alpha!r}")
        if not self.C > 0:
            raise ValueError(f"svc C must be > 0, got {self.C!r}")

    @property
    def balanced(self) -> bool:
        """Whether the head is fitted with balanced class weights (asked for, and a head that has them)."""
        return self.class_weight == "balanced" and self.name in WEIGHTED_HEADS

    @property
    def fitted_class_weight(self) -> str:
        """The class weighting the head was fitted with, as folds.csv and run.json name it."""
        return "balanced" if self.balanced else "none"

    @property
    def is_regression(self) -> bool:
        return self.name in ("ridge", "ridge-cv")

    @property
    def params(self) -> dict:
        """The head's own parameters (for its label and provenance); the scaling is not one of them."""
        if self.name == BASELINE_HEAD:
            return {}
        own = {"ridge": {"alpha": self.alpha}, "svc": {"C": self.C},
               "ridge-cv": {"alphas": f"{RIDGE_CV_ALPHAS[0]:g}..{RIDGE_CV_ALPHAS[-1]:g} ({len(RIDGE_CV_ALPHAS)} values)"},
               "logistic": {"Cs": f"{LOGISTIC_CS[0]:g}..{LOGISTIC_CS[-1]:g} ({len(LOGISTIC_CS)} values)"},
               "knn": {"ks": ",".join(map(str, KNN_KS))}}
        return own[self.name]

    @property
    def label(self) -> str:
        """Short name used in every CSV: the bare name with default parameters, else with them. The scaling
        never renames a head: it has a column of its own."""
        if self.params == HeadSpec(self.name).params:
            return self.name
        changed = {k: v for k, v in self.params.items() if k not in ("alphas", "Cs", "ks")}
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in changed.items()) + ")"

    def for_encoder(self, encoder_scaling: str, blocks: tuple[int, ...] = (),
                    covariates: CovariateEncoding | None = None) -> "HeadSpec":
        """This head as fitted on an encoder whose own scaling is ``encoder_scaling`` (``auto`` takes it).

        For a combined encoder, ``encoder_scaling`` names each part's own (``"l2+none"``) and ``blocks`` their
        widths: each part is scaled by itself, its own way or the one scaling asked for, then concatenated.
        A part scaled ``covariates`` is encoded by ``covariates`` whatever scaling was asked for.
        """
        from dataclasses import replace

        if self.name == BASELINE_HEAD:
            return replace(self, scaling="none")
        own = encoder_scaling.split("+") if blocks else [encoder_scaling]
        chosen = [o if self.scaling == AUTO_SCALING or o == COVARIATE_SCALING else self.scaling for o in own]
        return replace(self, scaling="+".join(chosen), blocks=tuple(int(b) for b in blocks),
                       covariates=covariates if COVARIATE_SCALING in own else None)

    def as_dict(self) -> dict:
        return {"name": self.name, "label": self.label, **self.params, "scaling": self.scaling,
                "class_weight": self.fitted_class_weight}


def class_weight_notes(heads: "list[HeadSpec] | tuple[HeadSpec, ...]") -> list[Note]:
    """A warning for each head asked for class weights that has none (knn), so no run is unweighted silently."""
    unweighted = sorted({h.name for h in heads if h.class_weight != "none" and h.name not in WEIGHTED_HEADS
                         and h.name != BASELINE_HEAD})
    return [Note("warning", f"{name} has no class weights: its rows are fitted unweighted although "
                            f"class weight balanced was asked for (it applies to {', '.join(WEIGHTED_HEADS)})")
            for name in unweighted]


def balanced_sample_weights(ages: np.ndarray, balanced: bool) -> np.ndarray | None:
    """``compute_sample_weight("balanced", ages)`` when ``balanced``, else None (every image weighs 1)."""
    return compute_sample_weight("balanced", np.asarray(ages)) if balanced else None


class RoundedRidge(RegressorMixin, BaseEstimator):
    """Ridge regression whose ``predict`` returns whole ages inside the training age range.

    ``predict_continuous`` gives the unrounded value. With ``alphas`` the penalty is chosen on the
    training data and kept in ``alpha_``: by efficient leave-one-out CV (``RidgeCV``), or, given ``groups`` to
    ``fit``, by the squared error over :func:`inner_splits` (``splits_``), so no fish is on both sides.
    ``class_weight="balanced"``: every fit and every inner error weighted by :func:`balanced_sample_weights` of the
    training data given to ``fit``.
    """

    def __init__(self, alpha: float = 6.0, alphas: tuple[float, ...] | None = None, class_weight: str = "none") -> None:
        self.alpha = alpha
        self.alphas = alphas
        self.class_weight = class_weight

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "RoundedRidge":
        y = np.asarray(y, dtype=float)
        weights = balanced_sample_weights(y, self.class_weight == "balanced")
        self.splits_ = None
        if self.alphas and groups is not None:
            # Leave-one-photo-out would validate a photo against its own fish's other photos; leave-one-fish-out
            # costs one solve per fish, so the same grouped k-fold as the classifiers' search.
            self.splits_ = inner_splits(y, groups)
            self.alpha_ = least_squares_alpha(X, y, self.splits_, self.alphas, sample_weight=weights)
            self.ridge_ = Ridge(alpha=self.alpha_).fit(X, y, sample_weight=weights)
        elif self.alphas:
            self.ridge_ = RidgeCV(alphas=self.alphas).fit(X, y, sample_weight=weights)
            self.alpha_ = float(self.ridge_.alpha_)
        else:
            self.ridge_ = Ridge(alpha=self.alpha).fit(X, y, sample_weight=weights)
            self.alpha_ = float(self.alpha)
        self.age_min_, self.age_max_ = float(y.min()), float(y.max())
        return self

    def predict_continuous(self, X: np.ndarray) -> np.ndarray:
        return self.ridge_.predict(X)

    def round_ages(self, raw: np.ndarray) -> np.ndarray:
        """Continuous predictions -> nearest whole age inside the training range."""
        return np.clip(np.rint(raw), self.age_min_, self.age_max_).astype(int)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.round_ages(self.predict_continuous(X))


def least_squares_alpha(X: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                        alphas: tuple[float, ...], *, sample_weight: np.ndarray | None = None) -> float:
    """The ridge penalty (of ``alphas``) with the least mean squared validation error over ``splits``.

    The same choice as ``RidgeCV(alphas, cv=splits, scoring="neg_mean_squared_error")`` (the first alpha on a
    tie), but one eigendecomposition per split serves every alpha, where that fits a ridge per alpha and split
    (3,000 x 768 on one core: 1.4 s against 7.6 s; the leave-one-out search takes 2.4 s). With ``sample_weight``
    each split's ridge is fitted with its rows' weights (as ``Ridge.fit(sample_weight=...)``) and its validation
    error is the weighted mean.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    weights = np.ones(y.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    errors = np.zeros(len(alphas))
    for train, validation in splits:
        w = weights[train]
        x_mean, y_mean = w @ X[train] / w.sum(), w @ y[train] / w.sum()  # the intercept, as Ridge fits it
        root = np.sqrt(w)[:, None]  # weighted least squares: rows scaled by the root of their weight
        centred, target, shifted = root * (X[train] - x_mean), root[:, 0] * (y[train] - y_mean), X[validation] - x_mean
        if centred.shape[0] >= centred.shape[1]:  # decompose the smaller Gram matrix: features x features ...
            eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
            projected, rotated = vectors.T @ (centred.T @ target), shifted @ vectors
        else:  # ... or images x images (the kernel form)
            eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
            projected, rotated = vectors.T @ target, shifted @ centred.T @ vectors
        for i, alpha in enumerate(alphas):
            residual = y[validation] - y_mean - rotated @ (projected / (eigenvalues + alpha))
            errors[i] += np.average(residual ** 2, weights=weights[validation])
    return float(alphas[int(np.argmin(errors))])


class GramSVC(ClassifierMixin, BaseEstimator):
    """``SVC(kernel="linear", C, class_weight)`` solved on a precomputed Gram matrix: the same model and predictions.

    libsvm evaluates a linear kernel one dot product at a time; one BLAS product ``X @ X.T`` is far
    faster for embedding-sized inputs (10-fold CV on 8,637 x 1,152: minutes -> seconds).
    """

    def __init__(self, C: float = 0.1, class_weight: str = "none") -> None:
        self.C = C
        self.class_weight = class_weight

    def fit(self, X: np.ndarray, y: np.ndarray) -> "GramSVC":
        self.train_ = np.ascontiguousarray(X, dtype=np.float64)
        weight = "balanced" if self.class_weight == "balanced" else None
        self.svc_ = SVC(kernel="precomputed", C=self.C, class_weight=weight).fit(self.train_ @ self.train_.T, y)
        self.classes_ = self.svc_.classes_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.svc_.predict(np.asarray(X, dtype=np.float64) @ self.train_.T)


def build_head(spec: HeadSpec) -> Pipeline:
    """A fresh, unfitted pipeline ``scale -> model`` for one training fold. ``auto`` scaling is resolved to the
    encoder's own by :func:`~otolith_core.comparison.compare` (:meth:`HeadSpec.for_encoder`); features with no
    encoder entry behind them get ``l2``, as there. A combined encoder's parts are scaled one by one."""
    if spec.blocks:
        from sklearn.compose import ColumnTransformer

        ends = np.cumsum(spec.blocks)
        parts = [(f"part{i}", _scaler(scaling, spec), slice(int(end - width), int(end)))
                 for i, (scaling, width, end) in enumerate(zip(spec.scaling.split("+"), spec.blocks, ends))]
        scaler = ColumnTransformer(parts, sparse_threshold=0.0)
    else:
        scaler = _scaler(spec.scaling, spec)
    if spec.name == BASELINE_HEAD:
        from sklearn.dummy import DummyClassifier

        return Pipeline([("scale", FunctionTransformer()), ("model", DummyClassifier(strategy="most_frequent"))])
    weight = spec.fitted_class_weight
    if spec.name == "ridge":
        model = RoundedRidge(alpha=spec.alpha, class_weight=weight)
    elif spec.name == "ridge-cv":
        model = RoundedRidge(alphas=RIDGE_CV_ALPHAS, class_weight=weight)
    elif spec.name == "logistic":
        model = LogisticCV(LOGISTIC_CS, class_weight=weight)
    elif spec.name == "knn":
        model = KnnCV(KNN_KS)
    else:
        model = GramSVC(C=spec.C, class_weight=weight)
    return Pipeline([("scale", scaler), ("model", model)])


def _scaler(scaling: str, spec: HeadSpec):
    if scaling == COVARIATE_SCALING:
        return spec.covariates.transformer()
    return {"none": FunctionTransformer(), "l2": Normalizer(norm="l2"), "standardize": StandardScaler(),
            AUTO_SCALING: Normalizer(norm="l2")}[scaling]


ROW_WISE_SCALINGS = ("l2", AUTO_SCALING)  # each row by itself, learnt from nothing (auto unresolved means l2)


def scale_rows_once(spec: HeadSpec, features: np.ndarray) -> tuple[np.ndarray, HeadSpec]:
    """(``features`` with the head's row-wise scalings already applied, the spec whose pipeline does the rest).

    l2 scaling looks at one row at a time and learns nothing from a training fold, so applying it once to every
    image gives exactly the numbers it gives inside each fold's pipeline, without redoing it for every fold (and
    every inner split). The scaling a result reports stays the original spec's.
    """
    from dataclasses import replace

    from sklearn.preprocessing import normalize

    parts = spec.scaling.split("+") if spec.blocks else [spec.scaling]
    if not any(p in ROW_WISE_SCALINGS for p in parts):
        return features, spec
    if not spec.blocks:
        return normalize(features, norm="l2"), replace(spec, scaling="none")
    scaled = np.array(features, dtype=np.float64, copy=True)
    ends = np.cumsum(spec.blocks)
    for part, width, end in zip(parts, spec.blocks, ends):
        if part in ROW_WISE_SCALINGS:
            scaled[:, end - width:end] = normalize(scaled[:, end - width:end], norm="l2")
    return scaled, replace(spec, scaling="+".join("none" if p in ROW_WISE_SCALINGS else p for p in parts))


def fit_head(spec: HeadSpec, features: np.ndarray, ages: np.ndarray, *,
             groups: np.ndarray | None = None, neighbours: CosineNeighbours | None = None) -> Pipeline:
    """A fresh head (:func:`build_head`) fitted on one training fold.

    Parameters
    ----------
    features : ``(n_train, dim)`` embeddings of the training fold.
    ages : ``(n_train,)`` their reader ages.
    groups : ``(n_train,)`` the fish of each image, given when the outer folds keep a fish's photos together: a
        head with an inner search (``SEARCHED_HEADS``) then keeps them on one side of each inner split too.
        None: images are independent (the search is as it always was).
    neighbours : a knn head's neighbour lists of these rows among themselves, restricted from
        :func:`shared_neighbours` (read instead of computed); None: the head computes them.
    """
    head = build_head(spec)
    params = {}
    if groups is not None and spec.name in SEARCHED_HEADS:
        params["model__groups"] = np.asarray(groups)
    if neighbours is not None and spec.name == "knn":
        params["model__neighbours"] = neighbours
    return head.fit(features, ages, **params)


def inner_cv() -> StratifiedKFold:
    """The CV inside one training fold that chooses a head's parameter (never sees the test fold)."""
    return StratifiedKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=0)


def inner_splits(ages: np.ndarray, groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (inner-train, validation) positions of the inner CV on one training fold.

    Without ``groups``: :func:`inner_cv`. With ``groups`` (the fish of each image): ``StratifiedGroupKFold`` (its
    fast twin) on the ages (``INNER_FOLDS``, seed 0), so a fish's photos are on one side of every split; with fewer
    fish than ``INNER_FOLDS``, one split per fish (leave one fish out); a single fish cannot be split by fish, so
    its photos are split as without groups.
    """
    ages = np.asarray(ages)
    if groups is None or len(np.unique(groups)) < 2:
        groups = None
        largest = np.unique(ages, return_counts=True)[1].max()
        if largest >= INNER_FOLDS:
            cv = inner_cv()
        else:  # no age can fill the folds (a learning curve's smallest fractions): unstratified
            cv = KFold(n_splits=INNER_FOLDS, shuffle=True, random_state=0) if ages.size >= INNER_FOLDS else LeaveOneOut()
    elif len(np.unique(groups)) <= INNER_FOLDS:  # StratifiedGroupKFold may leave a fold empty here
        cv = LeaveOneGroupOut()
    elif max(len(np.unique(groups[ages == a])) for a in np.unique(ages)) < INNER_FOLDS:
        cv = GroupKFold(n_splits=INNER_FOLDS)  # no age has fish enough to stratify: fish split evenly
    else:
        cv = FastStratifiedGroupKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ages with fewer images than inner folds
        return list(cv.split(np.zeros((ages.size, 1)), ages, groups))


class LogisticCV(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (scikit-learn's ``LogisticRegression`` model: L2 penalty, free intercept)
    whose C is chosen by accuracy over :func:`inner_splits` of the training data it is fitted on (grouped when
    ``fit`` is given ``groups``), as ``GridSearchCV`` would, then refitted on all of it.

    The whole grid is solved in one pass (:func:`~otolith_core.searches.logistic_search`). ``class_weight=
    "balanced"``: as ``LogisticRegression(class_weight="balanced")`` in every fit, scored by balanced accuracy.
    ``best_``, ``best_score_``, ``scores_`` (split x C) and ``splits_`` say how C was chosen.
    """

    def __init__(self, Cs: tuple[float, ...] = LOGISTIC_CS, class_weight: str = "none") -> None:
        self.Cs = Cs
        self.class_weight = class_weight

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "LogisticCV":
        self.splits_ = inner_splits(y, groups)
        search = logistic_search(X, y, self.splits_, self.Cs, balanced=self.class_weight == "balanced")
        self.scores_ = search.scores
        self.best_ = {"C": float(self.Cs[search.best])}
        self.best_score_ = float(search.scores.mean(axis=0)[search.best])
        self.classes_, self.coef_, self.intercept_ = search.classes, search.coef, search.intercept
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in ``classes_`` order."""
        logits = np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_, axis=1)]


class KnnCV(ClassifierMixin, BaseEstimator):
    """Cosine k-nearest neighbours whose k is chosen by accuracy over :func:`inner_splits` (grouped when ``fit`` is
    given ``groups``), as ``GridSearchCV`` would, then predicting as ``KNeighborsClassifier(k, metric="cosine",
    algorithm="brute")`` fitted on all of the training data. Every split and every k read the same neighbour lists
    (:func:`~otolith_core.searches.knn_search`), and so do the predictions: ``fit`` and ``predict`` list their rows'
    neighbours themselves, or are given the lists, restricted from one table of every image (:func:`shared_neighbours`).
    A k larger than the smallest inner training split is left out. ``best_``, ``best_score_``, ``scores_`` and
    ``splits_`` say how k was chosen."""

    def __init__(self, ks: tuple[int, ...] = KNN_KS) -> None:
        self.ks = ks

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
            neighbours: CosineNeighbours | None = None) -> "KnnCV":
        """``neighbours``: the rows of ``X`` among themselves (:meth:`CosineNeighbours.restrict` of a shared table),
        read instead of computed."""
        self.splits_ = inner_splits(y, groups)
        smallest_train = min(train.size for train, _ in self.splits_)
        ks = [k for k in self.ks if k <= smallest_train] or [1]
        if neighbours is None:
            neighbours = cosine_neighbours(X, depth=neighbour_depth(max(ks)))
        self.scores_ = knn_search(neighbours, y, self.splits_, ks)
        best = first_best(self.scores_)
        self.best_ = {"n_neighbors": int(ks[best])}
        self.best_score_ = float(self.scores_.mean(axis=0)[best])
        self.classes_, self.codes_ = np.unique(np.asarray(y), return_inverse=True)
        self.train_ = np.asarray(X, dtype=np.float64)
        return self

    def predict(self, X: np.ndarray, neighbours: CosineNeighbours | None = None) -> np.ndarray:
        """``neighbours``: the rows of ``X`` among the training rows (:meth:`CosineNeighbours.restrict` of the table
        that ``fit`` was given), read instead of computed."""
        k = self.best_["n_neighbors"]
        if neighbours is None:
            X = np.asarray(X, dtype=np.float64)
            both = np.concatenate([X, self.train_])
            neighbours = cosine_neighbours(both, depth=neighbour_depth(k), queries=np.arange(X.shape[0]),
                                           candidates=np.arange(X.shape[0], both.shape[0]))
        elif neighbours.queries.size != np.shape(X)[0] or neighbours.candidates.size != self.codes_.size:
            raise ValueError(f"neighbour lists of {neighbours.queries.size} x {neighbours.candidates.size} rows do not "
                             f"line up with {np.shape(X)[0]} queries and {self.codes_.size} training rows")
        votes = majority_votes(self.codes_[neighbours.nearest(k)], [k], self.classes_.size)
        return self.classes_[votes[:, 0]]


def shared_neighbours(spec: HeadSpec, features: np.ndarray) -> CosineNeighbours | None:
    """Every image's nearest images, for a knn head to read in every fold, or None where each fold must compute its
    own (another head, or a scaling fitted on the training fold, which changes the distances from fold to fold).

    ``features`` are scaled as :func:`scale_rows_once` leaves them and ``spec`` is the spec it returns: with every
    part's scaling ``none``, a fold's pipeline hands the head these very rows. The table holds the unit rows (8 bytes
    per number, 80 MB for the cod study's 8,637 x 1,152) and ``neighbour_depth`` entries per image; it is computed in
    blocks of rows, never as the whole 8,637 x 8,637 matrix.
    """
    parts = spec.scaling.split("+") if spec.blocks else [spec.scaling]
    if spec.name != "knn" or any(part != "none" for part in parts):
        return None
    return cosine_neighbours(features, depth=neighbour_depth(max(KNN_KS)))


def chosen_params(spec: HeadSpec, head: Pipeline) -> dict[str, float]:
    """The parameters a fitted head used, by the names folds.csv gives them: ``alpha`` (ridge), ``C`` (svc,
    logistic), ``k`` (knn); NaN where a parameter does not belong to the head."""
    model = head.named_steps["model"]
    params = {"alpha": float("nan"), "C": float("nan"), "k": float("nan")}
    if isinstance(model, RoundedRidge):
        params["alpha"] = model.alpha_
    elif isinstance(model, GramSVC):
        params["C"] = float(model.C)
    elif isinstance(model, LogisticCV):
        params["C"] = model.best_["C"]
    elif isinstance(model, KnnCV):
        params["k"] = float(model.best_["n_neighbors"])
    return params


def predict(head: Pipeline, X: np.ndarray, *,
            neighbours: CosineNeighbours | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(whole-age predictions, continuous predictions) of a fitted head.

    For a classifier the continuous prediction is the predicted class itself. ``neighbours``: a knn head's lists of
    the rows of ``X`` among its training rows, restricted from the table it was fitted with (read, not computed).
    """
    model = head.named_steps["model"]
    if isinstance(model, RoundedRidge):
        scaled = head[:-1].transform(X)
        raw = model.predict_continuous(scaled)
        return model.round_ages(raw), raw
    params = {"neighbours": neighbours} if neighbours is not None and isinstance(model, KnnCV) else {}
    pred = head.predict(X, **params).astype(int)
    return pred, pred.astype(float)
