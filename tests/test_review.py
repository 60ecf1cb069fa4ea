from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otolith_core.data import Dataset, ImageRecord, load_dataset
from otolith_core.embeddings import EmbeddingSet, extract_embeddings
from otolith_core.encoders import registry
from otolith_core.comparison import compare
from otolith_core.heads import HeadSpec
from otolith_core.review import doubtful_ages, precision_at


def _flipped_set(n=200, flips=(3, 50, 97, 120, 181), seed=0):
    """Five ages, features that tell them well, and a few reader ages moved on purpose (3 ages round the cycle)."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(1, 6), n // 5)
    reader = true.copy()
    for i in flips:
        reader[i] = (true[i] - 1 + 3) % 5 + 1
    records = tuple(ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", int(a)) for i, a in enumerate(reader))
    features = rng.normal(size=(n, 8)) * 0.6 + np.eye(8)[true] * 3
    return (Dataset(Path("/x"), "folder", records), {"enc": EmbeddingSet("enc", features.astype(np.float32), np.arange(n))},
            {f"{i}.png" for i in flips})


@pytest.mark.slow
def test_flipped_reader_ages_rank_first_and_every_number_is_recomputable():
    data, sets, wrong = _flipped_set()
    result = compare(data, sets, [HeadSpec("ridge"), HeadSpec("logistic")], n_folds=5, bootstrap_draws=0)
    logistic = next(r for r in result.results if r.head.name == "logistic")
    ridge = next(r for r in result.results if r.head.name == "ridge")
    assert ridge.proba is None and logistic.proba.shape == (200, 5)
    np.testing.assert_allclose(logistic.proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(logistic.ages[logistic.proba.argmax(axis=1)], logistic.pred_age)

    table = doubtful_ages(result.results)
    assert precision_at(table, wrong) == 1.0
    assert table["rank"].tolist() == list(range(1, 201)) and table["score"].is_monotonic_decreasing
    assert table.head(len(wrong)).models_agree.all()
    # recomputed from probabilities.csv: the score is 1 - p(reader's age); flagged_by is cleanlab's verdict
    from cleanlab.filter import find_label_issues

    probs = result.probabilities_frame().set_index("image").loc[table.image]
    columns = [f"p_age_{a}" for a in range(1, 6)]
    by_hand = 1 - np.array([probs.loc[i, f"p_age_{a}"] for i, a in zip(table.image, table.reader_age)])
    np.testing.assert_allclose(table["score"], by_hand)
    np.testing.assert_allclose(table["enc / logistic score"], by_hand)
    issues = find_label_issues(table.reader_age.to_numpy() - 1, probs[columns].to_numpy(), n_jobs=1)
    assert table.flagged_by.tolist() == issues.astype(int).tolist()


def test_with_two_models_the_score_is_the_mean_and_agreement_is_counted():
    data, sets, wrong = _flipped_set()
    sets["noise"] = EmbeddingSet("noise", np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32),
                                 np.arange(200))
    result = compare(data, sets, [HeadSpec("logistic")], n_folds=5, bootstrap_draws=0)
    table = doubtful_ages(result.results)
    np.testing.assert_allclose(table["score"], (table["enc / logistic score"] + table["noise / logistic score"]) / 2)
    assert (table.n_models == 2).all()
    agree = table["enc / logistic age"].eq(table["noise / logistic age"]) & table["enc / logistic age"].ne(table.reader_age)
    assert table.models_agree.tolist() == agree.tolist()


@pytest.mark.slow
def test_with_repeats_every_repeats_probabilities_count():
    """R x k-fold gives each image R out-of-fold probability vectors (other splits, other training sets): the
    ranking uses their mean, so its score is 1 - the mean p(reader's age), and the model's age is the age of
    the highest mean probability."""
    data, sets, wrong = _flipped_set()
    result = compare(data, sets, [HeadSpec("logistic")], n_folds=5, repeats=3, bootstrap_draws=0)
    table = doubtful_ages(result.results)
    assert len(table) == 200 and precision_at(table, wrong) == 1.0
    probs = result.probabilities_frame()
    assert probs.groupby("image").size().eq(3).all()
    columns = [f"p_age_{a}" for a in range(1, 6)]
    mean = probs.groupby("image")[columns].mean().loc[table.image]
    by_hand = 1 - np.array([mean.loc[i, f"p_age_{a}"] for i, a in zip(table.image, table.reader_age)])
    np.testing.assert_allclose(table["score"], by_hand)
    np.testing.assert_array_equal(table["enc / logistic age"], mean.to_numpy().argmax(axis=1) + 1)
    single = doubtful_ages(compare(data, sets, [HeadSpec("logistic")], n_folds=5, bootstrap_draws=0).results)
    assert not np.allclose(single.set_index("image").loc[table.image, "score"], table["score"])  # not repeat 0 alone


def test_a_rare_age_no_training_fold_held_is_not_scored_and_comes_last():
    """The issue's demo: one fish of age 6 (two photos), correctly aged. No training fold that left it out held
    age 6, so every model gave that age probability 0: it is not scored (it used to score 1.0 and top the list),
    the reason is named, and the ranking of the others is computed without it."""
    from cleanlab.filter import find_label_issues

    data, sets, wrong = _flipped_set()
    rng = np.random.default_rng(4)
    rare = tuple(ImageRecord(Path(f"/x/rare{i}.png"), f"rare{i}.png", 6, fish_id="rare") for i in range(2))
    data = Dataset(Path("/x"), "manifest", data.records + rare)
    features = np.vstack([sets["enc"].features, rng.normal(size=(2, 8)) * 0.6 + np.eye(8)[6] * 3])
    sets = {"enc": EmbeddingSet("enc", features.astype(np.float32), np.arange(202))}
    result = compare(data, sets, [HeadSpec("logistic")], n_folds=5, bootstrap_draws=0)
    assert result.grouped_by_fish
    table = doubtful_ages(result.results, fish=result.fish)
    unscored = table.tail(2)
    assert set(unscored.image) == {"rare0.png", "rare1.png"}
    assert unscored[["score", "enc / logistic score"]].isna().all().all() and unscored["rank"].isna().all()
    assert (unscored.not_scored_because == "age 6 was in no training fold that left this image out "
                                           "(only 1 fish of that age)").all()
    assert unscored.n_models.tolist() == [0, 0] and unscored.flagged_by.tolist() == [0, 0]
    assert not unscored.models_agree.any()
    scored = table.head(200)
    assert scored["rank"].tolist() == list(range(1, 201)) and scored["score"].is_monotonic_decreasing
    assert (scored.not_scored_because == "").all() and (scored.n_models == 1).all()
    assert precision_at(table, wrong) == 1.0
    # the scored images' numbers, from probabilities.csv without the rare fish's rows
    probs = result.probabilities_frame().set_index("image").loc[scored.image]
    by_hand = 1 - np.array([probs.loc[i, f"p_age_{a}"] for i, a in zip(scored.image, scored.reader_age)])
    np.testing.assert_allclose(scored["score"], by_hand)
    with pytest.warns(UserWarning, match="too few examples"):  # age 6 has no scored image
        issues = find_label_issues(scored.reader_age.to_numpy() - 1,
                                   probs[[f"p_age_{a}" for a in range(1, 7)]].to_numpy(), n_jobs=1)
    assert scored.flagged_by.tolist() == issues.astype(int).tolist()
    # without the fish, the reason counts images
    assert doubtful_ages(result.results).not_scored_because.iloc[-1].endswith("(only 2 images of that age)")


def _handmade(ages, folds_per_repeat, *, encoder="enc", seed=0):
    """A logistic result on given folds with random probabilities, each row 0 for an age its training fold
    lacked (as ``cross_validate_head`` gives them)."""
    from otolith_core.cross_validation import CVResult

    rng = np.random.default_rng(seed)
    ages = np.asarray(ages)
    classes = np.unique(ages)
    repeats = len(folds_per_repeat)
    folds = np.concatenate(folds_per_repeat)
    true = np.tile(ages, repeats)
    repeat = np.repeat(np.arange(repeats), ages.size)
    proba = rng.dirichlet(np.ones(classes.size), size=true.size)
    for row in range(true.size):
        training = (repeat == repeat[row]) & (folds != folds[row])
        proba[row, ~np.isin(classes, true[training])] = 0
    proba /= proba.sum(axis=1, keepdims=True)
    images = tuple(f"{i}.png" for i in range(ages.size))
    return CVResult(encoder, HeadSpec("logistic"), images * repeats, images * repeats, true,
                    classes[proba.argmax(axis=1)], classes[proba.argmax(axis=1)].astype(float), folds, repeat,
                    proba=proba)


AGES = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4]  # two images of age 3, one of age 4


def test_with_repeats_an_image_is_scored_from_the_repeats_whose_training_fold_held_its_age():
    """Repeat 0 tests both age-3 images together (no training fold held age 3), repeat 1 apart: they are
    scored from repeat 1 alone. The age-4 image is in no repeat's training fold: not scored, and last."""
    result = _handmade(AGES, [np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1]), np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0])])
    held = result.age_in_training()
    assert held.tolist() == [True] * 8 + [False, False, False] + [True] * 10 + [False]
    table = doubtful_ages([result]).set_index("image")
    p = result.proba
    assert table.loc["8.png", "score"] == pytest.approx(1 - p[11 + 8, 2])  # repeat 1 only
    assert table.loc["9.png", "score"] == pytest.approx(1 - p[11 + 9, 2])
    assert table.loc["0.png", "score"] == pytest.approx(1 - (p[0, 0] + p[11, 0]) / 2)  # both repeats
    assert np.isnan(table.loc["10.png", "score"]) and table.index[-1] == "10.png"
    assert table.loc["10.png", "not_scored_because"] == ("age 4 was in no training fold that left this image out "
                                                         "(only 1 image of that age)")
    assert pd.isna(table.loc["10.png", "rank"]) and table["rank"].dropna().tolist() == list(range(1, 11))


def test_the_score_is_the_mean_over_the_models_that_could_score_the_image():
    """Model a tested both age-3 images together, model b apart: b alone scores them, and only b may flag them."""
    a = _handmade(AGES, [np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1])], encoder="a")
    b = _handmade(AGES, [np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0])], encoder="b", seed=1)
    table = doubtful_ages([a, b]).set_index("image")
    assert np.isnan(table.loc["8.png", "a / logistic score"])
    assert table.loc["8.png", "score"] == table.loc["8.png", "b / logistic score"] == pytest.approx(1 - b.proba[8, 2])
    assert table.loc["8.png", "n_models"] == 1 and table.loc["0.png", "n_models"] == 2
    assert table.loc["0.png", "score"] == pytest.approx((2 - a.proba[0, 0] - b.proba[0, 0]) / 2)
    assert table.loc["8.png", "flagged_by"] <= 1
    assert table.loc["8.png", "not_scored_because"] == "" and table.index[-1] == "10.png"


def test_no_probabilistic_head_is_a_clear_error():
    data, sets, _ = _flipped_set()
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, bootstrap_draws=0)
    with pytest.raises(ValueError, match="add the logistic head"):
        doubtful_ages(result.results)


@pytest.mark.slow
def test_on_the_demo_with_flipped_ages_the_flipped_images_come_first(flipped_demo_manifest, demo_cache):
    """The issue's check: the demo (same images as the shared fixture) with a few reader ages moved 3+ years,
    the built-in morphometrics with the logistic head: precision at the number flipped >= 0.8."""
    manifest = flipped_demo_manifest
    rows = pd.read_csv(manifest)
    wrong = set(rows.path[rows.flipped.notna()])
    assert len(wrong) >= 5 and (rows.age != rows.true_age)[rows.flipped.notna()].all()
    data = load_dataset(manifest)
    spec = registry()["otolith-morphometrics"]
    embedding = extract_embeddings(data, spec, cache_dir=demo_cache, cached_only=True)  # the same images: cached
    assert not embedding.pending
    result = compare(data, {spec.name: embedding}, [HeadSpec("logistic")], n_folds=5, bootstrap_draws=0,
                     scalings={spec.name: spec.scaling})
    assert precision_at(doubtful_ages(result.results), wrong) >= 0.8
