"""The CLI end to end on a small synthetic demo, as a user runs it."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import write_mixed_manifest, write_tray_export
from otolith_core.cli import main
from otolith_core.comparison import SUMMARY_COLUMNS, TEST_COLUMNS
from otolith_core.cross_validation import FOLD_COLUMNS, PREDICTION_COLUMNS
from otolith_core.metrics import score
from otolith_core.stats import corrected_t_test, mcnemar_test, paired_t_test, wilcoxon_test


@pytest.fixture(scope="module")
def demo_run(demo_manifest, demo_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache") / "cache"
    shutil.copytree(demo_cache, cache)  # the built-in extractors' embeddings, as after a first run
    code = main(["run", "--data", str(demo_manifest), "--models", "otolith-morphometrics,pixels-32",
                 "--heads", "ridge,svc", "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0
    return out, cache


@pytest.mark.slow
def test_run_writes_exactly_the_promised_columns(demo_run):
    out, _ = demo_run
    assert list(pd.read_csv(out / "predictions.csv").columns) == PREDICTION_COLUMNS
    assert list(pd.read_csv(out / "folds.csv").columns) == FOLD_COLUMNS
    assert list(pd.read_csv(out / "summary.csv").columns) == SUMMARY_COLUMNS
    assert list(pd.read_csv(out / "ttests.csv").columns) == TEST_COLUMNS
    assert list(pd.read_csv(out / "skipped.csv").columns) == ["path", "row", "reason", "image"]
    assert (out / "comparison.svg").stat().st_size > 1000 and not (out / "comparison.png").exists()  # PNG: --png
    run = json.loads((out / "run.json").read_text())
    assert run["cv"]["n_folds"] == 10 and run["cv"]["seed"] == 0 and run["data"]["synthetic_demo"]
    assert len(run["data"]["image_set_sha256"]) == 64 and run["libraries"]["scikit-learn"]
    assert run["encoders"]["otolith-morphometrics"]["fingerprint"]
    assert run["encoders"]["pixels-32"]["precision_used"] == "fp32"


@pytest.mark.slow
def test_every_number_is_recomputable_from_predictions(demo_run, demo_manifest):
    out, _ = demo_run
    pred = pd.read_csv(out / "predictions.csv")
    folds = pd.read_csv(out / "folds.csv")
    summary = pd.read_csv(out / "summary.csv")
    tests = pd.read_csv(out / "ttests.csv")
    assert len(pred) == (4 + 1) * len(pd.read_csv(demo_manifest))  # 2 encoders x 2 heads, and the no-skill baseline
    for (encoder, head, repeat, fold), group in pred.groupby(["encoder", "head", "repeat", "fold"]):
        row = folds[(folds.encoder == encoder) & (folds["head"] == head) & (folds.repeat == repeat)
                    & (folds.fold == fold)].iloc[0]
        expected = score(group.true_age.to_numpy(), group.pred_age.to_numpy())
        assert row.n_test == len(group)
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value)
    for row in summary.itertuples():
        f = folds[(folds.encoder == row.encoder) & (folds["head"] == row.head)]
        assert row.accuracy_mean == pytest.approx(f.accuracy.mean())
        assert row.rmse_sd == pytest.approx(f.rmse.std(ddof=1))
    pred_first = pred[pred.repeat == 0]
    for row in tests.itertuples():
        a = folds[(folds.encoder == row.encoder_a) & (folds["head"] == row.head_a)].sort_values(["repeat", "fold"])
        b = folds[(folds.encoder == row.encoder_b) & (folds["head"] == row.head_b)].sort_values(["repeat", "fold"])
        if row.test == "mcnemar":
            pa = pred_first[(pred_first.encoder == row.encoder_a) & (pred_first["head"] == row.head_a)].sort_values("image")
            pb = pred_first[(pred_first.encoder == row.encoder_b) & (pred_first["head"] == row.head_b)].sort_values("image")
            width = 0 if row.metric == "accuracy" else 1
            diff, t, p = mcnemar_test((pa.pred_age - pa.true_age).abs().to_numpy() <= width,
                                      (pb.pred_age - pb.true_age).abs().to_numpy() <= width)
        elif row.test == "corrected_t":
            diff, t, p = corrected_t_test(a[row.metric].to_numpy(), b[row.metric].to_numpy(),
                                          test_train_ratio=float(np.mean(a.n_test / a.n_train)))
        elif row.test == "wilcoxon":
            diff, t, p = wilcoxon_test(a[row.metric].to_numpy(), b[row.metric].to_numpy())
        else:
            diff, t, p = paired_t_test(a[row.metric].to_numpy(), b[row.metric].to_numpy())
        assert row.mean_diff == pytest.approx(diff), row
        assert (np.isnan(row.t) and np.isnan(t)) or row.t == pytest.approx(t), row
        assert (np.isnan(row.p_value) and np.isnan(p)) or row.p_value == pytest.approx(p), row
    assert set(tests.test) == {"paired_t", "corrected_t", "wilcoxon", "mcnemar"}


@pytest.mark.slow
def test_bootstrap_intervals_are_recomputable_from_predictions(demo_run, demo_manifest):
    """summary.csv's 95 % intervals from predictions.csv (first repeat) and the manifest's fish, by the documented
    draws (numpy's default_rng(seed), fish numbered in sorted order, 1,000 draws), in a plain loop."""
    out, _ = demo_run
    pred = pd.read_csv(out / "predictions.csv")
    summary = pd.read_csv(out / "summary.csv").set_index(["encoder", "head"])
    fish_of = dict(zip(*pd.read_csv(demo_manifest)[["path", "fish_id"]].T.to_numpy()))
    row = pred[(pred.repeat == 0) & (pred.encoder == "pixels-32") & (pred["head"] == "ridge")]
    groups = np.array([fish_of[i] for i in row.image])
    fish = np.unique(groups)
    members = [np.flatnonzero(groups == f) for f in fish]
    correct = (row.true_age == row.pred_age).to_numpy()
    draws = np.random.default_rng(0).integers(0, fish.size, size=(1000, fish.size))
    accuracy = [correct[np.concatenate([members[f] for f in draw])].mean() for draw in draws]
    low, high = np.percentile(accuracy, [2.5, 97.5])
    expected = summary.loc[("pixels-32", "ridge")]
    assert (expected.accuracy_ci_low, expected.accuracy_ci_high) == (pytest.approx(low), pytest.approx(high))
    assert expected.accuracy_ci_low < expected.accuracy_mean < expected.accuracy_ci_high
    assert summary.loc[("no-skill", "most-frequent")].rmse_ci_low > 0


@pytest.mark.slow
def test_per_age_scores_are_recomputable_from_predictions(demo_run):
    """per_age.csv recomputed by hand from the first repeat of predictions.csv (sklearn's per-class report)."""
    from sklearn.metrics import precision_recall_fscore_support

    out, _ = demo_run
    pred = pd.read_csv(out / "predictions.csv")
    per_age = pd.read_csv(out / "per_age.csv")
    assert list(per_age.columns) == ["encoder", "head", "age", "n", "recall", "precision", "f1", "mean_error",
                                     "pm1_share"]
    for (encoder, head), group in pred[pred.repeat == 0].groupby(["encoder", "head"]):
        table = per_age[(per_age.encoder == encoder) & (per_age["head"] == head)].set_index("age")
        ages = np.sort(group.true_age.unique())
        assert list(table.index) == list(ages)
        p, r, f, n = precision_recall_fscore_support(group.true_age, group.pred_age, labels=ages, zero_division=np.nan)
        np.testing.assert_allclose(table.recall, r)
        np.testing.assert_allclose(table.f1, np.nan_to_num(f, nan=0.0))
        np.testing.assert_allclose(table.precision, p)  # NaN where the model never predicts that age
        assert list(table.n) == list(n)
        for age, row in table.iterrows():
            read = group[group.true_age == age]
            assert row.mean_error == pytest.approx((read.pred_age - age).mean())
            assert row.pm1_share == pytest.approx(((read.pred_age - age).abs() <= 1).mean())


@pytest.mark.slow
def test_ties_with_the_best_are_recomputable_from_ttests_csv(demo_run):
    """summary.csv's ``*_tied_with_best`` from ttests.csv alone: per metric the best mean (highest; RMSE lowest), its
    corrected_t p-values against each other model, Holm's step-down by hand over those, tied when the adjusted p
    exceeds run.json's level; the best is tied, the no-skill baseline empty."""
    out, _ = demo_run
    summary = pd.read_csv(out / "summary.csv")
    tests = pd.read_csv(out / "ttests.csv")
    run = json.loads((out / "run.json").read_text())
    level = run["ties"]["level"]
    assert level == 0.05 and run["ties"]["test"] == "corrected_t"
    models = summary[summary.encoder != "no-skill"]
    told_apart = 0
    for metric in ("accuracy", "pm1_accuracy", "rmse"):
        assert summary.loc[summary.encoder == "no-skill", f"{metric}_tied_with_best"].isna().all()
        means = models[f"{metric}_mean"]
        first = means.idxmin() if metric == "rmse" else means.idxmax()
        best = (models.encoder[first], models["head"][first])
        against = {}
        for row in tests[(tests.test == "corrected_t") & (tests.metric == metric)].itertuples():
            a, b = (row.encoder_a, row.head_a), (row.encoder_b, row.head_b)
            if best in (a, b):
                against[b if a == best else a] = (row.p_value, row.mean_diff)
        assert len(against) == len(models) - 1
        ranked = sorted((p, model) for model, (p, _) in against.items() if not np.isnan(p))
        adjusted, running = {}, 0.0
        for i, (p, model) in enumerate(ranked):
            running = max(running, min(1.0, (len(ranked) - i) * p))
            adjusted[model] = running
        for row in models.itertuples():
            model = (row.encoder, row.head)
            expected = True if model == best else adjusted[model] > level if model in adjusted else \
                against[model][1] == 0  # no p-value: equal in every fold (tied) or a constant difference
            assert bool(getattr(row, f"{metric}_tied_with_best")) == expected, (metric, model)
            told_apart += not expected
    assert told_apart > 0  # the pixel floor is told apart from morphometrics on the demo


@pytest.mark.slow
def test_per_fish_scores_are_recomputable_from_predictions(demo_run, demo_manifest):
    """per_fish.csv and fish_predictions.csv from predictions.csv and the manifest's fish_id, in a plain loop: each
    fish in one test fold; ridge: mean of pred_raw, rounded half to even (Python's round), clipped to the training
    fold's ages; svc and the baseline: the median of pred_age, rounded the same way; scored per fold, mean and SD."""
    out, _ = demo_run
    pred = pd.read_csv(out / "predictions.csv")
    per_fish = pd.read_csv(out / "per_fish.csv").set_index(["encoder", "head"])
    fish_csv = pd.read_csv(out / "fish_predictions.csv").set_index(["encoder", "head", "repeat", "fish"])
    manifest = pd.read_csv(demo_manifest)
    fish_of = dict(zip(manifest.path, manifest.fish_id))
    run = json.loads((out / "run.json").read_text())
    assert run["fish_level"]["written"] and run["fish_level"]["rules"]["svc"].startswith("median")
    for (encoder, head), group in pred.groupby(["encoder", "head"]):
        group = group.assign(fish=[fish_of[i] for i in group.image])
        assert group.groupby(["repeat", "fish"]).fold.nunique().max() == 1  # the folds keep each fish together
        scores = []
        for (repeat, fold), part in group.groupby(["repeat", "fold"]):
            pairs = []
            for fish, photos in part.groupby("fish"):
                if head == "ridge":
                    training = group[(group.repeat == repeat) & (group.fold != fold)].true_age
                    guess = min(max(round(photos.pred_raw.mean()), training.min()), training.max())
                else:
                    guess = round(photos.pred_age.median())
                assert fish_csv.loc[(encoder, head, repeat, fish), "pred_age"] == guess
                pairs.append((photos.true_age.iloc[0], guess))
            true, guessed = np.array(pairs).T
            scores.append([np.mean(true == guessed), np.mean(np.abs(true - guessed) <= 1),
                           np.sqrt(np.mean((true - guessed) ** 2))])
        row = per_fish.loc[(encoder, head)]
        assert (row.n_fish, row.n_fish_several) == (manifest.fish_id.nunique(), (manifest.fish_id.value_counts() > 1).sum())
        np.testing.assert_allclose([row.accuracy_mean, row.pm1_accuracy_mean, row.rmse_mean], np.mean(scores, axis=0))
        np.testing.assert_allclose([row.accuracy_sd, row.pm1_accuracy_sd, row.rmse_sd], np.std(scores, axis=0, ddof=1))
    assert len(per_fish) == 5  # 2 encoders x 2 heads, and the no-skill baseline


def test_a_tie_level_outside_zero_to_one_is_a_one_line_error(demo_manifest, tmp_path, capsys):
    assert main(["run", "--data", str(demo_manifest), "--models", "pixels-32", "--tie-level", "5",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tie level must be between 0 and 1") and "Traceback" not in err


@pytest.mark.slow
def test_morphometrics_beats_the_pixel_floor_on_the_demo(demo_run):
    summary = pd.read_csv(demo_run[0] / "summary.csv").set_index(["encoder", "head"])
    assert summary.loc[("otolith-morphometrics", "ridge"), "accuracy_mean"] > summary.loc[("pixels-32", "ridge"), "accuracy_mean"]
    assert summary.loc[("otolith-morphometrics", "ridge"), "rmse_mean"] < summary.loc[("pixels-32", "ridge"), "rmse_mean"]


@pytest.mark.slow
def test_second_run_extracts_nothing_and_imports_no_torch(demo_manifest, demo_run, tmp_path):
    _, cache = demo_run
    code = ("import sys; from otolith_core.cli import main; "
            f"rc = main(['run', '--data', r'{demo_manifest}', '--models', 'otolith-morphometrics,pixels-32', "
            f"'--out', r'{tmp_path}', '--cache-dir', r'{cache}', '--no-chart']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(0 extracted now)" in done.stdout and "NO-TORCH" in done.stdout


@pytest.mark.slow
def test_missing_clip_weights_are_reported_without_a_download_and_morphometrics_still_runs(demo_manifest, tmp_path,
                                                                                        offline_hub, network_calls,
                                                                                        demo_cache):
    shutil.copytree(demo_cache, tmp_path / "cache")
    code = main(["run", "--data", str(demo_manifest), "--models", "clip-vit-l-14-336,otolith-morphometrics",
                 "--heads", "ridge", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--weights-dir", str(tmp_path / "hf"), "--no-chart"])
    assert code == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "clip-vit-l-14-336" in run["failed_encoders"] and "1.7 GB" in run["failed_encoders"]["clip-vit-l-14-336"]
    assert set(pd.read_csv(tmp_path / "out" / "summary.csv").encoder) == {"otolith-morphometrics", "no-skill"}
    assert network_calls == []  # offline: no connection, no download attempted


def test_nothing_evaluable_exits_non_zero(demo_manifest, tmp_path, offline_hub, capsys):
    code = main(["run", "--data", str(demo_manifest), "--models", "clip-vit-l-14-336", "--out", str(tmp_path),
                 "--cache-dir", str(tmp_path / "c"), "--weights-dir", str(tmp_path / "hf")])
    assert code == 1 and "nothing could be evaluated" in capsys.readouterr().err


def test_user_mistakes_are_one_line_errors_not_tracebacks(tmp_path, capsys):
    assert main(["run", "--data", str(tmp_path / "nope"), "--models", "pixels-32", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err


@pytest.mark.slow
def test_extract_exports_npz_and_run_reads_it_back(demo_manifest, demo_run, tmp_path):
    _, cache = demo_run
    for name in ("pixels-32", "otolith-morphometrics"):
        assert main(["extract", "--data", str(demo_manifest), "--model", name, "--cache-dir", str(cache),
                     "--npz", str(tmp_path / f"{name}.npz")]) == 0
    with np.load(tmp_path / "pixels-32.npz") as data:
        n = len(pd.read_csv(demo_manifest))
        assert data["features"].shape == (n, 1024) and data["labels"].shape == (n,) and data["paths"].shape == (n,)
    out = tmp_path / "out"
    spec = f"pix={tmp_path / 'pixels-32.npz'},morph={tmp_path / 'otolith-morphometrics.npz'}"
    # the same scaling on both sides: .npz names are not registry entries, so `auto` gives them l2
    assert main(["run", "--embeddings", spec, "--heads", "ridge", "--scaling", "none", "--out", str(out),
                 "--no-chart"]) == 0
    from_npz = pd.read_csv(out / "predictions.csv")
    # .npz files carry no fish ids, so compare with an image run whose folds ignore them too
    assert main(["run", "--data", str(demo_manifest), "--models", "pixels-32", "--heads", "ridge", "--no-group-by-fish",
                 "--scaling", "none",
                 "--out", str(tmp_path / "images"), "--cache-dir", str(cache), "--no-chart"]) == 0
    from_images = pd.read_csv(tmp_path / "images" / "predictions.csv")
    mine = from_npz[from_npz.encoder == "pix"].set_index("image").pred_age.sort_index()
    theirs = from_images[(from_images.encoder == "pixels-32") & (from_images["head"] == "ridge")].set_index("image").pred_age.sort_index()
    pd.testing.assert_series_equal(mine, theirs, check_names=False)


@pytest.mark.slow
def test_precision_is_chosen_on_the_command_line_and_recorded(demo_manifest, tiny_model_dir, tmp_path, capsys):
    from otolith_core.cache import FileHashes, encoder_fingerprint
    from otolith_core.encoders import resolve_encoder

    model = f"local-dir:{tiny_model_dir}"
    args = ["--data", str(demo_manifest), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(["run", *args, "--models", model, "--precision", "bf16", "--heads", "ridge", "--no-chart",
                 "--out", str(tmp_path / "out")]) == 0
    assert re.search(r"images, bf16 \(\d+ extracted now\)", capsys.readouterr().out)
    entry = json.loads((tmp_path / "out" / "run.json").read_text())["encoders"][model]
    hashes = FileHashes(tmp_path / "cache")
    assert entry["precision_used"] == "bf16"
    assert entry["fingerprint"] == encoder_fingerprint(resolve_encoder(model), hashes, "bf16")
    [store] = (tmp_path / "cache" / "embeddings").iterdir()
    assert store.name.endswith(entry["fingerprint"][:16])
    # auto afterwards reads what was made (the tiny model's own choice would be fp32): nothing is recomputed
    assert main(["extract", *args, "--model", model]) == 0
    assert "embedded in bf16 (0 extracted now" in capsys.readouterr().out
    assert main(["extract", *args, "--model", model, "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_models_lists_the_registry(capsys, offline_hub):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "siglip2-so400m-14-378" in out and "about 1.7 GB" in out


@pytest.mark.slow
def test_demo_command_writes_the_manifest(tmp_path, capsys, demo_drawn_blank):
    """The command only; the demo set itself, its drawing included, is tested in test_demo.py (here each photo is
    drawn blank, and written as the command writes it)."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n", "120", "--seed", "1"]) == 0
    manifest = tmp_path / "demo" / "manifest.csv"
    assert str(manifest) in capsys.readouterr().out
    rows = pd.read_csv(manifest)
    assert len(rows) >= 120 and all((tmp_path / "demo" / p).is_file() for p in rows.path)


@pytest.mark.slow
def test_repeats_and_learning_curve_write_every_table(demo_manifest, demo_run, tmp_path):
    _, cache = demo_run
    out = tmp_path / "out"
    assert main(["run", "--data", str(demo_manifest), "--models", "otolith-morphometrics,pixels-32",
                 "--heads", "ridge,ridge-cv", "--repeats", "2", "--folds", "5", "--learning-curve", "--out", str(out),
                 "--cache-dir", str(cache), "--no-chart"]) == 0  # 2 x 5 folds: ridge-cv's learning curve is the cost
    n = len(pd.read_csv(demo_manifest))
    pred = pd.read_csv(out / "predictions.csv")
    folds = pd.read_csv(out / "folds.csv")
    assert len(pred) == 5 * 2 * n and sorted(pred.repeat.unique()) == [0, 1] and len(folds) == 5 * 10  # + no-skill
    run = json.loads((out / "run.json").read_text())
    assert run["cv"]["repeats"] == 2 and run["cv"]["repeat_seeds"] == [0, 1] and run["cv"]["grouped_by_fish"]
    manifest = pd.read_csv(demo_manifest)
    fish = dict(zip(manifest.path, manifest.fish_id))
    for _, group in pred.groupby(["encoder", "head", "repeat"]):
        assert (group.assign(fish=group.image.map(fish)).groupby("fish").fold.nunique() == 1).all()
    curve = pd.read_csv(out / "learning_curve.csv")
    assert list(curve.columns) == ["encoder", "head", "train_fraction", "repeat", "fold", "n_train", "accuracy",
                                   "pm1_accuracy", "rmse"]
    assert sorted(curve.train_fraction.unique()) == pytest.approx([0.1 * k for k in range(1, 11)])
    agebias = pd.read_csv(out / "agebias.csv")
    first = pred[(pred.repeat == 0) & (pred.encoder == "pixels-32") & (pred["head"] == "ridge")]
    row = agebias[(agebias.encoder == "pixels-32") & (agebias["head"] == "ridge") & (agebias.true_age == 5)].iloc[0]
    assert row.n == (first.true_age == 5).sum() and row.mean_pred == pytest.approx(first[first.true_age == 5].pred_age.mean())
    assert len(pd.read_csv(out / "symmetry.csv")) == 4
    assert folds[folds["head"] == "ridge-cv"].alpha.notna().all() and (folds[folds["head"] == "ridge"].alpha == 6).all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"ape_mean", "cv_mean", "rmse_raw_mean", "n_folds_total"} <= set(summary.columns)
    assert (summary.n_folds_total == 10).all()


@pytest.mark.slow
def test_a_manifest_mixing_every_kind_of_bad_row_runs_to_completion(demo_manifest, tmp_path):
    """Broken, missing, mislabelled and degenerate rows are named in skipped.csv; every valid image is used,
    however unusual its format."""
    manifest, valid, bad, copy = write_mixed_manifest(demo_manifest, tmp_path)
    out = tmp_path / "out"
    assert main(["run", "--data", str(manifest), "--models", "pixels-32", "--heads", "ridge",
                 "--folds", "5", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-chart"]) == 0
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = " | ".join(skipped.reason)
    for reason in bad:
        assert reason in reasons, reason
    used = set(pd.read_csv(out / "predictions.csv").image)
    assert set(valid) <= used
    assert len(used) == len(pd.read_csv(demo_manifest)) + len(valid)
    warnings = json.loads((out / "run.json").read_text())["warnings"]
    assert any(w["severity"] == "error" and "different ages" in w["message"] and copy in w["message"] for w in warnings)


def test_a_crash_while_writing_results_leaves_no_half_written_file(tmp_path, monkeypatch):
    from otolith_core import report

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("from an earlier run\n")
    calls = []
    real = report.csv_bytes

    def failing(frame):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(frame)

    monkeypatch.setattr(report, "csv_bytes", failing)
    with pytest.raises(OSError):
        report.write_results(_comparison_for_writing(), out, run_info={}, chart=False)
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]  # nothing new, no staging folder left
    assert (out / "summary.csv").read_text() == "from an earlier run\n"


@pytest.mark.slow
def test_png_chart_only_when_asked(tmp_path, capsys):
    ages = np.repeat(np.arange(1, 4), 10)
    features = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    np.savez(tmp_path / "e.npz", features=features, labels=ages)
    args = ["run", "--embeddings", f"e={tmp_path / 'e.npz'}", "--heads", "ridge", "--folds", "3"]
    assert main([*args, "--png", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "comparison.svg").stat().st_size > 1000
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main([*args, "--png", "--no-chart", "--out", str(tmp_path / "out")])
    assert "not allowed with argument" in capsys.readouterr().err


def _comparison_for_writing():
    from pathlib import Path

    from otolith_core.data import Dataset, ImageRecord
    from otolith_core.embeddings import EmbeddingSet
    from otolith_core.comparison import compare
    from otolith_core.heads import HeadSpec

    ages = np.repeat(np.arange(1, 4), 10)
    data = Dataset(Path("/x"), "folder", tuple(ImageRecord(Path(f"/x/{i}"), f"{i}", int(a)) for i, a in enumerate(ages)))
    features = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    return compare(data, {"e": EmbeddingSet("e", features, np.arange(30))}, [HeadSpec("ridge")], n_folds=3)


def test_crops_of_one_photo_are_separate_images_everywhere(demo_manifest, tmp_path):
    """A frame holding several otoliths, listed once per crop box: each crop is its own image in every file,
    two crops are not mistaken for photos of one fish, and a failing crop is named by its own id."""
    from PIL import Image

    rows = pd.read_csv(demo_manifest)[["path", "age"]]
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (60, 120, 3), dtype=np.uint8)).save(tmp_path / "plate.png")
    plate = str(tmp_path / "plate.png")
    crops = pd.DataFrame({"path": [plate, plate, plate], "age": [3, 7, 5],
                          "x0": [0, 60, 0], "y0": [0, 0, 0], "x1": [60, 120, 500], "y1": [60, 60, 60]})
    pd.concat([rows, crops], ignore_index=True).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "out"
    assert main(["run", "--data", str(tmp_path / "m.csv"), "--models", "pixels-32", "--heads", "ridge",
                 "--folds", "5", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-chart"]) == 0
    pred = pd.read_csv(out / "predictions.csv")
    pred = pred[pred.encoder == "pixels-32"]  # the no-skill baseline has rows of its own
    mine = pred[pred.path == plate].set_index("image")
    assert sorted(mine.index) == [f"{plate}[0,0,60,60]", f"{plate}[60,0,120,60]"]
    assert mine.true_age.to_dict() == {f"{plate}[0,0,60,60]": 3, f"{plate}[60,0,120,60]": 7}
    assert pred.image.is_unique
    run = json.loads((out / "run.json").read_text())
    assert not run["cv"]["grouped_by_fish"] and run["data"]["n_evaluated"] == len(rows) + 2
    skipped = pd.read_csv(out / "skipped.csv")
    (outside,) = skipped[skipped.path == plate].itertuples()
    assert outside.image == f"{plate}[0,0,500,60]" and outside.row == len(rows) + 4 and "outside" in outside.reason


def test_skipped_csv_holds_the_path_alone_and_the_row_in_its_own_column(demo_manifest, tmp_path):
    rows = pd.read_csv(demo_manifest)[["path", "age"]]
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    bad = pd.DataFrame({"path": ["images/missing.jpg", rows.path[0]], "age": [4, "five"]})
    pd.concat([rows, bad], ignore_index=True).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "out"
    assert main(["run", "--data", str(tmp_path / "m.csv"), "--models", "pixels-32", "--heads", "ridge",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-chart"]) == 0
    skipped = pd.read_csv(out / "skipped.csv", dtype={"row": "Int64"})
    assert skipped[["path", "row"]].values.tolist() == [["images/missing.jpg", len(rows) + 2],
                                                        [rows.path[0], len(rows) + 3]]


@pytest.mark.slow
def test_a_preprocessing_variant_is_an_encoder_of_its_own(demo_manifest, demo_cache, tmp_path, capsys):
    """`--models pixels-32,pixels-32@pad+clahe`: two rows per head on identical folds; run.json records the
    resolved preprocessing and the CLAHE parameters; a second run extracts nothing."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    out = tmp_path / "out"
    args = ["run", "--data", str(demo_manifest), "--models", "pixels-32,pixels-32@pad+clahe", "--heads", "ridge",
            "--cache-dir", str(cache), "--no-chart", "--clahe-clip-limit", "0.02"]
    assert main([*args, "--out", str(out)]) == 0
    assert re.search(r"pixels-32@pad\+clahe: (\d+) images, fp32 \(\1 extracted now\)", capsys.readouterr().out)
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["encoder"]) == ["no-skill", "pixels-32", "pixels-32@pad+clahe"]
    folds = pd.read_csv(out / "folds.csv")
    per_encoder = folds.groupby("encoder")["n_test"].apply(tuple)
    assert per_encoder.nunique() == 1 and len(per_encoder) == 3  # identical folds, the baseline's too
    run = json.loads((out / "run.json").read_text())
    variant = run["encoders"]["pixels-32@pad+clahe"]["variant"]
    assert variant == {"fit": "pad", "clahe": True, "clip_limit": 0.02, "kernel": 0.125}
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert "(0 extracted now)" in capsys.readouterr().out


def test_extract_a_timm_folder_to_npz(demo_manifest, tiny_timm_dir, tmp_path, capsys):
    out = tmp_path / "timm.npz"
    assert main(["extract", "--data", str(demo_manifest), "--model", f"local-dir:{tiny_timm_dir}",
                 "--cache-dir", str(tmp_path / "cache"), "--npz", str(out), "--device", "cpu"]) == 0
    with np.load(out) as data:
        assert data["features"].shape[1] == 32 and len(data["paths"]) == len(data["features"]) > 100


def test_a_bad_variant_is_one_line_naming_the_options(demo_manifest, tmp_path, capsys):
    assert main(["extract", "--data", str(demo_manifest), "--model", "pixels-32@pads",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "pad, squash, crop, clahe" in err and "Traceback" not in err


@pytest.mark.slow
def test_with_registry_scalings_every_builtin_and_paper_head_beats_no_skill(demo_run):
    """Each registry entry's own scaling (none for the built-ins): on the demo, both paper heads on both built-in
    extractors beat the no-skill baseline in accuracy; the scaling is a column, not part of the head's name."""
    out, _ = demo_run
    summary = pd.read_csv(out / "summary.csv").set_index(["encoder", "head"])
    floor = summary.loc[("no-skill", "most-frequent")].accuracy_mean
    for encoder in ("otolith-morphometrics", "pixels-32"):
        for head in ("ridge", "svc"):
            row = summary.loc[(encoder, head)]
            assert row.scaling == "none" and row.accuracy_mean > floor, (encoder, head, row.accuracy_mean, floor)


@pytest.mark.slow
def test_a_combined_row_equals_concatenating_the_npz_files(demo_manifest, demo_run, tmp_path, capsys):
    """`--combine pix,morph`: one more row, `pix + morph`, on the same folds; with no scaling it equals a run on one
    file holding both feature sets side by side, and with each part's own l2 it equals one file holding each
    part already scaled to unit length (each part is scaled by itself, then concatenated)."""
    _, cache = demo_run
    files = {}
    for short, name in (("pix", "pixels-32"), ("morph", "otolith-morphometrics")):
        files[short] = tmp_path / f"{short}.npz"
        assert main(["extract", "--data", str(demo_manifest), "--model", name, "--cache-dir", str(cache),
                     "--npz", str(files[short])]) == 0
    pix, morph = (dict(np.load(files[k])) for k in ("pix", "morph"))
    assert list(pix["paths"]) == list(morph["paths"])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for scaling, joined in (("none", np.hstack([pix["features"], morph["features"]])),
                            ("l2", np.hstack([unit(pix["features"]), unit(morph["features"])]))):
        np.savez(tmp_path / "both.npz", features=joined, labels=pix["labels"], paths=pix["paths"])
        both_args = ["--heads", "ridge,svc", "--no-chart", "--bootstrap", "0"]
        assert main(["run", "--embeddings", f"pix={files['pix']},morph={files['morph']}", "--combine", "pix,morph",
                     "--scaling", scaling, "--out", str(tmp_path / "combined"), *both_args]) == 0
        assert main(["run", "--embeddings", f"both={tmp_path / 'both.npz'}", "--scaling", "none",
                     "--out", str(tmp_path / "joined"), *both_args]) == 0
        combined = pd.read_csv(tmp_path / "combined" / "predictions.csv")
        joined_pred = pd.read_csv(tmp_path / "joined" / "predictions.csv")
        for head in ("ridge", "svc"):
            mine = combined[(combined.encoder == "pix + morph") & (combined["head"] == head)].set_index("image")
            theirs = joined_pred[(joined_pred.encoder == "both") & (joined_pred["head"] == head)].set_index("image")
            pd.testing.assert_series_equal(mine.pred_age.sort_index(), theirs.pred_age.sort_index(), check_names=False)
            assert set(mine.scaling) == {f"{scaling}+{scaling}"}
    summary = pd.read_csv(tmp_path / "combined" / "summary.csv")
    assert {"pix", "morph", "pix + morph", "no-skill"} == set(summary.encoder)
    # a part that is not evaluated: that combination is named and skipped, the rest runs
    assert main(["run", "--embeddings", f"pix={files['pix']}", "--combine", "pix,nope", "--heads", "ridge",
                 "--out", str(tmp_path / "partial"), "--no-chart"]) == 0
    assert "combination pix + nope skipped" in capsys.readouterr().err
    assert "pix + nope" in json.loads((tmp_path / "partial" / "run.json").read_text())["failed_encoders"]


@pytest.mark.slow
def test_covariates_add_their_rows_and_name_the_images_they_leave_out(demo_manifest, demo_run, tmp_path, capsys):
    """The issue's command (`--combine a,b --covariates length`) on a manifest with a `length` column, one of them
    blank: rows 'covariates' and 'A + covariates' for every encoder row, the blank one named in skipped.csv."""
    _, cache = demo_run
    rows = pd.read_csv(demo_manifest)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows["length"] = rows["length"].astype(object)
    rows.loc[4, "length"] = ""
    manifest = tmp_path / "with_blank.csv"
    rows.to_csv(manifest, index=False)
    out = tmp_path / "out"
    assert main(["run", "--data", str(manifest), "--models", "pixels-32,otolith-morphometrics",
                 "--combine", "pixels-32,otolith-morphometrics", "--covariates", "length,month",
                 "--heads", "ridge,knn", "--folds", "5", "--bootstrap", "50", "--no-chart", "--out", str(out),
                 "--cache-dir", str(cache)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    both = "pixels-32 + otolith-morphometrics"
    assert list(dict.fromkeys(summary.encoder)) == [
        "pixels-32", "otolith-morphometrics", both, "covariates", "pixels-32 + covariates",
        "otolith-morphometrics + covariates", f"{both} + covariates", "no-skill"]
    assert set(summary["head"]) == {"ridge", "knn", "most-frequent"}
    assert (summary.n_images == len(rows) - 1).all()
    scaling = summary.set_index(["encoder", "head"]).scaling
    assert scaling["covariates", "ridge"] == "covariates" and scaling[f"{both} + covariates", "knn"] == "none+none+covariates"
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped.row.tolist() == [6] and "'length' is blank" in skipped.reason[0]
    run = json.loads((out / "run.json").read_text())
    assert run["covariates"] == {"columns": {"length": "numeric", "month": "month"}, "impute_blanks": False}
    # with imputation the blank one is evaluated; a column that is not there is one line naming those that are
    assert main(["run", "--data", str(manifest), "--models", "otolith-morphometrics", "--covariates", "length",
                 "--impute-covariates", "--heads", "ridge", "--folds", "5", "--no-chart", "--out", str(tmp_path / "imp"),
                 "--cache-dir", str(cache)]) == 0
    assert (pd.read_csv(tmp_path / "imp" / "summary.csv").n_images == len(rows)).all()
    capsys.readouterr()
    assert main(["run", "--data", str(manifest), "--models", "otolith-morphometrics", "--covariates", "weight",
                 "--heads", "ridge", "--out", str(tmp_path / "bad"), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "['weight'] are not in" in err and "'length'" in err and "Traceback" not in err


@pytest.mark.slow
def test_label_review_shows_a_manifests_second_readings_beside_the_ranking(demo_manifest, demo_cache, tmp_path,
                                                                           capsys):
    """A double-read manifest (a ``second_age`` column) run with the logistic head: label_review.csv carries the
    second reader's age beside the ranking, blank where an image was read once; a bad value is named. The ages are
    clipped for the heads (--age-range), never for the agreement between the readers."""
    rows = pd.read_csv(demo_manifest)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows["second_age"] = ""
    rows.loc[:3, "second_age"] = (rows.age[:4] + 1).astype(str)
    rows.loc[4, "second_age"] = "six"
    manifest = tmp_path / "double_read.csv"
    rows.to_csv(manifest, index=False)
    shutil.copytree(demo_cache, tmp_path / "cache")
    code = main(["run", "--data", str(manifest), "--models", "otolith-morphometrics", "--heads", "logistic",
                 "--folds", "3", "--no-chart", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--age-range", "1", "7"])  # 3 folds: the logistic inner search is what costs
    assert code == 0
    review = pd.read_csv(tmp_path / "out" / "label_review.csv").set_index("path")
    assert list(review.columns[:4]) == ["rank", "image", "reader_age", "second_age"]
    expected = dict(zip(rows.path[:4], rows.age[:4] + 1))
    assert review.second_age.dropna().astype(int).to_dict() == expected
    printed = capsys.readouterr()
    assert f"{rows.path[4]}: second_age 'six' is not a whole number" in printed.err
    assert "4 images read twice: between the two readers APE" in printed.out and "0% the same age" in printed.out
    readers = json.loads((tmp_path / "out" / "run.json").read_text())["second_readings"]
    from otolith_core.metrics import average_percent_error

    first = rows.age[:4].to_numpy(float)
    assert readers["n_images"] == 4 and readers["same_age"] == 0.0 and readers["sources"] == {"manifest": 4}
    assert readers["ape_percent"] == pytest.approx(average_percent_error(first, first + 1))


def test_a_lab_export_runs_from_the_command_line_with_its_columns_mapped(tmp_path, capsys, photo_server):
    """Tray photos behind presigned URLs (one dead) with a box column, ages as 6.0, ids from measurement_id:
    extract downloads the trays once (its job record shows the download), run reads the export as it is and
    downloads nothing again; the dead URL is named with its HTTP status; no signature reaches any output."""
    from conftest import presigned_query
    from otolith_core.jobs import list_jobs

    dead = f"{photo_server.url}/t.jpg?{presigned_query('SECRET')}"
    write_tray_export(photo_server.folder, boxes_per_tray=10, base_url=photo_server.url, signature="SECRET",
                      extra_rows=(f'M99,ST9,4.0,,"[[0, 0], [10, 10]]",{dead}',))
    export = str(photo_server.folder / "export.csv")
    mapping = ["--path-column", "image__content__url", "--box-column", "bounding_box", "--id-column", "measurement_id"]
    cache = str(tmp_path / "cache")
    assert main(["extract", "--data", export, *mapping, "--model", "pixels-32", "--cache-dir", cache]) == 0
    (job,) = list_jobs(cache)
    assert job.request.columns["path"] == "image__content__url" and "--box-column" in job.request.command(cache)
    assert "downloading 3/3 photos" in (tmp_path / "cache" / "jobs" / job.id / "log.txt").read_text()
    assert photo_server.requests == {"tray0.jpg": 1, "tray1.jpg": 1, "t.jpg": 1}
    assert main(["run", "--data", export, *mapping, "--models", "pixels-32", "--heads", "ridge",
                 "--folds", "2", "--no-chart", "--out", str(tmp_path / "out"), "--cache-dir", cache]) == 0
    assert photo_server.requests == {"tray0.jpg": 1, "tray1.jpg": 1, "t.jpg": 2}  # only the dead one asked again
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert set(predictions.image) == {f"M{t}{b:02d}" for t in range(2) for b in range(10)}
    assert set(predictions.path) == {f"{photo_server.url}/tray0.jpg", f"{photo_server.url}/tray1.jpg"}
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped.path.tolist() == [f"{photo_server.url}/t.jpg"] and "HTTP 404" in skipped.reason[0]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["data"]["columns"]["box"] == "bounding_box" and run["data"]["columns"]["id"] == "measurement_id"
    outputs = capsys.readouterr()
    written = "".join(p.read_text() for p in (tmp_path / "out").iterdir()) + outputs.out + outputs.err
    written += "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.suffix in (".json", ".txt"))
    assert "SECRET" not in written and "Signature" not in written


TRAY_MAPPING = ["--path-column", "image__content__url", "--box-column", "bounding_box", "--id-column", "measurement_id"]


@pytest.fixture(scope="module")
def survey_export(tmp_path_factory):
    """A lab export of 6 tray photos (stations ST0..ST5, cruises C0..C2) of 6 otoliths each, and a cache holding
    its pixels-32 embeddings."""
    folder = tmp_path_factory.mktemp("survey")
    export = write_tray_export(folder, boxes_per_tray=6, trays=6, cruises=3)
    assert main(["extract", "--data", str(export), *TRAY_MAPPING, "--model", "pixels-32",
                 "--cache-dir", str(folder / "cache")]) == 0
    return export, folder / "cache"


def _survey_run(survey_export, out, *options):
    export, cache = survey_export
    return main(["run", "--data", str(export), *TRAY_MAPPING, "--models", "pixels-32", "--heads", "ridge,svc",
                 "--no-chart", "--bootstrap", "50", "--out", str(out), "--cache-dir", str(cache), *options])


def test_station_grouped_folds_keep_each_station_together(survey_export, tmp_path, capsys):
    assert _survey_run(survey_export, tmp_path, "--group-column", "station_id", "--folds", "3") == 0
    assert "folds keep each station_id together" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    station = predictions.image.str[1]  # M<tray><box>: tray t was taken at station ST<t>
    assert predictions.groupby(station)["fold"].nunique().eq(1).all()
    assert predictions.fold.nunique() == 3
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["cv"]["group_column"] == "station_id" and run["cv"]["kept_together"] == "station_id"
    assert run["cv"]["scheme"] == "StratifiedGroupKFold" and run["cv"]["holdout_column"] is None
    assert not (tmp_path / "per_holdout.csv").exists()


def test_a_cruise_hold_out_tests_each_cruise_once_and_scores_it(survey_export, tmp_path, capsys):
    assert _survey_run(survey_export, tmp_path, "--holdout-column", "cruise_id") == 0
    assert "leave-one-cruise_id-out: 3 folds, one per value" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    cruise = "C" + (predictions.image.str[1].astype(int) % 3).astype(str)
    folds = pd.read_csv(tmp_path / "folds.csv")
    fold_value = dict(zip(folds.fold, folds.held_out))
    assert (predictions.fold.map(fold_value) == cruise).all() and sorted(fold_value.values()) == ["C0", "C1", "C2"]
    per = pd.read_csv(tmp_path / "per_holdout.csv", keep_default_na=False)
    for (encoder, head, value), rows in predictions.groupby(["encoder", "head", cruise]):
        row = per[(per.encoder == encoder) & (per["head"] == head) & (per.held_out == value)].iloc[0]
        assert row.accuracy == pytest.approx(np.mean(rows.true_age == rows.pred_age))
        assert row.n_test == len(rows)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["cv"]["holdout_column"] == "cruise_id" and run["cv"]["scheme"] == "LeaveOneGroupOut"
    assert run["cv"]["held_out_values"] == ["C0", "C1", "C2"] and run["cv"]["n_folds"] == 3
    tests = pd.read_csv(tmp_path / "ttests.csv")  # paired over the 3 cruises
    ridge, svc = (folds[(folds.encoder == "pixels-32") & (folds["head"] == h)].accuracy.to_numpy()
                  for h in ("ridge", "svc"))
    naive = tests[(tests.test == "paired_t") & (tests.metric == "accuracy")].iloc[0]
    assert naive.mean_diff == pytest.approx(paired_t_test(ridge, svc)[0])


@pytest.mark.parametrize("options, phrase", [
    (["--group-column", "station"], "'station' is not a column of the manifest; its columns are"),
    (["--group-column", "station_id", "--no-group-by-fish"], "--no-group-by-fish"),
    (["--holdout-column", "cruise_id", "--folds", "5"], "--folds"),
    (["--holdout-column", "cruise_id", "--repeats", "2"], "repeats"),
    (["--holdout-column", "age"], "age column"),
], ids=["unknown column", "no-group-by-fish", "folds", "repeats", "age"])
def test_group_and_holdout_mistakes_are_one_line_errors(survey_export, tmp_path, capsys, options, phrase):
    assert _survey_run(survey_export, tmp_path, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and phrase in err and "Traceback" not in err
    assert not (tmp_path / "run.json").exists()


def test_run_json_records_the_hub_revision_and_the_store_of_each_encoder(demo_manifest, tiny_model_dir, tmp_path,
                                                                         offline_hub, capsys):
    """refs/main moves to a snapshot with other weights between two runs: each run.json names the revision its
    embeddings came from and the store holding them."""
    from conftest import HUB_COMMIT, NEWER_COMMIT, place_in_hf_cache, save_tiny_open_clip

    hf, cache = tmp_path / "hf", tmp_path / "cache"
    names = ("open_clip_config.json", "open_clip_model.safetensors")
    place_in_hf_cache(hf, "someorg/tiny-clip", {n: tiny_model_dir / n for n in names}, commit=HUB_COMMIT)
    rows = pd.read_csv(demo_manifest).head(30)  # a few images are enough to show what run.json records
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows.to_csv(tmp_path / "few.csv", index=False)
    model = "hf-hub:someorg/tiny-clip"
    args = ["run", "--data", str(tmp_path / "few.csv"), "--models", model, "--heads", "ridge", "--folds", "3",
            "--bootstrap", "0", "--no-chart", "--device", "cpu", "--weights-dir", str(hf), "--cache-dir", str(cache)]
    entries = {}
    for commit, folder in ((HUB_COMMIT, None), (NEWER_COMMIT, tmp_path / "newer")):
        if folder is not None:
            newer = save_tiny_open_clip(folder, seed=1)
            place_in_hf_cache(hf, "someorg/tiny-clip", {n: newer / n for n in names}, commit=commit)
        assert main([*args, "--out", str(tmp_path / commit)]) == 0
        entry = json.loads((tmp_path / commit / "run.json").read_text())["encoders"][model]
        assert entry["weights_revision"] == commit and entry["revision"] is None  # resolved; nothing pinned
        entries[commit] = entry
    stores = sorted(p.name for p in (cache / "embeddings").iterdir())
    assert len(stores) == 2 and entries[HUB_COMMIT]["fingerprint"] != entries[NEWER_COMMIT]["fingerprint"]
    assert all(any(s.endswith(e["fingerprint"][:16]) for s in stores) for e in entries.values())


def test_class_weight_balanced_is_recorded_in_folds_csv_and_run_json_and_knn_says_it_has_none(tmp_path, capsys):
    """``--class-weight balanced``: folds.csv and run.json name each head's weighting; knn stays unweighted and a
    warning says so (on stderr and in run.json), never silently."""
    ages = np.repeat(np.arange(1, 4), [30, 12, 6])  # uneven ages, where the weights matter
    features = np.random.default_rng(0).normal(size=(ages.size, 6)).astype(np.float32) + ages[:, None] * 0.3
    np.savez(tmp_path / "e.npz", features=features, labels=ages)
    out = tmp_path / "out"
    assert main(["run", "--embeddings", f"e={tmp_path / 'e.npz'}", "--heads", "ridge,svc,knn", "--folds", "3",
                 "--class-weight", "balanced", "--bootstrap", "0", "--no-chart", "--out", str(out)]) == 0
    assert "knn has no class weights" in capsys.readouterr().err
    folds = pd.read_csv(out / "folds.csv")
    weights = folds.groupby("head").class_weight.unique().to_dict()
    assert {h: list(w) for h, w in weights.items()} == {"ridge": ["balanced"], "svc": ["balanced"], "knn": ["none"],
                                                        "most-frequent": ["none"]}
    run = json.loads((out / "run.json").read_text())
    assert {h["name"]: h["class_weight"] for h in run["heads"]} == {"ridge": "balanced", "svc": "balanced", "knn": "none"}
    assert any("knn has no class weights" in w["message"] for w in run["warnings"])
    assert main(["run", "--embeddings", f"e={tmp_path / 'e.npz'}", "--heads", "ridge", "--folds", "3",
                 "--bootstrap", "0", "--no-chart", "--out", str(tmp_path / "plain")]) == 0
    assert set(pd.read_csv(tmp_path / "plain" / "folds.csv").class_weight) == {"none"}  # the default


def test_run_writes_the_exchange_report_from_several_readings_and_can_exclude_unusable_ones(tmp_path, capsys):
    """18 tiny photos, a manifest with a second_age for six of them, and readings typed by A (and B flagging one
    photo unusable) in the cache: run writes exchange_report.csv with every human reader and the model, its
    numbers recomputable from predictions.csv and the readings; --exclude-unusable names the flagged photo,
    lists it in skipped.csv and run.json, and evaluates the others."""
    from PIL import Image

    from otolith_core.data import load_dataset
    from otolith_core.readings import add_reading

    rng = np.random.default_rng(11)
    ages = np.repeat([2, 3, 4], 6)
    second = {0: 2, 1: 3, 6: 3, 7: 4, 12: 4, 13: 4}  # manifest second_age: 1, 7 and 13 read differently
    lines = ["path,age,second_age"]
    for i, age in enumerate(ages):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"o{i}.png")
        lines.append(f"o{i}.png,{age},{second.get(i, '')}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    records = load_dataset(tmp_path / "m.csv").records
    typed = {2: 2, 3: 4, 8: 3, 9: 3, 14: 5}  # A
    for i, age in typed.items():
        add_reading(cache, records[i], age, reader="A")
    add_reading(cache, records[5], None, reader="B", flags=["unusable"], comment="cracked")
    run = ["run", "--data", str(tmp_path / "m.csv"), "--models", "pixels-32", "--heads", "ridge", "--folds", "3",
           "--bootstrap", "0", "--no-chart", "--cache-dir", str(cache)]
    assert main([*run, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "exchange: 11 images read by two or more of 3 readers (first reader, manifest second_age, A)" in printed
    assert "1 image(s) in this run are flagged unusable by a reader (e.g. o5.png)" in printed
    report = pd.read_csv(tmp_path / "out" / "exchange_report.csv").set_index("reader")
    assert list(report.index) == ["all human readers", "first reader", "manifest second_age", "A", "pixels-32 / ridge"]
    assert report.kind.tolist() == ["all", "human", "human", "human", "model"]
    # recomputed from the readings and predictions.csv: two readers per image, so a mode only where they agree
    pairs = {i: (int(ages[i]), second.get(i, typed.get(i))) for i in [*second, *typed]}
    agreed = {f"o{i}.png": a for i, (a, b) in pairs.items() if a == b}
    assert report.loc["all human readers", "n_no_mode"] == len(pairs) - len(agreed) == 4
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    model = predictions[(predictions.encoder == "pixels-32") & (predictions.repeat == 0)].set_index("image").pred_age
    assert report.loc["pixels-32 / ridge", "n_images"] == 11
    assert report.loc["pixels-32 / ridge", "bias_mean"] == pytest.approx(
        np.mean([model[i] - a for i, a in agreed.items()]))
    assert report.loc["pixels-32 / ridge", "agreement_with_mode_pct"] == pytest.approx(
        100 * np.mean([model[i] == a for i, a in agreed.items()]))
    tests = pd.read_csv(tmp_path / "out" / "exchange_tests.csv")
    first_vs_a = tests[(tests.reader_a == "first reader") & (tests.reader_b == "A")].iloc[0]
    assert first_vs_a.n_images == 5 and first_vs_a.agreement_pct == pytest.approx(100 * 3 / 5)
    assert set(pd.read_csv(tmp_path / "out" / "exchange_bias.csv").reader) == {"first reader", "manifest second_age",
                                                                                "A", "pixels-32 / ridge"}

    assert main([*run, "--exclude-unusable", "--out", str(tmp_path / "kept")]) == 0
    printed = capsys.readouterr().out
    assert "--exclude-unusable: 1 image(s) flagged unusable left out:\n  o5.png: flagged unusable by B (cracked)" in printed
    assert "o5.png" not in set(pd.read_csv(tmp_path / "kept" / "predictions.csv").image)
    skipped = pd.read_csv(tmp_path / "kept" / "skipped.csv")
    assert skipped.image.tolist() == ["o5.png"] and skipped.reason.tolist() == ["flagged unusable by B (cracked)"]
    excluded = json.loads((tmp_path / "kept" / "run.json").read_text())["excluded_unusable"]
    assert excluded == [{"image": "o5.png", "reason": "flagged unusable by B (cracked)"}]
