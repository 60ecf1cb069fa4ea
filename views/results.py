"""Results page: summary table, metric bars against the paper, per-fold lines, paired tests, CSV downloads."""

import pandas as pd
import streamlit as st

from otolith_core.charts import (BAR_METRICS, PAPER_COD, PAPER_LABEL, PER_AGE_VALUES, age_bias_plot, fold_lines,
                                 learning_curve_chart, metric_bars, per_age_heatmap)
from otolith_core.encoders import REDUCED_PRECISION_COSINE_FLOOR
from otolith_core.comparison import HELD_OUT_SCOPE, NO_SKILL, skipped_frame
from otolith_core.cross_validation import model_label
from otolith_core.fish_level import MEDIAN_RULE, PROBABILITY_RULE, REGRESSION_RULE
from otolith_core.metrics import METRIC_LABELS
from otolith_core.ties import TIE_SENTENCE, TIED_METRICS, best_model, tied_column
from views.comparison import current_comparison
from views import cached
from views.widgets import chart, result_downloads, show_note

st.title("Results")
shown = current_comparison()
if shown is None:
    st.stop()
settings, comparison, key = shown.settings, shown.comparison, shown.key
if settings.is_demo:
    st.warning("**Synthetic demo**: numbers from drawn images, not otoliths.")
for note in comparison.warnings:
    show_note(note)
left_out = [s for s in comparison.skipped if s not in shown.dataset.skipped]  # the Data page lists the others
if left_out:
    images = "1 image" if len(left_out) == 1 else f"{len(left_out)} images"
    with st.expander(f"{images} left out of this comparison (in skipped.csv)"):
        st.dataframe(skipped_frame(left_out), hide_index=True, width="stretch")

BEST, TIED = " ★", " ●"  # marks in the table: the best model of a column, one that cannot be told apart from it
summary = cached.derived((key, "summary", settings.tie_level),
                         lambda: comparison.summary_frame(tie_level=settings.tie_level))
seed = "" if comparison.holdout_column else f", seed {comparison.seed}"  # leave-one-group-out draws nothing
st.subheader(f"Summary: {comparison.folds_text}{seed}; mean ± SD over folds")
table = pd.DataFrame({"encoder": summary["encoder"], "head": summary["head"], "images": summary["n_images"]})
for metric in ("accuracy", "pm1_accuracy", "rmse", "mae", "macro_f1"):
    mean, sd = summary[f"{metric}_mean"], summary[f"{metric}_sd"]
    percent = metric in ("accuracy", "pm1_accuracy", "macro_f1")
    table[METRIC_LABELS[metric]] = [f"{m:.2%} ± {s:.2%}" if percent else f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd)]
    if metric in TIED_METRICS and comparison.results:
        models = summary["encoder"] != NO_SKILL
        best = best_model(dict(zip(zip(summary["encoder"][models], summary["head"][models]),
                                   summary[f"{metric}_mean"][models])), metric)
        marks = [BEST if (e, h) == best else TIED if pd.notna(t) and t else ""
                 for e, h, t in zip(summary["encoder"], summary["head"], summary[tied_column(metric)])]
        table[METRIC_LABELS[metric]] = table[METRIC_LABELS[metric]] + marks
for metric in ("accuracy", "pm1_accuracy", "rmse"):
    low, high = summary[f"{metric}_ci_low"], summary[f"{metric}_ci_high"]
    fmt = "{:.1%}" if metric != "rmse" else "{:.3f}"
    table[f"{METRIC_LABELS[metric]} 95 % CI"] = [
        "" if pd.isna(lo) else f"{fmt.format(lo)} – {fmt.format(hi)}" for lo, hi in zip(low, high)]
st.dataframe(table, hide_index=True, width="stretch")
if comparison.results:
    st.caption(f"**{BEST.strip()}** the best model of a column; **{TIED.strip()}** a model that "
               f"{TIE_SENTENCE.format(level=settings.tie_level)}. Unmarked: told apart from the best (worse). The "
               "level is set in the sidebar; summary.csv's `*_tied_with_best` columns hold the marks (the best is "
               "tied with itself; no-skill is in no test).")
unit = comparison.group_unit
st.caption("± is the SD over folds; the 95 % intervals are a bootstrap of the first repeat's out-of-fold "
           f"predictions ({comparison.bootstrap_draws} draws, whole {'fish' if unit in (None, 'fish') else unit} "
           f"groups resampled{'' if unit else ' (each image its own fish unless fish_id says otherwise)'}).")
models = summary[summary["encoder"] != "no-skill"]
st.caption("Feature scaling, fitted in each training fold: " + ", ".join(dict.fromkeys(
    f"{e} {s}" for e, s in zip(models["encoder"], models["scaling"]))) + " (the `scaling` column of summary.csv, "
           "folds.csv and predictions.csv; the sidebar can set one for every encoder).")
st.caption("**no-skill / most-frequent** predicts every fish as the most common age of its training fold, on the "
           "same folds: a model at that value (dotted lines in the charts) learned nothing from the images. It is in "
           "no paired test.")
st.caption(f"Dashed lines: {PAPER_LABEL}: accuracy {PAPER_COD['accuracy']:.2%}, ±1 accuracy "
           f"{PAPER_COD['pm1_accuracy']:.2%}, RMSE {PAPER_COD['rmse']:g} (published values, not computed here).")
if comparison.precisions:
    st.caption("Embeddings computed in: " + ", ".join(f"{name} {p}" for name, p in comparison.precisions.items())
               + f" (bf16/fp16: reduced-precision autocast, within cosine {REDUCED_PRECISION_COSINE_FLOOR:g} of fp32; "
                 "see the README).")
for column, metric in zip(st.columns(3), BAR_METRICS):
    chart(column, (key, "bars", metric, settings.tie_level),
          lambda metric=metric: metric_bars(summary, metric, height=380, tie_level=settings.tie_level))
if comparison.results:
    st.caption(f"Faded bars: told apart from the best at level {settings.tie_level:g} (corrected t against the best, "
               "Holm); solid bars cannot be told apart from it.")

st.subheader("Per fish")
refused = comparison.fish_scores_refused
if refused is not None:
    show_note(refused)
else:
    per_fish = cached.derived((key, "per fish"), comparison.per_fish_frame)
    photo = summary.set_index(["encoder", "head"])
    fish_table = pd.DataFrame({"encoder": per_fish["encoder"], "head": per_fish["head"], "fish": per_fish["n_fish"]})
    for metric in ("accuracy", "pm1_accuracy", "rmse"):
        percent = metric != "rmse"
        for level, frame in (("per photo", photo.loc[list(zip(per_fish["encoder"], per_fish["head"]))].reset_index()),
                             ("per fish", per_fish)):
            mean, sd = frame[f"{metric}_mean"], frame[f"{metric}_sd"]
            fish_table[f"{METRIC_LABELS[metric]} {level}"] = [
                f"{m:.2%} ± {s:.2%}" if percent else f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd)]
    st.dataframe(fish_table, hide_index=True, width="stretch")
    several = int(per_fish["n_fish_several"].iloc[0])
    st.caption(f"{several} of {int(per_fish['n_fish'].iloc[0])} fish have several photos. A fish's prediction from "
               f"its photos together: ridge and ridge-cv, the {REGRESSION_RULE}; logistic, the {PROBABILITY_RULE}; "
               f"svc, knn and no-skill, the {MEDIAN_RULE} (4 and 5 give 4, 5 and 6 give 6). Mean ± SD over the same "
               "folds as the summary (every repeat), each fold scored on its fish; a fish's photos are all in one "
               "test fold. per_fish.csv holds every metric, fish_predictions.csv every fish's prediction.")
POOLED = "all values pooled"
if comparison.holdout_column:
    column = comparison.holdout_column
    st.subheader(f"Per held-out {column}")
    st.caption(f"Each {column} was the test fold once, the models trained on all the others: the score on each "
               "value beside the pooled one (all out-of-fold predictions together; the summary above averages the "
               "folds instead, each value weighing the same). **unseen age**: test images whose age no training "
               "image had. per_holdout.csv holds every metric.")
    per = comparison.per_holdout_frame()
    per["model"] = [model_label(e, h) for e, h in zip(per["encoder"], per["head"])]
    per["column"] = [v if s == HELD_OUT_SCOPE else POOLED for v, s in zip(per["held_out"], per["scope"])]
    per_metric = st.radio("Metric", ["accuracy", "pm1_accuracy", "rmse"], horizontal=True,
                          format_func=METRIC_LABELS.get, key="holdout_metric")
    wide = per.pivot(index="model", columns="column", values=per_metric)
    wide = wide[[*comparison.held_out, POOLED]].reindex(list(dict.fromkeys(per["model"])))
    images = per.pivot(index="model", columns="column", values="n_test").iloc[0]
    unseen = per.pivot(index="model", columns="column", values="n_unseen_age").iloc[0]
    wide.columns = [f"{c} ({images[c]} images{f', {unseen[c]} unseen age' if unseen[c] else ''})" for c in wide.columns]
    fmt = "%.3f" if per_metric == "rmse" else "%.1f%%"
    shown = wide if per_metric == "rmse" else wide * 100
    st.dataframe(shown.reset_index(), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format=fmt) for c in shown.columns})

st.subheader("Per fold")
metric = st.radio("Metric", list(BAR_METRICS), horizontal=True, format_func=METRIC_LABELS.get, key="fold_metric")
chart(st, (key, "per fold", metric), lambda: fold_lines(comparison.folds_frame(), metric))

st.subheader("Is one model better than another?")
tests = cached.derived((key, "tests"), comparison.tests_frame)
if tests.empty:
    st.caption("Choose at least two encoder/head combinations to compare them.")
else:
    st.markdown(
        "The **naive** paired t-test treats the folds as independent, but every two training folds share most of "
        "their images, so it is over-confident. The **corrected** test (Nadeau & Bengio 2003) widens the variance "
        "by the test/train size ratio; quote it, and use repeated CV (sidebar) for more folds."
        + (f" Here the folds are the held-out {comparison.holdout_column} values, of unequal sizes: the correction "
           "uses their mean test/train ratio." if comparison.holdout_column else ""))
    key_cols = ["metric", "encoder_a", "head_a", "encoder_b", "head_b"]
    naive = tests[tests["test"] == "paired_t"].set_index(key_cols)
    corrected = tests[tests["test"] == "corrected_t"].set_index(key_cols)
    side = pd.DataFrame({"mean difference (A − B)": naive["mean_diff"], "naive t": naive["t"],
                         "naive p": naive["p_value"], "corrected t": corrected["t"], "corrected p": corrected["p_value"],
                         "corrected p (Holm)": corrected["p_holm"]}).reset_index()
    side["metric"] = side["metric"].map(METRIC_LABELS)
    st.dataframe(side, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4g") for c in side.columns[5:]})
    with st.expander("All tests: naive t, corrected t, Wilcoxon signed-rank, exact McNemar (first repeat)"):
        st.dataframe(tests, hide_index=True, width="stretch")

st.subheader("Age-reading precision and bias (model against reader)")
precision = summary[["encoder", "head", "ape_mean", "ape_sd", "cv_mean", "cv_sd", "rmse_raw_mean"]].rename(columns={
    "ape_mean": "APE % (mean)", "ape_sd": "APE % (SD)", "cv_mean": "CV % (mean)", "cv_sd": "CV % (SD)",
    "rmse_raw_mean": "RMSE of unrounded ridge"})
st.dataframe(precision, hide_index=True, width="stretch")
left, right = st.columns([3, 2])
chart(left, (key, "age bias"), lambda: age_bias_plot(comparison.agebias_frame()))
right.caption("Bowker's test of symmetry of the reader-vs-model age table (first repeat): a small p means the "
              "model systematically reads older or younger than the reader for some ages.")
right.dataframe(cached.derived((key, "symmetry"), lambda: comparison.symmetry_frame().drop(columns="test")),
                hide_index=True, width="stretch")

st.subheader("Per reader age")
st.caption("Old fish are rare and hard: a model can score well overall and still never read them right. "
           "Hover a cell for every number; per_age.csv holds them all.")
per_age_value = st.radio("Value", list(PER_AGE_VALUES), horizontal=True, format_func=PER_AGE_VALUES.get,
                         key="per_age_value")
chart(st, (key, "per age", per_age_value), lambda: per_age_heatmap(comparison.per_age_frame(), per_age_value))

if comparison.learning_curve is not None:
    st.subheader("Learning curve")
    curve_metric = st.radio("Metric", list(BAR_METRICS), horizontal=True, format_func=METRIC_LABELS.get,
                            key="curve_metric")
    chart(st, (key, "learning curve", curve_metric),
          lambda: learning_curve_chart(comparison.learning_curve_frame(), curve_metric))

st.subheader("Downloads")
st.caption("The same files `otolith run` writes for these settings; run.json records how they were made.")
result_downloads(comparison, settings, key)
