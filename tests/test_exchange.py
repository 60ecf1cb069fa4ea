"""Several readers and the age-reading exchange report, checked against plain Python recounts on tiny tables."""

import math
import statistics
from collections import Counter
from itertools import combinations

import pandas as pd
import pytest
from scipy.stats import chi2

from otolith_core.data import load_dataset
from otolith_core.exchange import (ALL_READERS, BIAS_COLUMNS, BY_AGE_COLUMNS, PAIR_COLUMNS, READER_COLUMNS,
                                   REPORT_COLUMNS, collect_readings, exchange_report, exclude_unusable, has_exchange,
                                   may_see, modal_age, readers_by_image, unusable_images, visible_readings)
from otolith_core.readings import FIRST_READER, MANIFEST_READER, add_reading, load_readings, second_readings

F = FIRST_READER
# image -> {reader: age}; None: flagged unusable without an age. i2 and i6 tie (no modal age); i7 is read once;
# i5 has a modal age of 0 (a 0-group fish); A reads i4 older than everyone. C typed 8 for i6 but flagged it
# unusable: that age counts nowhere (counted, it would make 8 i6's modal age).
READINGS = {
    "i1": {F: 3, "A": 3, "B": 4},
    "i2": {F: 5, "A": 6},
    "i3": {F: 2, "A": 2, "B": 2, "C": 3},
    "i4": {F: 4, "A": 6, "B": 4, "C": 4},
    "i5": {F: 0, "A": 0, "C": 1},
    "i6": {F: 7, "B": 8, "C": 8},
    "i7": {F: 1},
    "i8": {F: 6, "A": 7, "B": 7, "C": 7},
}
FLAGS = {("i1", "B"): "uncertain", ("i6", "C"): "uncertain;unusable", ("i7", F): ""}
MODELS = {"m / ridge": {"i1": 3, "i2": 5, "i3": 3, "i4": 4, "i5": 1, "i6": 7, "i7": 1, "i8": 7},
          "n / svc": {"i1": 4, "i3": 2, "i4": 4, "i5": 0, "i8": 6}}  # n skipped i2, i6, i7


def per_reader_table() -> pd.DataFrame:
    rows = [{"image": image, "reader": reader, "age": age, "flags": FLAGS.get((image, reader), ""), "comment": "",
             "source": "test"} for image, ages in READINGS.items() for reader, age in ages.items()]
    table = pd.DataFrame(rows, columns=READER_COLUMNS)
    table["age"] = pd.array(table["age"], dtype="Int64")
    return table


def model_table() -> pd.DataFrame:
    frame = pd.DataFrame({"image": list(READINGS)})
    for model, ages in MODELS.items():
        frame[model] = [ages.get(i) for i in frame["image"]]
    return frame.assign(path="x.png", true_age=0)


def plain_mode(ages):
    counts = Counter(ages).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None


def plain_ape(a, b):
    return 0.0 if a + b == 0 else 100 * abs(a - b) / (a + b)


def plain_symmetry(pairs):
    """(Bowker X2, df, Evans-Hoenig X2, df) of (row, column) age pairs, from the cell counts."""
    cells = Counter(pairs)
    bowker = [(cells[(i, j)], cells[(j, i)]) for i, j in {tuple(sorted(p)) for p in pairs if p[0] != p[1]}]
    by_distance = Counter(b - a for a, b in pairs if a != b)
    pooled = [(by_distance[k], by_distance[-k]) for k in {abs(d) for d in by_distance}]
    return (sum((u - v) ** 2 / (u + v) for u, v in bowker), len(bowker),
            sum((u - v) ** 2 / (u + v) for u, v in pooled), len(pooled))


def test_the_modal_age_is_none_when_the_most_frequent_ages_tie():
    assert modal_age([3, 4]) is None and modal_age([3, 4, 4, 3, 5]) is None and modal_age([]) is None
    assert modal_age([3, 3, 4]) == 3 and modal_age([5]) == 5 and modal_age(pd.array([2, None, 2], dtype="Int64")) == 2


def test_the_report_matches_a_plain_python_recount():
    report = exchange_report(per_reader_table(), model_table())
    humans = [F, "A", "B", "C"]
    aged = {i: {r: a for r, a in ages.items() if a is not None and "unusable" not in FLAGS.get((i, r), "")}
            for i, ages in READINGS.items()}
    exchange = [i for i, ages in aged.items() if len(ages) >= 2]
    mode = {i: plain_mode(list(aged[i].values())) for i in exchange}
    assert exchange == ["i1", "i2", "i3", "i4", "i5", "i6", "i8"] and [i for i in exchange if mode[i] is None] == [
        "i2", "i6"]
    readers = report.readers.set_index("reader")
    assert list(report.readers.columns) == REPORT_COLUMNS
    assert list(readers.index) == [ALL_READERS, *humans, *MODELS] and report.n_images == 7 and report.n_no_mode == 2
    assert readers.kind.tolist() == ["all"] + ["human"] * 4 + ["model"] * 2

    # all human readers: APE and CV of each image over its readers, averaged over every exchange image
    apes, cvs, same, deviations = [], [], [], []
    for i in exchange:
        ages = list(aged[i].values())
        mean = sum(ages) / len(ages)
        apes.append(0.0 if mean == 0 else 100 / len(ages) * sum(abs(x - mean) / mean for x in ages))
        cvs.append(0.0 if mean == 0 else 100 * statistics.stdev(ages) / mean)
        if mode[i] is not None:
            same += [x == mode[i] for x in ages]
            deviations += [x - mode[i] for x in ages]
    everyone = readers.loc[ALL_READERS]
    assert (everyone.n_images, everyone.n_no_mode) == (7, 2)
    assert everyone.ape_pct == pytest.approx(sum(apes) / len(apes))
    assert everyone.cv_pct == pytest.approx(sum(cvs) / len(cvs))
    assert everyone.agreement_with_mode_pct == pytest.approx(100 * sum(same) / len(same))
    assert everyone.bias_mean == pytest.approx(sum(deviations) / len(deviations))

    # each reader, human or model, against the humans' modal age; ties left out of these columns
    ages_of = {r: {i: aged[i][r] for i in exchange if r in aged[i]} for r in humans}
    ages_of.update({m: {i: a for i, a in ages.items() if i in exchange and a is not None}
                    for m, ages in MODELS.items()})
    for reader, ages in ages_of.items():
        row = readers.loc[reader]
        with_mode = [(x, mode[i]) for i, x in ages.items() if mode[i] is not None]
        assert row.n_images == len(ages) and row.n_no_mode == len(ages) - len(with_mode), reader
        assert row.agreement_with_mode_pct == pytest.approx(100 * sum(x == m for x, m in with_mode) / len(with_mode))
        ape = sum(plain_ape(x, m) for x, m in with_mode) / len(with_mode)
        assert row.ape_pct == pytest.approx(ape) and row.cv_pct == pytest.approx(math.sqrt(2) * ape), reader
        assert row.bias_mean == pytest.approx(sum(x - m for x, m in with_mode) / len(with_mode)), reader
        bowker, bowker_df, evans, evans_df = plain_symmetry([(m, x) for x, m in with_mode])
        assert (row.bowker_statistic, row.bowker_df) == (pytest.approx(bowker), bowker_df), reader
        assert (row.evans_hoenig_statistic, row.evans_hoenig_df) == (pytest.approx(evans), evans_df), reader
        if evans_df:
            assert row.evans_hoenig_p == pytest.approx(chi2.sf(evans, evans_df))
    assert readers.loc["A", "bias_mean"] == pytest.approx((0 + 0 + 2 + 0 + 0) / 5)  # i1 i3 i4 i5 i8, by hand

    # every pair with a human in it, on the images both read; modes play no part
    assert list(report.pairs.columns) == PAIR_COLUMNS
    expected_pairs = [(a, b) for a, b in combinations([*humans, *MODELS], 2) if a in humans or b in humans]
    assert list(zip(report.pairs.reader_a, report.pairs.reader_b)) == expected_pairs
    for row in report.pairs.itertuples():
        both = [(ages_of[row.reader_a][i], ages_of[row.reader_b][i]) for i in exchange
                if i in ages_of[row.reader_a] and i in ages_of[row.reader_b]]
        assert row.n_images == len(both)
        assert row.agreement_pct == pytest.approx(100 * sum(a == b for a, b in both) / len(both))
        assert row.bias_mean == pytest.approx(sum(b - a for a, b in both) / len(both))
        assert row.ape_pct == pytest.approx(sum(plain_ape(a, b) for a, b in both) / len(both))
        bowker, bowker_df, evans, evans_df = plain_symmetry(both)
        assert (row.bowker_statistic, row.bowker_df) == (pytest.approx(bowker), bowker_df)
        assert (row.evans_hoenig_statistic, row.evans_hoenig_df) == (pytest.approx(evans), evans_df)
        if bowker_df:
            assert row.bowker_p == pytest.approx(chi2.sf(bowker, bowker_df))
    for test in ("bowker", "evans_hoenig"):  # Holm over the pairs, step by step
        p_values = report.pairs[f"{test}_p"].tolist()
        tested = sorted((p, k) for k, p in enumerate(p_values) if not math.isnan(p))
        expected, running = [math.nan] * len(p_values), 0.0
        for rank, (p, k) in enumerate(tested):
            running = max(running, min(1.0, (len(tested) - rank) * p))
            expected[k] = running
        assert report.pairs[f"{test}_p_holm"].tolist() == pytest.approx(expected, nan_ok=True)

    # per modal age over the human readings (ICES's CV by modal age)
    assert list(report.by_age.columns) == BY_AGE_COLUMNS
    modes = sorted({m for m in mode.values() if m is not None})
    assert report.by_age["modal_age"].tolist() == modes
    for row in report.by_age.itertuples():
        images = [i for i in exchange if mode[i] == row.modal_age]
        readings = [x for i in images for x in aged[i].values()]
        assert row.n_images == len(images)
        assert row.agreement_pct == pytest.approx(100 * readings.count(row.modal_age) / len(readings))
        assert row.ape_pct == pytest.approx(sum(apes[exchange.index(i)] for i in images) / len(images))
        assert row.cv_pct == pytest.approx(sum(cvs[exchange.index(i)] for i in images) / len(images))

    # per reader and modal age, for the age-bias plot
    assert list(report.bias.columns) == BIAS_COLUMNS
    for row in report.bias.itertuples():
        values = [x for i, x in ages_of[row.reader].items() if mode[i] == row.modal_age]
        assert row.n == len(values) and row.mean_age == pytest.approx(sum(values) / len(values))
        assert row.bias == pytest.approx(row.mean_age - row.modal_age)
        assert row.agreement_pct == pytest.approx(100 * values.count(row.modal_age) / len(values))
    counted = {(r, m) for r, ages in ages_of.items() for i, m in mode.items() if m is not None and i in ages}
    assert set(zip(report.bias.reader, report.bias.modal_age)) == counted


def test_models_never_count_toward_the_mode():
    """i2 ties (5 against 6); a model agreeing with either side breaks no tie and makes no image of its own."""
    report = exchange_report(per_reader_table(), model_table())
    images = report.images.set_index("image")
    assert pd.isna(images.loc["i2", "modal_age"]) and images.loc["i2", "m / ridge"] == 5
    assert "i7" not in images.index  # read by one human only, however many models
    alone = exchange_report(per_reader_table())
    pd.testing.assert_series_equal(alone.images["modal_age"], report.images["modal_age"])
    pd.testing.assert_frame_equal(alone.readers, report.readers.iloc[:5])


def test_the_per_image_table_has_each_readers_age_the_mode_and_the_flags():
    table = readers_by_image(per_reader_table()).set_index("image")
    assert list(table.columns[:4]) == [F, "A", "B", "C"]
    assert table.loc["i4", [F, "A", "B", "C"]].tolist() == [4, 6, 4, 4] and table.loc["i4", "modal_age"] == 4
    assert pd.isna(table.loc["i6", "C"]) and table.loc["i6", "n_readers"] == 2 and pd.isna(table.loc["i6", "modal_age"])
    assert (table.loc["i7", "n_readers"], table.loc["i7", "modal_age"]) == (1, 1)  # read once: its one age
    assert pd.isna(table.loc["i7", "cv_pct"])
    assert table.unusable.tolist() == [False] * 5 + [True, False, False]
    assert (table.loc["i6", "unusable_by"], table.loc["i1", "uncertain_by"]) == ("C", "B")
    assert table.loc["i5", "ape_pct"] == pytest.approx(100 / 3 * (2 * (1 / 3) / (1 / 3) + (2 / 3) / (1 / 3)))
    assert unusable_images(per_reader_table()) == ["i6"] and has_exchange(per_reader_table())
    assert not has_exchange(per_reader_table().query("reader == @F"))


def test_a_reader_sees_other_readers_ages_only_of_images_they_have_read():
    table = per_reader_table()
    seen = visible_readings(table, "C")
    assert set(seen.image) == {"i3", "i4", "i5", "i6", "i8"}  # i6: C flagged it unusable, which is a reading too
    assert set(seen[seen.image == "i4"].reader) == {F, "A", "B", "C"}
    assert may_see(table, "C", "i6") and not may_see(table, "C", "i1") and not may_see(table, "nobody", "i1")
    assert visible_readings(table, "nobody").empty
    assert set(visible_readings(table, F).image) == set(READINGS)  # the first reader has read every image


def test_a_reader_without_an_age_of_any_exchange_image_has_no_row():
    """D only flagged i7 unusable: i7 is in no exchange (one age), and D has no row and no pair."""
    flag = pd.DataFrame([{"image": "i7", "reader": "D", "age": None, "flags": "unusable", "comment": "",
                          "source": "t"}])
    table = pd.concat([per_reader_table(), flag.astype({"age": "Int64"})], ignore_index=True)
    report = exchange_report(table, model_table())
    assert "D" not in set(report.readers.reader) | set(report.pairs.reader_a) | set(report.pairs.reader_b)
    assert unusable_images(table) == ["i6", "i7"] and report.n_images == 7


def test_an_exchange_with_no_image_read_twice_is_empty():
    report = exchange_report(per_reader_table().query("reader == @F"), model_table())
    assert report.n_images == 0 and report.readers.empty and report.pairs.empty and report.bias.empty
    assert list(report.readers.columns) == REPORT_COLUMNS


@pytest.fixture
def four(tmp_path):
    """Four tiny photos; the manifest has a second_age for o2 and o3; ages 4, 6, 2, 5."""
    from conftest import write_tiny_photos_manifest

    manifest = write_tiny_photos_manifest(
        tmp_path, "path,age,second_age\no0.png,4,\no1.png,6,\no2.png,2,3\no3.png,5,5\n", seed=7)
    return load_dataset(manifest), tmp_path / "cache"


def test_collect_readings_gathers_the_manifest_its_second_age_and_each_readers_latest(four):
    data, cache = four
    o0, o1, o2, o3 = data.records
    add_reading(cache, o0, 5, reader="A", flags=["uncertain"])
    add_reading(cache, o0, 4, reader="A")  # A's latest of o0 wins
    add_reading(cache, o0, 3, reader="B")
    add_reading(cache, o1, None, reader="B", flags=["unusable"], comment="cracked")
    add_reading(cache, o3, 6, reader="A")  # a typed reading of o3: the manifest's second_age of o3 does not count
    per_reader = collect_readings(data, second_readings(data, load_readings(cache)))
    assert list(per_reader.columns) == READER_COLUMNS
    got = [(r.image, r.reader, None if pd.isna(r.age) else r.age, r.flags, r.comment, r.source)
           for r in per_reader.itertuples()]
    assert got == [("o0.png", F, 4, "", "", "manifest"), ("o0.png", "A", 4, "", "", "dashboard"),
                   ("o0.png", "B", 3, "", "", "dashboard"), ("o1.png", F, 6, "", "", "manifest"),
                   ("o1.png", "B", None, "unusable", "cracked", "dashboard"), ("o2.png", F, 2, "", "", "manifest"),
                   ("o2.png", MANIFEST_READER, 3, "", "", "manifest second_age"),
                   ("o3.png", F, 5, "", "", "manifest"), ("o3.png", "A", 6, "", "", "dashboard")]
    assert unusable_images(per_reader) == ["o1.png"]
    kept, excluded = exclude_unusable(data, per_reader)
    assert kept.ids == ["o0.png", "o2.png", "o3.png"] and [s.image for s in excluded] == ["o1.png"]
    assert excluded[0].reason == "flagged unusable by B (cracked)" and kept.skipped[-1] == excluded[0]
    report = exchange_report(per_reader)
    assert report.readers.reader.tolist() == [ALL_READERS, F, MANIFEST_READER, "A", "B"]
    assert report.n_images == 3 and report.n_no_mode == 2  # o0: 4, 4, 3 -> 4; o2 and o3: two readers who differ
