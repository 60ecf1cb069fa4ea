from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize

from otolith_core.covariates import CovariateEncoding, CovariateRequest, month_circle, read_covariates
from otolith_core.data import Dataset, ImageRecord
from otolith_core.embeddings import EmbeddingSet
from otolith_core.comparison import compare
from otolith_core.heads import HeadSpec, build_head


def _records(rows):
    return tuple(ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", age, metadata=meta, row=i + 2)
                 for i, (age, meta) in enumerate(rows))


def test_request_parses_columns_and_kinds_and_names_a_bad_kind():
    request = CovariateRequest.parse(" length, month ,area:categorical,length", impute=True)
    assert request.named() == [("length", None), ("month", None), ("area", "categorical")]
    assert request.impute
    with pytest.raises(ValueError, match="unknown kind 'colour'.*numeric"):
        CovariateRequest.parse("area:colour")


def test_small_table_kinds_values_and_problems():
    records = _records([
        (3, {"length": "41.5", "month": "12", "area": "north", "station": "7"}),
        (4, {"length": "52", "month": "Jan", "area": "south", "station": "9"}),
        (5, {"length": "", "month": "13", "area": "north", "station": "7"}),
        (6, {"length": "60", "month": "6", "area": "", "station": "x9"}),
    ])
    table = read_covariates(records, CovariateRequest.parse("length,month,area,station:categorical"))
    assert table.encoding.kinds == ("numeric", "month", "categorical", "categorical")
    np.testing.assert_array_equal(table.values[:, 0], [41.5, 52, np.nan, 60])
    np.testing.assert_array_equal(table.values[:, 1], [12, 1, np.nan, 6])  # "Jan" is month 1; 13 is no month
    assert table.categories[2] == ("north", "south")
    np.testing.assert_array_equal(table.values[:, 2], [0, 1, 0, np.nan])
    assert set(table.problems) == {2, 3}
    assert "'length' is blank" in table.problems[2] and "--impute-covariates" in table.problems[2]
    assert "'area' is blank" in table.problems[3]
    imputed = read_covariates(records, CovariateRequest.parse("length,month", impute=True))
    assert imputed.problems == {2: "covariate 'month' value '13' is not a month (1-12 or a month name)"}


def test_a_mostly_numeric_column_stays_numeric_and_names_the_typo():
    records = _records([(2, {"length": str(30 + i)}) for i in range(19)] + [(3, {"length": "41cm"})])
    table = read_covariates(records, CovariateRequest.parse("length"))
    assert table.encoding.kinds == ("numeric",)
    assert table.problems == {19: "covariate 'length' value '41cm' is not a number"}


def test_a_missing_column_names_the_ones_there():
    records = _records([(2, {"length": "30", "true_age": "2"})])
    with pytest.raises(ValueError, match=r"\['weight'\] are not in .*\['length', 'true_age'\]"):
        read_covariates(records, CovariateRequest.parse("weight"))
    folder = _records([(2, {})])
    with pytest.raises(ValueError, match="give a CSV manifest"):
        read_covariates(folder, CovariateRequest.parse("length"))


def test_a_second_readers_age_is_never_a_covariate():
    records = _records([(2, {"length": "30", "second_age": "3"}), (3, {"length": "35", "second_age": "3"})])
    with pytest.raises(ValueError, match="'second_age' is a second reader's age.*answer"):
        read_covariates(records, CovariateRequest.parse("length,second_age"))


def test_months_go_round_the_year():
    circle = month_circle(np.array([[1], [4], [7], [12]]))
    np.testing.assert_allclose(circle[0], [0, 1], atol=1e-12)
    np.testing.assert_allclose(circle[1], [1, 0], atol=1e-12)
    np.testing.assert_allclose(circle[2], [0, -1], atol=1e-12)
    # December sits next to January, not eleven months away
    assert np.linalg.norm(circle[3] - circle[0]) < np.linalg.norm(circle[1] - circle[0])


def test_encoding_is_learnt_on_the_training_rows_only():
    raw = np.array([[10.0, 3, 0], [20, 6, 1], [30, 9, 0], [1000, 12, 2], [np.nan, 1, 1]])
    train, test = raw[:3], raw[3:]
    encoder = CovariateEncoding(("numeric", "month", "categorical"), impute=True).transformer().fit(train)
    out = encoder.transform(test)
    # numeric: standardised with the training rows' mean 20 and SD 8.165; the test value 1000 does not move them
    np.testing.assert_allclose(out[0, 0], (1000 - 20) / np.std([10, 20, 30]))
    np.testing.assert_allclose(out[1, 0], 0.0)  # a blank takes the training median (20): exactly the mean here
    np.testing.assert_allclose(out[:, 1:3], month_circle(np.array([[12], [1]])))
    # categories seen in training: codes 0 and 1; code 2 appears only in the test rows and gets no column
    np.testing.assert_array_equal(out[:, 3:], [[0, 0], [0, 1]])
    assert out.shape == (2, 5)


def test_a_head_with_covariates_scales_the_image_part_its_own_way():
    head = HeadSpec("ridge", scaling="standardize").for_encoder(
        "l2+covariates", (3, 1), CovariateEncoding(("numeric",)))
    assert head.scaling == "standardize+covariates"  # an asked-for scaling never touches the covariate part
    assert head.label == "ridge"
    X = np.array([[3.0, 4, 0, 100], [1, 0, 0, 200], [0, 2, 0, 300]])
    scaled = build_head(head)[:-1].fit(X, [1, 2, 3]).transform(X)
    np.testing.assert_allclose(scaled[:, 3], (X[:, 3] - 200) / np.std(X[:, 3]))


def _data_with_covariates(n=120, seed=0, blank=()):
    rng = np.random.default_rng(seed)
    ages = np.repeat(np.arange(1, 5), n // 4)
    length = 20 + 8 * ages + rng.normal(0, 4, n)
    months = rng.integers(1, 13, n)
    areas = rng.choice(["north", "south"], n)
    rows = []
    for i, age in enumerate(ages):
        meta = {"length": "" if i in blank else f"{length[i]:.1f}", "month": str(months[i]), "area": areas[i]}
        rows.append((int(age), meta))
    data = Dataset(Path("/x"), "manifest", _records(rows))
    image = rng.normal(size=(n, 6)) + ages[:, None] * 0.3
    return data, {"enc": EmbeddingSet("enc", image.astype(np.float32), np.arange(n))}, length, months, areas


def test_covariate_rows_equal_a_direct_loop_on_the_same_folds():
    data, sets, length, months, areas = _data_with_covariates()
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, seed=0,
                     covariates=CovariateRequest.parse("length,month,area"), bootstrap_draws=0)
    by = {r.encoder: r for r in result.results}
    assert list(by) == ["enc", "covariates", "enc + covariates"]
    assert by["enc + covariates"].head.scaling == "l2+covariates"
    assert by["covariates"].head.scaling == "covariates"
    assert result.covariates == {"length": "numeric", "month": "month", "area": "categorical"}
    assert any("length (numeric: standardised" in n.message for n in result.warnings)
    y = data.ages
    X = sets["enc"].features.astype(np.float64)
    expected = {"covariates": np.empty_like(y), "enc + covariates": np.empty_like(y)}
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        def encode(rows):
            mean, sd = length[train].mean(), length[train].std()
            angle = 2 * np.pi * (months[rows] - 1) / 12
            return np.column_stack([(length[rows] - mean) / sd, np.sin(angle), np.cos(angle),
                                    areas[rows] == "north", areas[rows] == "south"]).astype(float)
        for name, make in (("covariates", encode),
                           ("enc + covariates", lambda rows: np.hstack([normalize(X[rows]), encode(rows)]))):
            ridge = Ridge(alpha=6.0).fit(make(train), y[train])
            expected[name][test] = np.clip(np.rint(ridge.predict(make(test))), y[train].min(), y[train].max())
    for name, pred in expected.items():
        np.testing.assert_array_equal(by[name].pred_age, pred, err_msg=name)
    assert by["enc + covariates"].summary()["accuracy_mean"] > by["enc"].summary()["accuracy_mean"]


def test_images_with_a_blank_covariate_are_skipped_by_name_or_imputed():
    data, sets, *_ = _data_with_covariates(blank={5, 17})
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, covariates=CovariateRequest.parse("length"),
                     bootstrap_draws=0)
    skipped = result.skipped_frame()
    assert skipped.image.tolist() == ["5.png", "17.png"]
    assert skipped.row.tolist() == [7, 19] and skipped.reason.str.contains("'length' is blank").all()
    assert all(r.n_images == 118 for r in result.results)  # image-only rows too: identical images and folds
    imputed = compare(data, sets, [HeadSpec("ridge")], n_folds=5, bootstrap_draws=0,
                      covariates=CovariateRequest.parse("length", impute=True))
    assert imputed.skipped == () and imputed.impute_covariates
    assert all(r.n_images == 120 for r in imputed.results)


def test_combined_rows_get_covariates_too():
    data, sets, *_ = _data_with_covariates()
    sets["other"] = EmbeddingSet("other", sets["enc"].features[:, :3].copy(), np.arange(120))
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, combined=[("enc", "other")], bootstrap_draws=0,
                     covariates=CovariateRequest.parse("month"))
    assert [r.encoder for r in result.results] == [
        "enc", "other", "enc + other", "covariates", "enc + covariates", "other + covariates",
        "enc + other + covariates"]
    assert result.results[-1].head.scaling == "l2+l2+covariates"
    assert result.results[-1].head.blocks == (6, 3, 1)


def test_the_age_column_and_the_demos_truth_are_never_covariates(demo_manifest, tmp_path):
    """Whatever the age column is called, and for a data set the demo wrote (by its source column, wherever it
    lies; here a copy under another name), its drawn truth: refused with what it is."""
    import shutil

    from otolith_core.data import load_dataset

    records = _records([(2, {"length": "30", "reader_age": "2"}), (3, {"length": "35", "reader_age": "3"})])
    with pytest.raises(ValueError, match="'reader_age' is the reader's age itself.*answer"):
        read_covariates(records, CovariateRequest.parse("length,reader_age"), age_column="reader_age")
    with pytest.raises(ValueError, match="'age' is the reader's age itself"):
        read_covariates(records, CovariateRequest.parse("age"))
    shutil.copytree(demo_manifest.parent, tmp_path / "my survey")
    demo = load_dataset(tmp_path / "my survey" / "manifest.csv")
    for column in ("true_age", "source"):
        with pytest.raises(ValueError, match=f"'{column}' is what the synthetic demo drew"):
            read_covariates(demo.records, CovariateRequest.parse(f"length,{column}"))
    assert read_covariates(demo.records, CovariateRequest.parse("length")).names == ("length",)


def test_covariates_that_read_the_age_are_warned_about():
    """A column copied from the age (under any name) reads >= 90 % of the ages: a warning in the run's notes and
    in the quick check before a run; an honest length does not trigger it."""
    from otolith_core.covariates import covariates_alone_accuracy

    rng = np.random.default_rng(0)
    ages = np.repeat(np.arange(1, 7), 20)
    rows = [(int(a), {"copy": f"{a * 0.13:.2f}", "length": f"{20 + 5 * a + rng.normal(0, 12):.1f}"}) for a in ages]
    records = _records(rows)
    data = Dataset(Path("/x"), "manifest", records)
    features = rng.normal(size=(len(records), 3))
    embeddings = {"noise": EmbeddingSet("noise", features, np.arange(len(records)))}
    leaked = compare(data, embeddings, [HeadSpec("ridge")], n_folds=5, covariates=CovariateRequest.parse("copy"),
                     bootstrap_draws=0)
    warnings = [n.message for n in leaked.warnings if n.severity == "warning" and "covariates alone" in n.message]
    assert len(warnings) == 1 and "(copy)" in warnings[0] and "100%" in warnings[0]
    honest = compare(data, embeddings, [HeadSpec("ridge")], n_folds=5, covariates=CovariateRequest.parse("length"),
                     bootstrap_draws=0)
    assert not any("covariates alone" in n.message for n in honest.warnings)
    assert covariates_alone_accuracy(read_covariates(records, CovariateRequest.parse("copy")), ages) == 1.0
    assert covariates_alone_accuracy(read_covariates(records, CovariateRequest.parse("length")), ages) < 0.9


def test_coded_columns_of_an_export_are_categories_and_ids_are_no_covariates():
    """sex_number, maturity_number and area_grid hold codes, not amounts; length in whole cm is an amount; a name
    or a few often-repeated whole values say which; NAME:numeric overrides; measurement_id names rows."""
    from otolith_core.covariates import id_like

    rng = np.random.default_rng(0)
    rows = [(int(rng.integers(1, 9)), {"sex_number": str(int(rng.integers(1, 3))),
                                       "maturity_number": str(int(rng.integers(1, 6))),
                                       "area_grid": str(int(rng.integers(1, 40))),
                                       "length": str(int(rng.integers(20, 110))),
                                       "gear": str(int(rng.integers(1, 4))),
                                       "measurement_id": str(1000 + i)}) for i in range(200)]
    records = _records(rows)
    table = read_covariates(records, CovariateRequest.parse("sex_number,maturity_number,area_grid,length,gear"))
    assert table.encoding.kinds == ("categorical", "categorical", "categorical", "numeric", "categorical")
    assert read_covariates(records, CovariateRequest.parse("sex_number:numeric")).encoding.kinds == ("numeric",)
    few = _records([(2, {"length": "41"}), (3, {"length": "52"}), (4, {"length": "60"})])  # few rows: amounts
    assert read_covariates(few, CovariateRequest.parse("length")).encoding.kinds == ("numeric",)
    assert id_like([r.metadata["measurement_id"] for r in records])
    assert not id_like([r.metadata["area_grid"] for r in records]) and not id_like(["a", "b"])
