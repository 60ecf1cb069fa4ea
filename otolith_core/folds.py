"""Folds: which images test together, from the reader ages, the groups and the seed only.

Groups are what a fold keeps together: the fish (when photos share a ``fish_id``; the default), or the values
of any manifest column (``group_column``: station, tray photo, ...), merged so that no fish is ever split.
``holdout_column`` replaces k-fold with leave-one-group-out: each value of that column (a cruise, a year) is the
test fold once. Nested training subsets for the learning curve are drawn here too.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .data import Dataset
from .notes import Note


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
            splits = FastStratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
                np.zeros(ages.size), ages, groups)
        for k, (_, test) in enumerate(splits):
            folds[test] = k
    return folds, notes


class FastStratifiedGroupKFold(StratifiedGroupKFold):
    """scikit-learn's ``StratifiedGroupKFold``, the same folds (tested), with each group's best fold found in one
    array operation over the folds instead of a Python loop of ``np.std`` calls: scikit-learn's own loop took over
    half of a grouped inner search's time (a learning curve of ridge-cv on 149 images: 39 of 70 s)."""

    def _find_best_fold(self, y_counts_per_fold, y_cnt, group_y_counts):
        k = self.n_splits
        proposed = np.repeat(y_counts_per_fold[None], k, axis=0)  # proposed[i]: the folds with the group in fold i
        proposed[np.arange(k), np.arange(k)] += group_y_counts
        evals = np.std(proposed / y_cnt.reshape(1, 1, -1), axis=1).mean(axis=1)
        samples = y_counts_per_fold.sum(axis=1)
        best, min_eval, min_samples = None, np.inf, np.inf
        for i, (value, n) in enumerate(zip(evals.tolist(), samples.tolist())):  # scikit-learn's rule, in order
            close = min_eval != np.inf and abs(value - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)  # np.isclose
            if value < min_eval or (close and n < min_samples):
                best, min_eval, min_samples = i, value, n
        return best


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


def leaving_out_only_age(ages: np.ndarray, values: np.ndarray, column: str) -> list[Note]:
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


