"""One head's cross-validation on given folds: out-of-fold predictions -> :class:`CVResult`, and its learning curve.

A fresh head is fitted on each training fold (its inner CV, choosing a parameter, grouped like the folds); every
image gets one out-of-fold prediction per repeat, and every score derives from those predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .folds import nested_subsets
from .heads import (PROBABILISTIC_HEADS, HeadSpec, chosen_params, fit_head, predict, scale_rows_once,
                    shared_neighbours)
from .searches import CosineNeighbours
from .metrics import METRICS, mean_sd, rmse, score

LEARNING_FRACTIONS = tuple(round(f, 1) for f in np.arange(0.1, 1.01, 0.1))
PARALLEL_MIN_IMAGES = 6000  # below this, starting worker processes for the folds costs more than it saves
PREDICTION_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "image", "path", "true_age", "pred_age",
                      "pred_raw"]
PROBABILITY_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "image", "path", "true_age"]  # then p_age_<a>
FOLD_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "held_out", "n_test", "accuracy", "pm1_accuracy", "rmse",
                "mae", "ape", "cv", "macro_f1", "rmse_raw", "n_train", "alpha", "C", "k", "class_weight"]
LEARNING_COLUMNS = ["encoder", "head", "train_fraction", "repeat", "fold", "n_train", "accuracy", "pm1_accuracy", "rmse"]


@dataclass(frozen=True)
class CVResult:
    """Out-of-fold predictions of one (encoder, head) over all repeats; scores derive from them.

    Arrays hold one row per (repeat, image), repeats stacked in order.
    """

    encoder: str
    head: HeadSpec
    images: tuple[str, ...]  # (n_rows,) image ids (file + crop box), unique within a repeat
    paths: tuple[str, ...]  # (n_rows,) each image's path as the user named it
    true_age: np.ndarray  # (n_rows,) int
    pred_age: np.ndarray  # (n_rows,) int, rounded for ridge heads
    pred_raw: np.ndarray  # (n_rows,) float, ridge's continuous value (svc: the class)
    fold: np.ndarray  # (n_rows,) int, the fold in which the row was tested
    repeat: np.ndarray  # (n_rows,) int
    alpha: Mapping[tuple[int, int], float] = field(default_factory=dict)  # (repeat, fold) -> ridge alpha used
    chosen: Mapping[tuple[int, int], Mapping[str, float]] = field(default_factory=dict)  # -> {"C": ..., "k": ...}
    proba: np.ndarray | None = None  # (n_rows, n_ages) out-of-fold class probabilities (logistic); columns: ``ages``;
    # 0 for an age the row's training fold lacked (``age_in_training``)

    @property
    def ages(self) -> np.ndarray:
        """The ages the probability columns stand for: every reader age of the images, sorted."""
        return np.unique(self.true_age)

    @property
    def n_images(self) -> int:
        return int(np.sum(self.repeat == self.repeat.min())) if self.repeat.size else 0

    def fold_scores(self, held_out: Sequence[str] = ()) -> pd.DataFrame:
        """One row per (repeat, fold) with every metric, the training size and the ridge alpha used;
        ``held_out``: the hold-out column's value of each fold (leave-one-group-out), else the column is empty."""
        rows = []
        n_total = self.n_images
        for (r, k), index in self._groups():
            true, pred = self.true_age[index], self.pred_age[index]
            rows.append({
                "encoder": self.encoder, "head": self.head.label, "scaling": self.head.scaling,
                "repeat": int(r), "fold": int(k), "held_out": held_out[int(k)] if held_out else "",
                "n_test": int(index.size), **score(true, pred),
                "rmse_raw": rmse(true, self.pred_raw[index]) if self.head.is_regression else float("nan"),
                "n_train": n_total - int(index.size), "alpha": self.alpha.get((int(r), int(k)), float("nan")),
                "C": self.chosen.get((int(r), int(k)), {}).get("C", float("nan")),
                "k": self.chosen.get((int(r), int(k)), {}).get("k", float("nan")),
                "class_weight": self.head.fitted_class_weight,
            })
        return pd.DataFrame(rows, columns=FOLD_COLUMNS)

    def _groups(self):
        keys = self.repeat.astype(np.int64) * 1_000_000 + self.fold
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for index in np.split(order, bounds):
            yield (self.repeat[index[0]], self.fold[index[0]]), index

    def summary(self) -> dict:
        """Mean and sample SD over all R x k folds of every metric."""
        folds = self.fold_scores()
        row = {"encoder": self.encoder, "head": self.head.label, "scaling": self.head.scaling,
               "n_images": self.n_images}
        for metric in (*METRICS, "rmse_raw"):
            row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(folds[metric].to_numpy())
        row["n_folds_total"] = len(folds)
        return row

    def predictions(self) -> pd.DataFrame:
        return pd.DataFrame({
            "encoder": self.encoder, "head": self.head.label, "scaling": self.head.scaling, "repeat": self.repeat,
            "fold": self.fold,
            "image": list(self.images), "path": list(self.paths), "true_age": self.true_age, "pred_age": self.pred_age, "pred_raw": self.pred_raw,
        }, columns=PREDICTION_COLUMNS)

    def probabilities(self) -> pd.DataFrame:
        """``probabilities.csv`` rows: the out-of-fold probability of each age (``p_age_3`` ...); empty without."""
        if self.proba is None:
            return pd.DataFrame(columns=PROBABILITY_COLUMNS)
        frame = self.predictions()[PROBABILITY_COLUMNS]
        return pd.concat([frame, pd.DataFrame(self.proba, columns=[f"p_age_{a}" for a in self.ages])], axis=1)

    def age_in_training(self) -> np.ndarray:
        """``(n_rows,)`` bool: whether the row's training fold (its repeat, other folds) held its reader age.
        Where not, the model could not give that age: ``proba`` has 0 for it, whatever the image shows."""
        rows = pd.DataFrame({"repeat": self.repeat, "age": self.true_age, "fold": self.fold})
        of_age = rows.groupby(["repeat", "age"])["fold"].transform("size")
        in_own_fold = rows.groupby(["repeat", "age", "fold"])["fold"].transform("size")
        return (of_age > in_own_fold).to_numpy()

    def first_repeat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, reader ages, predicted ages) of repeat 0: each image exactly once."""
        first = self.repeat == self.repeat.min()
        return np.asarray(self.images)[first], self.true_age[first], self.pred_age[first]



def model_label(encoder: str, head: str) -> str:
    """How a model (encoder and head) is named in the dashboard's charts and tables."""
    return f"{encoder} / {head}"



@dataclass(frozen=True)
class OutOfFold:
    """One head's out-of-fold predictions over one set of folds."""

    pred: np.ndarray  # (n_images,) int: whole ages
    raw: np.ndarray  # (n_images,) float: ridge's continuous value (a classifier: its class)
    params: dict[int, dict[str, float]]  # fold -> the parameters the head used there: alpha, C, k (NaN if not its own)
    proba: np.ndarray | None = None  # (n_images, n_ages) class probabilities (columns: sorted ages); None without


def cross_validate_head(
    features: np.ndarray, ages: np.ndarray, folds: np.ndarray, head: HeadSpec, *, n_jobs: int | None = None,
    groups: np.ndarray | None = None, on_fold: Callable[[], None] | None = None,
) -> OutOfFold:
    """Out-of-fold predictions of one head.

    Parameters
    ----------
    features : ``(n_images, dim)`` embeddings.
    ages : ``(n_images,)`` reader ages.
    folds : ``(n_images,)`` test fold of each image, from :func:`make_folds`.
    head : which head and parameters; a fresh head is fitted on each training fold.
    n_jobs : folds fitted at once, in worker processes; ``None`` decides by :func:`fold_workers`.
        The predictions are the same whatever the number.
    groups : ``(n_images,)`` the fish of each image when ``folds`` keep a fish's photos together: the inner CV
        choosing a head's parameter (ridge-cv, logistic, knn) then keeps them together too. None: ungrouped.
    on_fold : called after each fold is fitted and predicted (progress; it may raise to stop).

    Returns
    -------
    :class:`OutOfFold`; a head with class probabilities (logistic) also gives them, one column per age of
    ``ages`` (0 for an age its training fold lacked: :meth:`CVResult.age_in_training` marks the rows whose own
    age that was).
    """
    features = np.asarray(features, dtype=np.float64)
    ages = np.asarray(ages)
    if features.ndim != 2 or features.shape[0] != ages.shape[0] or folds.shape != ages.shape:
        raise ValueError(f"features {features.shape}, ages {ages.shape} and folds {folds.shape} do not line up")
    if groups is not None and np.shape(groups) != ages.shape:
        raise ValueError(f"groups {np.shape(groups)} and ages {ages.shape} do not line up")
    fold_ids = [int(k) for k in np.unique(folds)]
    workers = fold_workers(head, features.shape[0], len(fold_ids)) if n_jobs is None else max(1, int(n_jobs))
    features, fitted = scale_rows_once(head, features)  # l2 fits nothing: once here, not in every fold's pipeline
    neighbours = shared_neighbours(fitted, features)  # knn: every image's nearest, once for all folds
    if workers > 1:
        from joblib import Parallel, delayed

        fitted_folds = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_fit_fold)(features, ages, folds == k, fitted, groups, neighbours) for k in fold_ids)
    else:
        fitted_folds = (_fit_fold(features, ages, folds == k, fitted, groups, neighbours) for k in fold_ids)
    outcomes = []
    for outcome in fitted_folds:  # in fold order, each as soon as it is fitted
        outcomes.append(outcome)
        if on_fold is not None:
            on_fold()
    classes = np.unique(ages)
    pred = np.empty(ages.size, dtype=int)
    raw = np.empty(ages.size, dtype=float)
    proba = np.zeros((ages.size, classes.size)) if outcomes and outcomes[0][3] is not None else None
    params = {}
    for k, (fold_pred, fold_raw, chosen, fold_proba) in zip(fold_ids, outcomes):
        test = folds == k
        pred[test], raw[test] = fold_pred, fold_raw
        params[k] = chosen
        if proba is not None:
            seen, fold_p = fold_proba
            proba[np.ix_(test, np.searchsorted(classes, seen))] = fold_p
    return OutOfFold(pred, raw, params, proba)


def fold_workers(head: HeadSpec, n_images: int, n_folds: int) -> int:
    """Processes to fit folds in: for the SVC on large data, as many as cores and memory allow, else 1.

    libsvm solves on one core (folds in threads measured no faster), so its folds gain from
    processes; ridge is a few BLAS calls that already use every core. Below
    ``PARALLEL_MIN_IMAGES`` starting workers costs more than it saves (benchmarks/README.md). Each
    worker holds its fold's Gram matrix (``8 * n_train**2`` bytes, 0.5 GB for the cod study), so no
    more are started than fit in half of the memory now available.
    """
    from joblib import (
        cpu_count,  # counts the cores this process may use (affinity, container quotas)
    )

    if head.name != "svc" or n_images < PARALLEL_MIN_IMAGES:
        return 1
    n_train = n_images - n_images // max(n_folds, 1)
    per_worker = 1.5 * 8 * n_train**2  # Gram matrix, test kernel and copies, with headroom
    by_memory = int(0.5 * available_memory() // per_worker)
    return max(1, min(n_folds, cpu_count(), by_memory))


def available_memory() -> float:
    """Bytes of memory available now, reclaimable page cache included (``psutil``); infinity where unknown.

    Free pages alone would under-count: on Linux a machine that has been reading images holds most
    of its memory as page cache, which the kernel hands back on demand (``MemAvailable``).
    """
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except (ImportError, AttributeError, OSError, NotImplementedError, RuntimeError):
        return float("inf")


def _fit_fold(features: np.ndarray, ages: np.ndarray, test: np.ndarray, head: HeadSpec, groups: np.ndarray | None,
              neighbours: CosineNeighbours | None = None):
    """Fit a fresh head on the training rows (its inner CV grouped by ``groups`` unless None), predict the test
    rows: (whole ages, continuous, parameters used, (the training fold's ages, class probabilities) or None for a
    head without probabilities). ``neighbours``: knn's lists of every image (:func:`shared_neighbours`), read for
    this fold's rows."""
    train, held_out = np.flatnonzero(~test), np.flatnonzero(test)
    model = fit_head(head, features[train], ages[train], groups=None if groups is None else groups[train],
                     neighbours=None if neighbours is None else neighbours.restrict(train, train))
    pred, raw = predict(model, features[held_out],
                        neighbours=None if neighbours is None else neighbours.restrict(held_out, train))
    proba = (model.classes_, model.predict_proba(features[test])) if head.name in PROBABILISTIC_HEADS else None
    return pred, raw, chosen_params(head, model), proba



def learning_curve(
    features: np.ndarray, ages: np.ndarray, folds: np.ndarray, head: HeadSpec, *, seed: int,
    fractions: Sequence[float] = LEARNING_FRACTIONS, groups: np.ndarray | None = None,
    on_fold: Callable[[], None] | None = None,
) -> list[dict]:
    """Scores on each test fold when training on growing, nested fractions of its training fold; ``groups`` (the
    fish of each image, when ``folds`` keep them together) group the heads' inner CV as in
    :func:`cross_validate_head`; ``on_fold`` is called after each fold's fractions."""
    features, head = scale_rows_once(head, np.asarray(features, dtype=np.float64))
    rows = []
    for k in np.unique(folds):
        test = np.flatnonzero(folds == k)
        train = np.flatnonzero(folds != k)
        for fraction, subset in zip(fractions, nested_subsets(ages[train], fractions, seed=seed * 1000 + int(k))):
            chosen = train[subset]
            if np.unique(ages[chosen]).size < 2:
                continue  # a classifier needs two ages to learn from
            model = fit_head(head, features[chosen], ages[chosen], groups=None if groups is None else groups[chosen])
            pred, _ = predict(model, features[test])
            s = score(ages[test], pred)
            rows.append({"train_fraction": fraction, "fold": int(k), "n_train": int(chosen.size),
                         "accuracy": s["accuracy"], "pm1_accuracy": s["pm1_accuracy"], "rmse": s["rmse"]})
        if on_fold is not None:
            on_fold()
    return rows


