"""Second readings: ages typed by a person re-reading an otolith, kept in a CSV in the cache folder.

One file per data set (``<cache>/readings/<key>/second_readings.csv``, the key from the data set's path, so
editing the manifest keeps its readings). Each reading is appended as one row under a file lock the moment
it is entered, so a reload, a restart or a second person writing at the same time loses nothing. Rows are
never rewritten: a second reading of the same image by the same reader is a new row, and the latest wins.
A manifest may carry a second reader's ages in a ``second_age`` column (as :func:`manifest_with_readings`
writes it): they count as second readings too, under any typed here.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cache import FileHashes
from .data import Dataset, ImageRecord, file_sha256
from .metrics import average_percent_error, coefficient_of_variation

READING_COLUMNS = ["image", "path", "content_sha256", "first_age", "second_age", "reader", "time"]
FILE_NAME = "second_readings.csv"
SECOND_AGE = "second_age"  # the manifest column a second reader's ages are loaded back from


@dataclass(frozen=True)
class Agreement:
    """Two sets of ages of the same images: how far apart they are (APE and CV as age readers report them)."""

    n: int
    ape: float  # average percent error, %
    cv: float  # mean coefficient of variation, %
    exact: float  # share read the same


def readings_file(cache_dir: str | Path, dataset: Dataset) -> Path:
    """Where the second readings of ``dataset`` are kept (the folder is made on first use)."""
    key = hashlib.sha256(str(dataset.source).encode()).hexdigest()[:16]
    return Path(cache_dir) / "readings" / key / FILE_NAME


def add_reading(cache_dir: str | Path, dataset: Dataset, record: ImageRecord, second_age: int, *, reader: str) -> dict:
    """Append one second reading of ``record`` at once (under a lock) and return the row written."""
    from filelock import FileLock

    if not reader.strip():
        raise ValueError("a second reading needs the reader's name (or initials)")
    if int(second_age) != second_age or second_age < 0:
        raise ValueError(f"a second age must be a whole number of years >= 0, got {second_age!r}")
    hashes = FileHashes(cache_dir)  # extraction has usually hashed the photo already: no bytes read again
    try:
        content = hashes.sha256(record.path)
    finally:
        hashes.close()
    row = {"image": record.id, "path": record.name, "content_sha256": content,
           "first_age": record.age, "second_age": int(second_age), "reader": reader.strip(),
           "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    file = readings_file(cache_dir, dataset)
    file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(file) + ".lock", timeout=30):
        new = not file.exists() or file.stat().st_size == 0
        with open(file, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=READING_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            handle.flush()
    return row


def load_readings(cache_dir: str | Path, dataset: Dataset) -> pd.DataFrame:
    """Every second reading of ``dataset`` in the order written (an empty table when there is none)."""
    file = readings_file(cache_dir, dataset)
    if not file.exists():
        return pd.DataFrame(columns=READING_COLUMNS)
    return pd.read_csv(file, dtype={"image": str, "path": str, "reader": str, "content_sha256": str})


def latest_readings(readings: pd.DataFrame, dataset: Dataset, *, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The newest reading of each image that still has the same content; readings of a changed file are dropped.

    ``cache_dir``: remember file hashes there (by path, size and time), so a page redrawn after every reading
    does not read every re-read photo again.
    """
    if readings.empty:
        return readings
    by_id = {r.id: r for r in dataset.records}
    latest = readings.drop_duplicates("image", keep="last")
    hashes = FileHashes(cache_dir) if cache_dir is not None else None
    try:
        same = [image in by_id and _same_content(by_id[image], sha, hashes)
                for image, sha in zip(latest.image, latest.content_sha256)]
    finally:
        if hashes is not None:
            hashes.close()
    return latest[same].reset_index(drop=True)


def _same_content(record: ImageRecord, sha: str, hashes: FileHashes | None) -> bool:
    try:
        return (hashes.sha256(record.path) if hashes is not None else file_sha256(record.path)) == sha
    except OSError:
        return False


def manifest_second_ages(dataset: Dataset) -> tuple[pd.DataFrame, list[str]]:
    """The manifest's own ``second_age`` column (a manifest written by :func:`manifest_with_readings`, or a
    lab's double reading) as readings: (table ``image, first_age, second_age``, problems naming each image
    whose value is not a whole number of years; those are left out)."""
    rows, problems = [], []
    for r in dataset.records:
        text = str(r.metadata.get(SECOND_AGE, "")).strip()
        if not text or text.lower() == "nan":
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value >= 0 and value == int(value)):
            problems.append(f"{r.id}: second_age {text!r} is not a whole number of years >= 0; left out")
            continue
        rows.append({"image": r.id, "first_age": r.age, "second_age": int(value)})
    return pd.DataFrame(rows, columns=["image", "first_age", "second_age"]), problems


def second_readings(dataset: Dataset, readings: pd.DataFrame | None, *, cache_dir: str | Path | None = None
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Each image's second reading: the newest typed in the dashboard (``readings``, see
    :func:`latest_readings`; None: none), else the manifest's ``second_age`` column. Returns (table ``image, first_age,
    second_age, reader, source`` in data-set order, ``source`` ``dashboard`` or ``manifest``; the problems of
    :func:`manifest_second_ages`)."""
    from_manifest, problems = manifest_second_ages(dataset)
    from_manifest = from_manifest.assign(reader="", source="manifest")
    typed = latest_readings(readings if readings is not None else pd.DataFrame(columns=READING_COLUMNS), dataset,
                            cache_dir=cache_dir)
    typed = typed.reindex(columns=["image", "first_age", "second_age", "reader"]).assign(source="dashboard")
    both = pd.concat([t for t in (from_manifest, typed) if len(t)] or [typed])
    both = both.drop_duplicates("image", keep="last")  # a reading typed here wins over the manifest's
    order = {r.id: i for i, r in enumerate(dataset.records)}
    both = both.sort_values("image", key=lambda images: images.map(order)).reset_index(drop=True)
    return both.astype({"first_age": int, "second_age": int}), problems


def manifest_with_readings(dataset: Dataset, readings: pd.DataFrame, *, cache_dir: str | Path | None = None
                           ) -> pd.DataFrame:
    """The data set as a manifest with a ``second_age`` column, to load back: each image's second reading
    (:func:`second_readings`), else the manifest's own text in that column, else blank."""
    second = second_readings(dataset, readings, cache_dir=cache_dir)[0].set_index("image")["second_age"]
    rows = []
    for r in dataset.records:
        row = {"path": r.name, "age": r.age, "fish_id": r.fish_id or ""}
        if r.crop is not None:
            row.update(dict(zip(("x0", "y0", "x1", "y1"), r.crop)))
        row.update(r.metadata)
        row[SECOND_AGE] = int(second[r.id]) if r.id in second.index else row.get(SECOND_AGE, "")
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(first: Sequence[int], second: Sequence[int]) -> Agreement:
    """APE and CV between two readings of the same images (empty input: NaN)."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.size == 0:
        return Agreement(0, float("nan"), float("nan"), float("nan"))
    return Agreement(int(first.size), average_percent_error(first, second), coefficient_of_variation(first, second),
                     float(np.mean(first == second)))
