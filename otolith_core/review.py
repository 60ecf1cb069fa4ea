"""Doubtful reader ages: images whose out-of-fold class probabilities say the reader's age is unlikely.

For each model with a probabilistic head (``logistic``), the out-of-fold probabilities (every image
predicted by a model that never saw it; with R x k-fold, the mean of its R predictions) go to cleanlab:
``get_label_quality_scores`` (self-confidence: the probability the model gives the reader's age) and
``find_label_issues`` (confident learning: the images it counts as likely mislabelled, from the per-age
confusion of reader and model).
An image's score for one model is 1 minus that probability: near 1, the model is confident the reader's
age is wrong; with several models it is the mean of their scores. Nothing here says which age is right;
it says which otoliths are worth reading again.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from .evaluation import CVResult, model_label

REVIEW_COLUMNS = ["rank", "image", "path", "reader_age", "score", "n_models", "flagged_by", "models_agree",
                  "consensus_age"]  # then per model: "<model> age", "<model> score"


def probabilistic(results: Sequence[CVResult]) -> list[CVResult]:
    """The results whose head gave out-of-fold class probabilities."""
    return [r for r in results if r.proba is not None]


def mean_probabilities(result: CVResult, images: np.ndarray) -> np.ndarray:
    """``(len(images), n_ages)``: each image's out-of-fold probabilities averaged over the repeats (R x k-fold
    predicts every image once per repeat, each time by a model trained on another split)."""
    frame = pd.DataFrame(result.proba)
    frame["image"] = np.asarray(result.images)
    return frame.groupby("image", sort=False).mean().loc[images].to_numpy()


def doubtful_ages(results: Sequence[CVResult]) -> pd.DataFrame:
    """``label_review.csv``: every image, most doubtful reader age first.

    Parameters
    ----------
    results : models on the same images and folds; those without probabilities are ignored.

    Returns
    -------
    One row per image: ``score`` (mean over models of 1 - p(reader's age)), ``flagged_by`` (how many models'
    confident learning counts it as a label issue), ``models_agree`` (every model gives the same age and it is
    not the reader's), ``consensus_age`` (the models' most common age), then each model's age (the age of its
    highest probability, averaged over repeats) and score.
    Raises ``ValueError`` when no result has probabilities.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    chosen = probabilistic(results)
    if not chosen:
        raise ValueError("doubtful ages need a head with class probabilities; add the logistic head")
    images, reader, _ = chosen[0].first_repeat()
    first = chosen[0].repeat == chosen[0].repeat.min()
    paths = np.asarray(chosen[0].paths)[first]
    table = pd.DataFrame({"image": images, "path": paths, "reader_age": reader})
    scores, flags, ages = [], [], []
    for r in chosen:
        mine, true, _ = r.first_repeat()
        if not (np.array_equal(mine, images) and np.array_equal(true, reader)):
            raise ValueError(f"{model_label(r.encoder, r.head.label)} was not run on the same images")
        proba = mean_probabilities(r, images)
        pred = r.ages[proba.argmax(axis=1)]
        labels = np.searchsorted(r.ages, true)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cleanlab warns about rare ages; the scores are still defined
            quality = get_label_quality_scores(labels, proba, method="self_confidence")
            issues = find_label_issues(labels, proba, filter_by="prune_by_noise_rate", n_jobs=1)
        label = model_label(r.encoder, r.head.label)
        table[f"{label} age"] = pred
        table[f"{label} score"] = 1.0 - quality
        scores.append(1.0 - quality)
        flags.append(issues)
        ages.append(pred)
    votes = np.vstack(ages)
    table["score"] = np.mean(scores, axis=0)
    table["n_models"] = len(chosen)
    table["flagged_by"] = np.sum(flags, axis=0)
    table["models_agree"] = np.all(votes == votes[0], axis=0) & (votes[0] != reader)
    table["consensus_age"] = [int(np.bincount(column).argmax()) for column in votes.T]
    table = table.sort_values(["score", "flagged_by"], ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table[REVIEW_COLUMNS + [c for c in table.columns if c not in REVIEW_COLUMNS]]


def precision_at(table: pd.DataFrame, wrong: set[str], k: int | None = None) -> float:
    """Share of the top ``k`` (default: as many as ``wrong``) images of ``doubtful_ages`` that are in ``wrong``."""
    k = len(wrong) if k is None else k
    return float(np.mean([image in wrong for image in table["image"].head(k)])) if k else float("nan")


def with_second_ages(table: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """``table`` (:func:`doubtful_ages`) with a ``second_age`` column after ``reader_age``: each image's second
    reading (``second``: columns ``image, second_age``, as ``readings.second_readings`` gives them), blank
    where there is none. Unchanged when there are no second readings."""
    if second is None or not len(second):
        return table
    ages = second.set_index("image")["second_age"]
    table = table.copy()
    table.insert(table.columns.get_loc("reader_age") + 1, "second_age",
                 pd.array([ages.get(i) for i in table["image"]], dtype="Int64"))
    return table
