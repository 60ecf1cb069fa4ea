"""Fish covariates from the manifest's own columns (length, month of capture, area, ...), as model features.

``read_covariates(dataset, request)`` turns the chosen columns into a float matrix, one column per covariate:
numbers as they are, a month as its number 1..12, a category as a code (codes carry no order and are
one-hot encoded later). Blank or unreadable values are named per image, so the caller can skip those
images (and say why) or leave them blank for in-fold imputation. :class:`CovariateEncoding` is the part of a
head that turns that matrix into features inside each training fold: numbers standardised, a month as its
sine and cosine (December is next to January), categories one-hot; imputation, when asked for, fills a
blank with the training fold's median (numbers, months) or most common value (categories).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

COVARIATES = "covariates"  # the pseudo-encoder: the covariates alone, no image
COVARIATE_SCALING = "covariates"  # how the covariate part of a feature matrix is encoded (the `scaling` column)
KINDS = ("numeric", "month", "categorical")
# a second reader's age (readings.SECOND_AGE) would hand the heads the answer: never a covariate
NOT_COVARIATES = ("second_age",)
LEAK_ACCURACY = 0.9  # covariates alone reading this share of ages exactly: no fish measurement does; an age column does
NUMERIC_SHARE = 0.9  # a column is numeric when at least this share of its filled values are numbers
# Whole numbers that are codes, not amounts: a name saying so, or few values each repeated often
CODE_WORDS = frozenset({"number", "no", "nr", "code", "grid", "id", "class", "stage", "type", "sex", "maturity",
                        "station", "cruise", "area", "region", "zone", "vessel", "gear", "haul"})
CODE_MAX_VALUES = 10
CODE_REPEATS = 10
_MONTHS = {m: i for i, names in enumerate(
    [("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
     ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
     ("dec", "december")], start=1) for m in names}


@dataclass(frozen=True)
class CovariateRequest:
    """What the user asked for: manifest columns (each optionally ``name:kind``) and whether to impute blanks."""

    columns: tuple[str, ...]
    impute: bool = False

    @classmethod
    def parse(cls, text: str | Sequence[str], *, impute: bool = False) -> "CovariateRequest":
        """``"length,month,area:categorical"`` (or a list of the same items) -> a request."""
        items = text.split(",") if isinstance(text, str) else list(text)
        columns = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
        for item in columns:
            name, _, kind = item.partition(":")
            if not name.strip():
                raise ValueError(f"covariate {item!r} has no column name; write NAME or NAME:KIND")
            if kind and kind.strip() not in KINDS:
                raise ValueError(f"covariate {item!r}: unknown kind {kind.strip()!r}; choose from {list(KINDS)}")
        return cls(columns, bool(impute))

    def named(self) -> list[tuple[str, str | None]]:
        """``[(column, kind or None when it is to be inferred)]``."""
        out = []
        for item in self.columns:
            name, _, kind = item.partition(":")
            out.append((name.strip(), kind.strip() or None))
        return out


@dataclass(frozen=True)
class CovariateEncoding:
    """How a head encodes the covariate columns inside each training fold; ``kinds`` has one entry per column."""

    kinds: tuple[str, ...]
    impute: bool = False

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"covariate kinds must be some of {list(KINDS)}, got {list(self.kinds)}")

    def transformer(self):
        """An unfitted scikit-learn transformer: ``(n, len(kinds))`` raw covariates -> encoded features."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        def steps(kind: str) -> list:
            fill = ([SimpleImputer(strategy="most_frequent" if kind == "categorical" else "median")]
                    if self.impute else [])
            last = {"numeric": StandardScaler(),
                    "month": FunctionTransformer(month_circle, feature_names_out=_circle_names),
                    "categorical": OneHotEncoder(handle_unknown="ignore", sparse_output=False)}[kind]
            return [*fill, last]

        parts = [(f"{kind}{i}", make_pipeline(*steps(kind)), [i]) for i, kind in enumerate(self.kinds)]
        return ColumnTransformer(parts, sparse_threshold=0.0)

    def describe(self, names: Sequence[str]) -> str:
        """One line per covariate, for notes and run.json."""
        how = {"numeric": "standardised in each training fold", "month": "as sin/cos of the month",
               "categorical": "one-hot (categories learnt in each training fold)"}
        fill = "; blanks filled with the training fold's median (most common category)" if self.impute else ""
        return ", ".join(f"{n} ({k}: {how[k]})" for n, k in zip(names, self.kinds)) + fill


def month_circle(months: np.ndarray) -> np.ndarray:
    """Months 1..12 ``(n, 1)`` -> ``(n, 2)`` sine and cosine of their angle on the year's circle."""
    angle = 2 * np.pi * (np.asarray(months, dtype=float) - 1) / 12
    return np.hstack([np.sin(angle), np.cos(angle)])


def _circle_names(transformer, names):
    return np.array([f"{names[0]}_sin", f"{names[0]}_cos"], dtype=object)


@dataclass(frozen=True)
class CovariateTable:
    """The chosen covariates of every record of a data set.

    ``values`` is ``(n_records, n_covariates)`` float: numbers, months 1..12, category codes; NaN where blank.
    ``problems`` maps a record's position to why it cannot be used (a blank without imputation, a value
    that is not a number or month).
    """

    names: tuple[str, ...]
    encoding: CovariateEncoding
    values: np.ndarray
    categories: tuple[tuple[str, ...], ...]  # per covariate: the category of each code (empty unless categorical)
    problems: dict[int, str]

    def notes(self) -> list[str]:
        """Facts a reader of the results must know (which kind each column got; near-unique categories)."""
        out = [f"covariates: {self.encoding.describe(self.names)}"]
        n = self.values.shape[0]
        for name, cats in zip(self.names, self.categories):
            if cats and len(cats) > max(10, n // 4):
                out.append(f"covariate {name!r} has {len(cats)} categories among {n} images; one-hot columns that "
                           f"mostly single out images add noise (is it a number or an id?)")
        return out


def answer_columns(records: Sequence, *, age_column: str = "age") -> dict[str, str]:
    """Columns that hold the age itself, never offered or accepted as covariates: column -> what it is.

    The reader's age column (whatever the manifest calls it), a second reader's age, and for a data set the
    demo wrote (its ``source`` column says so, wherever the folder lies) the demo's drawn truth.
    """
    from .demo import DEMO_TRUTH_COLUMNS, is_synthetic_demo

    refused = {age_column: "is the reader's age itself"}
    refused.update({c: "is a second reader's age (the Review page compares it with the first reader)"
                    for c in NOT_COVARIATES})
    if is_synthetic_demo(records):
        refused.update({c: "is what the synthetic demo drew (its truth)" for c in DEMO_TRUTH_COLUMNS})
    return refused


def read_covariates(records: Sequence, request: CovariateRequest, *, source: str = "the manifest",
                    age_column: str = "age") -> CovariateTable:
    """The requested covariate columns of ``records`` (``ImageRecord.metadata``) as a :class:`CovariateTable`.

    A column's kind is the one given (``name:kind``), else ``month`` for a column called month, else
    ``numeric`` when at least 90 % of its filled values are numbers (the others are then named as problems),
    else ``categorical``. Raises ``ValueError`` naming the available columns when one is missing, and when one
    holds the answer (:func:`answer_columns`; ``age_column``: the manifest's age column).
    """
    if not request.columns:
        raise ValueError("no covariates requested")
    available = sorted({k for r in records for k in r.metadata})
    named = request.named()
    refused = answer_columns(records, age_column=age_column)
    answers = [name for name, _ in named if name in refused]
    if answers:
        raise ValueError(f"{answers[0]!r} {refused[answers[0]]}: as a covariate it would give the heads the answer")
    missing = [name for name, _ in named if name not in available]
    if missing:
        raise ValueError(f"covariate column(s) {missing} are not in {source}; its extra columns are "
                         f"{available or 'none (a folder scan has none: give a CSV manifest)'}")
    columns, kinds, categories = [], [], []
    problems: dict[int, str] = {}
    for name, kind in named:
        texts = [str(r.metadata.get(name, "")).strip() for r in records]
        kind = kind or _infer_kind(name, texts)
        values, cats, bad = _parse_column(texts, kind)
        columns.append(values)
        kinds.append(kind)
        categories.append(cats)
        for i, value in enumerate(texts):
            if i in bad:
                problems.setdefault(i, f"covariate {name!r} value {value!r} is not " +
                                    ("a month (1-12 or a month name)" if kind == "month" else "a number"))
            elif not value and not request.impute:
                problems.setdefault(i, f"covariate {name!r} is blank; fill it in, or let blanks take the training "
                                       f"fold's median (--impute-covariates)")
    encoding = CovariateEncoding(tuple(kinds), request.impute)
    values = np.column_stack(columns) if columns else np.empty((len(records), 0))
    return CovariateTable(tuple(name for name, _ in named), encoding, values, tuple(categories), problems)


def covariates_alone_accuracy(table: CovariateTable, ages: np.ndarray, *, n_folds: int = 5, seed: int = 0) -> float:
    """Share of reader ages a decision tree on the covariates alone reads exactly (stratified ``n_folds``-fold CV
    over the images whose covariates are all there): a quick look, before any run, for a column that holds the
    age. Near 1 means a leak (``LEAK_ACCURACY``); NaN when too few images have every covariate."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    usable = np.all(np.isfinite(table.values), axis=1)
    values, ages = table.values[usable], np.asarray(ages)[usable]
    ages_kept = np.isin(ages, [a for a in np.unique(ages) if np.sum(ages == a) >= n_folds])
    if ages_kept.sum() < 2 * n_folds or np.unique(ages[ages_kept]).size < 2:
        return float("nan")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    tree = DecisionTreeClassifier(random_state=seed)
    return float(np.mean(cross_val_score(tree, values[ages_kept], ages[ages_kept], cv=folds, scoring="accuracy")))


def _infer_kind(name: str, texts: Sequence[str]) -> str:
    if name.strip().lower() == "month":
        return "month"
    filled = [t for t in texts if t]
    numbers = [v for v in (_number(t) for t in filled) if v is not None]
    if not filled or len(numbers) < NUMERIC_SHARE * len(filled):
        return "categorical"
    return "categorical" if is_code(name, numbers) else "numeric"


def is_code(name: str, numbers: Sequence[float]) -> bool:
    """Whether whole numbers in a column are codes (sex 1/2, maturity stage, area grid cell) rather than amounts:
    the column's name says so (``sex_number``, ``area_grid``, ``station``...), or a few whole values
    (at most ``CODE_MAX_VALUES``) each repeated many times. ``NAME:numeric`` overrides it."""
    if not numbers or any(v != int(v) for v in numbers):
        return False
    tokens = set(re.split(r"[^a-z]+", name.lower()))
    distinct = len(set(numbers))
    if tokens & CODE_WORDS:
        return True
    return distinct <= CODE_MAX_VALUES and len(numbers) >= CODE_REPEATS * distinct


def id_like(texts: Sequence[str]) -> bool:
    """Whether a column names rows rather than describing fish (``measurement_id``, ``sample_id_x``): nearly every
    filled value is different. Never offered as a covariate."""
    filled = [t.strip() for t in texts if t and t.strip()]
    return len(filled) >= 10 and len(set(filled)) >= 0.9 * len(filled)


def _parse_column(texts: Sequence[str], kind: str) -> tuple[np.ndarray, tuple[str, ...], set[int]]:
    """(values with NaN for blanks and bad values, categories, positions of bad values)."""
    values = np.full(len(texts), np.nan)
    bad: set[int] = set()
    if kind == "categorical":
        cats = tuple(sorted({t for t in texts if t}))
        code = {c: float(i) for i, c in enumerate(cats)}
        for i, t in enumerate(texts):
            if t:
                values[i] = code[t]
        return values, cats, bad
    for i, t in enumerate(texts):
        if not t:
            continue
        value = _month(t) if kind == "month" else _number(t)
        if value is None:
            bad.add(i)
        else:
            values[i] = value
    return values, (), bad


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _month(text: str) -> float | None:
    value = _number(text)
    if value is None:
        value = _MONTHS.get(text.strip().lower().rstrip("."))
    return float(value) if value is not None and value == int(value) and 1 <= value <= 12 else None
