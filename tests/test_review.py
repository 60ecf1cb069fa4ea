from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otolith_core.data import Dataset, ImageRecord, load_dataset
from otolith_core.embeddings import EmbeddingSet, extract_embeddings
from otolith_core.encoders import registry
from otolith_core.evaluation import compare
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


def test_no_probabilistic_head_is_a_clear_error():
    data, sets, _ = _flipped_set()
    result = compare(data, sets, [HeadSpec("ridge")], n_folds=5, bootstrap_draws=0)
    with pytest.raises(ValueError, match="add the logistic head"):
        doubtful_ages(result.results)


@pytest.mark.slow
def test_on_the_demo_with_flipped_ages_the_flipped_images_come_first(demo_manifest, demo_cache, tmp_path):
    """The issue's check: the demo (same images as the shared fixture) with a few reader ages moved 3+ years,
    the built-in morphometrics with the logistic head: precision at the number flipped >= 0.8."""
    from otolith_core.demo import write_demo_dataset

    manifest = write_demo_dataset(tmp_path / "flipped", n_images=120, seed=3, flip=5)
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
