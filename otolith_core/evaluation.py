"""Cross-validation of every (encoder, head) on the same folds -> :class:`Comparison`.

Folds come from the reader ages, the groups and the seed only, and are computed once on the images every
encoder embedded, so all models are scored on identical splits and paired tests between them are meaningful.
``repeats`` R runs R x k-fold with seeds seed..seed+R-1. Every image gets one out-of-fold prediction per repeat.

Groups are what a fold keeps together: the fish (when photos share a ``fish_id``; the default), or the values
of any manifest column (``group_column``: station, tray photo, ...), merged so that no fish is ever split. The
bootstrap resamples whole groups and the heads' inner CV splits by them too. ``holdout_column`` replaces
k-fold with leave-one-group-out: each value of that column (a cruise, a year) is the test fold once.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .covariates import COVARIATE_SCALING, COVARIATES, LEAK_ACCURACY, CovariateRequest, read_covariates
from .data import Dataset, Skipped
from .embeddings import EmbeddingSet
from .heads import (BASELINE_HEAD, PROBABILISTIC_HEADS, HeadSpec, chosen_params, fit_head, predict,
                    scale_rows_once)
from .metrics import METRICS, mean_sd, rmse, score
from .stats import (BOOTSTRAP_METRICS, PairedTest, age_bias, bootstrap_intervals, bowker_symmetry, corrected_t_test,
                    holm_adjust, mcnemar_test, paired_t_test, wilcoxon_test)

TESTED_METRICS = ("accuracy", "pm1_accuracy", "rmse")
NO_SKILL = "no-skill"  # the baseline's encoder name: no image at all, always the most common training age
LEARNING_FRACTIONS = tuple(round(f, 1) for f in np.arange(0.1, 1.01, 0.1))
PARALLEL_MIN_IMAGES = 6000  # below this, starting worker processes for the folds costs more than it saves
PREDICTION_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "image", "path", "true_age", "pred_age",
                      "pred_raw"]
PROBABILITY_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "image", "path", "true_age"]  # then p_age_<a>
SKIPPED_COLUMNS = ["path", "row", "reason", "image"]
SEVERITIES = ("error", "warning", "info")
FOLD_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "held_out", "n_test", "accuracy", "pm1_accuracy", "rmse",
                "mae", "ape", "cv", "macro_f1", "rmse_raw", "n_train", "alpha", "C", "k"]
SUMMARY_COLUMNS = (["encoder", "head", "scaling", "n_images"]
                   + [f"{m}_{s}" for m in (*METRICS, "rmse_raw") for s in ("mean", "sd")] + ["n_folds_total"]
                   + [f"{m}_ci_{end}" for m in BOOTSTRAP_METRICS for end in ("low", "high")])
BOOTSTRAP_DRAWS = 1000
TEST_COLUMNS = ["metric", "encoder_a", "head_a", "encoder_b", "head_b", "mean_diff", "t", "p_value", "test", "p_holm"]
AGEBIAS_COLUMNS = ["encoder", "head", "true_age", "n", "mean_pred", "ci_low", "ci_high"]
PER_AGE_COLUMNS = ["encoder", "head", "age", "n", "recall", "precision", "f1", "mean_error", "pm1_share"]
SYMMETRY_COLUMNS = ["encoder", "head", "statistic", "df", "p_value", "test"]
LEARNING_COLUMNS = ["encoder", "head", "train_fraction", "repeat", "fold", "n_train", "accuracy", "pm1_accuracy", "rmse"]
PER_HOLDOUT_COLUMNS = ["encoder", "head", "scaling", "scope", "held_out", "fold", "n_test", "n_unseen_age", *METRICS]
HELD_OUT_SCOPE, POOLED_SCOPE = "held-out value", "pooled"  # per_holdout.csv's ``scope``: one value's fold, or all


@dataclass(frozen=True)
class Note:
    """Something about a run a person must read; ``error`` means a result is likely wrong until it is fixed."""

    severity: str  # one of SEVERITIES
    message: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; choose from {SEVERITIES}")

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


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


@dataclass(frozen=True)
class Comparison:
    """Every (encoder, head) result on one set of folds, the tests between them, and what was left out."""

    results: tuple[CVResult, ...]
    tests: tuple[PairedTest, ...]
    n_folds: int
    seed: int
    repeats: int = 1
    grouped_by_fish: bool = False  # the folds keep groups together: each fish at least (a group column's values)
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[Note, ...] = ()
    failed_encoders: Mapping[str, str] = field(default_factory=dict)
    learning_curve: pd.DataFrame | None = None
    precisions: Mapping[str, str] = field(default_factory=dict)  # encoder -> arithmetic its embeddings came from
    baseline: CVResult | None = None  # the no-skill reference on the same folds; in no paired test
    groups: tuple[str, ...] = ()  # the group of each image of a repeat (fish, or group-column value): bootstrap units
    bootstrap_draws: int = BOOTSTRAP_DRAWS  # 0: no intervals
    covariates: Mapping[str, str] = field(default_factory=dict)  # covariate column -> kind (numeric, month, categorical)
    impute_covariates: bool = False  # blanks took the training fold's median instead of skipping the image
    revisions: Mapping[str, str | None] = field(default_factory=dict)  # encoder -> hub commit of its weights, or None
    group_column: str | None = None  # a column whose values the folds keep together; None: fish (or no groups)
    holdout_column: str | None = None  # leave-one-group-out over this column's values; None: k-fold
    held_out: tuple[str, ...] = ()  # the hold-out column's value of each fold, by fold index
    fish: tuple[str, ...] = ()  # the fish of each image of a repeat (its own id without fish_id)

    @property
    def group_unit(self) -> str | None:
        """What the folds keep together, in words: ``"fish"``, the group column's name, or None (images apart)."""
        return (self.group_column or "fish") if self.grouped_by_fish else None

    @property
    def folds_text(self) -> str:
        """How the folds were made, for captions: ``"leave-one-cruise_id-out: 5 folds, one per value; folds keep
        each fish together"``, ``"10-fold stratified, folds keep each station_id together (never splitting a
        fish)"``."""
        if self.holdout_column is not None:
            scheme = f"leave-one-{self.holdout_column}-out: {self.n_folds} folds, one per value"
        else:
            scheme = (f"{self.repeats} × {self.n_folds}-fold" if self.repeats > 1 else f"{self.n_folds}-fold") \
                     + " stratified"
        if not self.grouped_by_fish:
            return f"{scheme}, images treated as independent"
        if self.group_column is None:
            return f"{scheme}, folds keep each fish together"
        return f"{scheme}, folds keep each {self.group_unit} together (never splitting a fish)"

    @property
    def scored(self) -> tuple[CVResult, ...]:
        """Every result with a row in the score tables: the models, then the no-skill baseline."""
        return self.results + ((self.baseline,) if self.baseline is not None else ())

    def summary_frame(self) -> pd.DataFrame:
        """Mean and SD over folds of every metric, and bootstrap 95 % intervals of accuracy, ±1 and RMSE."""
        rows = []
        for r in self.scored:
            row = r.summary()
            row.update(self._intervals.get((r.encoder, r.head.label), {}))
            rows.append(row)
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    @functools.cached_property
    def _intervals(self) -> dict:
        """Bootstrap intervals of the first repeat's out-of-fold predictions, per model (computed once)."""
        out = {}
        if self.bootstrap_draws and self.groups:
            for r in self.scored:
                _, true, pred = r.first_repeat()
                ci = bootstrap_intervals(true, pred, np.asarray(self.groups), draws=self.bootstrap_draws, seed=self.seed)
                out[(r.encoder, r.head.label)] = {f"{m}_ci_{end}": v for m, pair in ci.items()
                                                  for end, v in zip(("low", "high"), pair)}
        return out

    def folds_frame(self) -> pd.DataFrame:
        """``folds.csv``: every model's scores per (repeat, fold); ``held_out`` names the value a leave-one-group-out
        fold tested on (empty for k-fold)."""
        frames = [r.fold_scores(self.held_out) for r in self.scored]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FOLD_COLUMNS)

    def per_holdout_frame(self) -> pd.DataFrame:
        """``per_holdout.csv`` (leave-one-group-out only): per model, every metric on each held-out value's images
        (``scope`` "held-out value") and on all images' out-of-fold predictions pooled (``scope`` "pooled",
        ``held_out`` empty). ``n_unseen_age``: test images whose reader age no training image had (no model could
        give it). Empty without a hold-out column."""
        if self.holdout_column is None:
            return pd.DataFrame(columns=PER_HOLDOUT_COLUMNS)
        rows = []
        for r in self.scored:
            first = r.repeat == r.repeat.min()
            true, pred, fold = r.true_age[first], r.pred_age[first], r.fold[first]
            unseen = ~r.age_in_training()[first]
            base = {"encoder": r.encoder, "head": r.head.label, "scaling": r.head.scaling}
            for k, value in enumerate(self.held_out):
                test = fold == k
                rows.append({**base, "scope": HELD_OUT_SCOPE, "held_out": value, "fold": k, "n_test": int(test.sum()),
                             "n_unseen_age": int(unseen[test].sum()), **score(true[test], pred[test])})
            rows.append({**base, "scope": POOLED_SCOPE, "held_out": "", "fold": pd.NA, "n_test": int(true.size),
                         "n_unseen_age": int(unseen.sum()), **score(true, pred)})
        frame = pd.DataFrame(rows, columns=PER_HOLDOUT_COLUMNS)
        frame["fold"] = frame["fold"].astype("Int64")
        return frame

    def predictions_frame(self) -> pd.DataFrame:
        frames = [r.predictions() for r in self.scored]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)

    def probabilities_frame(self) -> pd.DataFrame:
        """Out-of-fold class probabilities of every model whose head gives them (``probabilities.csv``)."""
        frames = [r.probabilities() for r in self.results if r.proba is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROBABILITY_COLUMNS)

    def tests_frame(self) -> pd.DataFrame:
        return pd.DataFrame([t.__dict__ for t in self.tests], columns=TEST_COLUMNS)

    def skipped_frame(self) -> pd.DataFrame:
        return skipped_frame(self.skipped)

    def per_image(self, repeat: int = 0) -> pd.DataFrame:
        """One row per image of one repeat: ``image, path, true_age`` and each model's predicted age.

        Models are named ``"encoder / head"``. Each value is that repeat's out-of-fold prediction, so
        it is a whole age a model really gave (never an average over repeats).
        """
        if not 0 <= repeat < self.repeats:
            raise ValueError(f"repeat {repeat} does not exist; this run has repeats 0..{self.repeats - 1}")
        table = None
        for r in self.results:
            keep = r.repeat == repeat
            column = pd.DataFrame({"image": np.asarray(r.images)[keep], "path": np.asarray(r.paths)[keep],
                                   "true_age": r.true_age[keep], model_label(r.encoder, r.head.label): r.pred_age[keep]})
            table = column if table is None else table.merge(column, on=["image", "path", "true_age"], how="inner",
                                                             validate="one_to_one")
        return table if table is not None else pd.DataFrame(columns=["image", "path", "true_age"])

    def agebias_frame(self) -> pd.DataFrame:
        """Campana's age-bias table per (encoder, head), from the first repeat's predictions."""
        return _first_repeat_table(self.results, age_bias, AGEBIAS_COLUMNS)

    def per_age_frame(self) -> pd.DataFrame:
        """``per_age.csv``: per (encoder, head) and reader age, from the first repeat's out-of-fold predictions."""
        return _first_repeat_table(self.scored, per_age_scores, PER_AGE_COLUMNS)

    def symmetry_frame(self) -> pd.DataFrame:
        """Bowker's test of symmetry of the reader-vs-model age table per (encoder, head), first repeat."""
        rows = []
        for r in self.results:
            _, true, pred = r.first_repeat()
            statistic, df, p = bowker_symmetry(true, pred)
            rows.append({"encoder": r.encoder, "head": r.head.label, "statistic": statistic, "df": df,
                         "p_value": p, "test": "bowker"})
        return pd.DataFrame(rows, columns=SYMMETRY_COLUMNS)

    def learning_curve_frame(self) -> pd.DataFrame:
        return self.learning_curve if self.learning_curve is not None else pd.DataFrame(columns=LEARNING_COLUMNS)


def _first_repeat_table(results: Sequence[CVResult], rows_of, columns: list[str]) -> pd.DataFrame:
    """``rows_of(true, pred)`` of each result's first repeat, each row labelled with its encoder and head."""
    rows = []
    for r in results:
        _, true, pred = r.first_repeat()
        rows += [{"encoder": r.encoder, "head": r.head.label, **row} for row in rows_of(true, pred)]
    return pd.DataFrame(rows, columns=columns)


def per_age_scores(true: np.ndarray, pred: np.ndarray) -> list[dict]:
    """For each reader age: images, recall (share read right), precision (share of the model's calls of that
    age that are right; NaN when it never predicts it), F1, mean signed error (model minus reader, years)
    and the share within one year."""
    true, pred = np.asarray(true), np.asarray(pred)
    rows = []
    for age in np.unique(true):
        read, called = true == age, pred == age
        hits = int(np.sum(read & called))
        recall = hits / int(read.sum())
        precision = hits / int(called.sum()) if called.any() else float("nan")
        f1 = 2 * hits / (int(read.sum()) + int(called.sum()))
        rows.append({"age": int(age), "n": int(read.sum()), "recall": recall, "precision": precision, "f1": f1,
                     "mean_error": float(np.mean(pred[read] - age)),
                     "pm1_share": float(np.mean(np.abs(pred[read] - age) <= 1))})
    return rows


def model_label(encoder: str, head: str) -> str:
    """How a model (encoder and head) is named in the dashboard's charts and tables."""
    return f"{encoder} / {head}"


def skipped_frame(skipped: Sequence[Skipped]) -> pd.DataFrame:
    """``skipped.csv``: path, manifest row (empty for files found by a folder scan), reason, image id."""
    frame = pd.DataFrame([{"path": s.path, "row": s.row, "reason": s.reason, "image": s.image} for s in skipped],
                         columns=SKIPPED_COLUMNS)
    frame["row"] = frame["row"].astype("Int64")
    return frame


def make_folds(
    ages: np.ndarray, *, n_folds: int = 10, seed: int = 0, groups: np.ndarray | None = None, units: str = "fish"
) -> tuple[np.ndarray, list[Note]]:
    """Stratified fold of every image, from the ages, the groups and the seed only.

    Parameters
    ----------
    ages : ``(n_images,)`` reader ages.
    groups : ``(n_images,)`` group of each image (its fish, or its value of a group column); all images of one
        group land in one fold (``StratifiedGroupKFold``). None: images are independent (``StratifiedKFold``).
    units : what a group is, in messages (``"fish"``, ``"station_id values"``).

    Returns
    -------
    (fold index per image ``(n_images,)``, warnings for ages with fewer images or fish than folds)
    """
    ages = np.asarray(ages)
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    units = units if groups is not None else "images"
    n_units = len(np.unique(groups)) if groups is not None else ages.size
    if n_units < n_folds:
        raise ValueError(f"{n_units} {units} cannot fill {n_folds} folds; use fewer folds or add {units}")
    values = np.unique(ages)
    counts = {int(a): int(len(np.unique(groups[ages == a])) if groups is not None else np.sum(ages == a)) for a in values}
    small = {a: c for a, c in counts.items() if c < n_folds}
    notes = []
    if len(small) == len(values):
        raise ValueError(
            f"every age has fewer {units} than the {n_folds} folds ({_counts_text(small)}); "
            f"use fewer folds (--folds), or clip the age range (--age-range) to merge sparse ages"
        )
    if small:
        notes.append(Note(
            "warning",
            f"ages with fewer {units} than the {n_folds} folds: {_counts_text(small)}; some test folds have none of them. "
            f"Remedies: clip the age range (--age-range) to merge them into a neighbour, or use fewer folds (--folds)."
        ))
    folds = np.empty(ages.size, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reported above, in words a user can act on
        if groups is None:
            splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(ages.size), ages)
        else:
            splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
                np.zeros(ages.size), ages, groups)
        for k, (_, test) in enumerate(splits):
            folds[test] = k
    return folds, notes


def _counts_text(counts: Mapping[int, int]) -> str:
    return ", ".join(f"age {a}: {c}" for a, c in sorted(counts.items()))


def fish_groups(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """Group label per image: its ``fish_id``, or its own image id when it has none."""
    return np.array([dataset.records[i].fish_id or f"image:{dataset.records[i].id}" for i in rows])


def column_values(dataset: Dataset, rows: np.ndarray, column: str, *, option: str) -> np.ndarray:
    """``(len(rows),)`` each image's value of a manifest ``column`` as text, stripped ("" where blank).

    Any column a manifest has can be named: its fish column, its path column (the photo: crops of one tray photo
    share it), its id column, or any other (kept as ``ImageRecord.metadata``). ``option`` names the setting in
    messages (``--group-column``). Raises ValueError for a folder without columns, the age column, or a column
    the manifest lacks (naming the ones it has).
    """
    if dataset.kind != "manifest":
        what = "a folder of age sub-folders" if dataset.kind == "folder" else f"the data ({dataset.kind})"
        raise ValueError(f"{option} {column!r}: {what} has no columns; give a CSV manifest with that column")
    mapped = dataset.columns
    if column == mapped.age:
        raise ValueError(f"{option} {column!r} is the age column: folds made from the ages themselves would test "
                         f"every age on models that never saw it; choose another column")
    records = [dataset.records[i] for i in rows]
    if column == mapped.fish:
        return np.array([r.fish_id or "" for r in records], dtype=object)
    if column == mapped.path:
        return np.array([r.name for r in records], dtype=object)
    if mapped.id and column == mapped.id:
        return np.array([r.given_id or "" for r in records], dtype=object)
    known = list(dict.fromkeys(k for r in dataset.records for k in r.metadata))
    if column not in known:
        has = [mapped.path, mapped.age, *([mapped.fish] if dataset.has_fish_ids else []), *known]
        raise ValueError(f"{option} {column!r} is not a column of the manifest; its columns are {has}")
    return np.array([str(r.metadata.get(column, "")).strip() for r in records], dtype=object)


def column_groups(dataset: Dataset, rows: np.ndarray, column: str) -> tuple[np.ndarray, list[Note]]:
    """Group label per image from a manifest ``column`` (``--group-column``), never splitting a fish.

    A blank value makes the image a group of its own (as an image without ``fish_id``), with a warning counting
    them. Photos of one fish that carry different values join those values' groups into one (labelled
    ``"ST03+ST04"``), with a warning naming the fish, so a fish is never on both sides of a split.
    """
    values = column_values(dataset, rows, column, option="--group-column")
    records = [dataset.records[i] for i in rows]
    labels = [v if v else f"image:{r.id}" for v, r in zip(values, records)]
    notes = []
    blank = int(sum(1 for v in values if not v))
    if blank:
        notes.append(Note("warning", f"{blank} images have a blank {column}: each is kept apart as a group of its "
                                     f"own (fill the column to keep them with their {column})"))
    by_fish: dict[str, list[str]] = {}
    for label, record in zip(labels, records):
        if record.fish_id:
            by_fish.setdefault(record.fish_id, []).append(label)
    split = {fish: sorted(set(found)) for fish, found in by_fish.items() if len(set(found)) > 1}
    # values shared by a fish are one group: the connected components of "a fish carries both values"
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    pairs = np.array([(nodes[found[0]], nodes[other]) for found in split.values() for other in found[1:]],
                     dtype=int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(nodes), len(nodes)))
    component = connected_components(graph, directed=False)[1]
    members: dict[int, list[str]] = {}
    for label, i in nodes.items():
        members.setdefault(component[i], []).append(label)
    name = {label: "+".join(sorted(members[component[i]])) for label, i in nodes.items()}
    if split:
        shown = "; ".join(f"fish {fish} ({', '.join(found)})" for fish, found in sorted(split.items())[:5])
        more = f" and {len(split) - 5} more" if len(split) > 5 else ""
        notes.append(Note("warning", f"photos of one fish carry different {column} values: {shown}{more}; those "
                                     f"values are kept together as one group, so no fish is split between folds"))
    return np.array([name[label] for label in labels]), notes


def holdout_folds(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Leave-one-group-out: ``(fold of each image, the value each fold holds out)``; fold k tests the k-th value in
    sorted order (as scikit-learn's ``LeaveOneGroupOut``)."""
    held_out, folds = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    if held_out.size < 2:
        raise ValueError(f"leave-one-group-out needs at least 2 values of the hold-out column, got "
                         f"{held_out.tolist()}")
    return folds.astype(int), tuple(held_out.tolist())


def check_nested(groups: np.ndarray, held_out: np.ndarray, *, unit: str, column: str) -> None:
    """Raise ValueError naming the first groups (fish, or group-column values) whose images carry several values
    of the hold-out ``column``: leaving one value out would train on part of the group and test on the rest."""
    frame = pd.DataFrame({"group": groups, "value": held_out})
    spread = frame.groupby("group")["value"].unique()
    spanning = spread[spread.map(len) > 1]
    if len(spanning):
        named = "; ".join(f"{unit} {group} has images in {column} {', '.join(sorted(values))}"
                          for group, values in spanning.head(5).items())
        raise ValueError(f"{named}: leave-one-{column}-out would train on part of it and test on the rest; fix "
                         f"the manifest, or keep together a column nested in {column} (or none)")


def _leaving_out_only_age(ages: np.ndarray, values: np.ndarray, column: str) -> list[Note]:
    """Info about ages that occur under one hold-out value only: when it is held out no model has seen them."""
    lonely = []
    for age in np.unique(ages):
        where = np.unique(values[ages == age])
        if where.size == 1:
            lonely.append(f"age {int(age)} ({column} {where[0]})")
    if not lonely:
        return []
    return [Note("info", f"ages found under one {column} only: {', '.join(lonely)}; when that value is held out no "
                         f"model has seen the age, so its images cannot be read right (n_unseen_age in "
                         f"per_holdout.csv)")]


@dataclass(frozen=True)
class OutOfFold:
    """One head's out-of-fold predictions over one set of folds."""

    pred: np.ndarray  # (n_images,) int: whole ages
    raw: np.ndarray  # (n_images,) float: ridge's continuous value (a classifier: its class)
    params: dict[int, dict[str, float]]  # fold -> the parameters the head used there: alpha, C, k (NaN if not its own)
    proba: np.ndarray | None = None  # (n_images, n_ages) class probabilities (columns: sorted ages); None without


def cross_validate_head(
    features: np.ndarray, ages: np.ndarray, folds: np.ndarray, head: HeadSpec, *, n_jobs: int | None = None,
    groups: np.ndarray | None = None,
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
    if workers > 1:
        from joblib import Parallel, delayed

        outcomes = Parallel(n_jobs=workers)(delayed(_fit_fold)(features, ages, folds == k, fitted, groups)
                                            for k in fold_ids)
    else:
        outcomes = [_fit_fold(features, ages, folds == k, fitted, groups) for k in fold_ids]
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
    from joblib import cpu_count  # counts the cores this process may use (affinity, container quotas)

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


def _fit_fold(features: np.ndarray, ages: np.ndarray, test: np.ndarray, head: HeadSpec, groups: np.ndarray | None):
    """Fit a fresh head on the training rows (its inner CV grouped by ``groups`` unless None), predict the test
    rows: (whole ages, continuous, parameters used, (the training fold's ages, class probabilities) or None for a
    head without probabilities)."""
    model = fit_head(head, features[~test], ages[~test], groups=None if groups is None else groups[~test])
    pred, raw = predict(model, features[test])
    proba = (model.classes_, model.predict_proba(features[test])) if head.name in PROBABILISTIC_HEADS else None
    return pred, raw, chosen_params(head, model), proba


def nested_subsets(ages: np.ndarray, fractions: Sequence[float], *, seed: int) -> list[np.ndarray]:
    """Stratified, nested subsets of a training fold: positions of the first ``f`` of each age, shuffled once.

    Every subset holds at least one image of each age, and each subset contains the smaller ones.
    """
    rng = np.random.default_rng(seed)
    ages = np.asarray(ages)
    orders = {a: rng.permutation(np.flatnonzero(ages == a)) for a in np.unique(ages)}
    subsets = []
    for f in fractions:
        take = [order[: max(1, int(round(f * order.size)))] for order in orders.values()]
        subsets.append(np.sort(np.concatenate(take)))
    return subsets


def learning_curve(
    features: np.ndarray, ages: np.ndarray, folds: np.ndarray, head: HeadSpec, *, seed: int,
    fractions: Sequence[float] = LEARNING_FRACTIONS, groups: np.ndarray | None = None,
) -> list[dict]:
    """Scores on each test fold when training on growing, nested fractions of its training fold; ``groups`` (the
    fish of each image, when ``folds`` keep them together) group the heads' inner CV as in
    :func:`cross_validate_head`."""
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
    return rows


def compare(
    dataset: Dataset,
    embeddings: Mapping[str, EmbeddingSet],
    heads: Sequence[HeadSpec],
    *,
    n_folds: int = 10,
    seed: int = 0,
    repeats: int = 1,
    group_by_fish: bool | None = None,
    with_learning_curve: bool = False,
    failed_encoders: Mapping[str, str] | None = None,
    bootstrap_draws: int = BOOTSTRAP_DRAWS,
    scalings: Mapping[str, str] | None = None,
    combined: Sequence[Sequence[str]] = (),
    covariates: CovariateRequest | None = None,
    group_column: str | None = None,
    holdout_column: str | None = None,
) -> Comparison:
    """Cross-validate every head on every encoder's embeddings with one shared set of folds per repeat.

    Parameters
    ----------
    repeats : R x k-fold with seeds ``seed .. seed + R - 1``.
    group_by_fish : keep all photos of a fish in one fold, and on one side of every inner CV that chooses a
        head's parameter; None (default) does so when the data has several photos of any fish.
    group_column : a manifest column whose values are kept together instead (station, tray photo, ...: see
        :func:`column_groups`: a blank value is a group of its own; values shared by a fish are merged); the
        inner CV and the bootstrap use the same groups. Given with ``group_by_fish=False``: ValueError.
    holdout_column : leave-one-group-out over this manifest column's values (a cruise, a year): each value is the
        test fold once, ``n_folds`` is ignored (the number of values), ``repeats`` must be 1 (the split is fixed).
        Images with a blank value are skipped. The groups (fish, or ``group_column``) must nest in its values.
    with_learning_curve : also train on 10 %, 20 %, ... 100 % of each training fold.
    bootstrap_draws : draws for the 95 % intervals in the summary (fish resampled; 0: none), seeded by ``seed``.
    scalings : each encoder's own feature scaling (its registry entry), used by heads whose scaling is
        ``auto``; an encoder not named gets ``l2``.
    combined : groups of encoders (of ``embeddings``) evaluated together as one more encoder, labelled
        ``"A + B"``: each part scaled as its own entry says (or as the heads' one scaling), then concatenated.
    covariates : manifest columns added as features (:mod:`~otolith_core.covariates`): one more row
        ``covariates`` (them alone) and, for every encoder row ``A``, a row ``A + covariates``.

    Only images embedded by every encoder (and, with covariates, having all of them) are used, so every
    model sees the same images and folds; the others are listed in ``Comparison.skipped`` with the reason.
    """
    if not embeddings:
        raise ValueError("no embeddings to evaluate: every encoder failed or none was chosen")
    if not heads:
        raise ValueError("no heads chosen; choose from ridge, svc, ridge-cv, logistic, knn")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if group_column and group_by_fish is False:
        raise ValueError(f"group_column {group_column!r} keeps each value's images in one fold, which "
                         f"group_by_fish=False (--no-group-by-fish) forbids; drop one of the two")
    if holdout_column and repeats > 1:
        raise ValueError(f"leave-one-{holdout_column}-out is one fixed split: repeats ({repeats}) would repeat it "
                         f"identically; use repeats 1")
    common = _common_rows(embeddings.values())
    skipped = list(dict.fromkeys([*dataset.skipped, *(s for emb in embeddings.values() for s in emb.failures)]))
    named = {s.image for s in skipped}
    for i, record in enumerate(dataset.records):
        if i not in common and record.id not in named:
            skipped.append(Skipped.of(record, "not embedded by every chosen encoder"))
    table = None
    if covariates is not None and covariates.columns:
        table = read_covariates(dataset.records, covariates, source=f"{dataset.kind} {dataset.source.name}",
                                age_column=dataset.age_column)
        lacking = sorted(i for i in table.problems if i in common)
        if lacking and len(lacking) == len(common):
            raise ValueError(f"no image has every covariate; e.g. {dataset.records[lacking[0]].name}: "
                             f"{table.problems[lacking[0]]}")
        skipped += [Skipped.of(dataset.records[i], table.problems[i]) for i in lacking]
        common -= set(lacking)
    if holdout_column:
        every = column_values(dataset, np.arange(len(dataset.records)), holdout_column, option="--holdout-column")
        blank = sorted(i for i in common if not every[i])
        if blank and len(blank) == len(common):
            raise ValueError(f"every image has a blank {holdout_column} (the hold-out column); choose another")
        skipped += [Skipped.of(dataset.records[i], f"blank {holdout_column} (the hold-out column)") for i in blank]
        common -= set(blank)
    rows = np.array(sorted(common), dtype=int)
    if rows.size == 0:
        raise ValueError("no image was embedded by every chosen encoder")
    ages = dataset.ages[rows]
    images = tuple(dataset.records[i].id for i in rows)
    paths = tuple(dataset.records[i].name for i in rows)
    fish = fish_groups(dataset, rows)
    notes: list[Note] = []
    if group_column == dataset.columns.fish:
        group_column, group_by_fish = None, True  # the fish column named: today's grouping by fish
    if group_column:
        groups, notes = column_groups(dataset, rows, group_column)
        group_by_fish, units = True, f"{group_column} values"
    else:
        groups, units = fish, "fish"
        if group_by_fish is None:
            group_by_fish = len(np.unique(groups)) < len(groups)
    fit_groups = groups if group_by_fish else None  # the heads' inner CV is grouped whenever the folds are
    fold_sets, held_out = [], ()
    if holdout_column:
        values = column_values(dataset, rows, holdout_column, option="--holdout-column")
        if fit_groups is not None:
            check_nested(fish, values, unit="fish", column=holdout_column)
            if group_column:
                check_nested(groups, values, unit=group_column, column=holdout_column)
        folds, held_out = holdout_folds(values)
        fold_sets.append(folds)
        n_folds = len(held_out)
        notes += _leaving_out_only_age(ages, values.astype(str), holdout_column)
    for r in range(0 if holdout_column else repeats):
        folds, fold_notes = make_folds(ages, n_folds=n_folds, seed=seed + r, groups=fit_groups, units=units)
        fold_sets.append(folds)
        notes += [n for n in fold_notes if n not in notes]
    notes += duplicate_warnings(next(iter(embeddings.values())), rows, images, ages, fold_sets)
    notes += [Note("info", text) for text in (table.notes() if table is not None else ())]
    results, curve = [], []
    scalings = dict(scalings or {})
    matrices = {}
    for name, emb in embeddings.items():
        position = {int(r): j for j, r in enumerate(emb.rows)}
        matrices[name] = emb.features[[position[int(r)] for r in rows]]
    entries = [(name, matrices[name], scalings.get(name, "l2"), ()) for name in embeddings]
    for parts in combined:
        missing = [p for p in parts if p not in matrices]
        if missing or len(parts) < 2:
            raise ValueError(f"--combine {','.join(parts)}: needs two or more of the evaluated encoders "
                             f"({', '.join(matrices)}); not evaluated: {', '.join(missing) or '-'}")
        entries.append((combined_label(parts), np.hstack([matrices[p] for p in parts]),
                        "+".join(scalings.get(p, "l2") for p in parts), tuple(matrices[p].shape[1] for p in parts)))
    if table is not None:
        entries = with_covariates(entries, table.values[rows])
    for name, features, own_scaling, blocks in entries:
        for head in (h.for_encoder(own_scaling, blocks, table.encoding if table else None) for h in heads):
            parts, alphas, chosen = [], {}, {}
            probas = []
            for r, folds in enumerate(fold_sets):
                out = cross_validate_head(features, ages, folds, head, groups=fit_groups)
                parts.append((out.pred, out.raw, folds, np.full(ages.size, r)))
                probas.append(out.proba)
                alphas.update({(r, k): p["alpha"] for k, p in out.params.items()})
                chosen.update({(r, k): {"C": p["C"], "k": p["k"]} for k, p in out.params.items()})
                if with_learning_curve:
                    curve += [{"encoder": name, "head": head.label, "repeat": r, **row}
                              for row in learning_curve(features, ages, folds, head, seed=seed + r,
                                                        groups=fit_groups)]
            pred, raw, fold, repeat = (np.concatenate(p) for p in zip(*parts))
            proba = np.vstack(probas) if probas[0] is not None else None
            results.append(CVResult(name, head, images * repeats, paths * repeats, np.tile(ages, repeats), pred, raw,
                                    fold, repeat, alphas, chosen, proba))
    notes += covariate_leaks(results, table.names if table is not None else ())
    lc = pd.DataFrame(curve, columns=LEARNING_COLUMNS) if with_learning_curve else None
    baseline = no_skill(ages, fold_sets, images, paths)
    return Comparison(tuple(results), tuple(paired_tests(results)), n_folds, seed, repeats, bool(group_by_fish),
                      tuple(skipped), tuple(notes), dict(failed_encoders or {}), lc,
                      {name: emb.precision for name, emb in embeddings.items()}, baseline, tuple(groups.tolist()),
                      int(bootstrap_draws), dict(zip(table.names, table.encoding.kinds)) if table else {},
                      bool(table and table.encoding.impute),
                      revisions={name: emb.weights_revision for name, emb in embeddings.items()},
                      group_column=group_column or None, holdout_column=holdout_column or None, held_out=held_out,
                      fish=tuple(fish.tolist()))


def covariate_leaks(results: Sequence[CVResult], names: Sequence[str]) -> list[Note]:
    """A warning for each head that reads at least ``LEAK_ACCURACY`` of the ages exactly from the covariates alone:
    no fish measurement does that honestly, a column holding the age (or derived from it) does."""
    notes = []
    for r in results:
        accuracy = float(r.fold_scores()["accuracy"].mean()) if r.encoder == COVARIATES else float("nan")
        if accuracy >= LEAK_ACCURACY:
            notes.append(Note("warning", f"the covariates alone ({', '.join(names)}) read {accuracy:.0%} of the ages "
                                         f"exactly with {r.head.label}: no fish measurement does that; does one of "
                                         f"these columns hold the age, or was it derived from it? Every "
                                         f"'+ covariates' row is then worthless."))
    return notes


def with_covariates(entries: list[tuple], covariates: np.ndarray) -> list[tuple]:
    """Evaluation entries ``(name, features, own scaling, blocks)`` plus the covariates alone and each entry
    with the covariate columns appended (``"A + covariates"``, encoded in-fold after A's own scaling)."""
    width = covariates.shape[1]
    out = list(entries) + [(COVARIATES, covariates, COVARIATE_SCALING, ())]
    for name, features, own, blocks in entries:
        out.append((combined_label([name, COVARIATES]), np.hstack([features, covariates]),
                    f"{own}+{COVARIATE_SCALING}", (*(blocks or (features.shape[1],)), width)))
    return out


def combined_label(parts: Sequence[str]) -> str:
    """``"A + B"``: the row of a combined encoder (spaces included, so a variant's own ``+`` never splits it)."""
    return " + ".join(parts)


def no_skill(ages: np.ndarray, fold_sets: Sequence[np.ndarray], images: Sequence[str], paths: Sequence[str]) -> CVResult:
    """The no-skill baseline on the given folds: each test fold gets its training fold's most common age
    (the smallest of tied ages, as scikit-learn's ``DummyClassifier(strategy="most_frequent")``)."""
    head = HeadSpec(BASELINE_HEAD).for_encoder("none")
    nothing = np.zeros((ages.size, 1))  # it sees no image
    parts = []
    for r, folds in enumerate(fold_sets):
        out = cross_validate_head(nothing, ages, folds, head, n_jobs=1)
        parts.append((out.pred, out.raw, folds, np.full(ages.size, r)))
    pred, raw, fold, repeat = (np.concatenate(p) for p in zip(*parts))
    repeats = len(fold_sets)
    return CVResult(NO_SKILL, head, tuple(images) * repeats, tuple(paths) * repeats, np.tile(ages, repeats), pred,
                    raw, fold, repeat)


def duplicate_warnings(emb: EmbeddingSet, rows: np.ndarray, images: Sequence[str], ages: np.ndarray,
                       fold_sets: Sequence[np.ndarray]) -> list[Note]:
    """Notes about images with the same content; errors when they disagree on age or straddle folds."""
    if not emb.keys:
        return []
    key_of = dict(zip(emb.rows.tolist(), emb.keys))
    by_key: dict[str, list[int]] = {}
    for j, row in enumerate(rows.tolist()):
        by_key.setdefault(key_of[row], []).append(j)
    notes = []
    for members in (m for m in by_key.values() if len(m) > 1):
        names = ", ".join(images[j] for j in members)
        if len(set(ages[members].tolist())) > 1:
            notes.append(Note("error", f"{names} are the same image but carry different ages "
                                       f"({', '.join(str(a) for a in ages[members])}); fix the manifest"))
        elif any(len(set(folds[members].tolist())) > 1 for folds in fold_sets):
            notes.append(Note("error", f"{names} are the same image and fall in different folds, so the model is "
                                       f"tested on an image it was trained on; remove the copies or give them one fish_id"))
        else:
            notes.append(Note("info", f"{names} are the same image (duplicates)"))
    return notes


def _common_rows(sets) -> set[int]:
    sets = list(sets)
    common = set(int(r) for r in sets[0].rows)
    for emb in sets[1:]:
        common &= set(int(r) for r in emb.rows)
    return common


def paired_tests(results: Sequence[CVResult]) -> list[PairedTest]:
    """Every pair of results: naive and corrected t, Wilcoxon on fold scores, exact McNemar on images.

    ``p_holm`` adjusts each family (one test on one metric over all pairs) with Holm's method.
    """
    tests: list[PairedTest] = []
    scores = {id(r): r.fold_scores() for r in results}
    for a, b in itertools.combinations(results, 2):
        if not (np.array_equal(a.fold, b.fold) and np.array_equal(a.repeat, b.repeat)):
            raise ValueError(f"{a.encoder}/{a.head.label} and {b.encoder}/{b.head.label} were not scored on the same folds")
        fa, fb = scores[id(a)], scores[id(b)]
        ratio = float(np.mean(fa["n_test"] / fa["n_train"]))
        names = (a.encoder, a.head.label, b.encoder, b.head.label)
        for metric in TESTED_METRICS:
            x, y = fa[metric].to_numpy(), fb[metric].to_numpy()
            tests.append(PairedTest(metric, *names, *paired_t_test(x, y), test="paired_t"))
            tests.append(PairedTest(metric, *names, *corrected_t_test(x, y, test_train_ratio=ratio), test="corrected_t"))
            tests.append(PairedTest(metric, *names, *wilcoxon_test(x, y), test="wilcoxon"))
        _, true, pred_a = a.first_repeat()
        _, _, pred_b = b.first_repeat()
        tests.append(PairedTest("accuracy", *names, *mcnemar_test(pred_a == true, pred_b == true), test="mcnemar"))
        tests.append(PairedTest("pm1_accuracy", *names,
                                *mcnemar_test(np.abs(pred_a - true) <= 1, np.abs(pred_b - true) <= 1), test="mcnemar"))
    families: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tests):
        families.setdefault((t.test, t.metric), []).append(i)
    adjusted = list(tests)
    for index in families.values():
        for i, p in zip(index, holm_adjust(np.array([tests[i].p_value for i in index]))):
            adjusted[i] = PairedTest(**{**tests[i].__dict__, "p_holm": float(p)})
    return adjusted
