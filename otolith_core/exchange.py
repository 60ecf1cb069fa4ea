"""Several readers of the same otoliths: who read what, their modal age, and the age-reading exchange report.

Reader ages come from three places, gathered by :func:`collect_readings` into one long table (one row per image
and reader, ``READER_COLUMNS``):

* the manifest's own age, read by :data:`~otolith_core.readings.FIRST_READER`, for every image, as read (never
  clipped: clipping is a choice of the heads only);
* a manifest's ``second_age`` column, read by :data:`~otolith_core.readings.MANIFEST_READER`, for the images no
  one has read in the dashboard (as in :func:`~otolith_core.readings.second_readings`: a manifest written by
  ``manifest_with_readings`` carries the dashboard's own readings back, which would count one reader twice);
* readings typed in the dashboard: each reader's latest reading of each image, with its flags and comment (an
  image flagged unusable may have no age).

The exchange report follows the ICES / SmartDots age-reading exchanges. It covers the images with ages by at
least two human readers (the first reader counts). The *modal age* of an image is the human readers' most
frequent age; when two or more ages are equally frequent (two readers who disagree, for instance) there is
none, and the image counts as *no agreement* (``n_no_mode``): it is left out of every comparison with the
modal age (agreement, APE and CV against it, bias, tests against it) but kept in the pairwise tables and the
all-readers APE and CV, which need no mode. Models are extra readers (their out-of-fold ages of one repeat): they
never count toward the mode, and are compared with the humans' unclipped modal age.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Iterable

import numpy as np
import pandas as pd

from .data import Dataset, Skipped
from .readings import FIRST_READER, MANIFEST_READER, RESERVED_READERS, UNUSABLE, SecondReadings, has_flag
from .stats import age_bias, bowker_symmetry, evans_hoenig_symmetry, holm_adjust

READER_COLUMNS = ["image", "reader", "age", "flags", "comment", "source"]
SOURCES = ("manifest", "manifest second_age", "dashboard")  # where a row of collect_readings comes from
IMAGE_COLUMNS = ["image", "n_readers", "modal_age", "ape_pct", "cv_pct", "unusable", "unusable_by", "uncertain_by"]
ALL_READERS = "all human readers"  # the report's first row: the human readers together
REPORT_COLUMNS = ["reader", "kind", "n_images", "n_no_mode", "agreement_with_mode_pct", "ape_pct", "cv_pct",
                  "bias_mean", "bowker_statistic", "bowker_df", "bowker_p", "evans_hoenig_statistic",
                  "evans_hoenig_df", "evans_hoenig_p"]
PAIR_COLUMNS = ["reader_a", "reader_b", "n_images", "agreement_pct", "bias_mean", "ape_pct", "bowker_statistic",
                "bowker_df", "bowker_p", "bowker_p_holm", "evans_hoenig_statistic", "evans_hoenig_df", "evans_hoenig_p",
                "evans_hoenig_p_holm"]
BIAS_COLUMNS = ["reader", "kind", "modal_age", "n", "mean_age", "bias", "ci_low", "ci_high", "agreement_pct"]
BY_AGE_COLUMNS = ["modal_age", "n_images", "agreement_pct", "ape_pct", "cv_pct"]
NOT_MODELS = ("image", "path", "true_age")  # columns of Comparison.per_image that are not a model's ages


# ---------------------------------------------------------------------------------------------- who read what


def collect_readings(dataset: Dataset, second: SecondReadings) -> pd.DataFrame:
    """Every human reader's latest age of each of ``dataset``'s images, one row per (image, reader).

    Parameters
    ----------
    dataset : the data set; its records' ages as read are the first reader's.
    second : its second readings (:func:`~otolith_core.readings.second_readings`): the manifest's ``second_age``
        column and the readings typed in the dashboard, matched to the images.

    Returns
    -------
    ``READER_COLUMNS``, in data-set order, each image's readers in the order first reader, manifest second_age,
    dashboard readings by time. ``age`` is a nullable integer (NA: flagged unusable without an age); ``flags`` is
    the readings file's text (``"uncertain;unusable"``, blank for none); ``source`` one of ``SOURCES``. A reader
    typed in the dashboard under a name reserved for the manifest's ages (a file of an earlier version) is
    renamed ``"<name> (typed)"`` so two readers never merge.
    """
    first = pd.DataFrame({"image": [r.id for r in dataset.records], "reader": FIRST_READER,
                          "age": [r.read_age for r in dataset.records], "flags": "", "comment": "",
                          "source": SOURCES[0]})
    manifest = second.table[second.table["source"] == "manifest"]
    manifest = pd.DataFrame({"image": manifest["image"], "reader": MANIFEST_READER, "age": manifest["second_age"],
                             "flags": "", "comment": "", "source": SOURCES[1]})
    typed = second.per_reader
    names = typed["reader"].astype(str)
    typed = pd.DataFrame({"image": typed["image"], "reader": names.where(~names.isin(RESERVED_READERS),
                                                                         names + " (typed)"),
                          "age": typed["second_age"], "flags": typed["flags"].fillna(""),
                          "comment": typed["comment"].fillna(""), "source": SOURCES[2]})
    table = pd.concat([t for t in (first, manifest, typed) if len(t)] or [first], ignore_index=True)
    order = {r.id: i for i, r in enumerate(dataset.records)}
    table = table.sort_values("image", key=lambda images: images.map(order), kind="stable").reset_index(drop=True)
    table["age"] = pd.array(pd.to_numeric(table["age"]), dtype="Int64")
    return table[READER_COLUMNS]


def human_readers(per_reader: pd.DataFrame) -> list[str]:
    """The readers of ``per_reader`` (:func:`collect_readings`): the first reader, the manifest's second_age,
    then the others by name."""
    present = list(dict.fromkeys(per_reader["reader"]))
    return [r for r in RESERVED_READERS if r in present] + sorted(r for r in present if r not in RESERVED_READERS)


def modal_age(ages: Iterable[int | None]) -> int | None:
    """The most frequent of ``ages`` (NA left out); None when there is none or when two or more ages tie."""
    values = pd.Series(ages, dtype="Int64").dropna()
    if values.empty:
        return None
    counts = values.value_counts()
    return int(counts.index[0]) if (counts == counts.iloc[0]).sum() == 1 else None


def readers_by_image(per_reader: pd.DataFrame) -> pd.DataFrame:
    """One row per image: every human reader's age, their modal age, how far apart they are, and the flags.

    Parameters
    ----------
    per_reader : :func:`collect_readings`.

    Returns
    -------
    ``image``, one column per reader (:func:`human_readers`; NA where that reader has no age of the image or flagged
    it unusable: :func:`counted_ages`), then
    ``n_readers`` (readers with an age), ``modal_age`` (NA when ages tie: no agreement; an image read once has
    its one age), ``ape_pct`` and
    ``cv_pct`` (Beamish & Fournier's APE and Chang's CV over the image's readers, see :func:`image_precision`;
    NA with fewer than two ages), ``unusable`` (anyone flagged it), ``unusable_by`` and ``uncertain_by`` (those
    readers, ``;``-joined). Images in the order of ``per_reader``.
    """
    readers = human_readers(per_reader)
    clash = sorted(set(readers) & set(IMAGE_COLUMNS))
    if clash:
        raise ValueError(f"reader name(s) {clash} are also column names of the per-image table; rename the reader "
                         f"in the readings file")
    images = pd.Index(per_reader["image"].unique(), name="image")
    counted = counted_ages(per_reader)
    ages = counted.pivot(index="image", columns="reader", values="age").reindex(index=images, columns=readers)
    table = ages.astype("Int64").reset_index()
    table.columns.name = None
    precision = image_precision(counted).reindex(images)
    for column in ("n_readers", "modal_age", "ape_pct", "cv_pct"):
        table[column] = precision[column].to_numpy()
    table["n_readers"] = table["n_readers"].fillna(0).astype(int)
    table["modal_age"] = table["modal_age"].astype("Int64")
    for flag, column in ((UNUSABLE, "unusable_by"), ("uncertain", "uncertain_by")):
        flagged = per_reader[_flagged(per_reader, flag)]
        by = flagged.groupby("image", sort=False)["reader"].agg(";".join)
        table[column] = by.reindex(table["image"], fill_value="").to_numpy()
    table.insert(table.columns.get_loc("unusable_by"), "unusable", table["unusable_by"] != "")
    return table


def counted_ages(per_reader: pd.DataFrame) -> pd.DataFrame:
    """``per_reader`` with no age on the readings flagged unusable: a reader who judged the otolith unreadable gave
    no age an exchange can use (exchanges leave such readings out), even when one was typed beside the flag."""
    unusable = _flagged(per_reader, UNUSABLE).to_numpy()
    return per_reader.assign(age=per_reader["age"].astype("Int64").mask(unusable))


def image_precision(per_reader: pd.DataFrame) -> pd.DataFrame:
    """Per image, the human readers' ages together: ``n_readers``, ``modal_age``, ``ape_pct``, ``cv_pct``.

    For image ``j`` with ages ``x_1j .. x_Rj`` (R readers with an age) and mean ``m_j``:
    ``APE_j = 100 / R * sum_i |x_ij - m_j| / m_j`` (Beamish & Fournier 1981) and
    ``CV_j = 100 * sd_j / m_j`` with the sample SD (ddof 1; Chang 1982); both 0 when every age is 0 and NaN for a
    single age. ``modal_age``: :func:`modal_age` (NaN on a tie). Indexed by image, in the order of ``per_reader``.
    """
    aged = per_reader[per_reader["age"].notna()][["image", "age"]].astype({"age": float})
    groups = aged.groupby("image", sort=False)["age"]
    n, mean, sd = groups.size(), groups.mean(), groups.std(ddof=1)
    spread = (aged["age"] - groups.transform("mean")).abs().groupby(aged["image"], sort=False).mean()
    ape = (100 * spread / mean).where(mean > 0, 0.0).where(n > 1)
    cv = (100 * sd / mean).where(mean > 0, 0.0).where(n > 1)
    counts = aged.groupby(["image", "age"], sort=False).size()
    top = counts.groupby(level="image", sort=False).transform("max")
    winners = counts[counts == top].reset_index(level="age")["age"].groupby(level="image", sort=False)
    modal = winners.first().where(winners.size() == 1)  # two or more most frequent ages: no mode
    return pd.DataFrame({"n_readers": n, "modal_age": modal.reindex(n.index), "ape_pct": ape, "cv_pct": cv})


def _flagged(per_reader: pd.DataFrame, flag: str) -> pd.Series:
    """Which rows of ``per_reader`` carry ``flag`` (one of ``FLAGS``) in their ``;``-joined ``flags``."""
    return has_flag(per_reader["flags"], flag)


def unusable_images(per_reader: pd.DataFrame) -> list[str]:
    """The images any reader of ``per_reader`` (:func:`collect_readings`) flagged unusable, in table order."""
    flagged = _flagged(per_reader, UNUSABLE)
    return list(dict.fromkeys(per_reader.loc[flagged, "image"]))


def may_see(per_reader: pd.DataFrame, reader: str, image: str) -> bool:
    """Whether ``reader`` may see the other readers' ages of ``image``: only once they have read it themselves
    (a reading with an age, or one flagging the image unusable); a blind reading stays blind."""
    return bool(((per_reader["reader"] == reader) & (per_reader["image"] == image)).any())


def visible_readings(per_reader: pd.DataFrame, reader: str) -> pd.DataFrame:
    """The rows of ``per_reader`` (:func:`collect_readings`) that ``reader`` may see: every reading of the
    images they have read (their own included), none of any other image, the first reader's age included."""
    read = set(per_reader.loc[per_reader["reader"] == reader, "image"])
    return per_reader[per_reader["image"].isin(read)].reset_index(drop=True)


def unusable_reasons(per_reader: pd.DataFrame) -> dict[str, str]:
    """Image -> why it is left out ("flagged unusable by B (cracked); C"), for the images a reader of
    ``per_reader`` (:func:`collect_readings`) flagged unusable, in table order."""
    why: dict[str, list[str]] = {}
    for row in per_reader[_flagged(per_reader, UNUSABLE)].itertuples():
        why.setdefault(row.image, []).append(f"{row.reader}" + (f" ({row.comment})" if row.comment else ""))
    return {image: "flagged unusable by " + "; ".join(readers) for image, readers in why.items()}


def leave_out(dataset: Dataset, reasons: dict[str, str]) -> tuple[Dataset, tuple[Skipped, ...]]:
    """``dataset`` without the images named in ``reasons`` (image -> why), and those images as ``Skipped``, also
    appended to the data set's ``skipped`` (so the Data page and skipped.csv list them)."""
    excluded = tuple(Skipped.of(r, reasons[r.id]) for r in dataset.records if r.id in reasons)
    keep = [i for i, r in enumerate(dataset.records) if r.id not in reasons]
    return dataset.subset(keep, extra_skipped=excluded), excluded


def exclude_unusable(dataset: Dataset, per_reader: pd.DataFrame) -> tuple[Dataset, tuple[Skipped, ...]]:
    """``dataset`` without the images a reader flagged unusable, and those images as ``Skipped`` (reason: who
    flagged it and their comment), also appended to the data set's ``skipped``."""
    return leave_out(dataset, unusable_reasons(per_reader))


# ---------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ExchangeReport:
    """An age-reading exchange over the images read by at least two human readers.

    ``readers`` (``exchange_report.csv``, ``REPORT_COLUMNS``): a first row ``all human readers`` (kind ``all``),
    then one row per human reader (kind ``human``) and per model (kind ``model``) with an age of some exchange
    image:

    * ``n_images``: exchange images this reader gave an age (all: the exchange's images);
    * ``n_no_mode``: of those, the images with no modal age (a tie): *no agreement*, left out of every column
      that compares with the mode;
    * ``agreement_with_mode_pct``: % of the reader's images with a modal age read at that age (all: % of all
      human readings of those images);
    * ``ape_pct``, ``cv_pct``: per reader, Beamish & Fournier's APE and Chang's CV with the reader's age and the
      modal age as the two readings of an image (``100 |x - mode| / (x + mode)`` and ``sqrt(2)`` times it; 0
      when both are 0), averaged over the reader's images with a modal age; all: the mean over every exchange
      image (ties included) of the image's APE and CV over its human readers (:func:`image_precision`);
    * ``bias_mean``: mean of (reader's age - modal age), years (all: over every human reading with a mode);
    * ``bowker_*``, ``evans_hoenig_*``: Bowker's and Evans & Hoenig's tests of symmetry of the modal age (rows)
      against the reader's age (columns) (:func:`~otolith_core.stats.bowker_symmetry`,
      :func:`~otolith_core.stats.evans_hoenig_symmetry`); NaN for the all row.

    ``pairs`` (``exchange_tests.csv``, ``PAIR_COLUMNS``): every two readers of which at least one is human, on
    the exchange images both gave an age (modes play no part; a pair with no such image has no row):
    ``agreement_pct`` (% the same age), ``bias_mean`` (mean of b - a), ``ape_pct`` (two-reading APE), and the two
    symmetry tests of a (rows) against b (columns); ``*_p_holm``: each test's p-values Holm-adjusted over the
    pairs (:func:`~otolith_core.stats.holm_adjust`), for a report that tests every pair at once.

    ``by_age`` (``exchange_by_age.csv``, ``BY_AGE_COLUMNS``): per modal age of the human readers, the exchange
    images with that mode, the % of their human readings at the mode, and the mean of the images' APE and CV
    over their human readers (ICES's "CV by modal age"); images with no mode are in no row.

    ``bias`` (``exchange_bias.csv``, ``BIAS_COLUMNS``): per reader and modal age, for an age-bias plot: ``n``,
    ``mean_age`` with its 95 % t interval (:func:`~otolith_core.stats.age_bias`), ``bias`` (mean age - modal
    age) and ``agreement_pct``.

    ``images`` (``exchange_images.csv``): :func:`readers_by_image` of the exchange's images (each human reader's
    age, the modal age, the image's APE and CV over its human readers), with one column per model.
    """

    readers: pd.DataFrame
    pairs: pd.DataFrame
    bias: pd.DataFrame
    images: pd.DataFrame
    by_age: pd.DataFrame

    @property
    def n_images(self) -> int:
        """Images read by at least two human readers."""
        return len(self.images)

    @property
    def n_no_mode(self) -> int:
        """Of those, the images whose readers tie (no modal age)."""
        return int(self.images["modal_age"].isna().sum())

    def tables(self) -> dict[str, pd.DataFrame]:
        """The report's CSV files by name."""
        return {"exchange_report.csv": self.readers, "exchange_tests.csv": self.pairs,
                "exchange_bias.csv": self.bias, "exchange_by_age.csv": self.by_age, "exchange_images.csv": self.images}


def has_exchange(per_reader: pd.DataFrame) -> bool:
    """Whether some image has ages by at least two human readers (so an exchange report can be made)."""
    aged = per_reader[per_reader["age"].notna()]
    return bool(aged.groupby("image")["reader"].nunique().ge(2).any())


def exchange_report(per_reader: pd.DataFrame, model_ages: pd.DataFrame | None = None) -> ExchangeReport:
    """The age-reading exchange of the human readers of ``per_reader``, models as extra readers.

    Parameters
    ----------
    per_reader : :func:`collect_readings` (or a table with its columns ``image, reader, age, flags``).
    model_ages : one row per image, column ``image`` and one column of ages per model, e.g.
        ``Comparison.per_image(0)`` (columns ``path`` and ``true_age`` are ignored) or ``predictions.csv``'s
        first repeat pivoted to ``"encoder / head"`` columns. None: humans only.

    Returns
    -------
    :class:`ExchangeReport`; its tables are empty (columns only) when no image has two human ages.
    """
    wide = readers_by_image(per_reader)
    humans = human_readers(per_reader)
    images = wide[wide["n_readers"] >= 2].reset_index(drop=True)
    models = [c for c in model_ages.columns if c not in NOT_MODELS] if model_ages is not None else []
    if models:
        clash = sorted(set(models) & (set(humans) | set(images.columns)))
        if clash:
            raise ValueError(f"model column(s) {clash} have the name of a reader or a per-image column; rename them")
        by_image = model_ages.drop_duplicates("image").set_index("image")[models]
        for model in models:
            images[model] = pd.array(by_image[model].reindex(images["image"]).to_numpy(), dtype="Int64")
    if images.empty:
        return ExchangeReport(pd.DataFrame(columns=REPORT_COLUMNS), pd.DataFrame(columns=PAIR_COLUMNS),
                              pd.DataFrame(columns=BIAS_COLUMNS), images, pd.DataFrame(columns=BY_AGE_COLUMNS))
    kinds = {reader: kind for reader, kind in [*((h, "human") for h in humans), *((m, "model") for m in models)]
             if images[reader].notna().any()}  # a reader with no age of these images has no row
    mode = images["modal_age"]
    rows = [_all_readers_row(images, humans)]
    rows += [_reader_row(reader, kind, images[reader], mode) for reader, kind in kinds.items()]
    pairs = [_pair_row(a, b, images[a], images[b]) for a, b in combinations(kinds, 2)
             if "human" in (kinds[a], kinds[b]) and (images[a].notna() & images[b].notna()).any()]
    for test in ("bowker", "evans_hoenig"):  # every pair is tested at once: Holm over the pairs, per test
        adjusted = holm_adjust(np.array([pair[f"{test}_p"] for pair in pairs], dtype=float))
        for pair, p_holm in zip(pairs, adjusted):
            pair[f"{test}_p_holm"] = float(p_holm)
    bias = [row for reader, kind in kinds.items() for row in _bias_rows(reader, kind, images[reader], mode)]
    whole = {"bowker_df": "Int64", "evans_hoenig_df": "Int64"}  # blank, not 0.0, on the all-readers row
    return ExchangeReport(pd.DataFrame(rows, columns=REPORT_COLUMNS).astype(whole),
                          pd.DataFrame(pairs, columns=PAIR_COLUMNS).astype(whole),
                          pd.DataFrame(bias, columns=BIAS_COLUMNS), images, _by_modal_age(images, humans))


def _by_modal_age(images: pd.DataFrame, humans: list[str]) -> pd.DataFrame:
    """Per modal age: images, % of their human readings at the mode, mean APE and CV over their human readers."""
    rows = []
    with_mode = images[images["modal_age"].notna()]
    for age, group in with_mode.groupby("modal_age"):
        readings = group[humans].to_numpy(dtype=float).ravel()
        readings = readings[~np.isnan(readings)]
        rows.append({"modal_age": int(age), "n_images": len(group),
                     "agreement_pct": 100 * _mean(readings == float(age)), "ape_pct": float(group["ape_pct"].mean()),
                     "cv_pct": float(group["cv_pct"].mean())})
    return pd.DataFrame(rows, columns=BY_AGE_COLUMNS)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _two_reading_ape(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, Beamish & Fournier's APE of two readings: ``100 |a - b| / (a + b)``, 0 when both are 0."""
    total = a + b
    return np.divide(100.0 * np.abs(a - b), total, out=np.zeros_like(total), where=total != 0)


def _tests(rows: np.ndarray, columns: np.ndarray) -> dict:
    bowker = bowker_symmetry(rows, columns) if len(rows) else (float("nan"), 0, float("nan"))
    evans = evans_hoenig_symmetry(rows, columns) if len(rows) else (float("nan"), 0, float("nan"))
    return dict(zip(["bowker_statistic", "bowker_df", "bowker_p", "evans_hoenig_statistic", "evans_hoenig_df",
                     "evans_hoenig_p"], [*bowker, *evans]))


def _with_mode(ages: pd.Series, mode: pd.Series) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(reader's ages, modal ages) of the images with both, as floats; images with an age; of those, with no mode."""
    has_age = ages.notna()
    both = has_age & mode.notna()
    return (ages[both].to_numpy(float), mode[both].to_numpy(float), int(has_age.sum()),
            int((has_age & mode.isna()).sum()))


def _reader_row(reader: str, kind: str, ages: pd.Series, mode: pd.Series) -> dict:
    x, m, n_images, n_no_mode = _with_mode(ages, mode)
    ape = _mean(_two_reading_ape(x, m))
    return {"reader": reader, "kind": kind, "n_images": n_images, "n_no_mode": n_no_mode,
            "agreement_with_mode_pct": 100 * _mean(x == m), "ape_pct": ape, "cv_pct": np.sqrt(2.0) * ape,
            "bias_mean": _mean(x - m), **_tests(m, x)}


def _all_readers_row(images: pd.DataFrame, humans: list[str]) -> dict:
    ages = images[humans].to_numpy(dtype=float, na_value=np.nan)  # (n_images, n_humans)
    mode = images["modal_age"].to_numpy(dtype=float, na_value=np.nan)
    read = ~np.isnan(ages) & ~np.isnan(mode)[:, None]
    deviation = (ages - mode[:, None])[read]
    return {"reader": ALL_READERS, "kind": "all", "n_images": len(images), "n_no_mode": int(np.isnan(mode).sum()),
            "agreement_with_mode_pct": 100 * _mean(deviation == 0), "ape_pct": _mean(images["ape_pct"].dropna()),
            "cv_pct": _mean(images["cv_pct"].dropna()), "bias_mean": _mean(deviation),
            **{c: None for c in REPORT_COLUMNS[8:]}}


def _pair_row(a: str, b: str, ages_a: pd.Series, ages_b: pd.Series) -> dict:
    both = ages_a.notna() & ages_b.notna()
    x, y = ages_a[both].to_numpy(float), ages_b[both].to_numpy(float)
    return {"reader_a": a, "reader_b": b, "n_images": int(both.sum()), "agreement_pct": 100 * _mean(x == y),
            "bias_mean": _mean(y - x), "ape_pct": _mean(_two_reading_ape(x, y)), **_tests(x, y)}


def _bias_rows(reader: str, kind: str, ages: pd.Series, mode: pd.Series) -> list[dict]:
    x, m, _, _ = _with_mode(ages, mode)
    rows = []
    for row in age_bias(m, x) if len(x) else []:
        same = x[m == row["true_age"]] == row["true_age"]
        rows.append({"reader": reader, "kind": kind, "modal_age": row["true_age"], "n": row["n"],
                     "mean_age": row["mean_pred"], "bias": row["mean_pred"] - row["true_age"],
                     "ci_low": row["ci_low"], "ci_high": row["ci_high"], "agreement_pct": 100 * float(same.mean())})
    return rows
