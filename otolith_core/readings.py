"""Second readings: ages typed by a person re-reading an otolith, kept in a CSV in the cache folder.

One file per cache folder (``<cache>/readings/second_readings.csv``). Each reading is appended as one row
under a file lock the moment it is entered, so a reload, a restart or a second person writing at the same
time loses nothing. A reading is never changed: a new reading of the same image by the same reader is a new
row, and the latest wins; each reader keeps their own latest reading.

A reading names the photo by its content (SHA-256 of the file) and the crop box, so it follows the image
wherever the manifest or the photos move; a reading of a photo whose bytes have changed since (an edit, an
EXIF rewrite) cannot count and is named. *The* second reading of an image is the latest reading with an age
by anyone (:mod:`~otolith_core.exchange` keeps every reader apart). A manifest may carry a second reader's
ages in a ``second_age`` column (as :func:`manifest_with_readings` writes it): they count as second readings
too, under any typed here.

A reading may carry flags (:data:`FLAGS`: ``uncertain``, ``unusable``) and a comment. An image flagged
``unusable`` (broken, unreadable, the wrong structure) may be saved without an age; such a reading is no second
age. Files written before flags existed load with blank flags and comments; the first reading appended to one
rewrites it once, under the same lock, with the new header and every old row's values as they were.

Agreement between readers is always computed on the ages as read: the first age is the manifest's own (never
clipped; clipping is a choice of the heads only), taken from the data set as it is now, never from the file.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cache import FileHashes
from .data import Dataset, ImageRecord, file_sha256
from .metrics import average_percent_error, coefficient_of_variation

READING_COLUMNS = ["image", "path", "content_sha256", "crop", "first_age", "second_age", "reader", "time", "flags",
                   "comment"]
FLAGS = ("uncertain", "unusable")  # a reading's flags, written in this order joined by ";" (blank: none)
UNUSABLE = "unusable"
FIRST_READER = "first reader"  # the reader of the manifest's own ages
MANIFEST_READER = "manifest second_age"  # the reader of a manifest's second_age column
RESERVED_READERS = (FIRST_READER, MANIFEST_READER)
FILE_NAME = "second_readings.csv"
SECOND_AGE = "second_age"  # the manifest column a second reader's ages are loaded back from
SECOND_COLUMNS = ["image", "first_age", "second_age", "reader", "source"]
_CROP_IN_ID = re.compile(r"\[(\d+),(\d+),(\d+),(\d+)\]$")  # rows written before the crop had a column of its own


@dataclass(frozen=True)
class Agreement:
    """Two sets of ages of the same images: how far apart they are (APE and CV as age readers report them)."""

    n: int
    ape: float  # average percent error, %
    cv: float  # mean coefficient of variation, %
    exact: float  # share read the same


@dataclass(frozen=True)
class Unmatched:
    """A reading of one of the data set's images that cannot count, and why."""

    image: str
    reader: str
    reason: str


@dataclass(frozen=True)
class SecondReadings:
    """Each image's second reading, and every reading or value that could not count.

    ``table``: one row per image read twice (columns ``SECOND_COLUMNS``, data-set order; ``first_age`` is the
    manifest's age as read, ``source`` ``dashboard`` or ``manifest``). ``per_reader``: the latest reading of
    each reader of each image typed in the dashboard. ``bad_values``: the manifest's ``second_age`` values that
    are not whole years. ``unmatched``: readings of this data set's images that cannot count (the photo changed).
    ``n_other``: readings in the cache of images that are not in this data set.
    """

    table: pd.DataFrame
    per_reader: pd.DataFrame
    bad_values: tuple[str, ...] = ()
    unmatched: tuple[Unmatched, ...] = ()
    n_other: int = 0

    def problems(self) -> list[str]:
        """What a person must read, one sentence each: bad manifest values, then readings that do not count."""
        out = list(self.bad_values)
        out += [f"{u.image}: the reading by {u.reader} does not count: {u.reason}" for u in self.unmatched]
        return out


def readings_file(cache_dir: str | Path) -> Path:
    """Where the readings typed into the cache folder ``cache_dir`` are kept (the folder is made on first use)."""
    return Path(cache_dir) / "readings" / FILE_NAME


def crop_text(crop: tuple[int, int, int, int] | None) -> str:
    """A crop box as the readings file writes it (``x0,y0,x1,y1``; blank for a whole photo)."""
    return "" if crop is None else ",".join(map(str, crop))


def has_flag(flags: pd.Series, flag: str) -> pd.Series:
    """Which readings' flags (the file's ``;``-joined text, blank or NA for none) hold ``flag``."""
    return (";" + flags.fillna("").astype(str) + ";").str.contains(f";{flag};", regex=False)


def parse_flags(flags: str | Sequence[str]) -> tuple[str, ...]:
    """Flags as a tuple in :data:`FLAGS` order; ``flags`` is a sequence of names or the file's text
    (``"uncertain;unusable"``, blank for none). An unknown name raises a ValueError naming it."""
    names = flags.split(";") if isinstance(flags, str) else list(flags)
    names = {str(n).strip() for n in names} - {""}
    unknown = sorted(names - set(FLAGS))
    if unknown:
        raise ValueError(f"unknown reading flag(s) {unknown}; choose from {list(FLAGS)}")
    return tuple(f for f in FLAGS if f in names)


def add_reading(cache_dir: str | Path, record: ImageRecord, second_age: int | None, *, reader: str,
                flags: str | Sequence[str] = (), comment: str = "") -> dict:
    """Append one reading of ``record`` at once (under a lock) and return the row written.

    Parameters
    ----------
    cache_dir : the cache folder; the reading goes to :func:`readings_file` there.
    record : the image read.
    second_age : the age read, a whole number of years >= 0; None only with the ``unusable`` flag.
    reader : the reader's name or initials.
    flags : a subset of :data:`FLAGS` (``uncertain``: the reader is unsure; ``unusable``: the image cannot be
        read: broken, unreadable or the wrong structure).
    comment : free text kept with the reading.

    Returns
    -------
    The row as written (``READING_COLUMNS``; ``second_age`` None when no age was given).
    """
    from filelock import FileLock

    if not reader.strip():
        raise ValueError("a second reading needs the reader's name (or initials)")
    if reader.strip() in RESERVED_READERS:
        raise ValueError(f"{reader.strip()!r} names the manifest's own ages; give your own name or initials")
    chosen = parse_flags(flags)
    if second_age is None:
        if UNUSABLE not in chosen:
            raise ValueError(f"a reading of {record.id} without an age must be flagged {UNUSABLE!r}; give an age "
                             f"or the flag")
    elif int(second_age) != second_age or second_age < 0:
        raise ValueError(f"a second age must be a whole number of years >= 0, got {second_age!r}")
    hashes = FileHashes(cache_dir)  # extraction has usually hashed the photo already: no bytes read again
    try:
        content = hashes.sha256(record.path)
    finally:
        hashes.close()
    row = {"image": record.id, "path": record.name, "content_sha256": content, "crop": crop_text(record.crop),
           "first_age": record.read_age, "second_age": None if second_age is None else int(second_age),
           "reader": reader.strip(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "flags": ";".join(chosen), "comment": str(comment).strip()}
    file = readings_file(cache_dir)
    file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(file) + ".lock", timeout=30):
        new = not file.exists() or file.stat().st_size == 0
        if not new:
            _upgrade_header(file)
        with open(file, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=READING_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            handle.flush()
    return row


def _upgrade_header(file: Path) -> None:
    """Rewrite a readings file of an earlier version (fewer columns) with ``READING_COLUMNS``, every row's values
    kept and the new columns blank, replacing it in one step; call only under the file's lock. A file with a
    column this version does not know (a newer version wrote it) is refused rather than rewritten."""
    with open(file, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    if header == READING_COLUMNS:
        return
    unknown = [c for c in header if c not in READING_COLUMNS]
    if unknown:
        raise ValueError(f"{file} has columns {unknown} that this version does not know (a newer version wrote "
                         f"it?); update the dashboard before adding readings to it")
    with open(file, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    temporary = file.with_name(file.name + ".upgrading")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=READING_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, file)  # a reader sees the old file or the new one, never half of one


def load_readings(cache_dir: str | Path) -> pd.DataFrame:
    """Every reading typed into ``cache_dir``, oldest first (an empty table when there is none).

    Files of earlier versions (one per data set, ``readings/<key>/second_readings.csv``, without a ``crop``
    column) are read too, their crop box taken from the image id; rows without ``flags`` or ``comment`` (files
    written before those columns) have them blank. ``second_age`` is a nullable integer (blank: a reading of an
    image flagged unusable, without an age).
    """
    folder = Path(cache_dir) / "readings"
    files = [readings_file(cache_dir), *sorted(folder.glob(f"*/{FILE_NAME}"))]
    text = {"image": str, "path": str, "reader": str, "content_sha256": str, "crop": str, "time": str, "flags": str,
            "comment": str, "second_age": str}
    frames = [pd.read_csv(f, dtype=text, keep_default_na=False) for f in files if f.is_file() and f.stat().st_size]
    if not frames:
        return pd.DataFrame(columns=READING_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    if "crop" not in table:
        table["crop"] = pd.NA
    for column in ("flags", "comment"):
        table[column] = table[column].fillna("") if column in table else ""
    ages = table["second_age"]
    table["second_age"] = pd.to_numeric(ages.where(ages != "")).astype("Int64")
    from_id = table["image"].map(lambda image: ",".join(m.groups()) if (m := _CROP_IN_ID.search(image)) else "")
    table["crop"] = table["crop"].where(table["crop"].notna(), from_id)
    table = table.sort_values("time", kind="stable").reset_index(drop=True)
    return table[READING_COLUMNS]


def match_readings(readings: pd.DataFrame, dataset: Dataset, *, cache_dir: str | Path | None = None
                   ) -> tuple[pd.DataFrame, list[Unmatched], int]:
    """The readings of ``dataset``'s images: (each reader's latest reading of each image, ``image`` set to the
    record's id now; readings of its images that cannot count; how many readings are of other images).

    A reading belongs to the record whose photo has the same content (SHA-256) and crop box, wherever the
    manifest or the photo lives. A reading whose image is still in the data set under its id but whose photo's
    bytes have changed cannot count. ``cache_dir``: remember file hashes there (by path, size and time), so a
    page redrawn after every reading does not read every photo again.
    """
    columns = [*READING_COLUMNS]
    if readings.empty:
        return pd.DataFrame(columns=columns), [], 0
    hashes = FileHashes(cache_dir) if cache_dir is not None else None
    try:
        def content(record: ImageRecord) -> str | None:
            try:
                return hashes.sha256(record.path) if hashes is not None else file_sha256(record.path)
            except OSError:
                return None

        by_id = {r.id: r for r in dataset.records}
        # Most readings are of an image under its own id: check those photos first, hash the rest only if needed.
        owner = {}
        for image in set(readings["image"]):
            if image in by_id:
                record = by_id[image]
                owner[(content(record), crop_text(record.crop))] = image
        keys = list(zip(readings["content_sha256"], readings["crop"]))
        if any(k not in owner for k in keys):
            for record in dataset.records:
                owner.setdefault((content(record), crop_text(record.crop)), record.id)
    finally:
        if hashes is not None:
            hashes.close()
    found = readings.assign(image=[owner.get(k) for k in keys])
    lost = readings[found["image"].isna()]
    changed = lost[lost["image"].isin(by_id)]  # still in the data set under its id, but not with those bytes
    unmatched = {(image, reader): Unmatched(image, reader, "the photo has changed since it was read (its bytes "
                                                           "differ: an edit or an EXIF rewrite); read it again")
                 for image, reader in zip(changed["image"], changed["reader"])}
    per_reader = found[found["image"].notna()].drop_duplicates(["image", "reader"], keep="last")
    return per_reader.reset_index(drop=True)[columns], list(unmatched.values()), len(lost) - len(changed)


def manifest_second_ages(dataset: Dataset) -> tuple[pd.DataFrame, list[str]]:
    """The manifest's own ``second_age`` column (a manifest written by :func:`manifest_with_readings`, or a
    lab's double reading) as readings: (table ``image, first_age, second_age``, problems naming each image
    whose value is not a whole number of years; those are left out). ``first_age`` is the age as read."""
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
        rows.append({"image": r.id, "first_age": r.read_age, "second_age": int(value)})
    return pd.DataFrame(rows, columns=["image", "first_age", "second_age"]), problems


def second_readings(dataset: Dataset, readings: pd.DataFrame | None, *, cache_dir: str | Path | None = None
                    ) -> SecondReadings:
    """Each image's second reading: the newest typed in the dashboard by anyone (``readings``, as
    :func:`load_readings` gives them, matched by :func:`match_readings`; None: none), else the manifest's
    ``second_age`` column. The first age is always the data set's age as read now (unclipped). A reading flagged
    unusable is no second age, even with an age typed beside the flag; ``per_reader`` keeps it, flags and comment
    included."""
    from_manifest, bad = manifest_second_ages(dataset)
    from_manifest = from_manifest.assign(reader="", source="manifest")
    readings = readings if readings is not None else pd.DataFrame(columns=READING_COLUMNS)
    per_reader, unmatched, n_other = match_readings(readings, dataset, cache_dir=cache_dir)
    read_age = {r.id: r.read_age for r in dataset.records}
    aged = per_reader[per_reader["second_age"].notna() & ~has_flag(per_reader["flags"], UNUSABLE)]
    typed = aged.drop_duplicates("image", keep="last")  # sorted by time: the latest usable age by anyone
    typed = typed.assign(first_age=typed["image"].map(read_age), source="dashboard")[SECOND_COLUMNS]
    both = pd.concat([t for t in (from_manifest, typed) if len(t)] or [typed])
    both = both.drop_duplicates("image", keep="last")  # a reading typed here wins over the manifest's
    order = {r.id: i for i, r in enumerate(dataset.records)}
    both = both.sort_values("image", key=lambda images: images.map(order)).reset_index(drop=True)
    table = both.astype({"first_age": int, "second_age": int})[SECOND_COLUMNS]
    return SecondReadings(table, per_reader, tuple(bad), tuple(unmatched), n_other)


def manifest_with_readings(dataset: Dataset, second: SecondReadings) -> pd.DataFrame:
    """The user's own manifest, every row and column as it is (skipped rows included, ages as read), with a
    ``second_age`` column to load back: each image's reading typed in the dashboard, else the manifest's own
    text in that column, else blank. A folder data set gets a manifest built from it (``path, age``)."""
    typed = second.table[second.table["source"] == "dashboard"].set_index("image")["second_age"]
    if dataset.kind == "manifest":
        frame = pd.read_csv(dataset.source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if SECOND_AGE not in [c.strip() for c in frame.columns]:
            frame[SECOND_AGE] = ""
        column = next(c for c in frame.columns if c.strip() == SECOND_AGE)
        for record in dataset.records:
            if record.id in typed.index and record.row is not None:
                frame.loc[record.row - 2, column] = str(int(typed[record.id]))  # row 1 is the header
        return frame
    if dataset.kind == "folder":
        return pd.DataFrame({"path": [r.name for r in dataset.records], "age": [r.read_age for r in dataset.records],
                             SECOND_AGE: [str(int(typed[r.id])) if r.id in typed.index else ""
                                          for r in dataset.records]})
    raise ValueError(f"a {dataset.kind} data set has no manifest to write; second readings need image files")


def agreement(first: Sequence[int], second: Sequence[int]) -> Agreement:
    """APE and CV between two readings of the same images (empty input: NaN)."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.size == 0:
        return Agreement(0, float("nan"), float("nan"), float("nan"))
    return Agreement(int(first.size), average_percent_error(first, second), coefficient_of_variation(first, second),
                     float(np.mean(first == second)))
