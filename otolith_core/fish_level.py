"""Fish-level scores: when a fish has several photos, one prediction per fish from its photos together.

On folds that keep each fish's photos together (every photo of a fish is in one test fold, predicted by the same
fitted head), a fish's prediction combines its photos' out-of-fold outputs:

- ``ridge``, ``ridge-cv``: the mean of the photos' unrounded outputs, rounded to the nearest age and clipped to the
  training fold's age range, exactly as the ridge rounds one photo (``numpy.rint``: a half goes to the even age);
- ``logistic`` (a head with class probabilities): the mean of the photos' class probabilities, and the age of the
  highest (the younger age on an exact tie);
- ``svc``, ``knn`` and the no-skill baseline: the median of the photos' predicted ages, rounded the same way
  (two photos read 4 and 5 give 4; 5 and 6 give 6).

A fish's reader age is the one its photos carry; where they disagree, their median rounded the same way (counted in
``n_fish_ages_differ``). A fish with one photo keeps that photo's prediction. Scores are computed per fold on the
fold's fish and summarised as summary.csv does (mean and sample SD over all repeats' folds).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .cross_validation import CVResult
from .metrics import METRICS, mean_sd, score
from .notes import Note

REGRESSION_RULE = "mean of the photos' unrounded outputs, rounded (halves to even) and clipped to the training ages"
PROBABILITY_RULE = "mean of the photos' class probabilities, the most probable age"
MEDIAN_RULE = "median of the photos' predicted ages, rounded (halves to even)"
FISH_RULES_TEXT = (f"ridge and ridge-cv: {REGRESSION_RULE}; logistic: {PROBABILITY_RULE}; svc, knn and no-skill: "
                   f"{MEDIAN_RULE}")
FISH_PREDICTION_COLUMNS = ["encoder", "head", "scaling", "repeat", "fold", "fish", "n_photos", "true_age", "pred_age"]
PER_FISH_COLUMNS = (["encoder", "head", "scaling", "rule", "n_images", "n_fish", "n_fish_several", "n_fish_ages_differ"]
                    + [f"{m}_{s}" for m in METRICS for s in ("mean", "sd")] + ["n_folds_total"])


def fish_rule(result: CVResult) -> str:
    """How ``result``'s head combines a fish's photos (one of the module's three rules)."""
    if result.head.is_regression:
        return REGRESSION_RULE
    if result.proba is not None:
        return PROBABILITY_RULE
    return MEDIAN_RULE


def refusal(*, grouped_by_fish: bool, fish: Sequence[str]) -> Note | None:
    """Why fish-level scores cannot be given for a comparison, or None when they can.

    Parameters
    ----------
    grouped_by_fish : whether the folds keep each fish's photos together (``Comparison.grouped_by_fish``).
    fish : the fish of each image of one repeat (``Comparison.fish``).
    """
    counts = pd.Series(list(fish), dtype=object).value_counts()
    if counts.empty or int(counts.max()) < 2:
        return Note("info", "No fish-level scores: no fish has more than one photo (no fish id is shared by two "
                            "photos), so they would equal the per-photo scores.")
    if not grouped_by_fish:
        return Note("info", "No fish-level scores: the folds treat the photos as independent (not grouped by fish), "
                            "so one fish's photos can sit in a training and a test fold at once and its combined "
                            "prediction would have seen the fish. Keep each fish together in one fold to get them.")
    return None


def fish_predictions(result: CVResult, fish: Sequence[str]) -> pd.DataFrame:
    """One row per (repeat, fish): its test fold, photos, reader age and combined prediction (module rules).

    Parameters
    ----------
    result : one model's out-of-fold predictions over all repeats.
    fish : ``(n_images,)`` the fish of each image of a repeat, in the order of ``result``'s rows of a repeat.

    Raises
    ------
    ValueError : when a fish's photos are in different test folds of one repeat (folds not grouped by fish).
    """
    n = result.n_images
    fish = np.asarray(list(fish), dtype=object)
    if fish.size != n:
        raise ValueError(f"{fish.size} fish labels for {n} images per repeat")
    repeats = result.repeat.size // n if n else 0
    rows = pd.DataFrame({"repeat": result.repeat, "fold": result.fold, "fish": np.tile(fish, repeats),
                         "true_age": result.true_age, "pred_age": result.pred_age, "pred_raw": result.pred_raw})
    split = rows.groupby(["repeat", "fish"], sort=True)["fold"].nunique()
    if (split > 1).any():
        repeat, one = split[split > 1].index[0]
        raise ValueError(f"fish {one!r} has photos in {int(split.loc[(repeat, one)])} test folds of repeat {repeat}: "
                         f"fish-level scores need folds that keep each fish together")
    groups = rows.groupby(["repeat", "fish"], sort=True)
    out = groups.agg(fold=("fold", "first"), n_photos=("fold", "size"))
    out["true_age"] = np.rint(groups["true_age"].median()).astype(int)  # numpy.rint: a half goes to the even age
    if result.head.is_regression:
        low, high = _training_ranges(rows)
        folds = list(zip(out.index.get_level_values("repeat"), out["fold"]))
        mean = groups["pred_raw"].mean().to_numpy()
        out["pred_age"] = np.clip(np.rint(mean), [low[k] for k in folds], [high[k] for k in folds]).astype(int)
    elif result.proba is not None:
        proba = pd.DataFrame(result.proba, index=pd.MultiIndex.from_frame(rows[["repeat", "fish"]]))
        mean = proba.groupby(level=["repeat", "fish"], sort=True).mean().loc[out.index].to_numpy()
        out["pred_age"] = result.ages[np.argmax(mean, axis=1)].astype(int)
    else:
        out["pred_age"] = np.rint(groups["pred_age"].median()).astype(int)
    out = out.reset_index()
    out.insert(0, "scaling", result.head.scaling)
    out.insert(0, "head", result.head.label)
    out.insert(0, "encoder", result.encoder)
    return out[FISH_PREDICTION_COLUMNS]


def _training_ranges(rows: pd.DataFrame) -> tuple[dict, dict]:
    """``({(repeat, fold): youngest training age}, {(repeat, fold): oldest})``: the ages a fold's ridge was fitted on
    (every other fold of its repeat), the range it clips its predictions to."""
    low, high = {}, {}
    for repeat, part in rows.groupby("repeat"):
        for fold in part["fold"].unique():
            training = part.loc[part["fold"] != fold, "true_age"]
            low[(repeat, fold)], high[(repeat, fold)] = float(training.min()), float(training.max())
    return low, high


def fish_summary(result: CVResult, fish: Sequence[str], predictions: pd.DataFrame | None = None) -> dict:
    """One per_fish.csv row: counts, and the mean and sample SD over all (repeat, fold) of every metric scored on
    the fold's fish (``predictions``: :func:`fish_predictions` of ``result``, computed when not given)."""
    if predictions is None:
        predictions = fish_predictions(result, fish)
    first = predictions[predictions["repeat"] == predictions["repeat"].min()]
    photos = pd.DataFrame({"fish": list(fish), "age": result.true_age[result.repeat == result.repeat.min()]})
    row = {"encoder": result.encoder, "head": result.head.label, "scaling": result.head.scaling,
           "rule": fish_rule(result), "n_images": result.n_images, "n_fish": len(first),
           "n_fish_several": int((first["n_photos"] > 1).sum()),
           "n_fish_ages_differ": int((photos.groupby("fish")["age"].nunique() > 1).sum())}
    folds = [score(part["true_age"].to_numpy(), part["pred_age"].to_numpy())
             for _, part in predictions.groupby(["repeat", "fold"], sort=True)]
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(np.array([f[metric] for f in folds]))
    row["n_folds_total"] = len(folds)
    return row
