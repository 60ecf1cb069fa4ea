"""Write a comparison to a results folder: the CSVs, ``run.json`` provenance and the bar chart.

Files are written to a temporary folder beside the target and moved into place one by one, so a
crash never leaves a half-written CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .cache import FileHashes, store_fingerprint
from .data import Dataset
from .demo import is_synthetic_demo
from .exchange import ExchangeReport
from .encoders import EncoderSpec, implementation_for
from .comparison import Comparison
from .heads import HeadSpec
from .readings import SecondReadings
from .review import doubtful_ages, probabilistic, with_second_ages
from .ties import TIE_LEVEL, TIE_SENTENCE, TIE_TEST, TIED_METRICS, check_level, tied_column

# Every file a run may write into its results folder: a later run removes those it does not write itself, so
# a folder never mixes two runs (a stale learning_curve.csv beside an svc run would read as the svc's).
OUTPUT_FILES = ("summary.csv", "folds.csv", "predictions.csv", "ttests.csv", "agebias.csv", "per_age.csv",
                "symmetry.csv", "skipped.csv", "learning_curve.csv", "per_holdout.csv", "probabilities.csv",
                "label_review.csv", "per_fish.csv", "fish_predictions.csv",
                "exchange_report.csv", "exchange_tests.csv", "exchange_bias.csv", "exchange_by_age.csv",
                "exchange_images.csv",
                "run.json", "comparison.svg", "comparison.png")
LIBRARIES = ("otolith-dashboard", "numpy", "scipy", "scikit-learn", "pandas", "torch", "torchvision",
             "open-clip-torch", "timm", "pillow", "scikit-image", "pyefd", "diskcache", "altair")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (read without importing them)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def image_set_hash(dataset: Dataset, images: Sequence[str], hashes: FileHashes | None) -> str:
    """SHA-256 over the used images' content hashes (or ids for .npz input), crop boxes and ages.

    ``images`` are record ids (file + crop box), so two crops of one photo count as two images.
    """
    by_image = {r.id: r for r in dataset.records}
    lines = []
    for image in images:
        record = by_image[image]
        content = hashes.sha256(record.path) if hashes is not None and dataset.kind != "embeddings" else image
        lines.append(f"{content}|{record.crop}|{record.age}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def provenance(
    comparison: Comparison,
    dataset: Dataset,
    specs: Mapping[str, EncoderSpec],
    heads: Sequence[HeadSpec],
    *,
    cache_dir: str | Path | None,
    second: SecondReadings | None = None,
    tie_level: float = TIE_LEVEL,
) -> dict:
    """Everything needed to trace a figure back to its run (``run.json``); ``second``: second readings
    (``readings.second_readings``), summarised as the agreement between the two readers on the ages as read
    (unclipped), with the readings that could not count; ``tie_level``: the level of summary.csv's ties."""
    hashes = FileHashes(cache_dir) if cache_dir is not None else None
    images = tuple(comparison.results[0].first_repeat()[0]) if comparison.results else ()  # each image once
    encoders = {}
    for name, spec in specs.items():
        entry = spec.as_dict()
        if spec.input_preprocessing is not None:  # what the model was handed, after the variant (if any)
            entry["preprocessing_applied"] = asdict(spec.input_preprocessing)
        if name in comparison.precisions:
            entry["precision_used"] = comparison.precisions[name]
            entry["implementation"] = implementation_for(spec, comparison.precisions[name])
        if name in comparison.revisions:  # the hub commit the weights came from (``revision``: what was pinned)
            entry["weights_revision"] = comparison.revisions[name]
        if hashes is not None and dataset.kind != "embeddings":
            # The store the embeddings were read from: after the extraction, a store recording no revision has
            # not served this one (it would have adopted it), hence adopt=False.
            entry["fingerprint"] = store_fingerprint(cache_dir, spec, hashes, comparison.precisions.get(name, "fp32"),
                                                     comparison.revisions.get(name), adopt=False)
        encoders[name] = entry
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "data": {
            "source": str(dataset.source),
            "kind": dataset.kind,
            "synthetic_demo": is_synthetic_demo(dataset.records),
            "n_usable_rows": len(dataset),
            "n_evaluated": len(images),
            "n_skipped": len(comparison.skipped),
            "age_range": list(dataset.age_range) if dataset.age_range else None,
            "columns": asdict(dataset.columns),
            "image_set_sha256": image_set_hash(dataset, images, hashes),
        },
        "encoders": encoders,
        "failed_encoders": dict(comparison.failed_encoders),
        "heads": [h.as_dict() for h in heads],
        "covariates": {"columns": dict(comparison.covariates), "impute_blanks": comparison.impute_covariates},
        "cv": {"scheme": ("LeaveOneGroupOut" if comparison.holdout_column else
                          "StratifiedGroupKFold" if comparison.grouped_by_fish else "StratifiedKFold"),
               "shuffle": not comparison.holdout_column, "n_folds": comparison.n_folds, "seed": comparison.seed,
               "repeats": comparison.repeats, "repeat_seeds": [comparison.seed + r for r in range(comparison.repeats)],
               "grouped_by_fish": comparison.grouped_by_fish,
               "group_column": comparison.group_column,  # None: by fish when grouped_by_fish
               "kept_together": comparison.group_unit,  # "fish", the group column, or None (images apart)
               "holdout_column": comparison.holdout_column,
               "held_out_values": list(comparison.held_out),  # by fold index
               "folds": comparison.folds_text,
               "learning_curve": comparison.learning_curve is not None},
        "warnings": [{"severity": n.severity, "message": n.message} for n in comparison.warnings],
        "ties": {"level": check_level(tie_level), "test": TIE_TEST,
                 "adjustment": "holm, over the comparisons of the best model with each other model, per metric",
                 "columns": [tied_column(m) for m in TIED_METRICS],
                 "meaning": TIE_SENTENCE.format(level=check_level(tie_level))},
        "fish_level": _fish_level_record(comparison),
    }
    if second is not None and (len(second.table) or second.unmatched):
        from .readings import agreement

        table = second.table
        readers = agreement(table["first_age"], table["second_age"])
        record["second_readings"] = {"n_images": readers.n, "ape_percent": readers.ape, "cv_percent": readers.cv,
                                     "same_age": readers.exact, "ages": "as read (an age range clips only the heads')",
                                     "sources": table["source"].value_counts().to_dict(),
                                     "not_counted": [asdict(u) for u in second.unmatched]}
    if hashes is not None:
        hashes.close()
    return record


def _fish_level_record(comparison: Comparison) -> dict:
    """run.json's ``fish_level``: whether per_fish.csv was written, why not, and each head's rule."""
    from .fish_level import fish_rule

    refused = comparison.fish_scores_refused
    return {"written": refused is None, "not_written_because": refused.message if refused is not None else None,
            "rules": {r.head.label: fish_rule(r) for r in comparison.scored},
            "scores": "mean and sample SD over all repeats' folds, each fold scored on its fish"}


def result_tables(comparison: Comparison, *, second: pd.DataFrame | None = None,
                  tie_level: float = TIE_LEVEL, exchange: ExchangeReport | None = None) -> dict[str, pd.DataFrame]:
    """The CSV files of a run by file name; the CLI writes them and the dashboard offers them for download.

    ``second``: second readings (``readings.second_readings``), shown beside the ranking in label_review.csv.
    ``tie_level``: the level at which summary.csv marks the models tied with the best (:mod:`~otolith_core.ties`).
    ``exchange``: the age-reading exchange (``exchange.exchange_report``), written as its CSV files when it
    holds any image.
    """
    tables = {
        "summary.csv": comparison.summary_frame(tie_level=tie_level),
        "folds.csv": comparison.folds_frame(),
        "predictions.csv": comparison.predictions_frame(),
        "ttests.csv": comparison.tests_frame(),
        "agebias.csv": comparison.agebias_frame(),
        "per_age.csv": comparison.per_age_frame(),
        "symmetry.csv": comparison.symmetry_frame(),
        "skipped.csv": comparison.skipped_frame(),
    }
    if comparison.learning_curve is not None:
        tables["learning_curve.csv"] = comparison.learning_curve_frame()
    if comparison.holdout_column is not None:
        tables["per_holdout.csv"] = comparison.per_holdout_frame()
    if comparison.fish_scores_refused is None:  # fish with several photos, on folds that keep each fish together
        tables["per_fish.csv"] = comparison.per_fish_frame()
        tables["fish_predictions.csv"] = comparison.fish_predictions_frame()
    if probabilistic(comparison.results):  # a head with class probabilities (logistic) ran
        tables["probabilities.csv"] = comparison.probabilities_frame()
        ranking = doubtful_ages(comparison.results, fish=comparison.fish or None, tie_seed=comparison.seed)
        tables["label_review.csv"] = with_second_ages(ranking, second)
    if exchange is not None and exchange.n_images:
        tables.update(exchange.tables())
    return tables


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A table exactly as written to disk (UTF-8, no index)."""
    return frame.to_csv(index=False).encode("utf-8")


def write_results(comparison: Comparison, out_dir: str | Path, *, run_info: dict, chart: bool = True,
                  png: bool = False, second: pd.DataFrame | None = None, tie_level: float = TIE_LEVEL,
                  exchange: ExchangeReport | None = None) -> list[Path]:
    """Write predictions, folds, summary, ttests, skipped CSVs, ``run.json`` and the chart to ``out_dir``
    (``second``, ``tie_level``, ``exchange``: see :func:`result_tables`).

    The chart is ``comparison.svg``; ``png=True`` also renders ``comparison.png`` (a second
    rendering, so only when asked). The folder then holds this run alone: any file of ``OUTPUT_FILES``
    that an earlier run left and this one did not write is removed; other files are never touched.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=out_dir))
    try:
        for name, frame in result_tables(comparison, second=second, tie_level=tie_level, exchange=exchange).items():
            (staging / name).write_bytes(csv_bytes(frame))
        (staging / "run.json").write_text(json.dumps(run_info, indent=2, default=str), encoding="utf-8")
        if chart and comparison.results:
            from .charts import comparison_chart  # altair: imported only when a chart is drawn

            figure = comparison_chart(comparison.summary_frame(tie_level=tie_level), n_folds=comparison.n_folds,
                                      repeats=comparison.repeats, tie_level=tie_level)
            figure.save(str(staging / "comparison.svg"))
            if png:
                figure.save(str(staging / "comparison.png"), scale_factor=1.5)
        unexpected = sorted(f.name for f in staging.iterdir() if f.name not in OUTPUT_FILES)
        if unexpected:
            raise RuntimeError(f"{unexpected} are not in report.OUTPUT_FILES; a later run would not remove them")
        written = []
        for file in sorted(staging.iterdir()):
            target = out_dir / file.name
            os.replace(file, target)
            written.append(target)
        for stale in (out_dir / name for name in OUTPUT_FILES):
            if stale not in written:
                stale.unlink(missing_ok=True)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
