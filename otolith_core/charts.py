"""Altair chart builders: results in, ``alt.Chart`` out (the dashboard and the CLI draw the same charts)."""

from __future__ import annotations

from collections.abc import Collection

import altair as alt
import pandas as pd

from .comparison import NO_SKILL
from .metrics import METRIC_LABELS
from .ties import TIE_LEVEL, tied_column

# Sigurdardottir et al. 2023, Atlantic cod, CLIP ViT-L/14@336 + Ridge, 10-fold CV.
PAPER_COD = {"accuracy": 0.5047, "pm1_accuracy": 0.9410, "rmse": 0.84}
PAPER_LABEL = "Sigurðardóttir et al. 2023, cod (CLIP + Ridge)"
BAR_METRICS = ("accuracy", "pm1_accuracy", "rmse")
TIED, APART = "cannot be told apart from the best", "told apart from the best"  # the bars' opacity legend


def _tips(*fields: str) -> list[alt.Tooltip]:
    """A tooltip channel per column, each its own ``alt.Tooltip``.

    Every channel in this module is an Altair channel object, never a plain string or dict: Altair turns one of those
    into a channel by building a look-up table of every Vega-Lite class again (about 7 ms each, several times a
    chart), which made building the Results page's charts take most of a second (tests/test_charts.py checks)."""
    return [alt.Tooltip(field) for field in fields]


def metric_bars(summary: pd.DataFrame, metric: str, *, reference: bool = True, width: int = 260,
                height: int = 300, tie_level: float = TIE_LEVEL) -> alt.Chart:
    """Bars of one metric's mean per encoder (grouped by head), SD error bars, the paper's cod value as a rule,
    and the no-skill baseline's value (always the most common training age) as a dotted rule. With a
    ``<metric>_tied_with_best`` column, the bars of models told apart from the best are faded and those that cannot
    be told apart from it (the best included) are solid, with a legend naming the test and ``tie_level``.

    Parameters
    ----------
    summary : ``Comparison.summary_frame()`` (columns ``encoder, head, <metric>_mean, <metric>_sd``); its
        ``no-skill`` row becomes the dotted rule, not a bar.
    metric : ``accuracy``, ``pm1_accuracy`` or ``rmse``.
    reference : draw the published cod value, labelled as such.
    tie_level : the level the summary's ties were marked at (for the legend).
    """
    no_skill = summary[summary["encoder"] == NO_SKILL]
    summary = summary[summary["encoder"] != NO_SKILL]
    data = summary.assign(
        mean=summary[f"{metric}_mean"],
        low=summary[f"{metric}_mean"] - summary[f"{metric}_sd"].fillna(0),
        high=summary[f"{metric}_mean"] + summary[f"{metric}_sd"].fillna(0),
    )[["encoder", "head", "mean", "low", "high"]]
    ties = tied_column(metric) in summary.columns
    if ties:
        data["tie"] = [TIED if bool(t) else APART for t in summary[tied_column(metric)].fillna(False)]
    title = METRIC_LABELS[metric]
    y_title = f"{title} (mean ± SD over folds)"  # every layer names it, so Vega-Lite shows it once
    base = alt.Chart(data).encode(
        x=alt.X("encoder:N", title=None, sort=None, axis=alt.Axis(labelAngle=-20, labelLimit=150)),
        xOffset=alt.XOffset("head:N", sort=None),
    )
    bars = base.mark_bar().encode(
        y=alt.Y("mean:Q", title=y_title),
        color=alt.Color("head:N", title="head", sort=None),
        tooltip=[*_tips("encoder", "head"), alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                 alt.Tooltip("high:Q", format=".3f"), *(_tips("tie") if ties else [])],
    )
    if ties:
        bars = bars.encode(opacity=alt.Opacity(
            "tie:N", scale=alt.Scale(domain=[TIED, APART], range=[1.0, 0.3]),
            legend=alt.Legend(title=f"corrected t vs the best, Holm, level {tie_level:g}", orient="bottom",
                              direction="vertical", titleLimit=400)))
    errors = base.mark_rule(color="black", strokeWidth=1.5).encode(y=alt.Y("low:Q", title=y_title),
                                                                    y2=alt.Y2("high:Q"))
    layers = [bars, errors]
    if reference and metric in PAPER_COD:
        ref = pd.DataFrame({"value": [PAPER_COD[metric]], "label": [PAPER_LABEL]})
        rule = alt.Chart(ref).mark_rule(strokeDash=[6, 4], color="black").encode(
            y=alt.Y("value:Q", title=y_title), tooltip=_tips("label", "value"))
        text = alt.Chart(ref).mark_text(align="left", dx=2, dy=-6, fontSize=9).encode(
            y=alt.Y("value:Q", title=y_title), x=alt.XValue(0),
            text=alt.TextValue(f"published, cod (CLIP + Ridge): {PAPER_COD[metric]:g}"))
        layers += [rule, text]
    if not no_skill.empty:
        value = float(no_skill[f"{metric}_mean"].iloc[0])
        base_ref = pd.DataFrame({"value": [value], "label": ["no skill: always the most common training age"]})
        layers += [
            alt.Chart(base_ref).mark_rule(strokeDash=[2, 2], color="#b03a2e", strokeWidth=1.5).encode(
                y=alt.Y("value:Q", title=y_title), tooltip=[*_tips("label"), alt.Tooltip("value:Q", format=".3f")]),
            alt.Chart(base_ref).mark_text(align="right", dx=-2, dy=-6, fontSize=9, color="#b03a2e").encode(
                y=alt.Y("value:Q", title=y_title), x=alt.XValue(width), text=alt.TextValue(f"no skill: {value:.3g}")),
        ]
    return alt.layer(*layers).properties(title=title, width=width, height=height)


def comparison_chart(summary: pd.DataFrame, *, n_folds: int, repeats: int = 1, reference: bool = True,
                     tie_level: float = TIE_LEVEL) -> alt.HConcatChart:
    """The three metric bar charts side by side (the CLI's ``comparison.svg``); faded bars: told apart from the best
    (see :func:`metric_bars`)."""
    scheme = f"{repeats} x {n_folds}-fold" if repeats > 1 else f"{n_folds}-fold"
    return alt.hconcat(*(metric_bars(summary, m, reference=reference, tie_level=tie_level)
                         for m in BAR_METRICS)).properties(
        title=f"Otolith age from frozen embeddings: {scheme} cross-validation, mean ± SD over folds")


def fold_lines(folds: pd.DataFrame, metric: str) -> alt.Chart:
    """One line per (encoder, head) across folds: paired differences show as lines that keep their order."""
    data = folds.assign(model=folds["encoder"] + " / " + folds["head"])
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("fold:O", title="fold"),
        y=alt.Y(f"{metric}:Q", title=METRIC_LABELS[metric], scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", title="encoder / head"),
        tooltip=[*_tips("encoder", "head", "fold"), alt.Tooltip(f"{metric}:Q", format=".3f")],
    ).properties(title=f"{METRIC_LABELS[metric]} per fold", width=380, height=220)


def age_histogram(ages: pd.Series, *, n_folds: int | None = None) -> alt.Chart:
    """Images per age; a rule at the number of folds marks ages too sparse for stratified CV."""
    data = ages.value_counts().sort_index().rename_axis("age").reset_index(name="images")
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("age:O", title="reader age (years)"), y=alt.Y("images:Q", title="images"),
        tooltip=_tips("age", "images"))
    if n_folds is None:
        return bars.properties(height=240)
    rule = alt.Chart(pd.DataFrame({"folds": [n_folds]})).mark_rule(color="firebrick", strokeDash=[4, 3]).encode(
        y=alt.Y("folds:Q"), tooltip=[alt.Tooltip("folds:Q", title="folds (fewer images than this are too few)")])
    return alt.layer(bars, rule).properties(height=240)


def confusion_matrix(predictions: pd.DataFrame, *, normalise: bool = False, title: str = "") -> alt.Chart:
    """Reader age (rows) against predicted age (columns); cells within ±1 year are outlined.

    ``predictions`` holds one (encoder, head)'s rows of ``predictions.csv``. With ``normalise`` each
    row sums to 1 (the share of a reader age given each predicted age).
    """
    ages = sorted(set(predictions["true_age"]) | set(predictions["pred_age"]))
    counts = predictions.groupby(["true_age", "pred_age"]).size().rename("n").reset_index()
    grid = pd.MultiIndex.from_product([ages, ages], names=["true_age", "pred_age"]).to_frame(index=False)
    cells = grid.merge(counts, how="left", on=["true_age", "pred_age"]).fillna({"n": 0})
    cells["share"] = cells["n"] / cells.groupby("true_age")["n"].transform("sum").replace(0, 1)
    cells["within_1"] = (cells["true_age"] - cells["pred_age"]).abs() <= 1
    value = "share" if normalise else "n"
    base = alt.Chart(cells).encode(
        x=alt.X("pred_age:O", title="predicted age"), y=alt.Y("true_age:O", title="reader age"))
    heat = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title="row share" if normalise else "images", scale=alt.Scale(scheme="blues")),
        stroke=alt.StrokeValue(**alt.condition("datum.within_1", alt.value("#e4572e"), alt.value(None))),
        strokeWidth=alt.StrokeWidthValue(**alt.condition("datum.within_1", alt.value(1.2), alt.value(0))),
        tooltip=[*_tips("true_age", "pred_age", "n"), alt.Tooltip("share:Q", format=".0%")],
    )
    label = base.mark_text(fontSize=9).encode(
        text=alt.Text(f"{value}:Q", format=".0%" if normalise else "d"),
        color=alt.ColorValue(**alt.condition(f"datum.{value} > {0.5 if normalise else cells['n'].max() / 2}",
                                             alt.value("white"), alt.value("black"))),
    )
    return alt.layer(heat, label).properties(title=title, width=300, height=320)


def age_bias_plot(agebias: pd.DataFrame) -> alt.Chart:
    """Campana's age-bias plot: mean model age ± 95 % CI per reader age against the 1:1 line."""
    data = agebias.assign(model=agebias["encoder"] + " / " + agebias["head"])
    return _bias_plot(data, x="true_age", who="model", x_title="reader age (years)", who_title="encoder / head",
                      y_title="mean model age ± 95 % CI (years)")


def reader_bias_plot(bias: pd.DataFrame) -> alt.Chart:
    """The exchange's age-bias plot (``exchange.ExchangeReport.bias``): each reader's and model's mean age ± 95 %
    CI per modal age of the human readers, against the 1:1 line."""
    data = bias.rename(columns={"mean_age": "mean_pred"})
    return _bias_plot(data, x="modal_age", who="reader", x_title="modal age of the human readers (years)",
                      who_title="reader", y_title="mean age ± 95 % CI (years)")


def _bias_plot(data: pd.DataFrame, *, x: str, who: str, x_title: str, who_title: str, y_title: str) -> alt.Chart:
    ages = pd.DataFrame({"age": sorted(set(data[x]))})
    identity = alt.Chart(ages).mark_line(color="grey", strokeDash=[4, 4]).encode(x=alt.X("age:Q"), y=alt.Y("age:Q"))
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
        color=alt.Color(f"{who}:N", title=who_title))
    points = base.mark_point(filled=True, size=50).encode(
        y=alt.Y("mean_pred:Q", title=y_title, scale=alt.Scale(zero=False)),
        tooltip=[*_tips(who, x, "n"), alt.Tooltip("mean_pred:Q", format=".2f"),
                 alt.Tooltip("ci_low:Q", format=".2f"), alt.Tooltip("ci_high:Q", format=".2f")])
    bars = base.mark_rule().encode(y=alt.Y("ci_low:Q"), y2=alt.Y2("ci_high:Q"))
    return alt.layer(identity, bars, points).properties(title="Age bias (dashed: 1:1)", height=320)


def learning_curve_chart(curve: pd.DataFrame, metric: str = "accuracy") -> alt.Chart:
    """Mean ± SD over folds of a metric against the number of training images, one line per model."""
    data = curve.assign(model=curve["encoder"] + " / " + curve["head"])
    stats = data.groupby(["model", "train_fraction"]).agg(
        n_train=("n_train", "mean"), mean=(metric, "mean"), sd=(metric, "std")).reset_index()
    stats["low"], stats["high"] = stats["mean"] - stats["sd"].fillna(0), stats["mean"] + stats["sd"].fillna(0)
    base = alt.Chart(stats).encode(x=alt.X("n_train:Q", title="training images per fold"),
                                   color=alt.Color("model:N", title="encoder / head"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q"), y2=alt.Y2("high:Q"))
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q", title=f"{METRIC_LABELS[metric]} (mean ± SD over folds)"),
        tooltip=[*_tips("model", "train_fraction"), alt.Tooltip("n_train:Q", format=".0f"),
                 alt.Tooltip("mean:Q", format=".3f")])
    return alt.layer(band, line).properties(title=f"Learning curve: {METRIC_LABELS[metric]}", height=320)


PER_AGE_VALUES = {"recall": "Recall (share read right)", "precision": "Precision", "f1": "F1",
                  "pm1_share": "Share within ±1 year", "mean_error": "Mean error (model − reader, years)"}


def per_age_heatmap(per_age: pd.DataFrame, value: str = "recall") -> alt.Chart:
    """A heat table: one row per model, one column per reader age, the value written in each cell.

    Parameters
    ----------
    per_age : ``Comparison.per_age_frame()``.
    value : a column of it: ``recall``, ``precision``, ``f1``, ``pm1_share`` or ``mean_error`` (diverging colours).
    """
    if value not in PER_AGE_VALUES:
        raise ValueError(f"unknown per-age value {value!r}; choose from {list(PER_AGE_VALUES)}")
    data = per_age.assign(model=per_age["encoder"] + " / " + per_age["head"], shown=per_age[value])
    diverging = value == "mean_error"
    limit = float(data["shown"].abs().max() or 1) if diverging else 1.0
    scale = (alt.Scale(scheme="redblue", domain=[-limit, limit]) if diverging
             else alt.Scale(scheme="blues", domain=[0, 1]))
    base = alt.Chart(data).encode(x=alt.X("age:O", title="reader age (years)"), y=alt.Y("model:N", title=None, sort=None))
    cells = base.mark_rect().encode(
        color=alt.Color("shown:Q", title=PER_AGE_VALUES[value], scale=scale),
        tooltip=[*_tips("encoder", "head", "age", "n"), alt.Tooltip("recall:Q", format=".2f"),
                 alt.Tooltip("precision:Q", format=".2f"), alt.Tooltip("f1:Q", format=".2f"),
                 alt.Tooltip("mean_error:Q", format="+.2f"), alt.Tooltip("pm1_share:Q", format=".2f")])
    text = base.mark_text(fontSize=10).encode(text=alt.Text("shown:Q", format="+.1f" if diverging else ".2f"))
    return alt.layer(cells, text).properties(title=PER_AGE_VALUES[value] + " per reader age (first repeat)",
                                              height=alt.Step(22))


def embedding_map(points: pd.DataFrame, *, title: str, height: int = 420,
                  selected: Collection[str] = ()) -> alt.Chart:
    """A 2-D map of one encoder's embeddings: a point per image coloured by reader age, ages in the tooltip.

    A click selects the point nearest to it (among thousands a point is too small to hit; the selection parameter
    ``picked`` carries its ``image``); a drag draws a box (the interval parameter ``boxed`` carries its extent in
    map units, ``{"x": [x0, x1], "y": [y0, y1]}``). No image data goes into the chart, so thousands of points stay
    fast: no thumbnails on hover either, since each would travel with every rerun.

    Parameters
    ----------
    points : columns ``x, y, image, reader_age, model_age``, one row per image.
    title : the chart's title.
    height : in pixels.
    selected : ids of the images selected (by a box on this map or on another encoder's): drawn solid with a ring,
        the others faded. Empty: every image drawn alike, a clicked one solid.

    Returns
    -------
    The chart; its data gains a boolean ``selected`` column.
    """
    if isinstance(selected, str):
        raise TypeError(f"selected must be a collection of image ids, not the string {selected!r}")
    points = points.assign(selected=points["image"].isin(list(selected)))
    picked = alt.selection_point(name="picked", fields=["image"], on="click", nearest=True, clear="dblclick")
    boxed = alt.selection_interval(name="boxed", encodings=["x", "y"], clear="dblclick")
    if points["selected"].any():
        opacity = alt.OpacityValue(**alt.condition(alt.datum.selected, alt.value(0.95), alt.value(0.15)))
    else:
        opacity = alt.OpacityValue(**alt.condition(picked, alt.value(0.9), alt.value(0.25)))
    return alt.Chart(points, title=title).mark_circle(size=40, stroke="black").encode(
        x=alt.X("x:Q", title="1st axis", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("y:Q", title="2nd axis", axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color("reader_age:Q", title="reader age", scale=alt.Scale(scheme="viridis")),
        opacity=opacity,
        strokeWidth=alt.StrokeWidthValue(**alt.condition(alt.datum.selected, alt.value(1.2), alt.value(0))),
        tooltip=[alt.Tooltip("image:N"), alt.Tooltip("reader_age:Q", title="reader age"),
                 alt.Tooltip("model_age:Q", title="model age")],
    ).add_params(picked, boxed).properties(height=height)
