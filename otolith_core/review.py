"""Doubtful reader ages: images whose out-of-fold class probabilities say the reader's age is unlikely.

For each model with a probabilistic head (``logistic``), the out-of-fold probabilities (every image
predicted by a model that never saw it; with R x k-fold, the mean of its R predictions) go to cleanlab:
``get_label_quality_scores`` (self-confidence: the probability the model gives the reader's age) and
``find_label_issues`` (confident learning: the images it counts as likely mislabelled, from the per-age
confusion of reader and model).
An image's score for one model is 1 minus that probability: near 1, the model is confident the reader's
age is wrong; with several models it is the mean of their scores. Nothing here says which age is right;
it says which otoliths are worth reading again.

A model whose training fold lacked the image's reader age (a rare age, all its fish in the image's test fold)
could not give that age, so its probability 0 says nothing about the image: only the repeats whose training
fold held the age score it, and an image no repeat of a model could score has no score from that model.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from .cross_validation import CVResult, model_label

REVIEW_COLUMNS = ["rank", "image", "path", "reader_age", "score", "not_scored_because", "n_models", "flagged_by",
                  "models_agree", "consensus_age"]  # then per model: "<model> age", "<model> score"


def probabilistic(results: Sequence[CVResult]) -> list[CVResult]:
    """The results whose head gave out-of-fold class probabilities."""
    return [r for r in results if r.proba is not None]


def mean_probabilities(result: CVResult, images: np.ndarray, *, rows: np.ndarray | None = None) -> np.ndarray:
    """``(len(images), n_ages)``: each image's out-of-fold probabilities averaged over the repeats (R x k-fold
    predicts every image once per repeat, each time by a model trained on another split); with ``rows``
    (``(n_rows,)`` bool) over those rows only, NaN for an image with none of them."""
    frame = pd.DataFrame(result.proba)
    frame["image"] = np.asarray(result.images)
    if rows is not None:
        frame = frame[np.asarray(rows)]
    return frame.groupby("image", sort=False).mean().reindex(images).to_numpy()


def seeded_order(images: Sequence[str], seed: int) -> list[str]:
    """``images`` in an order every reader sees alike: by a hash of ``seed`` and the image id, so it does not
    depend on the manifest's row order and an image keeps its place when others are added or removed."""
    import hashlib

    return sorted(images, key=lambda image: hashlib.sha256(f"{seed}:{image}".encode()).hexdigest())


def doubtful_ages(results: Sequence[CVResult], *, fish: Sequence[str] | None = None, tie_seed: int | None = None
                  ) -> pd.DataFrame:
    """``label_review.csv``: every image, most doubtful reader age first, then the images no model could score.

    Parameters
    ----------
    results : models on the same images and folds; those without probabilities are ignored.
    fish : the fish of each image, in the results' image order (``Comparison.fish``); the reason an image is
        not scored then counts fish, else images.

    Returns
    -------
    One row per image: ``score`` (mean over the models that scored the image of 1 - p(reader's age); blank where
    none could), ``not_scored_because`` (why not; empty where scored), ``n_models`` (the models that scored it),
    ``flagged_by`` (how many of them count it as a label issue by confident learning), ``models_agree`` (every
    model that scored it gives the same age and it is not the reader's), ``consensus_age`` (the models' most
    common age), then each model's age (the age of its highest probability, averaged over the repeats that
    scored the image, or over all its repeats where none did) and score (blank where it could not score the
    image). ``rank`` numbers the scored images; the unscored follow, unranked, in the results' order.
    Images with the same score and flags are in :func:`seeded_order` of ``tie_seed`` (None: the results' order),
    so every reader reading down the ranking sees the same sequence.
    A model scores an image from the repeats whose training fold held the image's reader age
    (:meth:`CVResult.age_in_training`): elsewhere it gave that age probability 0, whatever the photo shows.
    Raises ``ValueError`` when no result has probabilities.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    chosen = probabilistic(results)
    if not chosen:
        raise ValueError("doubtful ages need a head with class probabilities; add the logistic head")
    images, reader, _ = chosen[0].first_repeat()
    if fish is not None and len(fish) != len(images):
        raise ValueError(f"fish names {len(fish)} images, the results have {len(images)}")
    first = chosen[0].repeat == chosen[0].repeat.min()
    paths = np.asarray(chosen[0].paths)[first]
    table = pd.DataFrame({"image": images, "path": paths, "reader_age": reader})
    scores = np.full((len(chosen), len(images)), np.nan)  # (n_models, n_images); NaN: that model cannot score it
    flags = np.zeros(scores.shape, dtype=bool)
    ages = np.zeros(scores.shape, dtype=int)
    for m, r in enumerate(chosen):
        mine, true, _ = r.first_repeat()
        if not (np.array_equal(mine, images) and np.array_equal(true, reader)):
            raise ValueError(f"{model_label(r.encoder, r.head.label)} was not run on the same images")
        held = mean_probabilities(r, images, rows=r.age_in_training())
        scored = ~np.isnan(held).any(axis=1)
        proba = np.where(scored[:, None], held, mean_probabilities(r, images))  # unscored: its age, from every repeat
        ages[m] = r.ages[proba.argmax(axis=1)]
        labels = np.searchsorted(r.ages, true)
        if scored.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cleanlab warns about rare ages; the scores are still defined
                quality = get_label_quality_scores(labels[scored], proba[scored], method="self_confidence")
                flags[m, scored] = find_label_issues(labels[scored], proba[scored], filter_by="prune_by_noise_rate",
                                                     n_jobs=1)
            scores[m, scored] = 1.0 - quality
        label = model_label(r.encoder, r.head.label)
        table[f"{label} age"] = ages[m]
        table[f"{label} score"] = scores[m]
    counted = ~np.isnan(scores)
    n_models = counted.sum(axis=0)
    table["score"] = np.where(n_models > 0, np.nansum(scores, axis=0) / np.maximum(n_models, 1), np.nan)
    table["not_scored_because"] = ["" if n else _not_scored_because(age, reader, fish)
                                   for n, age in zip(n_models, reader)]
    table["n_models"] = n_models
    table["flagged_by"] = flags.sum(axis=0)
    table["models_agree"] = [len(set(votes[c])) == 1 and votes[c][0] != age
                             for votes, c, age in zip(ages.T, counted.T, reader)]
    table["consensus_age"] = [int(np.bincount(column).argmax()) for column in ages.T]
    if tie_seed is not None:
        place = {image: i for i, image in enumerate(seeded_order(list(table["image"]), tie_seed))}
        table = table.iloc[np.argsort([place[image] for image in table["image"]], kind="stable")]
    table = table.sort_values(["score", "flagged_by"], ascending=False, na_position="last",
                              kind="stable").reset_index(drop=True)
    n_scored = int(np.sum(n_models > 0))
    table.insert(0, "rank", pd.array([*range(1, n_scored + 1), *[None] * (len(table) - n_scored)], dtype="Int64"))
    return table[REVIEW_COLUMNS + [c for c in table.columns if c not in REVIEW_COLUMNS]]


def _not_scored_because(age: int, reader: np.ndarray, fish: Sequence[str] | None) -> str:
    """Why no model scored an image of reader age ``age``: all the fish of that age were in its test fold."""
    if fish is not None:
        count = f"{len(set(np.asarray(fish)[reader == age]))} fish"
    else:
        n = int(np.sum(reader == age))
        count = f"{n} image{'s' if n > 1 else ''}"
    return f"age {age} was in no training fold that left this image out (only {count} of that age)"


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
