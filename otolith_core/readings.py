"""Second readings: ages typed by a person re-reading an otolith, kept in a CSV in the cache folder.

One file per data set (``<cache>/readings/<key>/second_readings.csv``, the key from the data set's path, so
editing the manifest keeps its readings). Each reading is appended as one row under a file lock the moment
it is entered, so a reload, a restart or a second person writing at the same time loses nothing. Rows are
never rewritten: a second reading of the same image by the same reader is a new row, and the latest wins.
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


def manifest_with_readings(dataset: Dataset, readings: pd.DataFrame, *, cache_dir: str | Path | None = None
                           ) -> pd.DataFrame:
    """The data set as a manifest with a ``second_age`` column (blank where not re-read), to load back."""
    latest = (latest_readings(readings, dataset, cache_dir=cache_dir).set_index("image")["second_age"]
              if not readings.empty else {})
    rows = []
    for r in dataset.records:
        row = {"path": r.name, "age": r.age, "fish_id": r.fish_id or ""}
        if r.crop is not None:
            row.update(dict(zip(("x0", "y0", "x1", "y1"), r.crop)))
        row.update(r.metadata)
        row["second_age"] = int(latest[r.id]) if r.id in latest else ""
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(first: Sequence[int], second: Sequence[int]) -> Agreement:
    """APE and CV between two readings of the same images (empty input: NaN)."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.size == 0:
        return Agreement(0, float("nan"), float("nan"), float("nan"))
    return Agreement(int(first.size), average_percent_error(first, second), coefficient_of_variation(first, second),
                     float(np.mean(first == second)))
