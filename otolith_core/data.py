"""Find otolith images and their reader ages: a folder with one sub-folder per age, or a CSV manifest.

``load_dataset(path)`` returns a :class:`Dataset` of usable rows plus every row or file that was
not used, each with a reason a person can act on. ``load_image(record)`` decodes one image the same
way for every encoder: EXIF orientation applied, any PIL mode brought to 8-bit RGB, crop box cut;
``load_images(records)`` does the same for many, decoding a photo once for all its crop boxes. Camera RAW
files are decoded with rawpy, an optional extra (``otolith-dashboard[raw]``). Photos behind URLs are kept in the
cache folder; ``download_missing(dataset)`` fetches those not there yet (:mod:`otolith_core.downloads`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # pandas is imported where a manifest is read: a shard's process reads none (half a second)
    import pandas as pd

from .downloads import (URL_SCHEMES, DownloadFailed, Fetch, download_path, failure_path, fetch_all, is_url,
                        without_query)

RAW_EXTENSIONS = frozenset({".nef", ".cr2", ".arw", ".dng"})  # camera RAW, decoded with rawpy
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}) | RAW_EXTENSIONS
RAW_NEEDS_EXTRA = "camera RAW: install otolith-dashboard[raw]"  # the reason a RAW row is skipped without rawpy
CROP_COLUMNS = ("x0", "y0", "x1", "y1")
MANIFEST_COLUMNS = ("path", "age", "fish_id", *CROP_COLUMNS)

# Otolith photographs from camera bodies reach 30-50 MP; PIL's default guard (89 MP) would refuse a
# 2x2 stitched plate. We raise it to a stated bound instead of switching it off.
MAX_IMAGE_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

MIN_IMAGE_SIDE = 8  # smaller images (or crops) carry no readable otolith

_AGE_FOLDER = re.compile(r"^(?:age[_\- ]?)?(\d+)$", re.IGNORECASE)
BOX_FORMATS = ("xyxy", "xywh")
_NUMBER = r"\s*(-?\d+(?:\.\d*)?)\s*"
_BOX_PATTERNS = (  # [[x0, y0], [x1, y1]]; [x0, y0, x1, y1]; x0,y0,x1,y1 (or the same with widths and heights)
    re.compile(rf"^\[\s*\[{_NUMBER},{_NUMBER}\]\s*,\s*\[{_NUMBER},{_NUMBER}\]\s*\]$"),
    re.compile(rf"^\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]$"),
    re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$"),
)


@dataclass(frozen=True)
class ManifestColumns:
    """Which columns of a manifest hold what: a lab's export is read as it is, its columns mapped here.

    The defaults are the native manifest (``path, age, fish_id`` and, when present, ``x0, y0, x1, y1``).
    ``box`` names one column holding each row's crop box, as ``[[x0, y0], [x1, y1]]``, ``[x0, y0, x1, y1]``
    or ``x0,y0,x1,y1`` (``box_format`` ``xywh``: x0, y0, width, height), in pixels of the upright photo (after
    EXIF rotation). ``id`` names a column that names each image (e.g. ``measurement_id``); without it an
    image is named by its path (a URL without its query string) plus its box.
    """

    path: str = "path"
    age: str = "age"
    fish: str = "fish_id"
    box: str | None = None
    box_format: str = "xyxy"
    id: str | None = None

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"unknown box format {self.box_format!r}; choose from {list(BOX_FORMATS)}")
        for role, column in (("path", self.path), ("age", self.age), ("fish", self.fish)):
            if not column or not column.strip():
                raise ValueError(f"the {role} column needs a name")

    @property
    def native(self) -> bool:
        return self == ManifestColumns()

    def used(self) -> tuple[str, ...]:
        """The columns this mapping reads (the rest of a manifest is kept as metadata)."""
        boxes = (self.box,) if self.box else CROP_COLUMNS
        return tuple(c for c in (self.path, self.age, self.fish, *boxes, self.id) if c)


def manifest_header(path: str | Path, *, n_rows: int = 50) -> pd.DataFrame | None:
    """The first ``n_rows`` of a CSV manifest as text (a folder's ``manifest.csv``), or None for a folder of age
    sub-folders or a file that cannot be read: what a column picker offers."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if path.suffix.lower() != ".csv" or not path.is_file():
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", nrows=n_rows)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError):
        return None
    table.columns = [c.strip() for c in table.columns]
    return table


def detect_columns(table: pd.DataFrame) -> ManifestColumns:
    """A first guess at a manifest's mapping from its first rows: the native names where present, else the column
    of image paths or URLs and the column of boxes (``parse_box`` reads every filled value)."""
    def share(column: str, test) -> float:
        values = [v.strip() for v in table[column] if v.strip()]
        return sum(map(test, values)) / len(values) if values else 0.0

    def looks_like_image(text: str) -> bool:
        return text.lower().startswith(URL_SCHEMES) or Path(image_name(text)).suffix.lower() in IMAGE_EXTENSIONS

    columns = list(table.columns)
    path = "path"
    if path not in columns:
        best = max(columns, key=lambda c: share(c, looks_like_image), default=path)
        path = best if best in columns and share(best, looks_like_image) > 0.5 else path
    box = None
    if not all(c in columns for c in CROP_COLUMNS):  # the native x0..y1 columns win
        box = next((c for c in columns if share(c, lambda t: parse_box(t)[0] is not None) > 0.9), None)
    return ManifestColumns(path=path, box=box)


def image_name(path_text: str) -> str:
    """How an image is named in every output: the path as written, or a URL without its query string and
    fragment (a presigned URL's signature and expiry change with every export; they never name an image)."""
    text = path_text.strip()
    return without_query(text) if is_url(text) else text


def parse_box(text: str, *, box_format: str = "xyxy") -> tuple[tuple[int, int, int, int] | None, str | None]:
    """A crop box as a lab export writes it -> ``((x0, y0, x1, y1), None)``, ``(None, None)`` for a blank, or
    ``(None, reason)`` naming what is wrong."""
    text = text.strip()
    if not text:
        return None, None
    match = next((m for m in (p.match(text) for p in _BOX_PATTERNS) if m), None)
    if match is None:
        return None, (f"box {text!r} cannot be read; write it as [[x0, y0], [x1, y1]], [x0, y0, x1, y1] or "
                      f"x0,y0,x1,y1 (pixels of the upright photo)")
    x0, y0, a, b = (float(v) for v in match.groups())
    if box_format == "xywh":
        a, b = x0 + a, y0 + b
    return _checked_box(x0, y0, a, b)


def _checked_box(x0: float, y0: float, x1: float, y1: float):
    if any(v != int(v) for v in (x0, y0, x1, y1)):
        return None, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must be whole pixel numbers"
    x0, y0, x1, y1 = (int(v) for v in (x0, y0, x1, y1))
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        return None, f"crop box ({x0}, {y0}, {x1}, {y1}) is inverted or negative; need 0 <= x0 < x1 and 0 <= y0 < y1"
    return (x0, y0, x1, y1), None


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: where it is, how it is named in outputs, and its reader age.

    ``id`` is the record's unique key in every table (file and crop box): one photo holding several
    otoliths appears as several records, one per crop box.
    """

    path: Path  # absolute path on disk (a photo behind a URL: where the cache keeps it, downloaded or not yet)
    name: str  # as written in the manifest, or relative to the data folder (the `path` column of every CSV)
    age: int  # the age the heads learn: the reader's, clipped into the data set's age range when one is set
    fish_id: str | None = None
    crop: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in pixels after EXIF rotation
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    row: int | None = None  # manifest row (the header is row 1); None for a folder scan
    age_before_clipping: int | None = None  # the reader's own age when clipping changed it; None: ``age`` is it
    given_id: str | None = None  # from the manifest's id column (e.g. measurement_id); None: name + crop box
    # the URL as written (a presigned link's signature included) when the photo is behind one; only ever used to
    # download it, never shown or stored (``name`` is the URL without its query string)
    url: str | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def read_age(self) -> int:
        """The age as the reader wrote it (never clipped): what agreement between readers is computed on."""
        return self.age if self.age_before_clipping is None else self.age_before_clipping

    @property
    def id(self) -> str:
        """Unique key of this image: the manifest's id column when one is mapped, else the file as named plus
        the crop box when there is one."""
        return self.given_id if self.given_id is not None else image_id(self.name, self.crop)


def image_id(name: str, crop: tuple[int, int, int, int] | None) -> str:
    """``name`` for a whole file, ``name[x0,y0,x1,y1]`` for a crop of it."""
    return name if crop is None else f"{name}[{','.join(map(str, crop))}]"


@dataclass(frozen=True)
class Skipped:
    """An input row, file or image that was not used, and why.

    ``path`` holds the path alone; ``row`` is the manifest row (None for files found by a folder
    scan); ``image`` is the record id when the row had become an image record (it failed later).
    """

    path: str
    reason: str
    row: int | None = None
    image: str | None = None

    @classmethod
    def of(cls, record: ImageRecord, reason: str) -> Skipped:
        """A record that could not be used."""
        return cls(record.name, reason, record.row, record.id)

    def where(self) -> str:
        """The path and the manifest row, for messages."""
        return f"{self.path} (manifest row {self.row})" if self.row is not None else self.path


@dataclass(frozen=True)
class Dataset:
    """Images with reader ages, ready for embedding.

    ``records`` keeps input order (manifest order, or sorted paths for a folder).
    """

    source: Path
    kind: str  # "folder" | "manifest" | "embeddings"
    records: tuple[ImageRecord, ...]
    skipped: tuple[Skipped, ...] = ()
    age_range: tuple[int, int] | None = None
    columns: ManifestColumns = ManifestColumns()  # how the manifest's columns were read

    @property
    def age_column(self) -> str:
        """The manifest column the reader's ages were read from."""
        return self.columns.age

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ages(self) -> np.ndarray:
        """Reader ages, shape ``(n_images,)``, int."""
        return np.array([r.age for r in self.records], dtype=int)

    @property
    def ids(self) -> list[str]:
        """Record ids, shape ``(n_images,)``, unique."""
        return [r.id for r in self.records]

    @property
    def to_download(self) -> list[ImageRecord]:
        """Records whose photo is behind a URL and not in the cache yet (:func:`download_missing` fetches them)."""
        return [r for r in self.records if r.url is not None and not r.path.is_file()]

    @property
    def has_fish_ids(self) -> bool:
        return any(r.fish_id is not None for r in self.records)

    def age_counts(self) -> pd.Series:
        """Number of images per age, indexed by age."""
        import pandas as pd

        return pd.Series(self.ages).value_counts().sort_index().rename("n_images")

    def subset(self, keep: np.ndarray | list[int], *, extra_skipped: tuple[Skipped, ...] = ()) -> Dataset:
        """The dataset restricted to the records at positions ``keep`` (order kept)."""
        records = tuple(self.records[i] for i in keep)
        return replace(self, records=records, skipped=self.skipped + tuple(extra_skipped))


def load_dataset(path: str | Path, *, age_range: tuple[int, int] | None = None,
                 columns: ManifestColumns | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """Read a folder of age sub-folders or a CSV manifest.

    Parameters
    ----------
    path : folder with one sub-folder per age (``4/``, ``age_04/``), or a ``.csv`` manifest with
        columns ``path, age`` and optional ``fish_id, x0, y0, x1, y1`` plus any metadata columns.
        A folder holding a ``manifest.csv`` is read through that manifest.
    age_range : optional ``(min, max)``; ages outside are clipped into it (the paper clips cod
        to 1..10, so a 14-year-old fish counts as 10).
    columns : which manifest columns hold the path, age, fish, box and id (:class:`ManifestColumns`; default:
        the native names). A folder has no columns to map.
    cache_dir : the cache folder photos behind URLs are downloaded into (:func:`download_missing` fetches them;
        nothing is downloaded here). Without it, a row with a URL is skipped, named.

    Returns
    -------
    Dataset with the usable records and every skipped row or file with its reason. A record whose photo is
    behind a URL and not downloaded yet is usable (``Dataset.to_download`` lists them).
    """
    path = Path(path).expanduser()
    if age_range is not None:
        lo, hi = (int(a) for a in age_range)
        if lo > hi:
            raise ValueError(f"age range must be (min, max) with min <= max, got {age_range!r}")
        age_range = (lo, hi)
    if not path.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist; give a folder of age sub-folders or a CSV manifest")
    path = data_source(path)
    columns = columns or ManifestColumns()
    if path.is_dir():
        if not columns.native:
            raise ValueError(f"{str(path)!r} is a folder: column names (--path-column, --box-column, ...) apply to "
                             f"a CSV manifest")
        records, skipped = _scan_folder(path)
        kind = "folder"
    elif path.suffix.lower() == ".csv":
        records, skipped = _read_manifest(path, columns, None if cache_dir is None else Path(cache_dir).expanduser())
        kind = "manifest"
    else:
        raise ValueError(f"data path {str(path)!r} is neither a folder nor a .csv manifest")
    if age_range is not None:
        records = [_clip_age(r, age_range) for r in records]
    if not records:
        raise ValueError(f"no usable images found in {str(path)!r} ({len(skipped)} skipped); see the skipped list for reasons")
    return Dataset(path.resolve(), kind, tuple(records), tuple(skipped), age_range, columns)


def download_missing(dataset: Dataset, *, workers: int | None = None, timeout: float | None = None,
                     progress=None) -> Dataset:
    """``dataset`` with every photo behind a URL downloaded into the cache (see :mod:`otolith_core.downloads`).

    Each photo is fetched once for all its boxes, several photos at once; a photo another job is fetching is
    waited for, not fetched twice. The records of a photo that cannot be fetched move to ``skipped``, each
    named with the HTTP status or reason; the rest go on. ``progress(done, total, failed)`` counts photos.
    """
    waiting = dataset.to_download
    if not waiting:
        if progress:
            progress(0, 0, 0)
        return dataset
    options = {k: v for k, v in (("workers", workers), ("timeout", timeout)) if v is not None}
    outcomes = fetch_all([Fetch(r.url, r.path) for r in waiting], progress=progress, **options)
    failed = {r.id: Skipped.of(r, f"download failed: {outcomes[r.path]}") for r in waiting
              if isinstance(outcomes.get(r.path), DownloadFailed)}
    fetched = {r.path for r in waiting if r.id not in failed}
    kept = [r for r in dataset.records if r.id not in failed]
    skipped = list(dataset.skipped) + list(failed.values())
    if not kept:
        first = next(iter(failed.values()))
        raise ValueError(f"no photo of {str(dataset.source)!r} could be downloaded ({len(failed)} rows); the first, "
                         f"{first.where()}: {first.reason}")
    if fetched:  # a whole-frame box can be told only once its photo is here
        kept, skipped = _without_whole_frame_boxes(kept, skipped, only=fetched)
    return replace(dataset, records=tuple(kept), skipped=tuple(skipped))


def data_signature(path: str | Path, columns: ManifestColumns | None = None,
                   cache_dir: str | Path | None = None) -> str:
    """A digest that changes whenever :func:`load_dataset` on ``path`` (with ``columns``) may give another answer.

    A folder: every file's path relative to it, size and modification time. A manifest: its bytes (URLs without
    their query strings: a re-export with fresh signatures is the same data), plus the size and modification time
    of every local file it lists (so a file added, replaced or deleted later is noticed), and the column mapping.
    With ``cache_dir``, also the state of the downloads of its photos behind URLs (:func:`download_signature`).
    Reads no image bytes.
    """
    path = _manifest_of(path)
    columns = columns or ManifestColumns()
    digest = hashlib.sha256()
    if not columns.native:  # the native mapping adds nothing, so signatures from before mappings stay valid
        digest.update(repr(sorted(asdict(columns).items())).encode())
    if path.is_dir():
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in files:
                file = Path(root, name)
                entries.append(f"{file.relative_to(path).as_posix()}|{_stat_text(file)}")
        digest.update("\n".join(sorted(entries)).encode())
    elif path.is_file():
        content = path.read_bytes()
        texts = _manifest_column(content, columns.path)
        if any(is_url(t) and ("?" in t or "#" in t) for t in texts):
            content = _without_queries(content, columns.path)
        digest.update(content)
        for text in dict.fromkeys(texts):
            if text and not is_url(text):
                listed = Path(text).expanduser()
                listed = listed if listed.is_absolute() else path.parent / listed
                digest.update(f"\n{listed}|{_stat_text(listed)}".encode())
        if cache_dir is not None:
            digest.update(download_signature(path, columns, cache_dir).encode())
    else:
        digest.update(b"missing")
    return digest.hexdigest()


def download_signature(path: str | Path, columns: ManifestColumns | None, cache_dir: str | Path) -> str:
    """A digest of where the downloads of a manifest's photos behind URLs stand in ``cache_dir``: each one's
    size and time, and each recorded failure ("" when the manifest lists no URL). It changes as photos arrive,
    which :func:`data_signature` without ``cache_dir`` does not: a run asked for before its photos were
    downloaded is still the same run once they are."""
    path = _manifest_of(path)
    if not path.is_file():
        return ""
    urls = [t for t in dict.fromkeys(_manifest_column(path.read_bytes(), (columns or ManifestColumns()).path))
            if t and is_url(t)]
    if not urls:
        return ""
    digest = hashlib.sha256()
    for url in urls:
        listed = download_path(cache_dir, url)
        digest.update(f"\n{listed}|{_stat_text(listed)}|{_stat_text(failure_path(listed))}".encode())
    return digest.hexdigest()


def _manifest_of(path: str | Path) -> Path:
    """A folder holding a manifest.csv means that manifest."""
    path = Path(path).expanduser()
    return path / "manifest.csv" if path.is_dir() and (path / "manifest.csv").is_file() else path


def _stat_text(file: Path) -> str:
    try:
        stat = file.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def _manifest_column(content: bytes, column_name: str) -> list[str]:
    """Every row's text in one column of a manifest (stripped); [] when the manifest or column cannot be read."""
    import csv
    import io

    try:
        reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
        column = next((c for c in reader.fieldnames or () if c.strip() == column_name), None)
        if column is None:
            return []
        return [(row.get(column) or "").strip() for row in reader]
    except (UnicodeDecodeError, csv.Error):
        return []


def _without_queries(content: bytes, column_name: str) -> bytes:
    """The manifest with its URLs' query strings cut (for the signature only; the file is never rewritten)."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
    at = next(i for i, c in enumerate(rows[0]) if c.strip() == column_name)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        if at < len(row):
            row[at] = image_name(row[at])
        writer.writerow(row)
    return out.getvalue().encode()


def _clip_age(record: ImageRecord, age_range: tuple[int, int]) -> ImageRecord:
    lo, hi = age_range
    clipped = min(max(record.age, lo), hi)
    if clipped == record.age:
        return record
    return replace(record, age=clipped, age_before_clipping=record.age)


def _scan_folder(root: Path) -> tuple[list[ImageRecord], list[Skipped]]:
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    raw = _RawSupport()
    for sub in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not sub.is_dir():
            skipped.append(Skipped(sub.name, "file at the top level; images must sit in one sub-folder per age"))
            continue
        match = _AGE_FOLDER.match(sub.name)
        for file in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = file.relative_to(root).as_posix()
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(rel, f"not an image file (extension {file.suffix or 'none'!r})"))
            elif match is None:
                skipped.append(Skipped(rel, f"folder name {sub.name!r} is not an age; name age folders like '4' or 'age_04'"))
            elif not raw.can_decode(file):
                skipped.append(Skipped(rel, RAW_NEEDS_EXTRA))
            else:
                records.append(ImageRecord(file.resolve(), rel, int(match.group(1))))
    return records, skipped


def _read_manifest(csv_path: Path, columns: ManifestColumns, cache_dir: Path | None
                   ) -> tuple[list[ImageRecord], list[Skipped]]:
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read manifest {str(csv_path)!r}: {exc}") from exc
    table.columns = [c.strip() for c in table.columns]
    named = [("path", columns.path, "--path-column"), ("age", columns.age, "--age-column")]
    named += [("box", columns.box, "--box-column")] if columns.box else []
    named += [("id", columns.id, "--id-column")] if columns.id else []
    missing = [(role, column, option) for role, column, option in named if column not in table.columns]
    if missing:
        wanted = ", ".join(f"{column!r} for the {role} (or name another with {option})" for role, column, option in missing)
        raise ValueError(f"manifest {str(csv_path)!r} lacks {wanted}; its columns are {list(table.columns)}")
    crop_present = [] if columns.box else [c for c in CROP_COLUMNS if c in table.columns]
    if crop_present and len(crop_present) != 4:
        raise ValueError(f"manifest {str(csv_path)!r} has crop column(s) {crop_present}; give all of x0, y0, x1, y1 or none")
    used = set(columns.used())
    extra = [c for c in table.columns if c not in used]

    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    raw = _RawSupport()
    first_row: dict[tuple[Path, tuple | None], tuple[int, int]] = {}  # (file, crop) -> (row, age)
    id_rows: dict[str, int] = {}  # a mapped id column -> its first row
    base = csv_path.parent
    for row_number, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        written = row[columns.path].strip()
        image = image_name(written)
        if not image:
            skipped.append(Skipped("", "blank path", row_number))
            continue
        age, problem = _parse_age(row[columns.age])
        if problem:
            skipped.append(Skipped(image, problem, row_number))
            continue
        if columns.box:
            crop, problem = parse_box(row[columns.box], box_format=columns.box_format)
        else:
            crop, problem = _parse_crop(row) if crop_present else (None, None)
        if problem:
            skipped.append(Skipped(image, problem, row_number))
            continue
        given = row[columns.id].strip() if columns.id else None
        if columns.id and not given:
            skipped.append(Skipped(image, f"blank {columns.id!r} (the id column)", row_number))
            continue
        if given in id_rows:
            skipped.append(Skipped(image, f"{columns.id} {given!r} is already manifest row {id_rows[given]}'s; "
                                          f"each image needs an id of its own", row_number))
            continue
        url = written if is_url(written) else None
        if url is not None:
            if cache_dir is None:
                skipped.append(Skipped(image, "a photo behind a URL needs a cache folder to be downloaded into",
                                       row_number))
                continue
            file = download_path(cache_dir, written)
            extension = Path(image).suffix.lower()
        else:
            file = Path(image).expanduser()
            file = file if file.is_absolute() else base / file
            if not file.is_file():
                skipped.append(Skipped(image, f"file not found at {str(file)!r}", row_number))
                continue
            extension = file.suffix.lower()
        if extension not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(image, f"not an image file (extension {extension or 'none'!r}); use JPEG, PNG, TIFF, "
                                          f"BMP or camera RAW (NEF, CR2, ARW, DNG)", row_number))
            continue
        if not raw.can_decode(file):
            skipped.append(Skipped(image, RAW_NEEDS_EXTRA, row_number))
            continue
        file = file.resolve()
        earlier = first_row.setdefault((file, crop), (row_number, age))
        if earlier[0] != row_number:
            ages = f"with the same age {age}" if earlier[1] == age else f"with age {earlier[1]}, this row says {age}"
            skipped.append(Skipped(image, f"same file and crop box as manifest row {earlier[0]} ({ages}); "
                                          f"list each image once", row_number))
            continue
        if given is not None:
            id_rows[given] = row_number
        fish = (row.get(columns.fish) or "").strip() or None
        records.append(ImageRecord(file, image, age, fish, crop, {c: row[c] for c in extra}, row_number,
                                   given_id=given, url=url))
    return _without_whole_frame_boxes(records, skipped)


def _without_whole_frame_boxes(records: list[ImageRecord], skipped: list[Skipped], *, only: set[Path] | None = None
                               ) -> tuple[list[ImageRecord], list[Skipped]]:
    """Drop a box covering the whole photo when the photo has other boxes (an export's row for the tray itself,
    not an otolith), naming it; reads only the photos' headers (of the photos in ``only`` when given; a photo not
    downloaded yet is checked once it is)."""
    boxes: dict[Path, int] = {}
    for r in records:
        if r.crop is not None:
            boxes[r.path] = boxes.get(r.path, 0) + 1
    sizes: dict[Path, tuple[int, int] | None] = {}
    kept = []
    for r in records:
        if r.crop is not None and boxes[r.path] > 1 and r.crop[:2] == (0, 0) and (only is None or r.path in only):
            if r.path not in sizes:
                sizes[r.path] = upright_size(r.path)
            size = sizes[r.path]
            if size is not None and r.crop[2:] == size:  # a box beyond the photo is named later, as outside it
                skipped.append(Skipped.of(r, f"box {list(r.crop)} covers the whole {size[0]}x{size[1]} photo, which "
                                             f"has {boxes[r.path] - 1} other boxes: a row for the tray, not an otolith"))
                continue
        kept.append(r)
    return kept, skipped


def upright_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a photo after EXIF rotation, from its header alone; None when it cannot be read."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, Image.DecompressionBombError):
        return None
    return (height, width) if turned else (width, height)


def _parse_age(text: str) -> tuple[int, str | None]:
    text = text.strip()
    if not text:
        return 0, "blank age"
    try:
        value = float(text)
    except ValueError:
        return 0, f"age {text!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return 0, f"age {text!r} must be a whole number of years >= 0"
    if value != int(value):
        return 0, f"age {text!r} is not a whole number of years"
    return int(value), None


def _parse_crop(row: Mapping[str, str]) -> tuple[tuple[int, int, int, int] | None, str | None]:
    texts = [row[c].strip() for c in CROP_COLUMNS]
    if not any(texts):
        return None, None
    try:
        x0, y0, x1, y1 = (int(float(t)) for t in texts)
    except ValueError:
        return None, f"crop box {texts} must be four whole pixel numbers x0, y0, x1, y1 (or all blank)"
    return _checked_box(x0, y0, x1, y1)


def load_image(record: ImageRecord, *, min_side: int | None = None) -> Image.Image:
    """Decode one image as 8-bit RGB, EXIF orientation applied, crop box cut.

    Parameters
    ----------
    record : the image and its crop box.
    min_side : when given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
        ``Image.draft``) as long as the shorter side of the (cropped) result stays at least this large.
        Much faster for camera photos; the encoder's own resize follows. Camera RAW files (rawpy) are
        always decoded in full.

    Raises ``ValueError`` with a reason a person understands when the file cannot be used.
    """
    (outcome,) = _load_boxes(record.path, [record.crop], min_side)
    if isinstance(outcome, ValueError):
        raise outcome
    return outcome


def load_images(records: Sequence[ImageRecord], *, min_side: int | None = None) -> list[Image.Image | Skipped]:
    """Decode many images as :func:`load_image` does each, reading a photo once for all its crop boxes.

    A JPEG is decoded once per DCT scale its boxes need (``_draft_scale``: a tray of like-sized boxes needs
    one), every box cut from that decode, so each image is pixel for pixel what :func:`load_image` gives it:
    a box's pixels never depend on which other boxes of its photo are listed. One decoded photo is held at
    a time (45 MP as RGB is 136 MB) and released once its boxes are cut.

    Parameters
    ----------
    records : images in any order; those sharing a file are decoded together.
    min_side : as for :func:`load_image`.

    Returns
    -------
    One entry per record, in the order given: the image, or a :class:`Skipped` naming why that record
    cannot be used (a box outside its photo fails alone; an undecodable photo fails every one of its boxes).
    """
    outcomes: list[Image.Image | Skipped | None] = [None] * len(records)
    by_file: dict[Path, list[int]] = {}
    for position, record in enumerate(records):
        by_file.setdefault(record.path, []).append(position)
    for path, positions in by_file.items():
        for position, outcome in zip(positions, _load_boxes(path, [records[p].crop for p in positions], min_side)):
            outcomes[position] = Skipped.of(records[position], str(outcome)) if isinstance(outcome, ValueError) else outcome
    return outcomes


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _load_boxes(path: Path, crops: Sequence[tuple[int, int, int, int] | None],
                min_side: int | None) -> list[Image.Image | ValueError]:
    """Each crop box of one file (None: the whole image), from one decode per DCT scale; a ValueError per box that fails."""
    if path.suffix.lower() in RAW_EXTENSIONS:
        try:
            rgb = _decode_raw(path)
        except ValueError as exc:
            return [exc] * len(crops)
        return [_cut(rgb, 1, crop) for crop in crops]
    outcomes: list[Image.Image | ValueError | None] = [None] * len(crops)
    try:
        photo = Image.open(path)
    except _DECODE_ERRORS as exc:
        return [_cannot_decode(exc)] * len(crops)
    by_scale: dict[int, list[int]] = {}
    for i, crop in enumerate(crops):
        by_scale.setdefault(_draft_scale(photo, crop, min_side) if min_side else 1, []).append(i)
    for scale, members in by_scale.items():
        try:
            if photo is None:  # draft() acts before the pixels are read: another scale, another read
                photo = Image.open(path)
            rgb, scale = _decode(photo, scale)
            for i in members:
                box = _cut(rgb, scale, crops[i])
                # close() below frees the photo's pixels: a whole-image record keeps its own copy
                outcomes[i] = box.copy() if box is photo else box
            del rgb, box
        except _DECODE_ERRORS as exc:
            for i in members:
                outcomes[i] = _cannot_decode(exc)
        finally:
            if photo is not None:
                photo.close()
            photo = None
    return outcomes


def _cannot_decode(exc: BaseException) -> ValueError:
    error = ValueError(f"cannot decode image: {exc}")
    error.__cause__ = exc
    return error


def _draft_scale(img: Image.Image, crop: tuple[int, int, int, int] | None, min_side: int) -> int:
    """The DCT scale (1, 2, 4 or 8) that keeps the used region's shorter side >= ``min_side``; 1 unless a JPEG.

    Depends on the box alone (its size, or the photo's when there is none), never on the other boxes of the
    photo: the cache keys an image by file and box, so its pixels must not depend on its neighbours.
    """
    if img.format != "JPEG":
        return 1
    used = min(crop[2] - crop[0], crop[3] - crop[1]) if crop else min(img.size)
    scale = 1
    while scale < 8 and used // (scale * 2) >= min_side:
        scale *= 2
    return scale


def _decode(img: Image.Image, scale: int) -> tuple[Image.Image, int]:
    """(the opened image decoded at DCT ``scale`` as 8-bit RGB, EXIF orientation applied; the scale libjpeg chose)."""
    if scale > 1:
        width, height = img.size
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-width // scale), -(-height // scale)))
        scale = round(width / img.size[0])  # what libjpeg actually chose
    ImageOps.exif_transpose(img, in_place=True)  # in place: a 45 MP photo is not held twice
    return (img if img.mode == "RGB" else to_rgb8(img)), scale


def _cut(rgb: Image.Image, scale: int, crop: tuple[int, int, int, int] | None) -> Image.Image | ValueError:
    """The crop box (in full-scale pixels) of a photo decoded at ``scale``, checked; a ValueError naming the problem."""
    if crop is not None:
        x0, y0, x1, y1 = (round(c / scale) for c in crop)
        if x1 > rgb.width or y1 > rgb.height:
            return ValueError(f"crop box {crop} lies outside the {rgb.width * scale}x{rgb.height * scale} image")
        rgb = rgb.crop((x0, y0, x1, y1))
    if min(rgb.size) < MIN_IMAGE_SIDE:
        return ValueError(f"image is only {rgb.width}x{rgb.height} pixels; at least {MIN_IMAGE_SIDE} on each side are needed")
    if all(low == high for low, high in rgb.getextrema()):
        return ValueError("image is blank: every pixel has the same colour")
    return rgb


def raw_decoding_available() -> bool:
    """Whether camera RAW files can be decoded here (rawpy, the ``raw`` extra, imports)."""
    return _import_rawpy() is not None


def _import_rawpy():
    try:
        import rawpy
    except ImportError:
        return None
    return rawpy


class _RawSupport:
    """Whether a file can be decoded here; rawpy's import is tried once per folder or manifest, and only for RAW files."""

    def __init__(self) -> None:
        self._available: bool | None = None

    def can_decode(self, file: Path) -> bool:
        if file.suffix.lower() not in RAW_EXTENSIONS:
            return True
        if self._available is None:
            self._available = raw_decoding_available()
        return self._available


def _decode_raw(path: Path) -> Image.Image:
    """A camera RAW file as 8-bit RGB, the camera's orientation applied; ValueError when it cannot be.

    rawpy's ``postprocess`` with its defaults (AHD demosaicing, sRGB, BT.709 gamma, LibRaw's automatic
    brightness, the file's own orientation flip) except ``use_camera_wb=True`` (the white balance the camera
    recorded, as its own JPEG would use) and ``output_bps=8``. Always at full scale: no reduced decode.
    """
    rawpy = _import_rawpy()
    if rawpy is None:
        raise ValueError(RAW_NEEDS_EXTRA)
    try:
        with rawpy.imread(str(path)) as raw:
            pixels = raw.postprocess(use_camera_wb=True, output_bps=8)
    except (rawpy.LibRawError, OSError) as exc:
        raise _cannot_decode(exc) from exc
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float greys rescaled, alpha composited onto black."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = values.max(initial=0.0)
        if img.mode.startswith("I;16") or 255 < top <= 65535:
            values = values / 257.0  # 16-bit range onto 8-bit
        elif top > 65535 or img.mode == "F":
            low = values.min(initial=0.0)
            values = (values - low) / max(top - low, 1e-12) * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        # Otolith photos are taken on a dark background; transparent pixels become that background.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def data_source(path: str | Path) -> Path:
    """What :func:`load_dataset` reads for ``path`` (``Dataset.source``): a folder that carries its own
    ``manifest.csv`` (as `otolith demo` writes) is read through it."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"
    return path.resolve()


def file_sha256(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
