"""Altair chart builders: results in, ``alt.Chart`` out (the dashboard and the CLI draw the same charts)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .metrics import METRIC_LABELS

# Sigurdardottir et al. 2023, Atlantic cod, CLIP ViT-L/14@336 + Ridge, 10-fold CV.
PAPER_COD = {"accuracy": 0.5047, "pm1_accuracy": 0.9410, "rmse": 0.84}
PAPER_LABEL = "Sigurðardóttir et al. 2023, cod (CLIP + Ridge)"
BAR_METRICS = ("accuracy", "pm1_accuracy", "rmse")


def metric_bars(summary: pd.DataFrame, metric: str, *, reference: bool = True, width: int = 260) -> alt.Chart:
    """Bars of one metric's mean per (encoder, head), SD error bars, the paper's cod value as a rule.

    Parameters
    ----------
    summary : ``Comparison.summary_frame()`` (columns ``encoder, head, <metric>_mean, <metric>_sd``).
    metric : ``accuracy``, ``pm1_accuracy`` or ``rmse``.
    reference : draw the published cod value, labelled as such.
    """
    data = summary.assign(
        model=summary["encoder"] + " / " + summary["head"],
        mean=summary[f"{metric}_mean"],
        low=summary[f"{metric}_mean"] - summary[f"{metric}_sd"].fillna(0),
        high=summary[f"{metric}_mean"] + summary[f"{metric}_sd"].fillna(0),
    )[["model", "encoder", "head", "mean", "low", "high"]]
    title = METRIC_LABELS[metric]
    base = alt.Chart(data).encode(x=alt.X("model:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30, labelLimit=220)))
    y_title = f"{title} (mean ± SD over folds)"  # every layer names it, so Vega-Lite shows it once
    bars = base.mark_bar().encode(
        y=alt.Y("mean:Q", title=y_title),
        color=alt.Color("encoder:N", legend=None),
        tooltip=["encoder", "head", alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                 alt.Tooltip("high:Q", format=".3f")],
    )
    errors = base.mark_rule(color="black", strokeWidth=1.5).encode(y=alt.Y("low:Q", title=y_title), y2="high:Q")
    layers = [bars, errors]
    if reference and metric in PAPER_COD:
        ref = pd.DataFrame({"value": [PAPER_COD[metric]], "label": [PAPER_LABEL]})
        rule = alt.Chart(ref).mark_rule(strokeDash=[6, 4], color="black").encode(
            y=alt.Y("value:Q", title=y_title), tooltip=["label", "value"])
        text = alt.Chart(ref).mark_text(align="left", dx=2, dy=-6, fontSize=9).encode(
            y=alt.Y("value:Q", title=y_title), x=alt.value(0), text=alt.value(f"published, cod (CLIP + Ridge): {PAPER_COD[metric]:g}"))
        layers += [rule, text]
    return alt.layer(*layers).properties(title=title, width=width, height=240)


def comparison_chart(summary: pd.DataFrame, *, n_folds: int, reference: bool = True) -> alt.HConcatChart:
    """The three metric bar charts side by side (the CLI's ``comparison.svg``)."""
    return alt.hconcat(*(metric_bars(summary, m, reference=reference) for m in BAR_METRICS)).properties(
        title=f"Otolith age from frozen embeddings: {n_folds}-fold cross-validation, mean ± SD over folds")
