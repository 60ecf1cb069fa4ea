"""Result files: the tables by file name, run.json provenance, the image-set hash and the CSV bytes.

(That a crash while writing leaves no half-written file is tested in test_cli.py.)
"""

import dataclasses
import hashlib
import io
import json
import platform
from datetime import datetime
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from otolith_core.cache import FileHashes, encoder_fingerprint
from otolith_core.data import Dataset, ImageRecord, Skipped, file_sha256
from otolith_core.embeddings import EmbeddingSet
from otolith_core.comparison import (AGEBIAS_COLUMNS, PER_AGE_COLUMNS, SUMMARY_COLUMNS, SYMMETRY_COLUMNS, TEST_COLUMNS,
                                     compare)
from otolith_core.cross_validation import FOLD_COLUMNS, LEARNING_COLUMNS, PREDICTION_COLUMNS
from otolith_core.heads import HeadSpec
from otolith_core.encoders import registry
from otolith_core.report import LIBRARIES, csv_bytes, image_set_hash, provenance, result_tables

HEADS = [HeadSpec("ridge"), HeadSpec("svc")]
ENCODER = "pixels-32"


def _study(folder, *, fish_ids=False, source="field survey") -> Dataset:
    """31 small distinct images (ages 1-3, the last one never embedded) and one row skipped on reading."""
    rng = np.random.default_rng(0)
    records = []
    for i, age in enumerate([1] * 10 + [2] * 10 + [3] * 11):
        path = folder / f"img {i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, path.name, age, fish_id=f"F{i // 2}" if fish_ids else None,
                                   metadata={"source": source, "cruise": f"C{(i // 2) % 3}"}))
    return Dataset(folder, "manifest", tuple(records), skipped=(Skipped("gone.jpg", "file not found"),), age_range=(1, 10))


def _compare(data: Dataset, **options):
    features = np.random.default_rng(1).normal(size=(len(data), 4)).astype(np.float32)
    embedded = np.arange(len(data) - 1)
    return compare(data, {ENCODER: EmbeddingSet(ENCODER, features[embedded], embedded)}, HEADS, n_folds=3, **options)


def test_result_tables_are_the_files_the_cli_writes_with_their_promised_columns(tmp_path):
    data = _study(tmp_path)
    tables = result_tables(_compare(data))
    assert set(tables) == {"summary.csv", "folds.csv", "predictions.csv", "ttests.csv", "agebias.csv", "per_age.csv",
                           "symmetry.csv", "skipped.csv"}
    expected = {"summary.csv": SUMMARY_COLUMNS, "folds.csv": FOLD_COLUMNS, "predictions.csv": PREDICTION_COLUMNS,
                "ttests.csv": TEST_COLUMNS, "agebias.csv": AGEBIAS_COLUMNS, "per_age.csv": PER_AGE_COLUMNS,
                "symmetry.csv": SYMMETRY_COLUMNS}
    for name, columns in expected.items():
        assert list(tables[name].columns) == columns, name
    rows = len(HEADS) + 1  # each head, and the no-skill baseline
    assert len(tables["summary.csv"]) == rows and len(tables["folds.csv"]) == rows * 3
    assert tables["summary.csv"].iloc[-1][["encoder", "head"]].tolist() == ["no-skill", "most-frequent"]
    assert len(tables["predictions.csv"]) == rows * (len(data) - 1)
    assert set(tables["predictions.csv"].image) == {r.id for r in data.records[:-1]}
    skipped = tables["skipped.csv"]
    listed = set(skipped.astype(str).to_numpy().ravel())
    assert len(skipped) == 2 and {"gone.jpg", data.records[-1].id} <= listed
    assert skipped["reason"].str.len().gt(0).all()

    with_curve = result_tables(_compare(data, with_learning_curve=True))
    assert list(with_curve["learning_curve.csv"].columns) == LEARNING_COLUMNS
    assert sorted(with_curve["learning_curve.csv"].train_fraction.unique()) == pytest.approx([k / 10 for k in range(1, 11)])


def test_run_json_records_data_encoders_heads_cv_and_versions(tmp_path):
    data = _study(tmp_path, fish_ids=True)
    comparison = _compare(data, seed=5, failed_encoders={"clip-vit-l-14-336": "weights not on this machine"})
    spec = registry()[ENCODER]
    cache = tmp_path / "cache"
    record = json.loads(json.dumps(provenance(comparison, data, {ENCODER: spec}, HEADS, cache_dir=cache)))

    used = data.records[:-1]
    lines = sorted(f"{file_sha256(r.path)}|{r.crop}|{r.age}" for r in used)  # by hand: content, crop, age
    assert record["data"] == {
        "source": str(tmp_path), "kind": "manifest", "synthetic_demo": False, "n_usable_rows": len(data),
        "n_evaluated": len(used), "n_skipped": 2, "age_range": [1, 10],
        "image_set_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "columns": {"path": "path", "age": "age", "fish": "fish_id", "box": None, "box_format": "xyxy", "id": None},
    }
    entry = record["encoders"][ENCODER]
    assert (entry["name"], entry["loader"], entry["model_id"]) == (ENCODER, "builtin", "pixels-32")
    assert entry["precision_used"] == "fp32"
    hashes = FileHashes(cache)
    assert entry["fingerprint"] == encoder_fingerprint(spec, hashes, "fp32")
    hashes.close()
    assert record["failed_encoders"] == {"clip-vit-l-14-336": "weights not on this machine"}
    assert record["heads"] == [h.as_dict() for h in HEADS]
    assert record["cv"] == {"scheme": "StratifiedGroupKFold", "shuffle": True, "n_folds": 3, "seed": 5, "repeats": 1,
                            "repeat_seeds": [5], "grouped_by_fish": True, "group_column": None, "kept_together": "fish",
                            "holdout_column": None, "held_out_values": [],
                            "folds": "3-fold stratified, folds keep each fish together", "learning_curve": False}
    assert record["warnings"] == list(comparison.warnings)
    assert list(record["libraries"]) == list(LIBRARIES)
    assert record["libraries"]["numpy"] == metadata.version("numpy") == np.__version__
    assert record["python"] == platform.python_version()
    assert datetime.fromisoformat(record["created"]).utcoffset() is not None

    plain = provenance(_compare(data, group_by_fish=False, repeats=2, with_learning_curve=True), data,
                       {ENCODER: spec}, HEADS, cache_dir=None)
    assert plain["cv"]["scheme"] == "StratifiedKFold" and not plain["cv"]["grouped_by_fish"]
    assert plain["cv"]["repeat_seeds"] == [0, 1] and plain["cv"]["learning_curve"]
    assert "fingerprint" not in plain["encoders"][ENCODER]  # no cache folder, no file hashes


def test_a_hold_out_column_is_recorded_and_writes_per_holdout_csv(tmp_path):
    from otolith_core.comparison import PER_HOLDOUT_COLUMNS

    data = _study(tmp_path, fish_ids=True)
    comparison = _compare(data, holdout_column="cruise")
    record = provenance(comparison, data, {ENCODER: registry()[ENCODER]}, HEADS, cache_dir=None)["cv"]
    assert record["scheme"] == "LeaveOneGroupOut" and record["holdout_column"] == "cruise" and not record["shuffle"]
    assert record["held_out_values"] == ["C0", "C1", "C2"] and record["n_folds"] == 3
    assert record["folds"] == "leave-one-cruise-out: 3 folds, one per value, folds keep each fish together"
    tables = result_tables(comparison)
    per = tables["per_holdout.csv"]
    assert list(per.columns) == PER_HOLDOUT_COLUMNS
    assert len(per) == (len(HEADS) + 1) * 4  # each model (and no-skill): 3 values and the pooled row
    assert tables["folds.csv"].held_out.tolist()[:3] == ["C0", "C1", "C2"]


def test_fish_with_several_photos_write_per_fish_csv_and_run_json_records_the_rules_and_the_tie_level(tmp_path):
    from otolith_core.fish_level import FISH_PREDICTION_COLUMNS, MEDIAN_RULE, PER_FISH_COLUMNS, REGRESSION_RULE
    from otolith_core.ties import TIED_METRICS, tied_column

    data = _study(tmp_path, fish_ids=True)  # 15 fish of 2 photos (the 31st image, a fish alone, is not embedded)
    comparison = _compare(data, bootstrap_draws=0)
    tables = result_tables(comparison, tie_level=0.2)
    assert list(tables["per_fish.csv"].columns) == PER_FISH_COLUMNS
    assert list(tables["fish_predictions.csv"].columns) == FISH_PREDICTION_COLUMNS
    per_fish = tables["per_fish.csv"]
    assert per_fish[["n_fish", "n_fish_several"]].drop_duplicates().values.tolist() == [[15, 15]]
    assert per_fish["rule"].tolist() == [REGRESSION_RULE, MEDIAN_RULE, MEDIAN_RULE]  # ridge, svc, no-skill
    assert [c for c in tables["summary.csv"].columns if c.endswith("tied_with_best")] == \
        [tied_column(m) for m in TIED_METRICS]
    pd.testing.assert_frame_equal(tables["summary.csv"], comparison.summary_frame(tie_level=0.2))
    record = provenance(comparison, data, {ENCODER: registry()[ENCODER]}, HEADS, cache_dir=None, tie_level=0.2)
    assert record["ties"]["level"] == 0.2 and record["ties"]["columns"] == [tied_column(m) for m in TIED_METRICS]
    assert "level 0.2" in record["ties"]["meaning"] and "Holm" in record["ties"]["meaning"]
    assert record["fish_level"]["written"] and record["fish_level"]["rules"]["ridge"] == REGRESSION_RULE
    apart = _compare(data, group_by_fish=False)
    assert "per_fish.csv" not in result_tables(apart)
    fish = provenance(apart, data, {ENCODER: registry()[ENCODER]}, HEADS, cache_dir=None)["fish_level"]
    assert not fish["written"] and "not grouped by fish" in fish["not_written_because"]


def test_repeated_cv_evaluates_and_hashes_the_same_image_set(tmp_path):
    data = _study(tmp_path)
    spec = {ENCODER: registry()[ENCODER]}
    once = provenance(_compare(data), data, spec, HEADS, cache_dir=None)["data"]
    twice = provenance(_compare(data, repeats=2), data, spec, HEADS, cache_dir=None)["data"]
    assert twice["n_evaluated"] == once["n_evaluated"] == len(data) - 1
    assert twice["image_set_sha256"] == once["image_set_sha256"]


def test_the_synthetic_demo_is_flagged_as_such(tmp_path):
    data = _study(tmp_path, source="synthetic demo")
    record = provenance(_compare(data), data, {ENCODER: registry()[ENCODER]}, HEADS, cache_dir=None)
    assert record["data"]["synthetic_demo"] is True


def _replace_record(data: Dataset, index: int, **changes) -> Dataset:
    records = list(data.records)
    records[index] = dataclasses.replace(records[index], **changes)
    return dataclasses.replace(data, records=tuple(records))


@pytest.mark.parametrize("with_file_hashes", [True, False], ids=["content", "ids"])
def test_image_set_hash_changes_with_an_age_or_a_crop_and_not_with_the_order(tmp_path, with_file_hashes):
    data = _study(tmp_path)
    hashes = FileHashes(tmp_path / "cache") if with_file_hashes else None
    images = [r.id for r in data.records]
    base = image_set_hash(data, images, hashes)
    assert image_set_hash(data, images[::-1], hashes) == base
    assert image_set_hash(data, images[7:] + images[:7], hashes) == base
    assert image_set_hash(_replace_record(data, 3, age=data.records[3].age + 1), images, hashes) != base
    cropped = _replace_record(data, 3, crop=(0, 0, 4, 4))
    assert image_set_hash(cropped, [r.id for r in cropped.records], hashes) != base
    assert image_set_hash(data, images[:-1], hashes) != base
    if hashes is not None:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(data.records[3].path)  # same name, other pixels
        assert image_set_hash(data, images, hashes) != base
        hashes.close()


def test_precomputed_embeddings_are_hashed_by_image_id_not_file_content(tmp_path):
    data = dataclasses.replace(_study(tmp_path), kind="embeddings")
    images = [r.id for r in data.records]
    hashes = FileHashes(tmp_path / "cache")
    assert image_set_hash(data, images, hashes) == image_set_hash(data, images, None)
    hashes.close()


def test_csv_bytes_round_trip_to_the_same_table(tmp_path):
    data = _study(tmp_path)
    frame = _compare(data).predictions_frame()
    frame.loc[0, "image"] = "otólito ñ, «copy».png"  # non-ASCII and a comma survive
    frame.loc[1, "pred_raw"] = np.nan  # a missing value too
    raw = csv_bytes(frame)
    text = raw.decode("utf-8")
    assert text.splitlines()[0] == ",".join(frame.columns)  # no index column
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(raw)), frame)


@pytest.mark.slow
def test_a_results_folder_holds_one_run_and_keeps_the_users_own_files(tmp_path):
    """An svc run into the folder of a ridge run with a learning curve and a PNG leaves none of their files behind
    (a stale learning_curve.csv would read as the svc's); a file of the user's stays."""
    from otolith_core.report import OUTPUT_FILES, write_results

    data = _study(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "my_summary.csv").write_text("mine too")
    write_results(_compare(data, with_learning_curve=True), out, run_info={}, png=True)
    assert {"learning_curve.csv", "comparison.png", "comparison.svg"} <= {p.name for p in out.iterdir()}
    features = np.random.default_rng(1).normal(size=(len(data), 4)).astype(np.float32)
    svc_only = compare(data, {ENCODER: EmbeddingSet(ENCODER, features, np.arange(len(data)))}, [HeadSpec("svc")],
                       n_folds=3)
    written = write_results(svc_only, out, run_info={"run": 2}, chart=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in written), "notes.txt", "my_summary.csv"])
    assert set(pd.read_csv(out / "summary.csv")["head"]) == {"svc", "most-frequent"}
    assert {p.name for p in written} <= set(OUTPUT_FILES)
