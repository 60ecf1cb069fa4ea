"""The comparison: every (encoder, head) cross-validated on one shared set of folds -> :class:`Comparison`.

Folds are computed once (:mod:`otolith_core.folds`) on the images every encoder embedded, so all models are scored
on identical splits and paired tests between them are meaningful. ``repeats`` R runs R x k-fold with seeds
seed..seed+R-1. The bootstrap resamples whole groups and the heads' inner CV splits by them too. Beside the models:
the no-skill baseline on the same folds, duplicate and covariate-leak warnings, and the paired tests.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .covariates import COVARIATE_SCALING, COVARIATES, LEAK_ACCURACY, CovariateRequest, read_covariates
from .cross_validation import (FOLD_COLUMNS, LEARNING_COLUMNS, PREDICTION_COLUMNS, PROBABILITY_COLUMNS, CVResult,
                               cross_validate_head, learning_curve, model_label)
from .data import Dataset, Skipped
from .embeddings import EmbeddingSet
from .fish_level import FISH_PREDICTION_COLUMNS, PER_FISH_COLUMNS, fish_predictions, fish_summary, refusal
from .folds import (leaving_out_only_age, check_nested, column_groups, column_values, fish_groups, holdout_folds,
                    make_folds)
from .heads import BASELINE_HEAD, HeadSpec, class_weight_notes
from .metrics import METRICS, score
from .notes import Note
from .stats import (BOOTSTRAP_METRICS, PairedTest, age_bias, bootstrap_intervals, bowker_symmetry, corrected_t_test,
                    holm_adjust, mcnemar_test, paired_t_test, wilcoxon_test)
from .ties import TIE_LEVEL, TIED_METRICS, tied_column, tied_with_best

TESTED_METRICS = ("accuracy", "pm1_accuracy", "rmse")
NO_SKILL = "no-skill"  # the baseline's encoder name: no image at all, always the most common training age
SKIPPED_COLUMNS = ["path", "row", "reason", "image"]
SUMMARY_COLUMNS = (["encoder", "head", "scaling", "n_images"]
                   + [f"{m}_{s}" for m in (*METRICS, "rmse_raw") for s in ("mean", "sd")] + ["n_folds_total"]
                   + [f"{m}_ci_{end}" for m in BOOTSTRAP_METRICS for end in ("low", "high")]
                   + [tied_column(m) for m in TIED_METRICS])
BOOTSTRAP_DRAWS = 1000
TEST_COLUMNS = ["metric", "encoder_a", "head_a", "encoder_b", "head_b", "mean_diff", "t", "p_value", "test", "p_holm"]
AGEBIAS_COLUMNS = ["encoder", "head", "true_age", "n", "mean_pred", "ci_low", "ci_high"]
PER_AGE_COLUMNS = ["encoder", "head", "age", "n", "recall", "precision", "f1", "mean_error", "pm1_share"]
SYMMETRY_COLUMNS = ["encoder", "head", "statistic", "df", "p_value", "test"]
PER_HOLDOUT_COLUMNS = ["encoder", "head", "scaling", "scope", "held_out", "fold", "n_test", "n_unseen_age", *METRICS]
HELD_OUT_SCOPE, POOLED_SCOPE = "held-out value", "pooled"  # per_holdout.csv's ``scope``: one value's fold, or all


@dataclass(frozen=True)
class Comparison:
    """Every (encoder, head) result on one set of folds, the tests between them, and what was left out."""

    results: tuple[CVResult, ...]
    tests: tuple[PairedTest, ...]
    n_folds: int
    seed: int
    repeats: int = 1
    grouped_by_fish: bool = False  # the folds keep groups together: each fish at least (a group column's values)
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[Note, ...] = ()
    failed_encoders: Mapping[str, str] = field(default_factory=dict)
    learning_curve: pd.DataFrame | None = None
    precisions: Mapping[str, str] = field(default_factory=dict)  # encoder -> arithmetic its embeddings came from
    baseline: CVResult | None = None  # the no-skill reference on the same folds; in no paired test
    groups: tuple[str, ...] = ()  # the group of each image of a repeat (fish, or group-column value): bootstrap units
    bootstrap_draws: int = BOOTSTRAP_DRAWS  # 0: no intervals
    covariates: Mapping[str, str] = field(default_factory=dict)  # covariate column -> kind (numeric, month, categorical)
    impute_covariates: bool = False  # blanks took the training fold's median instead of skipping the image
    revisions: Mapping[str, str | None] = field(default_factory=dict)  # encoder -> hub commit of its weights, or None
    group_column: str | None = None  # a column whose values the folds keep together; None: fish (or no groups)
    holdout_column: str | None = None  # leave-one-group-out over this column's values; None: k-fold
    held_out: tuple[str, ...] = ()  # the hold-out column's value of each fold, by fold index
    fish: tuple[str, ...] = ()  # the fish of each image of a repeat (its own id without fish_id)

    @property
    def group_unit(self) -> str | None:
        """What the folds keep together, in words: ``"fish"``, the group column's name, or None (images apart)."""
        return (self.group_column or "fish") if self.grouped_by_fish else None

    @property
    def folds_text(self) -> str:
        """How the folds were made, for captions: ``"leave-one-cruise_id-out: 5 folds, one per value; folds keep
        each fish together"``, ``"10-fold stratified, folds keep each station_id together (never splitting a
        fish)"``."""
        if self.holdout_column is not None:
            scheme = f"leave-one-{self.holdout_column}-out: {self.n_folds} folds, one per value"
        else:
            scheme = (f"{self.repeats} × {self.n_folds}-fold" if self.repeats > 1 else f"{self.n_folds}-fold") \
                     + " stratified"
        if not self.grouped_by_fish:
            return f"{scheme}, images treated as independent"
        if self.group_column is None:
            return f"{scheme}, folds keep each fish together"
        return f"{scheme}, folds keep each {self.group_unit} together (never splitting a fish)"

    @property
    def scored(self) -> tuple[CVResult, ...]:
        """Every result with a row in the score tables: the models, then the no-skill baseline."""
        return self.results + ((self.baseline,) if self.baseline is not None else ())

    def summary_frame(self, *, tie_level: float = TIE_LEVEL) -> pd.DataFrame:
        """Mean and SD over folds of every metric, bootstrap 95 % intervals of accuracy, ±1 and RMSE, and per tested
        metric whether each model cannot be told apart from the best (:func:`~otolith_core.ties.tied_with_best` at
        ``tie_level``; NA for the no-skill baseline, which is in no test)."""
        rows = []
        for r in self.scored:
            row = r.summary()
            row.update(self._intervals.get((r.encoder, r.head.label), {}))
            rows.append(row)
        frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        models = [(r.encoder, r.head.label) for r in self.results]
        keys = list(zip(frame["encoder"], frame["head"]))
        tests = self.tests_frame()
        for metric in TIED_METRICS:
            means = dict(zip(keys[:len(models)], frame[f"{metric}_mean"][:len(models)]))
            tied = tied_with_best(means, tests, metric, level=tie_level) if models else {}
            frame[tied_column(metric)] = pd.array([tied.get(k, pd.NA) for k in keys], dtype="boolean")
        return frame

    @functools.cached_property
    def _intervals(self) -> dict:
        """Bootstrap intervals of the first repeat's out-of-fold predictions, per model (computed once)."""
        out = {}
        if self.bootstrap_draws and self.groups:
            for r in self.scored:
                _, true, pred = r.first_repeat()
                ci = bootstrap_intervals(true, pred, np.asarray(self.groups), draws=self.bootstrap_draws, seed=self.seed)
                out[(r.encoder, r.head.label)] = {f"{m}_ci_{end}": v for m, pair in ci.items()
                                                  for end, v in zip(("low", "high"), pair)}
        return out

    def folds_frame(self) -> pd.DataFrame:
        """``folds.csv``: every model's scores per (repeat, fold); ``held_out`` names the value a leave-one-group-out
        fold tested on (empty for k-fold)."""
        frames = [r.fold_scores(self.held_out) for r in self.scored]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FOLD_COLUMNS)

    def per_holdout_frame(self) -> pd.DataFrame:
        """``per_holdout.csv`` (leave-one-group-out only): per model, every metric on each held-out value's images
        (``scope`` "held-out value") and on all images' out-of-fold predictions pooled (``scope`` "pooled",
        ``held_out`` empty). ``n_unseen_age``: test images whose reader age no training image had (no model could
        give it). Empty without a hold-out column."""
        if self.holdout_column is None:
            return pd.DataFrame(columns=PER_HOLDOUT_COLUMNS)
        rows = []
        for r in self.scored:
            first = r.repeat == r.repeat.min()
            true, pred, fold = r.true_age[first], r.pred_age[first], r.fold[first]
            unseen = ~r.age_in_training()[first]
            base = {"encoder": r.encoder, "head": r.head.label, "scaling": r.head.scaling}
            for k, value in enumerate(self.held_out):
                test = fold == k
                rows.append({**base, "scope": HELD_OUT_SCOPE, "held_out": value, "fold": k, "n_test": int(test.sum()),
                             "n_unseen_age": int(unseen[test].sum()), **score(true[test], pred[test])})
            rows.append({**base, "scope": POOLED_SCOPE, "held_out": "", "fold": pd.NA, "n_test": int(true.size),
                         "n_unseen_age": int(unseen.sum()), **score(true, pred)})
        frame = pd.DataFrame(rows, columns=PER_HOLDOUT_COLUMNS)
        frame["fold"] = frame["fold"].astype("Int64")
        return frame

    @property
    def fish_scores_refused(self) -> Note | None:
        """Why this comparison has no fish-level scores (folds not grouped by fish, or no fish with several photos),
        or None when it has them (:mod:`~otolith_core.fish_level`)."""
        return refusal(grouped_by_fish=self.grouped_by_fish, fish=self.fish)

    @functools.cached_property
    def _fish_predictions(self) -> dict:
        if self.fish_scores_refused is not None:
            return {}
        return {(r.encoder, r.head.label): fish_predictions(r, self.fish) for r in self.scored}

    def fish_predictions_frame(self) -> pd.DataFrame:
        """``fish_predictions.csv``: every model's prediction of each fish from its photos together, per repeat
        (:mod:`~otolith_core.fish_level` states the rule of each head); empty when :attr:`fish_scores_refused`."""
        frames = list(self._fish_predictions.values())
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FISH_PREDICTION_COLUMNS)

    def per_fish_frame(self) -> pd.DataFrame:
        """``per_fish.csv``: per model (and the no-skill baseline), the fish-level scores, mean and SD over the
        same folds as summary.csv (all repeats); empty when :attr:`fish_scores_refused`."""
        rows = [fish_summary(r, self.fish, self._fish_predictions[(r.encoder, r.head.label)])
                for r in self.scored if (r.encoder, r.head.label) in self._fish_predictions]
        return pd.DataFrame(rows, columns=PER_FISH_COLUMNS)

    def predictions_frame(self) -> pd.DataFrame:
        frames = [r.predictions() for r in self.scored]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)

    def probabilities_frame(self) -> pd.DataFrame:
        """Out-of-fold class probabilities of every model whose head gives them (``probabilities.csv``)."""
        frames = [r.probabilities() for r in self.results if r.proba is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROBABILITY_COLUMNS)

    def tests_frame(self) -> pd.DataFrame:
        return pd.DataFrame([t.__dict__ for t in self.tests], columns=TEST_COLUMNS)

    def skipped_frame(self) -> pd.DataFrame:
        return skipped_frame(self.skipped)

    def per_image(self, repeat: int = 0) -> pd.DataFrame:
        """One row per image of one repeat: ``image, path, true_age`` and each model's predicted age.

        Models are named ``"encoder / head"``. Each value is that repeat's out-of-fold prediction, so
        it is a whole age a model really gave (never an average over repeats).
        """
        if not 0 <= repeat < self.repeats:
            raise ValueError(f"repeat {repeat} does not exist; this run has repeats 0..{self.repeats - 1}")
        table = None
        for r in self.results:
            keep = r.repeat == repeat
            column = pd.DataFrame({"image": np.asarray(r.images)[keep], "path": np.asarray(r.paths)[keep],
                                   "true_age": r.true_age[keep], model_label(r.encoder, r.head.label): r.pred_age[keep]})
            table = column if table is None else table.merge(column, on=["image", "path", "true_age"], how="inner",
                                                             validate="one_to_one")
        return table if table is not None else pd.DataFrame(columns=["image", "path", "true_age"])

    def agebias_frame(self) -> pd.DataFrame:
        """Campana's age-bias table per (encoder, head), from the first repeat's predictions."""
        return _first_repeat_table(self.results, age_bias, AGEBIAS_COLUMNS)

    def per_age_frame(self) -> pd.DataFrame:
        """``per_age.csv``: per (encoder, head) and reader age, from the first repeat's out-of-fold predictions."""
        return _first_repeat_table(self.scored, per_age_scores, PER_AGE_COLUMNS)

    def symmetry_frame(self) -> pd.DataFrame:
        """Bowker's test of symmetry of the reader-vs-model age table per (encoder, head), first repeat."""
        rows = []
        for r in self.results:
            _, true, pred = r.first_repeat()
            statistic, df, p = bowker_symmetry(true, pred)
            rows.append({"encoder": r.encoder, "head": r.head.label, "statistic": statistic, "df": df,
                         "p_value": p, "test": "bowker"})
        return pd.DataFrame(rows, columns=SYMMETRY_COLUMNS)

    def learning_curve_frame(self) -> pd.DataFrame:
        return self.learning_curve if self.learning_curve is not None else pd.DataFrame(columns=LEARNING_COLUMNS)


def _first_repeat_table(results: Sequence[CVResult], rows_of, columns: list[str]) -> pd.DataFrame:
    """``rows_of(true, pred)`` of each result's first repeat, each row labelled with its encoder and head."""
    rows = []
    for r in results:
        _, true, pred = r.first_repeat()
        rows += [{"encoder": r.encoder, "head": r.head.label, **row} for row in rows_of(true, pred)]
    return pd.DataFrame(rows, columns=columns)


def per_age_scores(true: np.ndarray, pred: np.ndarray) -> list[dict]:
    """For each reader age: images, recall (share read right), precision (share of the model's calls of that
    age that are right; NaN when it never predicts it), F1, mean signed error (model minus reader, years)
    and the share within one year."""
    true, pred = np.asarray(true), np.asarray(pred)
    rows = []
    for age in np.unique(true):
        read, called = true == age, pred == age
        hits = int(np.sum(read & called))
        recall = hits / int(read.sum())
        precision = hits / int(called.sum()) if called.any() else float("nan")
        f1 = 2 * hits / (int(read.sum()) + int(called.sum()))
        rows.append({"age": int(age), "n": int(read.sum()), "recall": recall, "precision": precision, "f1": f1,
                     "mean_error": float(np.mean(pred[read] - age)),
                     "pm1_share": float(np.mean(np.abs(pred[read] - age) <= 1))})
    return rows



def skipped_frame(skipped: Sequence[Skipped]) -> pd.DataFrame:
    """``skipped.csv``: path, manifest row (empty for files found by a folder scan), reason, image id."""
    frame = pd.DataFrame([{"path": s.path, "row": s.row, "reason": s.reason, "image": s.image} for s in skipped],
                         columns=SKIPPED_COLUMNS)
    frame["row"] = frame["row"].astype("Int64")
    return frame



def compare(
    dataset: Dataset,
    embeddings: Mapping[str, EmbeddingSet],
    heads: Sequence[HeadSpec],
    *,
    n_folds: int = 10,
    seed: int = 0,
    repeats: int = 1,
    group_by_fish: bool | None = None,
    with_learning_curve: bool = False,
    failed_encoders: Mapping[str, str] | None = None,
    bootstrap_draws: int = BOOTSTRAP_DRAWS,
    scalings: Mapping[str, str] | None = None,
    combined: Sequence[Sequence[str]] = (),
    covariates: CovariateRequest | None = None,
    group_column: str | None = None,
    holdout_column: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Comparison:
    """Cross-validate every head on every encoder's embeddings with one shared set of folds per repeat.

    Parameters
    ----------
    repeats : R x k-fold with seeds ``seed .. seed + R - 1``.
    group_by_fish : keep all photos of a fish in one fold, and on one side of every inner CV that chooses a
        head's parameter; None (default) does so when the data has several photos of any fish.
    group_column : a manifest column whose values are kept together instead (station, tray photo, ...: see
        :func:`column_groups`: a blank value is a group of its own; values shared by a fish are merged); the
        inner CV and the bootstrap use the same groups. Given with ``group_by_fish=False``: ValueError.
    holdout_column : leave-one-group-out over this manifest column's values (a cruise, a year): each value is the
        test fold once, ``n_folds`` is ignored (the number of values), ``repeats`` must be 1 (the split is fixed).
        Images with a blank value are skipped. The groups (fish, or ``group_column``) must nest in its values.
    with_learning_curve : also train on 10 %, 20 %, ... 100 % of each training fold.
    bootstrap_draws : draws for the 95 % intervals in the summary (fish resampled; 0: none), seeded by ``seed``.
    scalings : each encoder's own feature scaling (its registry entry), used by heads whose scaling is
        ``auto``; an encoder not named gets ``l2``.
    combined : groups of encoders (of ``embeddings``) evaluated together as one more encoder, labelled
        ``"A + B"``: each part scaled as its own entry says (or as the heads' one scaling), then concatenated.
    covariates : manifest columns added as features (:mod:`~otolith_core.covariates`): one more row
        ``covariates`` (them alone) and, for every encoder row ``A``, a row ``A + covariates``.
    progress : called as ``progress(done, total, model)`` before the first fold and after every fold fitted
        (the learning curve's folds count too), ``model`` naming the encoder and head at work; it may raise to
        stop the comparison (a cancelled job).

    Only images embedded by every encoder (and, with covariates, having all of them) are used, so every
    model sees the same images and folds; the others are listed in ``Comparison.skipped`` with the reason.
    """
    if not embeddings:
        raise ValueError("no embeddings to evaluate: every encoder failed or none was chosen")
    if not heads:
        raise ValueError("no heads chosen; choose from ridge, svc, ridge-cv, logistic, knn")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if group_column and group_by_fish is False:
        raise ValueError(f"group_column {group_column!r} keeps each value's images in one fold, which "
                         f"group_by_fish=False (--no-group-by-fish) forbids; drop one of the two")
    if holdout_column and repeats > 1:
        raise ValueError(f"leave-one-{holdout_column}-out is one fixed split: repeats ({repeats}) would repeat it "
                         f"identically; use repeats 1")
    common = _common_rows(embeddings.values())
    skipped = list(dict.fromkeys([*dataset.skipped, *(s for emb in embeddings.values() for s in emb.failures)]))
    named = {s.image for s in skipped}
    for i, record in enumerate(dataset.records):
        if i not in common and record.id not in named:
            skipped.append(Skipped.of(record, "not embedded by every chosen encoder"))
    table = None
    if covariates is not None and covariates.columns:
        table = read_covariates(dataset.records, covariates, source=f"{dataset.kind} {dataset.source.name}",
                                age_column=dataset.age_column)
        lacking = sorted(i for i in table.problems if i in common)
        if lacking and len(lacking) == len(common):
            raise ValueError(f"no image has every covariate; e.g. {dataset.records[lacking[0]].name}: "
                             f"{table.problems[lacking[0]]}")
        skipped += [Skipped.of(dataset.records[i], table.problems[i]) for i in lacking]
        common -= set(lacking)
    if holdout_column:
        every = column_values(dataset, np.arange(len(dataset.records)), holdout_column, option="--holdout-column")
        blank = sorted(i for i in common if not every[i])
        if blank and len(blank) == len(common):
            raise ValueError(f"every image has a blank {holdout_column} (the hold-out column); choose another")
        skipped += [Skipped.of(dataset.records[i], f"blank {holdout_column} (the hold-out column)") for i in blank]
        common -= set(blank)
    rows = np.array(sorted(common), dtype=int)
    if rows.size == 0:
        raise ValueError("no image was embedded by every chosen encoder")
    ages = dataset.ages[rows]
    images = tuple(dataset.records[i].id for i in rows)
    paths = tuple(dataset.records[i].name for i in rows)
    fish = fish_groups(dataset, rows)
    notes: list[Note] = class_weight_notes(heads)
    if group_column == dataset.columns.fish:
        group_column, group_by_fish = None, True  # the fish column named: today's grouping by fish
    if group_column:
        groups, notes = column_groups(dataset, rows, group_column)
        group_by_fish, units = True, f"{group_column} values"
    else:
        groups, units = fish, "fish"
        if group_by_fish is None:
            group_by_fish = len(np.unique(groups)) < len(groups)
    fit_groups = groups if group_by_fish else None  # the heads' inner CV is grouped whenever the folds are
    fold_sets, held_out = [], ()
    if holdout_column:
        values = column_values(dataset, rows, holdout_column, option="--holdout-column")
        if fit_groups is not None:
            check_nested(fish, values, unit="fish", column=holdout_column)
            if group_column:
                check_nested(groups, values, unit=group_column, column=holdout_column)
        folds, held_out = holdout_folds(values)
        fold_sets.append(folds)
        n_folds = len(held_out)
        notes += leaving_out_only_age(ages, values.astype(str), holdout_column)
    for r in range(0 if holdout_column else repeats):
        folds, fold_notes = make_folds(ages, n_folds=n_folds, seed=seed + r, groups=fit_groups, units=units)
        fold_sets.append(folds)
        notes += [n for n in fold_notes if n not in notes]
    notes += duplicate_warnings(next(iter(embeddings.values())), rows, images, ages, fold_sets)
    notes += [Note("info", text) for text in (table.notes() if table is not None else ())]
    results, curve = [], []
    scalings = dict(scalings or {})
    matrices = {}
    for name, emb in embeddings.items():
        position = {int(r): j for j, r in enumerate(emb.rows)}
        matrices[name] = emb.features[[position[int(r)] for r in rows]]
    entries = [(name, matrices[name], scalings.get(name, "l2"), ()) for name in embeddings]
    for parts in combined:
        missing = [p for p in parts if p not in matrices]
        if missing or len(parts) < 2:
            raise ValueError(f"--combine {','.join(parts)}: needs two or more of the evaluated encoders "
                             f"({', '.join(matrices)}); not evaluated: {', '.join(missing) or '-'}")
        entries.append((combined_label(parts), np.hstack([matrices[p] for p in parts]),
                        "+".join(scalings.get(p, "l2") for p in parts), tuple(matrices[p].shape[1] for p in parts)))
    if table is not None:
        entries = with_covariates(entries, table.values[rows])
    per_model = sum(np.unique(folds).size for folds in fold_sets) * (2 if with_learning_curve else 1)
    counter = _FoldCounter(progress, per_model * len(entries) * len(heads))
    for name, features, own_scaling, blocks in entries:
        for head in (h.for_encoder(own_scaling, blocks, table.encoding if table else None) for h in heads):
            counter.model = model_label(name, head.label)
            counter.step(0)
            parts, alphas, chosen = [], {}, {}
            probas = []
            for r, folds in enumerate(fold_sets):
                out = cross_validate_head(features, ages, folds, head, groups=fit_groups, on_fold=counter.step)
                parts.append((out.pred, out.raw, folds, np.full(ages.size, r)))
                probas.append(out.proba)
                alphas.update({(r, k): p["alpha"] for k, p in out.params.items()})
                chosen.update({(r, k): {"C": p["C"], "k": p["k"]} for k, p in out.params.items()})
                if with_learning_curve:
                    curve += [{"encoder": name, "head": head.label, "repeat": r, **row}
                              for row in learning_curve(features, ages, folds, head, seed=seed + r,
                                                        groups=fit_groups, on_fold=counter.step)]
            pred, raw, fold, repeat = (np.concatenate(p) for p in zip(*parts))
            proba = np.vstack(probas) if probas[0] is not None else None
            results.append(CVResult(name, head, images * repeats, paths * repeats, np.tile(ages, repeats), pred, raw,
                                    fold, repeat, alphas, chosen, proba))
    notes += covariate_leaks(results, table.names if table is not None else ())
    lc = pd.DataFrame(curve, columns=LEARNING_COLUMNS) if with_learning_curve else None
    baseline = no_skill(ages, fold_sets, images, paths)
    return Comparison(tuple(results), tuple(paired_tests(results)), n_folds, seed, repeats, bool(group_by_fish),
                      tuple(skipped), tuple(notes), dict(failed_encoders or {}), lc,
                      {name: emb.precision for name, emb in embeddings.items()}, baseline, tuple(groups.tolist()),
                      int(bootstrap_draws), dict(zip(table.names, table.encoding.kinds)) if table else {},
                      bool(table and table.encoding.impute),
                      revisions={name: emb.weights_revision for name, emb in embeddings.items()},
                      group_column=group_column or None, holdout_column=holdout_column or None, held_out=held_out,
                      fish=tuple(fish.tolist()))


class _FoldCounter:
    """Counts the folds a comparison has fitted and tells ``progress`` (when given) after each."""

    def __init__(self, progress: Callable[[int, int, str], None] | None, total: int) -> None:
        self.progress, self.total, self.done, self.model = progress, total, 0, ""

    def step(self, folds: int = 1) -> None:
        self.done += folds
        if self.progress is not None:
            self.progress(self.done, self.total, self.model)


def covariate_leaks(results: Sequence[CVResult], names: Sequence[str]) -> list[Note]:
    """A warning for each head that reads at least ``LEAK_ACCURACY`` of the ages exactly from the covariates alone:
    no fish measurement does that honestly, a column holding the age (or derived from it) does."""
    notes = []
    for r in results:
        accuracy = float(r.fold_scores()["accuracy"].mean()) if r.encoder == COVARIATES else float("nan")
        if accuracy >= LEAK_ACCURACY:
            notes.append(Note("warning", f"the covariates alone ({', '.join(names)}) read {accuracy:.0%} of the ages "
                                         f"exactly with {r.head.label}: no fish measurement does that; does one of "
                                         f"these columns hold the age, or was it derived from it? Every "
                                         f"'+ covariates' row is then worthless."))
    return notes


def with_covariates(entries: list[tuple], covariates: np.ndarray) -> list[tuple]:
    """Evaluation entries ``(name, features, own scaling, blocks)`` plus the covariates alone and each entry
    with the covariate columns appended (``"A + covariates"``, encoded in-fold after A's own scaling)."""
    width = covariates.shape[1]
    out = list(entries) + [(COVARIATES, covariates, COVARIATE_SCALING, ())]
    for name, features, own, blocks in entries:
        out.append((combined_label([name, COVARIATES]), np.hstack([features, covariates]),
                    f"{own}+{COVARIATE_SCALING}", (*(blocks or (features.shape[1],)), width)))
    return out


def combined_label(parts: Sequence[str]) -> str:
    """``"A + B"``: the row of a combined encoder (spaces included, so a variant's own ``+`` never splits it)."""
    return " + ".join(parts)


def no_skill(ages: np.ndarray, fold_sets: Sequence[np.ndarray], images: Sequence[str], paths: Sequence[str]) -> CVResult:
    """The no-skill baseline on the given folds: each test fold gets its training fold's most common age
    (the smallest of tied ages, as scikit-learn's ``DummyClassifier(strategy="most_frequent")``)."""
    head = HeadSpec(BASELINE_HEAD).for_encoder("none")
    nothing = np.zeros((ages.size, 1))  # it sees no image
    parts = []
    for r, folds in enumerate(fold_sets):
        out = cross_validate_head(nothing, ages, folds, head, n_jobs=1)
        parts.append((out.pred, out.raw, folds, np.full(ages.size, r)))
    pred, raw, fold, repeat = (np.concatenate(p) for p in zip(*parts))
    repeats = len(fold_sets)
    return CVResult(NO_SKILL, head, tuple(images) * repeats, tuple(paths) * repeats, np.tile(ages, repeats), pred,
                    raw, fold, repeat)


def duplicate_warnings(emb: EmbeddingSet, rows: np.ndarray, images: Sequence[str], ages: np.ndarray,
                       fold_sets: Sequence[np.ndarray]) -> list[Note]:
    """Notes about images with the same content; errors when they disagree on age or straddle folds."""
    if not emb.keys:
        return []
    key_of = dict(zip(emb.rows.tolist(), emb.keys))
    by_key: dict[str, list[int]] = {}
    for j, row in enumerate(rows.tolist()):
        by_key.setdefault(key_of[row], []).append(j)
    notes = []
    for members in (m for m in by_key.values() if len(m) > 1):
        names = ", ".join(images[j] for j in members)
        if len(set(ages[members].tolist())) > 1:
            notes.append(Note("error", f"{names} are the same image but carry different ages "
                                       f"({', '.join(str(a) for a in ages[members])}); fix the manifest"))
        elif any(len(set(folds[members].tolist())) > 1 for folds in fold_sets):
            notes.append(Note("error", f"{names} are the same image and fall in different folds, so the model is "
                                       f"tested on an image it was trained on; remove the copies or give them one fish_id"))
        else:
            notes.append(Note("info", f"{names} are the same image (duplicates)"))
    return notes


def _common_rows(sets) -> set[int]:
    sets = list(sets)
    common = set(int(r) for r in sets[0].rows)
    for emb in sets[1:]:
        common &= set(int(r) for r in emb.rows)
    return common


def paired_tests(results: Sequence[CVResult]) -> list[PairedTest]:
    """Every pair of results: naive and corrected t, Wilcoxon on fold scores, exact McNemar on images.

    ``p_holm`` adjusts each family (one test on one metric over all pairs) with Holm's method.
    """
    tests: list[PairedTest] = []
    scores = {id(r): r.fold_scores() for r in results}
    for a, b in itertools.combinations(results, 2):
        if not (np.array_equal(a.fold, b.fold) and np.array_equal(a.repeat, b.repeat)):
            raise ValueError(f"{a.encoder}/{a.head.label} and {b.encoder}/{b.head.label} were not scored on the same folds")
        fa, fb = scores[id(a)], scores[id(b)]
        ratio = float(np.mean(fa["n_test"] / fa["n_train"]))
        names = (a.encoder, a.head.label, b.encoder, b.head.label)
        for metric in TESTED_METRICS:
            x, y = fa[metric].to_numpy(), fb[metric].to_numpy()
            tests.append(PairedTest(metric, *names, *paired_t_test(x, y), test="paired_t"))
            tests.append(PairedTest(metric, *names, *corrected_t_test(x, y, test_train_ratio=ratio), test="corrected_t"))
            tests.append(PairedTest(metric, *names, *wilcoxon_test(x, y), test="wilcoxon"))
        _, true, pred_a = a.first_repeat()
        _, _, pred_b = b.first_repeat()
        tests.append(PairedTest("accuracy", *names, *mcnemar_test(pred_a == true, pred_b == true), test="mcnemar"))
        tests.append(PairedTest("pm1_accuracy", *names,
                                *mcnemar_test(np.abs(pred_a - true) <= 1, np.abs(pred_b - true) <= 1), test="mcnemar"))
    families: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tests):
        families.setdefault((t.test, t.metric), []).append(i)
    adjusted = list(tests)
    for index in families.values():
        for i, p in zip(index, holm_adjust(np.array([tests[i].p_value for i in index]))):
            adjusted[i] = PairedTest(**{**tests[i].__dict__, "p_holm": float(p)})
    return adjusted
