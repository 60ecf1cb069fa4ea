"""Results page: summary table, metric bars against the paper, per-fold lines, paired tests, CSV downloads."""

import pandas as pd
import streamlit as st

from otolith_core.charts import BAR_METRICS, PAPER_LABEL, fold_lines, metric_bars
from otolith_core.metrics import METRIC_LABELS
from otolith_core.report import csv_bytes, result_tables
from views.common import current_comparison, run_settings

st.title("Results")
comparison = current_comparison()
if comparison is None:
    st.stop()
settings = run_settings()
if settings.is_demo:
    st.warning("**Synthetic demo**: numbers from drawn images, not otoliths.")
for note in comparison.warnings:
    st.warning(note)

summary = comparison.summary_frame()
st.subheader(f"Summary: {comparison.n_folds}-fold stratified CV (seed {comparison.seed}), mean ± SD over folds")
table = pd.DataFrame({"encoder": summary["encoder"], "head": summary["head"], "images": summary["n_images"]})
for metric in ("accuracy", "pm1_accuracy", "rmse", "mae"):
    mean, sd = summary[f"{metric}_mean"], summary[f"{metric}_sd"]
    percent = metric in ("accuracy", "pm1_accuracy")
    table[METRIC_LABELS[metric]] = [f"{m:.2%} ± {s:.2%}" if percent else f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd)]
st.dataframe(table, hide_index=True, width="stretch")
st.caption(f"Dashed lines: {PAPER_LABEL}: accuracy 50.47 %, ±1 accuracy 94.10 %, RMSE 0.84 (published values, "
           "not computed here).")

for column, metric in zip(st.columns(3), BAR_METRICS):
    column.altair_chart(metric_bars(summary, metric, height=380), width="stretch")

st.subheader("Per fold")
folds = comparison.folds_frame()
metric = st.radio("Metric", list(BAR_METRICS), horizontal=True, format_func=METRIC_LABELS.get, key="fold_metric")
st.altair_chart(fold_lines(folds, metric), width="stretch")

st.subheader("Paired t-tests across folds")
tests = comparison.tests_frame()
if tests.empty:
    st.caption("Choose at least two encoder/head combinations to compare them.")
else:
    st.caption("mean_diff = mean over folds of (A − B). Folds share training images, so this t-test is "
               "over-confident; read small p-values with care.")
    st.dataframe(tests.assign(metric=tests["metric"].map(METRIC_LABELS)), hide_index=True, width="stretch",
                 column_config={"mean_diff": st.column_config.NumberColumn(format="%.4f"),
                                "t": st.column_config.NumberColumn(format="%.3f"),
                                "p_value": st.column_config.NumberColumn(format="%.4g")})

st.subheader("Downloads")
st.caption("The same files `otolith run` writes for these settings.")
for column, (name, frame) in zip(st.columns(5), result_tables(comparison).items()):
    column.download_button(name, csv_bytes(frame), file_name=name, mime="text/csv", key=f"download-{name}")
