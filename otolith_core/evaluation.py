"""Cross-validation of every (encoder, head) on the same folds -> :class:`Comparison`.

Folds come from the reader ages and the seed only (``StratifiedKFold(shuffle=True)``), computed
once on the images every encoder embedded, so all models are scored on identical splits and paired
tests between them are meaningful. Every image gets an out-of-fold prediction.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from .data import Dataset, Skipped
from .embeddings import EmbeddingSet
from .heads import HeadSpec, build_head, predict
from .metrics import METRICS, mean_sd, score
from .stats import PairedTest, paired_t_test

TESTED_METRICS = ("accuracy", "pm1_accuracy", "rmse")
PREDICTION_COLUMNS = ["encoder", "head", "repeat", "fold", "image", "true_age", "pred_age", "pred_raw"]
FOLD_COLUMNS = ["encoder", "head", "repeat", "fold", "n_test", *METRICS]
SUMMARY_COLUMNS = ["encoder", "head", "n_images"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]
TEST_COLUMNS = ["metric", "encoder_a", "head_a", "encoder_b", "head_b", "mean_diff", "t", "p_value", "test"]


@dataclass(frozen=True)
class CVResult:
    """Out-of-fold predictions of one (encoder, head); per-fold and summary scores derive from them."""

    encoder: str
    head: HeadSpec
    images: tuple[str, ...]
    true_age: np.ndarray  # (n_images,) int
    pred_age: np.ndarray  # (n_images,) int, rounded for ridge
    pred_raw: np.ndarray  # (n_images,) float, ridge's continuous value (svc: the class)
    fold: np.ndarray  # (n_images,) int, the fold in which each image was tested
    repeat: int = 0

    def fold_scores(self) -> pd.DataFrame:
        """One row per fold: ``encoder, head, repeat, fold, n_test, accuracy, pm1_accuracy, rmse, mae``."""
        rows = []
        for k in np.unique(self.fold):
            test = self.fold == k
            rows.append({"encoder": self.encoder, "head": self.head.label, "repeat": self.repeat, "fold": int(k),
                         "n_test": int(test.sum()), **score(self.true_age[test], self.pred_age[test])})
        return pd.DataFrame(rows, columns=FOLD_COLUMNS)

    def summary(self) -> dict:
        """Mean and sample SD over folds of every metric."""
        folds = self.fold_scores()
        row = {"encoder": self.encoder, "head": self.head.label, "n_images": len(self.images)}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(folds[metric].to_numpy())
        return row

    def predictions(self) -> pd.DataFrame:
        return pd.DataFrame({
            "encoder": self.encoder, "head": self.head.label, "repeat": self.repeat, "fold": self.fold,
            "image": list(self.images), "true_age": self.true_age, "pred_age": self.pred_age, "pred_raw": self.pred_raw,
        }, columns=PREDICTION_COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """Every (encoder, head) result on one set of folds, the tests between them, and what was left out."""

    results: tuple[CVResult, ...]
    tests: tuple[PairedTest, ...]
    n_folds: int
    seed: int
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[str, ...] = ()
    failed_encoders: Mapping[str, str] = field(default_factory=dict)

    def summary_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.summary() for r in self.results], columns=SUMMARY_COLUMNS)

    def folds_frame(self) -> pd.DataFrame:
        frames = [r.fold_scores() for r in self.results]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FOLD_COLUMNS)

    def predictions_frame(self) -> pd.DataFrame:
        frames = [r.predictions() for r in self.results]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)

    def tests_frame(self) -> pd.DataFrame:
        return pd.DataFrame([t.__dict__ for t in self.tests], columns=TEST_COLUMNS)

    def skipped_frame(self) -> pd.DataFrame:
        return pd.DataFrame([s.__dict__ for s in self.skipped], columns=["path", "reason"])


def make_folds(ages: np.ndarray, *, n_folds: int = 10, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Stratified fold of every image, from the ages and the seed only.

    Returns
    -------
    (fold index per image ``(n_images,)``, warnings for ages with fewer images than folds)
    """
    ages = np.asarray(ages)
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if ages.size < n_folds:
        raise ValueError(f"{ages.size} images cannot fill {n_folds} folds; use fewer folds or add images")
    values, counts = np.unique(ages, return_counts=True)
    small = {int(a): int(c) for a, c in zip(values, counts) if c < n_folds}
    notes = []
    if len(small) == len(values):
        raise ValueError(
            f"every age has fewer images than the {n_folds} folds ({_counts_text(small)}); "
            f"use fewer folds (--folds), or clip the age range (--age-range) to merge sparse ages"
        )
    if small:
        notes.append(
            f"ages with fewer images than the {n_folds} folds: {_counts_text(small)}; some test folds have none of them. "
            f"Remedies: clip the age range (--age-range) to merge them into a neighbour, or use fewer folds (--folds)."
        )
    folds = np.empty(ages.size, dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reported above, in words a user can act on
        for k, (_, test) in enumerate(splitter.split(np.zeros(ages.size), ages)):
            folds[test] = k
    return folds, notes


def _counts_text(counts: Mapping[int, int]) -> str:
    return ", ".join(f"age {a}: {c}" for a, c in sorted(counts.items()))


def cross_validate_head(
    features: np.ndarray, ages: np.ndarray, folds: np.ndarray, head: HeadSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of one head.

    Parameters
    ----------
    features : ``(n_images, dim)`` embeddings.
    ages : ``(n_images,)`` reader ages.
    folds : ``(n_images,)`` test fold of each image, from :func:`make_folds`.
    head : which head and parameters; a fresh head is fitted on each training fold.

    Returns
    -------
    (whole-age predictions ``(n_images,)``, continuous predictions ``(n_images,)``)
    """
    features = np.asarray(features, dtype=np.float64)
    ages = np.asarray(ages)
    if features.ndim != 2 or features.shape[0] != ages.shape[0] or folds.shape != ages.shape:
        raise ValueError(f"features {features.shape}, ages {ages.shape} and folds {folds.shape} do not line up")
    pred = np.empty(ages.size, dtype=int)
    raw = np.empty(ages.size, dtype=float)
    for k in np.unique(folds):
        test = folds == k
        model = build_head(head).fit(features[~test], ages[~test])
        pred[test], raw[test] = predict(model, features[test])
    return pred, raw


def compare(
    dataset: Dataset,
    embeddings: Mapping[str, EmbeddingSet],
    heads: Sequence[HeadSpec],
    *,
    n_folds: int = 10,
    seed: int = 0,
    failed_encoders: Mapping[str, str] | None = None,
) -> Comparison:
    """Cross-validate every head on every encoder's embeddings with one shared set of folds.

    Only images embedded by every encoder are used, so every model sees the same images and folds;
    the others are listed in ``Comparison.skipped`` with the reason.
    """
    if not embeddings:
        raise ValueError("no embeddings to evaluate: every encoder failed or none was chosen")
    if not heads:
        raise ValueError("no heads chosen; choose from ridge, svc")
    common = _common_rows(embeddings.values())
    skipped = list(dataset.skipped)
    for emb in embeddings.values():
        skipped += [s for s in emb.failures if s not in skipped]
    named = {s.path for s in skipped}
    for i, record in enumerate(dataset.records):
        if i not in common and record.image not in named:
            skipped.append(Skipped(record.image, "not embedded by every chosen encoder"))
    rows = np.array(sorted(common), dtype=int)
    if rows.size == 0:
        raise ValueError("no image was embedded by every chosen encoder")
    ages = dataset.ages[rows]
    images = tuple(dataset.records[i].image for i in rows)
    folds, notes = make_folds(ages, n_folds=n_folds, seed=seed)
    results = []
    for name, emb in embeddings.items():
        position = {int(r): j for j, r in enumerate(emb.rows)}
        features = emb.features[[position[int(r)] for r in rows]]
        for head in heads:
            pred, raw = cross_validate_head(features, ages, folds, head)
            results.append(CVResult(name, head, images, ages, pred, raw, folds))
    return Comparison(tuple(results), tuple(paired_tests(results)), n_folds, seed, tuple(skipped), tuple(notes),
                      dict(failed_encoders or {}))


def _common_rows(sets) -> set[int]:
    sets = list(sets)
    common = set(int(r) for r in sets[0].rows)
    for emb in sets[1:]:
        common &= set(int(r) for r in emb.rows)
    return common


def paired_tests(results: Sequence[CVResult]) -> list[PairedTest]:
    """Paired t-test across folds between every pair of results, for accuracy, ±1 accuracy and RMSE."""
    tests = []
    scores = {id(r): r.fold_scores() for r in results}
    for a, b in itertools.combinations(results, 2):
        if not np.array_equal(a.fold, b.fold):
            raise ValueError(f"{a.encoder}/{a.head.label} and {b.encoder}/{b.head.label} were not scored on the same folds")
        for metric in TESTED_METRICS:
            diff, t, p = paired_t_test(scores[id(a)][metric].to_numpy(), scores[id(b)][metric].to_numpy())
            tests.append(PairedTest(metric, a.encoder, a.head.label, b.encoder, b.head.label, diff, t, p))
    return tests
