from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.svm import SVC

from otolith_core.data import Dataset, ImageRecord
from otolith_core.embeddings import EmbeddingSet
from otolith_core.comparison import compare
from otolith_core.folds import make_folds
from otolith_core.heads import HeadSpec


def _dataset(n=150, seed=0):
    rng = np.random.default_rng(seed)
    ages = np.repeat(np.arange(1, 6), n // 5)
    records = tuple(ImageRecord(path=Path(f"/x/{i}.png"), name=f"{i}.png", age=int(a))
                    for i, a in enumerate(ages))
    data = Dataset(Path("/x"), "folder", records)
    a = rng.normal(size=(n, 20)) + ages[:, None] * 0.4
    b = rng.normal(size=(n, 8)) + ages[:, None] * 0.1
    return data, {"enc-a": EmbeddingSet("enc-a", a.astype(np.float32), np.arange(n)),
                  "enc-b": EmbeddingSet("enc-b", b.astype(np.float32), np.arange(n))}


@pytest.mark.slow
def test_cv_numbers_equal_a_direct_scikit_learn_loop():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=10, seed=0)
    X = sets["enc-a"].features.astype(np.float64)
    y = data.ages
    ridge_pred, svc_pred = np.empty_like(y), np.empty_like(y)
    for train, test in StratifiedKFold(10, shuffle=True, random_state=0).split(X, y):
        ridge = Ridge(alpha=6.0).fit(normalize(X[train]), y[train])
        ridge_pred[test] = np.clip(np.rint(ridge.predict(normalize(X[test]))), y[train].min(), y[train].max())
        svc_pred[test] = SVC(kernel="linear", C=0.1).fit(normalize(X[train]), y[train]).predict(normalize(X[test]))
    by_key = {(r.encoder, r.head.label): r for r in result.results}
    np.testing.assert_array_equal(by_key["enc-a", "ridge"].pred_age, ridge_pred)
    np.testing.assert_array_equal(by_key["enc-a", "svc"].pred_age, svc_pred)
    folds = result.folds_frame()
    ridge_folds = folds[(folds.encoder == "enc-a") & (folds["head"] == "ridge")]
    expected = [np.mean(ridge_pred[t] == y[t]) for _, t in StratifiedKFold(10, shuffle=True, random_state=0).split(X, y)]
    np.testing.assert_allclose(ridge_folds.accuracy.to_numpy(), expected)


@pytest.mark.slow
@pytest.mark.parametrize("head", [HeadSpec("svc"), HeadSpec("ridge-cv", scaling="standardize")], ids=lambda h: h.label)
def test_folds_in_worker_processes_give_the_same_predictions(head):
    from otolith_core.cross_validation import cross_validate_head

    data, sets = _dataset(n=300)
    folds, _ = make_folds(data.ages, n_folds=5, seed=1)
    serial = cross_validate_head(sets["enc-a"].features, data.ages, folds, head, n_jobs=1)
    parallel = cross_validate_head(sets["enc-a"].features, data.ages, folds, head, n_jobs=2)
    np.testing.assert_array_equal(serial.pred, parallel.pred)
    np.testing.assert_array_equal(serial.raw, parallel.raw)
    np.testing.assert_equal(serial.params, parallel.params)  # ridge alpha per fold (NaN for the SVC)


def test_only_large_svc_runs_fold_in_processes_as_cores_and_memory_allow(monkeypatch):
    from otolith_core import cross_validation
    from otolith_core.cross_validation import PARALLEL_MIN_IMAGES, fold_workers

    monkeypatch.setattr("joblib.cpu_count", lambda: 8)
    monkeypatch.setattr(cross_validation, "available_memory", lambda: 64e9)
    assert fold_workers(HeadSpec("svc"), PARALLEL_MIN_IMAGES, 10) == 8
    assert fold_workers(HeadSpec("svc"), PARALLEL_MIN_IMAGES, 5) == 5
    assert fold_workers(HeadSpec("svc"), PARALLEL_MIN_IMAGES - 1, 10) == 1  # the dashboard's small runs stay instant
    assert fold_workers(HeadSpec("ridge"), 10 * PARALLEL_MIN_IMAGES, 10) == 1  # BLAS already uses every core
    # the cod study's size: each worker's Gram matrix is ~0.5 GB, so an 8 GB laptop with 3 GB free gets 2
    monkeypatch.setattr(cross_validation, "available_memory", lambda: 3e9)
    assert fold_workers(HeadSpec("svc"), 8637, 10) == 2
    monkeypatch.setattr(cross_validation, "available_memory", lambda: 0.5e9)
    assert fold_workers(HeadSpec("svc"), 8637, 10) == 1


def test_memory_counts_reclaimable_page_cache_as_available(monkeypatch):
    import os
    from types import SimpleNamespace

    import psutil

    from otolith_core.cross_validation import available_memory, fold_workers

    # after reading many images: 4 MB of pages free, 64 GB available once the page cache is reclaimed
    sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1024 if name == "SC_AVPHYS_PAGES" else sysconf(name))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=64e9))
    monkeypatch.setattr("joblib.cpu_count", lambda: 8)
    assert available_memory() == 64e9
    assert fold_workers(HeadSpec("svc"), 8637, 10) == 8

    def unknown():
        raise NotImplementedError("no memory figures on this platform")

    monkeypatch.setattr(psutil, "virtual_memory", unknown)
    assert available_memory() == float("inf")


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="Linux only")
def test_available_memory_is_the_kernels_memavailable():
    from otolith_core.cross_validation import available_memory

    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    expected = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert available_memory() == pytest.approx(expected, rel=0.05)  # other processes move it a little


def test_every_encoder_and_head_sees_the_same_folds():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=5, seed=3)
    folds = [r.fold for r in result.results]
    assert all(np.array_equal(folds[0], f) for f in folds)
    np.testing.assert_array_equal(folds[0], make_folds(data.ages, n_folds=5, seed=3)[0])
    # 4 models -> 6 pairs; per pair 3 metrics x (naive t, corrected t, Wilcoxon) + McNemar on accuracy and ±1
    assert len(result.tests) == 6 * (3 * 3 + 2)


def test_images_missing_from_one_encoder_are_left_out_for_all():
    data, sets = _dataset()
    b = sets["enc-b"]
    sets["enc-b"] = EmbeddingSet("enc-b", b.features[1:], b.rows[1:])
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5)
    assert all("0.png" not in r.images for r in result.results)
    assert [s.path for s in result.skipped] == ["0.png"]


def test_sparse_ages_are_named_with_remedies():
    ages = np.array([1] * 3 + [2] * 20 + [3] * 20)
    folds, notes = make_folds(ages, n_folds=10)
    assert notes[0].severity == "warning"
    assert "age 1: 3" in notes[0].message and "--age-range" in notes[0].message and "--folds" in notes[0].message
    with pytest.raises(ValueError, match="every age has fewer images"):
        make_folds(np.array([1, 1, 2, 2]), n_folds=3)


def _with_fish(data, photos_per_fish=2):
    records = tuple(ImageRecord(r.path, r.name, r.age, fish_id=f"F{i // photos_per_fish}-{r.age}")
                    for i, r in enumerate(data.records))
    return Dataset(data.source, data.kind, records)


def test_grouped_folds_never_split_a_fish_and_are_on_by_default():
    data, sets = _dataset()
    fishy = _with_fish(data)
    result = compare(fishy, sets, [HeadSpec("ridge")], n_folds=5)
    assert result.grouped_by_fish
    fold_of = {}
    for record, fold in zip(fishy.records, result.results[0].fold):
        assert fold_of.setdefault(record.fish_id, fold) == fold
    assert not compare(fishy, sets, [HeadSpec("ridge")], n_folds=5, group_by_fish=False).grouped_by_fish


def test_repeats_use_consecutive_seeds_and_every_repeat_predicts_every_image():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, seed=7, repeats=3)
    r = result.results[0]
    assert len(r.images) == 3 * len(data) and sorted(set(r.repeat.tolist())) == [0, 1, 2]
    for repeat in range(3):
        np.testing.assert_array_equal(r.fold[r.repeat == repeat], make_folds(data.ages, n_folds=5, seed=7 + repeat)[0])
    assert len(r.fold_scores()) == 15 and r.summary()["n_folds_total"] == 15


def test_ridge_cv_chooses_alpha_on_the_training_fold_only():
    from sklearn.linear_model import RidgeCV

    from otolith_core.heads import RIDGE_CV_ALPHAS

    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge-cv")], n_folds=5)
    r = result.results[0]
    X, y = normalize(sets["enc-a"].features.astype(np.float64)), data.ages
    for k in range(5):
        train = r.fold != k
        assert r.alpha[(0, k)] == RidgeCV(alphas=RIDGE_CV_ALPHAS).fit(X[train], y[train]).alpha_
    assert r.fold_scores()["alpha"].notna().all()


def test_learning_curve_subsets_are_nested_and_stratified():
    from otolith_core.cross_validation import LEARNING_FRACTIONS
    from otolith_core.folds import nested_subsets

    ages = np.repeat([1, 2, 3, 4], [10, 20, 30, 40])
    subsets = nested_subsets(ages, LEARNING_FRACTIONS, seed=0)
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    for fraction, subset in zip(LEARNING_FRACTIONS, subsets):
        counts = np.bincount(ages[subset], minlength=5)[1:]
        np.testing.assert_array_equal(counts, np.maximum(1, np.round(fraction * np.array([10, 20, 30, 40]))))
    assert len(subsets[-1]) == ages.size


def test_learning_curve_rows_use_the_same_test_folds():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, with_learning_curve=True)
    curve = result.learning_curve_frame()
    full = curve[curve.train_fraction == 1.0].sort_values(["encoder", "fold"])
    folds = result.folds_frame()
    folds = folds[folds.encoder != "no-skill"].sort_values(["encoder", "fold"])  # the baseline has no curve
    np.testing.assert_allclose(full.accuracy.to_numpy(), folds.accuracy.to_numpy())
    assert curve.groupby(["encoder", "fold"]).n_train.apply(lambda n: n.is_monotonic_increasing).all()


def test_duplicate_images_are_reported_and_errors_named():
    data, sets = _dataset(n=100)
    keys = [f"k{i}" for i in range(100)]
    keys[1] = keys[0]  # same content, same age (both age 1)
    keys[99] = keys[2]  # same content, ages 1 and 5
    sets = {n: EmbeddingSet(n, e.features, e.rows, keys=tuple(keys)) for n, e in sets.items()}
    notes = compare(data, sets, [HeadSpec("ridge")], n_folds=5).warnings
    assert any("0.png, 1.png are the same image" in n.message for n in notes)
    assert any(n.severity == "error" and n.message.startswith("2.png, 99.png are the same image but carry different ages")
               for n in notes)


def test_per_image_table_holds_one_repeats_own_predictions():
    data, sets = _dataset()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=5, repeats=2)
    predictions = result.predictions_frame()
    for repeat in (0, 1):
        wide = result.per_image(repeat).set_index("image")
        assert len(wide) == len(data) and wide.index.is_unique
        for r in result.results:
            own = predictions[(predictions.encoder == r.encoder) & (predictions["head"] == r.head.label)
                              & (predictions.repeat == repeat)].set_index("image").pred_age
            column = wide[f"{r.encoder} / {r.head.label}"]
            assert column.dtype.kind == "i"
            pd.testing.assert_series_equal(column.sort_index(), own.sort_index(), check_names=False)
    with pytest.raises(ValueError, match="repeat 2 does not exist"):
        result.per_image(2)


def test_no_skill_baseline_equals_dummy_classifier_fold_by_fold_and_is_in_no_test():
    from sklearn.dummy import DummyClassifier

    from otolith_core.folds import make_folds

    data, sets = _dataset(n=150)
    ages = data.ages.copy()
    ages[:40] = 2  # an uneven age distribution, so the most common age differs between training folds
    data = Dataset(data.source, data.kind, tuple(ImageRecord(r.path, r.name, int(a)) for r, a in zip(data.records, ages)))
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, seed=3, repeats=2)
    base = result.baseline
    assert (base.encoder, base.head.label) == ("no-skill", "most-frequent")
    for r in range(2):
        folds, _ = make_folds(ages, n_folds=5, seed=3 + r)
        for k in range(5):
            test = folds == k
            dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((int((~test).sum()), 1)), ages[~test])
            rows = (base.repeat == r) & (base.fold == k)
            np.testing.assert_array_equal(base.pred_age[rows], dummy.predict(np.zeros((int(test.sum()), 1))))
            np.testing.assert_array_equal(base.true_age[rows], ages[test])
    summary = result.summary_frame()
    assert summary.iloc[-1]["encoder"] == "no-skill" and len(summary) == 3  # two encoders x ridge, then no-skill
    assert "no-skill" in set(result.folds_frame().encoder) and "no-skill" in set(result.predictions_frame().encoder)
    tests = result.tests_frame()
    assert "no-skill" not in set(tests.encoder_a) | set(tests.encoder_b)
    assert all(r.encoder != "no-skill" for r in result.results)  # the Errors page and tests see models only


@pytest.mark.slow
@pytest.mark.parametrize("name,grouped", [("logistic", False), ("knn", False), ("knn", True)],
                         ids=["logistic", "knn", "knn-fish"])
def test_logistic_and_knn_equal_a_direct_scikit_learn_loop_with_the_same_inner_cv(name, grouped):
    """Each outer training fold chooses C (logistic) or k (knn) by its own stratified 5-fold inner CV (grouped by
    fish when the outer folds are); the predictions and the chosen values equal a plain scikit-learn loop doing
    the same, and folds.csv reports them. (Both heads search through the same class, so grouping is checked on
    the fast one: logistic grouped would add ~40 s.)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    from otolith_core.heads import KNN_KS, LOGISTIC_CS

    data, sets = _dataset(n=100)
    fish = np.arange(100) // 2 if grouped else None  # photos 2i and 2i+1 (same age) of one fish
    if grouped:
        data = Dataset(data.source, "manifest", tuple(ImageRecord(r.path, r.name, r.age, fish_id=f"F{f}")
                                                      for r, f in zip(data.records, fish)))
    result = compare(data, {"enc-a": sets["enc-a"]}, [HeadSpec(name)], n_folds=4, seed=2)
    assert result.grouped_by_fish == grouped
    r = result.results[0]
    X, y = normalize(sets["enc-a"].features.astype(np.float64)), data.ages
    groups = np.asarray(result.groups)  # the fish ids as the folds saw them
    folds = result.folds_frame()
    folds = folds[folds.encoder == "enc-a"].set_index("fold")
    for k in range(4):
        train, test = r.fold != k, r.fold == k
        if name == "logistic":
            # fitted to full precision: scikit-learn's default tolerance leaves a borderline image's age to chance
            # (tests/test_heads.py's _exhaustive_logistic: why newton-cg)
            estimator, grid, column, key = (LogisticRegression(solver="newton-cg", max_iter=100_000, tol=1e-10),
                                            {"C": list(LOGISTIC_CS)}, "C", "C")
        else:
            estimator, grid, column, key = (KNeighborsClassifier(metric="cosine", algorithm="brute"),
                                            {"n_neighbors": list(KNN_KS)}, "k", "n_neighbors")
        if grouped:
            search = GridSearchCV(estimator, grid, cv=StratifiedGroupKFold(5, shuffle=True, random_state=0),
                                  scoring="accuracy").fit(X[train], y[train], groups=groups[train])
        else:
            search = GridSearchCV(estimator, grid, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                  scoring="accuracy").fit(X[train], y[train])
        np.testing.assert_array_equal(r.pred_age[test], search.predict(X[test]))
        assert folds.loc[k, column] == search.best_params_[key]
        assert np.isnan(folds.loc[k, "alpha"]) and np.isnan(folds.loc[k, "k" if name == "logistic" else "C"])


def test_with_fish_kept_together_the_inner_search_is_grouped_and_folds_csv_shows_its_choice():
    """The issue's case: 120 fish x 3 photos, no age signal. An inner CV that splits fish picks k = 1 in every
    fold (a photo's neighbour is its own fish); grouped like the outer folds, it does not, and ridge-cv's alpha
    is chosen on the same grouped splits instead of leave-one-photo-out."""
    rng = np.random.default_rng(0)
    fish = np.repeat(np.arange(120), 3)
    ages = rng.integers(1, 5, 120)[fish]
    features = rng.normal(size=(120, 16))[fish] + 0.05 * rng.normal(size=(360, 16))
    records = tuple(ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", int(a), fish_id=f"F{f}")
                    for i, (a, f) in enumerate(zip(ages, fish)))
    data = Dataset(Path("/x"), "manifest", records)
    sets = {"enc": EmbeddingSet("enc", features.astype(np.float32), np.arange(360))}
    heads = [HeadSpec("knn"), HeadSpec("ridge-cv")]
    folds_csv = compare(data, sets, heads, n_folds=5, bootstrap_draws=0).folds_frame()
    knn, ridge = (folds_csv[folds_csv["head"] == h] for h in ("knn", "ridge-cv"))
    assert (knn.k > 1).all()
    # the same outer folds with the inner CV splitting fish: the leaked choices
    from otolith_core.cross_validation import cross_validate_head
    from otolith_core.folds import fish_groups

    folds, _ = make_folds(ages, n_folds=5, seed=0, groups=fish_groups(data, np.arange(360)))
    leaked = {h.name: cross_validate_head(features, ages, folds, h.for_encoder("l2")).params for h in heads}
    assert [p["k"] for p in leaked["knn"].values()] == [1.0] * 5
    assert (ridge.alpha.to_numpy() > [p["alpha"] for p in leaked["ridge-cv"].values()]).all()


# ---- groups and transfer: --group-column, --holdout-column ------------------------------------------------------

def _survey(n_fish=60, photos=2, stations=12, cruises=4, seed=0, *, fish_across_stations=()):
    """A manifest-like study: fish photographed ``photos`` times, each fish caught at one station of one cruise
    (station s belongs to cruise s % cruises). ``fish_across_stations``: fish whose second photo carries the next
    station (a data-entry slip or a fish measured twice)."""
    rng = np.random.default_rng(seed)
    records, features = [], []
    fish_age = rng.integers(1, 6, n_fish)
    for f in range(n_fish):
        station = f % stations
        for p in range(photos):
            s = (station + 1) % stations if (p == 1 and f in fish_across_stations) else station
            i = len(records)
            records.append(ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", int(fish_age[f]), fish_id=f"F{f:03d}",
                                       metadata={"station_id": f"ST{s:02d}", "cruise_id": f"C{station % cruises}",
                                                 "length": str(20 + i)}))
            features.append(rng.normal(size=6) + fish_age[f] * 0.5)
    data = Dataset(Path("/x/survey.csv"), "manifest", tuple(records))
    x = np.array(features, dtype=np.float32)
    return data, {"enc": EmbeddingSet("enc", x, np.arange(len(records)))}


def test_a_group_column_keeps_each_value_in_one_fold_and_groups_the_bootstrap_and_inner_cv(monkeypatch):
    from otolith_core import comparison

    data, sets = _survey()
    seen = []
    real = comparison.cross_validate_head
    monkeypatch.setattr(comparison, "cross_validate_head",
                        lambda *a, **k: seen.append(k.get("groups")) or real(*a, **k))
    result = compare(data, sets, [HeadSpec("ridge-cv")], n_folds=4, group_column="station_id")
    stations = np.array([r.metadata["station_id"] for r in data.records])
    fold = result.results[0].fold
    for s in np.unique(stations):
        assert np.unique(fold[stations == s]).size == 1, s
    assert result.grouped_by_fish and result.group_column == "station_id"
    np.testing.assert_array_equal(result.groups, stations)  # the bootstrap's units
    np.testing.assert_array_equal(seen[0], stations)  # the heads' inner CV: the same groups
    assert list(result.fish) == [r.fish_id for r in data.records]
    # the same folds as StratifiedGroupKFold on the stations directly
    from sklearn.model_selection import StratifiedGroupKFold
    expected = np.empty(len(data), dtype=int)
    for k, (_, test) in enumerate(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(
            np.zeros(len(data)), data.ages, stations)):
        expected[test] = k
    np.testing.assert_array_equal(fold, expected)
    assert "folds keep each station_id together" in result.folds_text


def test_grouping_by_a_coarser_column_never_splits_a_fish():
    data, sets = _survey(fish_across_stations=(3,))  # F003's photos say ST03 and ST04
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=4, group_column="station_id", bootstrap_draws=0)
    stations = np.array([r.metadata["station_id"] for r in data.records])
    fold = result.results[0].fold
    assert np.unique(fold[np.isin(stations, ["ST03", "ST04"])]).size == 1  # the two stations merged into one group
    assert len(set(result.groups)) == 11
    assert any("F003" in n.message and "ST03" in n.message and "ST04" in n.message for n in result.warnings)


def test_blank_group_values_are_groups_of_their_own_and_said():
    data, sets = _survey()
    records = tuple(ImageRecord(r.path, r.name, r.age, fish_id=None,
                                metadata={**r.metadata, "station_id": "" if i < 4 else r.metadata["station_id"]})
                    for i, r in enumerate(data.records))
    data = Dataset(data.source, data.kind, records)
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=4, group_column="station_id", bootstrap_draws=0)
    assert len(set(result.groups[:4])) == 4 and not set(result.groups[:4]) & set(result.groups[4:])
    assert any("4 images have a blank station_id" in n.message for n in result.warnings)


def test_group_column_errors_name_the_column_and_what_to_do():
    data, sets = _survey()
    with pytest.raises(ValueError, match=r"'station' is not a column .*station_id.*cruise_id"):
        compare(data, sets, [HeadSpec("ridge")], n_folds=4, group_column="station")
    with pytest.raises(ValueError, match="group_by_fish=False"):
        compare(data, sets, [HeadSpec("ridge")], n_folds=4, group_column="station_id", group_by_fish=False)
    with pytest.raises(ValueError, match="age column"):
        compare(data, sets, [HeadSpec("ridge")], n_folds=4, group_column="age")
    with pytest.raises(ValueError, match="4 cruise_id values cannot fill 5 folds"):
        compare(data, sets, [HeadSpec("ridge")], n_folds=5, group_column="cruise_id")
    folder, folder_sets = _dataset()
    with pytest.raises(ValueError, match="CSV manifest"):
        compare(folder, folder_sets, [HeadSpec("ridge")], n_folds=4, group_column="station_id")


def test_a_holdout_column_is_leave_one_group_out_with_per_value_scores():
    from sklearn.model_selection import LeaveOneGroupOut

    from otolith_core.metrics import score

    data, sets = _survey()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=10, holdout_column="cruise_id",
                     bootstrap_draws=0)
    cruises = np.array([r.metadata["cruise_id"] for r in data.records])
    r = result.results[0]
    splits = list(LeaveOneGroupOut().split(np.zeros(len(data)), data.ages, cruises))
    assert result.n_folds == len(splits) == 4 and result.held_out == ("C0", "C1", "C2", "C3")
    for k, (_, test) in enumerate(splits):
        np.testing.assert_array_equal(np.flatnonzero(r.fold == k), test)
    folds = result.folds_frame()
    assert list(folds.columns[:6]) == ["encoder", "head", "scaling", "repeat", "fold", "held_out"]
    ridge = folds[folds["head"] == "ridge"]
    assert ridge.held_out.tolist() == ["C0", "C1", "C2", "C3"]
    per = result.per_holdout_frame()
    mine = per[(per.encoder == "enc") & (per["head"] == "ridge")]
    for value in ("C0", "C1", "C2", "C3"):  # recomputed by a plain loop over the values
        test = cruises == value
        row = mine[mine.held_out == value].iloc[0]
        assert row.scope == "held-out value" and row.n_test == test.sum()
        for metric, expected in score(data.ages[test], r.pred_age[test]).items():
            assert row[metric] == pytest.approx(expected), (value, metric)
    pooled = mine[mine.scope == "pooled"].iloc[0]
    assert pooled.n_test == len(data) and pooled.accuracy == pytest.approx(np.mean(r.pred_age == data.ages))
    assert "leave-one-cruise_id-out: 4 folds, one per value" in result.folds_text
    # the paired tests run over these folds: naive t on the per-cruise accuracies
    from otolith_core.stats import paired_t_test
    svc = folds[folds["head"] == "svc"]
    naive = next(t for t in result.tests if t.test == "paired_t" and t.metric == "accuracy")
    assert naive.mean_diff == pytest.approx(paired_t_test(ridge.accuracy.to_numpy(), svc.accuracy.to_numpy())[0])


def test_holdout_keeps_fish_and_groups_inside_one_value_or_says_which():
    data, sets = _survey(fish_across_stations=(3,))  # F003 at ST03 (cruise C3) and ST04 (C0)
    result = compare(data, sets, [HeadSpec("ridge")], holdout_column="cruise_id", bootstrap_draws=0)
    assert result.grouped_by_fish  # by fish: F003 (both photos in cruise C3) nests in the cruises
    with pytest.raises(ValueError, match=r"station_id ST03\+ST04 .*cruise_id C0, C3"):
        compare(data, sets, [HeadSpec("ridge")], group_column="station_id", holdout_column="cruise_id")
    split = list(data.records)
    split[7] = ImageRecord(split[7].path, split[7].name, split[7].age, fish_id=split[6].fish_id,
                           metadata={**split[7].metadata, "cruise_id": "C9"})
    with pytest.raises(ValueError, match=r"fish F003 .*cruise_id C3, C9"):
        compare(Dataset(data.source, data.kind, tuple(split)), sets, [HeadSpec("ridge")], holdout_column="cruise_id")
    with pytest.raises(ValueError, match="repeats"):
        compare(data, sets, [HeadSpec("ridge")], holdout_column="cruise_id", repeats=2)
    with pytest.raises(ValueError, match="'cruise' is not a column"):
        compare(data, sets, [HeadSpec("ridge")], holdout_column="cruise")


def test_blank_holdout_values_are_skipped_and_named():
    data, sets = _survey()
    records = list(data.records)
    records[0] = ImageRecord(records[0].path, records[0].name, records[0].age, fish_id="lonely",
                             metadata={**records[0].metadata, "cruise_id": " "})
    result = compare(Dataset(data.source, data.kind, tuple(records)), sets, [HeadSpec("ridge")],
                     holdout_column="cruise_id", bootstrap_draws=0)
    assert [(s.path, s.reason) for s in result.skipped] == [("0.png", "blank cruise_id (the hold-out column)")]
    assert result.results[0].n_images == len(records) - 1


# ---- ties with the best: corrected t against the best, Holm over those comparisons -----------------------------

def _tests_against(rows):
    """A ttests.csv-like frame of corrected_t rows: (metric, model a, model b, mean_diff, p_value)."""
    from otolith_core.comparison import TEST_COLUMNS

    return pd.DataFrame([{"metric": m, "encoder_a": a, "head_a": "ridge", "encoder_b": b, "head_b": "ridge",
                          "mean_diff": d, "t": 1.0, "p_value": p, "test": "corrected_t", "p_holm": np.nan}
                         for m, a, b, d, p in rows], columns=TEST_COLUMNS)


def test_ties_holm_adjust_the_best_models_comparisons_only_as_statsmodels_does():
    from statsmodels.stats.multitest import multipletests

    from otolith_core.ties import tied_with_best

    means = {("a", "ridge"): 0.50, ("b", "ridge"): 0.48, ("c", "ridge"): 0.40, ("d", "ridge"): 0.30}
    p_best = {"b": 0.30, "c": 0.02, "d": 0.001}  # corrected t of the best (a) against each
    tests = _tests_against([("accuracy", "a", "b", 0.02, p_best["b"]), ("accuracy", "c", "a", -0.1, p_best["c"]),
                            ("accuracy", "a", "d", 0.2, p_best["d"]),
                            ("accuracy", "b", "c", 0.08, 1e-9),  # not against the best: in no family here
                            ("rmse", "a", "b", 0.0, 1e-9), ("accuracy", "c", "d", 0.1, 0.5)])
    reject, _, _, _ = multipletests([p_best[m] for m in "bcd"], alpha=0.05, method="holm")
    tied = tied_with_best(means, tests, "accuracy")
    assert tied == {("a", "ridge"): True, **{(m, "ridge"): not r for m, r in zip("bcd", reject)}}
    assert list(tied.values()) == [True, True, False, False]  # 0.02 x 2 = 0.04 < 0.05 after Holm
    assert tied_with_best(means, tests, "accuracy", level=0.01)[("c", "ridge")]  # 0.04 > 0.01: tied then
    with pytest.raises(ValueError, match="between 0 and 1"):
        tied_with_best(means, tests, "accuracy", level=5)


def test_rmse_best_is_the_lowest_and_equal_folds_are_tied_constant_differences_not():
    from otolith_core.ties import best_model, tied_with_best

    means = {("a", "ridge"): 0.9, ("b", "ridge"): 0.7, ("c", "ridge"): 0.7, ("d", "ridge"): 1.0}
    assert best_model(means, "rmse") == ("b", "ridge")  # lowest; the first of an exact tie of means
    tests = _tests_against([("rmse", "a", "b", 0.2, 0.2), ("rmse", "b", "c", 0.0, np.nan),
                            ("rmse", "d", "b", 0.3, np.nan)])  # c: equal in every fold; d: worse by 0.3 in each
    assert tied_with_best(means, tests, "rmse") == {("a", "ridge"): True, ("b", "ridge"): True, ("c", "ridge"): True,
                                                    ("d", "ridge"): False}
    with pytest.raises(ValueError, match="no corrected_t test of rmse"):
        tied_with_best({**means, ("e", "ridge"): 2.0}, tests, "rmse")


def test_summary_marks_ties_per_metric_leaves_the_baseline_empty_and_one_model_is_tied_with_itself():
    from otolith_core.ties import TIED_METRICS, tied_column

    data, sets = _dataset(n=100)
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=4, bootstrap_draws=0)
    summary = result.summary_frame()
    for metric in TIED_METRICS:
        column = summary[tied_column(metric)]
        assert str(column.dtype) == "boolean" and column.isna().tolist() == [False] * 4 + [True]  # no-skill: NA
        best = summary.iloc[:4][f"{metric}_mean"].idxmax() if metric != "rmse" else \
            summary.iloc[:4][f"{metric}_mean"].idxmin()
        assert column[best]
    strict = result.summary_frame(tie_level=0.999)  # almost every difference is told apart at this level
    assert strict[tied_column("accuracy")].sum() <= summary[tied_column("accuracy")].sum()
    alone = compare(data, {"enc-a": sets["enc-a"]}, [HeadSpec("ridge")], n_folds=4, bootstrap_draws=0).summary_frame()
    assert [alone[tied_column(m)].tolist() for m in TIED_METRICS] == [[True, pd.NA]] * 3


# ---- fish-level scores -------------------------------------------------------------------------------------------

def _hand_result(head, *, raw=None, pred=None, proba=None):
    """A CVResult of 1 repeat, 3 folds, 7 photos of 4 fish (F1 3 photos, F2 2, F3 1, F4 1), ages 2..5."""
    from otolith_core.cross_validation import CVResult

    true = np.array([3, 3, 3, 4, 4, 2, 5])
    fold = np.array([0, 0, 0, 1, 1, 2, 2])
    pred = np.asarray(pred if pred is not None else np.rint(raw)).astype(int)
    return CVResult("enc", HeadSpec(head), tuple(f"i{k}" for k in range(7)), tuple(f"p{k}" for k in range(7)), true,
                    pred, np.asarray(raw if raw is not None else pred, dtype=float), fold, np.zeros(7, dtype=int),
                    proba=proba)


FISH = ("F1", "F1", "F1", "F2", "F2", "F3", "F4")


def test_a_fish_prediction_follows_its_heads_rule():
    from otolith_core.fish_level import fish_predictions

    # ridge: mean of the raw outputs, rounded half to even, clipped to the training fold's ages
    ridge = _hand_result("ridge", raw=[2.0, 2.5, 3.0, 5.5, 5.5, 1.2, 4.4])
    got = fish_predictions(ridge, FISH).set_index("fish")
    assert got.loc["F1", "pred_age"] == 2  # mean 2.5 -> 2 (half to even), as numpy.rint rounds one photo
    assert got.loc["F2", "pred_age"] == 5  # mean 5.5 -> 6, clipped to fold 1's training ages 2..5
    assert got.loc["F3", "pred_age"] == 3  # 1.2 -> 1, clipped up to fold 2's training ages 3..4
    assert got.loc["F4", "pred_age"] == 4  # one photo: its own rounded prediction
    assert list(got["n_photos"]) == [3, 2, 1, 1] and list(got["true_age"]) == [3, 4, 2, 5]
    # svc (and knn): the median of the photos' ages, rounded half to even
    svc = _hand_result("svc", pred=[2, 5, 3, 4, 5, 2, 6])
    assert fish_predictions(svc, FISH).set_index("fish")["pred_age"].to_dict() == {"F1": 3, "F2": 4, "F3": 2, "F4": 6}
    # logistic: the mean of the class probabilities (columns: ages 2..5), its most probable age
    proba = np.array([[0, .6, .4, 0], [0, 0, 1, 0], [0, .6, .4, 0], [0, .5, .5, 0], [0, 0, .4, .6],
                      [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    logistic = _hand_result("logistic", pred=[3, 4, 3, 3, 5, 2, 5], proba=proba)
    got = fish_predictions(logistic, FISH).set_index("fish")["pred_age"].to_dict()
    assert got == {"F1": 4, "F2": 4, "F3": 2, "F4": 5}  # F1 (.4, .6): 4 wins though 2 of 3 photos said 3
    with pytest.raises(ValueError, match="fish 'F1' has photos in 2 test folds"):
        fish_predictions(_hand_result("svc", pred=[3] * 7), ("F1", "F1", "F1", "F1", "F2", "F3", "F4"))


def test_per_fish_scores_equal_a_plain_loop_over_each_fish_on_the_same_grouped_folds():
    """per_fish.csv recomputed by hand: each fish of each repeat predicted from its photos (ridge: mean of the raw
    outputs, rounded and clipped to the training fold's ages; svc: median, rounded), scored per fold, mean and SD."""
    data, sets = _dataset(n=90)
    photos = np.array([3, 2, 1] * 15)  # fish of 3, 2 and 1 photos, one age each
    fish_of = np.repeat(np.arange(photos.size), photos)[:90]
    data = Dataset(data.source, "manifest", tuple(ImageRecord(r.path, r.name, r.age, fish_id=f"F{f}-{r.age}")
                                                  for r, f in zip(data.records, fish_of)))
    result = compare(data, {"enc-a": sets["enc-a"]}, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=3, repeats=2,
                     bootstrap_draws=0)
    assert result.fish_scores_refused is None
    per_fish = result.per_fish_frame().set_index(["encoder", "head"])
    fish = np.array(result.fish)
    for r in result.scored:
        expected_folds = []
        for repeat in range(2):
            rows = np.flatnonzero(r.repeat == repeat)
            true, pred, raw, fold = r.true_age[rows], r.pred_age[rows], r.pred_raw[rows], r.fold[rows]
            by_fold = {}
            for one in np.unique(fish):
                mine = fish == one
                assert len(set(fold[mine])) == 1  # one test fold per fish
                k = int(fold[mine][0])
                if r.head.name == "ridge":
                    training = true[fold != k]
                    guess = min(max(round(float(np.mean(raw[mine]))), training.min()), training.max())
                else:
                    guess = int(np.rint(np.median(pred[mine])))
                by_fold.setdefault(k, []).append((int(true[mine][0]), guess))
                if mine.sum() == 1:
                    assert guess == pred[mine][0]  # one photo: the fish keeps its photo's prediction
            for k in sorted(by_fold):
                t, p = np.array(by_fold[k]).T
                expected_folds.append((np.mean(t == p), np.mean(np.abs(t - p) <= 1), np.sqrt(np.mean((t - p) ** 2))))
        expected = np.array(expected_folds)
        row = per_fish.loc[(r.encoder, r.head.label)]
        assert (row.n_fish, row.n_fish_several, row.n_folds_total, row.n_images) == (45, 30, 6, 90)
        np.testing.assert_allclose([row.accuracy_mean, row.pm1_accuracy_mean, row.rmse_mean], expected.mean(axis=0))
        np.testing.assert_allclose([row.accuracy_sd, row.pm1_accuracy_sd, row.rmse_sd], expected.std(axis=0, ddof=1))
    assert list(per_fish.index.get_level_values("encoder"))[-1] == "no-skill"
    predictions = result.fish_predictions_frame()
    assert len(predictions) == 3 * 2 * 45 and set(predictions["repeat"]) == {0, 1}


def test_fish_level_scores_are_refused_with_the_reason():
    data, sets = _dataset(n=60)
    one = {"enc-a": sets["enc-a"]}
    alone = compare(data, one, [HeadSpec("ridge")], n_folds=3, bootstrap_draws=0)
    assert "no fish has more than one photo" in alone.fish_scores_refused.message
    assert alone.per_fish_frame().empty and alone.fish_predictions_frame().empty
    split = compare(_with_fish(data), one, [HeadSpec("ridge")], n_folds=3, bootstrap_draws=0, group_by_fish=False)
    assert "not grouped by fish" in split.fish_scores_refused.message and split.per_fish_frame().empty


@pytest.mark.slow
def test_the_fast_stratified_group_kfold_gives_scikit_learns_folds():
    """The same test folds as scikit-learn's StratifiedGroupKFold, shuffled or not, on fish of 1 to 4 photos with
    ages skewed as in a survey (many young, few old), for every fold count the tool uses."""
    from sklearn.model_selection import StratifiedGroupKFold

    from otolith_core.folds import FastStratifiedGroupKFold

    rng = np.random.default_rng(0)
    for case in range(15):
        n_fish = int(rng.integers(30, 150))
        fish_age = rng.choice(np.arange(1, 9), size=n_fish, p=[0.25, 0.25, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02])
        photos = rng.integers(1, 5, size=n_fish)
        groups = np.repeat(np.arange(n_fish), photos)
        ages = np.repeat(fish_age, photos)
        for n_splits, shuffle in ((5, True), (10, True), (3, False)):
            seed = int(case) if shuffle else None
            expected = [test for _, test in StratifiedGroupKFold(n_splits, shuffle=shuffle, random_state=seed).split(
                ages, ages, groups)]
            got = [test for _, test in FastStratifiedGroupKFold(n_splits, shuffle=shuffle, random_state=seed).split(
                ages, ages, groups)]
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_progress_counts_every_fold_of_every_model_and_names_the_model_at_work():
    """What a comparison job shows: ``progress(done, total, model)`` before each model's first fold and after every
    fold (the learning curve's too), ``done`` rising by one to ``total``; an exception raised in it (a cancel) stops
    the comparison."""
    data, sets = _dataset()
    calls = []
    compare(data, sets, [HeadSpec("ridge"), HeadSpec("svc")], n_folds=5, repeats=2, with_learning_curve=True,
            progress=lambda done, total, model: calls.append((done, total, model)))
    total = 2 * 2 * (2 * 5) * 2  # encoders x heads x (repeats x folds) x (cross-validation + learning curve)
    assert {t for _, t, _ in calls} == {total} and calls[-1][0] == total
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    steps = np.diff([0] + [d for d, _, _ in calls])
    assert set(steps) == {0, 1} and (steps == 0).sum() == 4  # one announcement per model
    assert list(dict.fromkeys(m for _, _, m in calls)) == ["enc-a / ridge", "enc-a / svc", "enc-b / ridge",
                                                           "enc-b / svc"]

    class Stop(Exception):
        pass

    def stop_at_third(done, total, model):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        compare(data, sets, [HeadSpec("ridge")], n_folds=5, progress=stop_at_third)
