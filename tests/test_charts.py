"""Chart builders: the Vega-Lite spec each one returns holds the data and encodings the pages rely on.

``to_dict()`` also validates every spec against Vega-Lite's schema.
"""

import numpy as np
import pandas as pd
import pytest

from otolith_core.charts import (
    BAR_METRICS, PAPER_COD, PAPER_LABEL, age_bias_plot, age_histogram, comparison_chart, confusion_matrix,
    embedding_map, fold_lines, learning_curve_chart, metric_bars,
)
from otolith_core.metrics import METRIC_LABELS


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def _rows(spec: dict, layer: dict) -> list[dict]:
    """The data rows a layer draws (Altair hoists every data frame into ``datasets``)."""
    return spec["datasets"][(layer.get("data") or spec["data"])["name"]]


def _summary() -> pd.DataFrame:
    frame = pd.DataFrame({"encoder": ["enc-a", "enc-a", "enc-b"], "head": ["ridge", "svc", "ridge"]})
    for k, metric in enumerate(BAR_METRICS):
        frame[f"{metric}_mean"] = [0.40 + k, 0.55 + k, 0.70 + k]
        frame[f"{metric}_sd"] = [0.10, np.nan, 0.05]  # NaN: a single fold has no SD
    return frame


@pytest.mark.parametrize("metric", BAR_METRICS)
def test_metric_bars_error_bars_span_mean_minus_to_plus_sd(metric):
    summary = _summary()
    spec = metric_bars(summary, metric).to_dict()
    bars, errors = _layers(spec)[:2]
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["y"]["field"] == "mean"
    assert bars["encoding"]["x"]["field"] == "encoder" and bars["encoding"]["xOffset"]["field"] == "head"
    assert errors["mark"]["type"] == "rule"
    assert (errors["encoding"]["y"]["field"], errors["encoding"]["y2"]["field"]) == ("low", "high")
    rows = pd.DataFrame(_rows(spec, errors))
    mean, sd = summary[f"{metric}_mean"], summary[f"{metric}_sd"].fillna(0)
    np.testing.assert_allclose(rows["mean"], mean)
    np.testing.assert_allclose(rows["low"], mean - sd)
    np.testing.assert_allclose(rows["high"], mean + sd)
    assert list(rows.encoder) == list(summary.encoder) and list(rows["head"]) == list(summary["head"])
    assert spec["title"] == METRIC_LABELS[metric]


@pytest.mark.parametrize("metric", BAR_METRICS)
def test_metric_bars_draw_the_papers_cod_value_as_a_dashed_rule(metric):
    spec = metric_bars(_summary(), metric).to_dict()
    [rule] = [layer for layer in _layers(spec) if layer["mark"].get("strokeDash")]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["field"] == "value"
    assert _rows(spec, rule) == [{"value": PAPER_COD[metric], "label": PAPER_LABEL}]
    [text] = [layer for layer in _layers(spec) if layer["mark"]["type"] == "text"]
    assert text["encoding"]["text"]["value"].endswith(f"{PAPER_COD[metric]:g}")
    without = metric_bars(_summary(), metric, reference=False).to_dict()
    assert [layer["mark"]["type"] for layer in _layers(without)] == ["bar", "rule"]
    assert not any(layer["mark"].get("strokeDash") for layer in _layers(without))


def test_comparison_chart_puts_the_three_metrics_side_by_side_and_names_the_scheme():
    spec = comparison_chart(_summary(), n_folds=10).to_dict()
    assert [panel["title"] for panel in spec["hconcat"]] == [METRIC_LABELS[m] for m in BAR_METRICS]
    assert "10-fold cross-validation" in spec["title"] and " x " not in spec["title"]
    assert "3 x 5-fold" in comparison_chart(_summary(), n_folds=5, repeats=3).to_dict()["title"]


def test_fold_lines_draw_one_line_per_encoder_and_head():
    folds = pd.DataFrame({"encoder": ["a"] * 3 + ["b"] * 3, "head": ["ridge"] * 6, "fold": [0, 1, 2] * 2,
                          "rmse": [0.8, 0.9, 0.7, 1.1, 1.0, 1.2]})
    spec = fold_lines(folds, "rmse").to_dict()
    encoding = spec["encoding"]
    assert spec["mark"]["type"] == "line" and encoding["y"]["field"] == "rmse" and encoding["x"]["field"] == "fold"
    assert encoding["color"]["field"] == "model"
    rows = pd.DataFrame(_rows(spec, spec))
    assert sorted(set(rows.model)) == ["a / ridge", "b / ridge"] and len(rows) == 6


def test_age_histogram_counts_images_per_age_and_marks_the_fold_count():
    ages = pd.Series([3, 1, 3, 2, 3, 1, 7])
    spec = age_histogram(ages, n_folds=10).to_dict()
    bars, rule = _layers(spec)
    assert bars["mark"]["type"] == "bar"
    assert {r["age"]: r["images"] for r in _rows(spec, bars)} == {1: 2, 2: 1, 3: 3, 7: 1}
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["field"] == "folds"
    assert _rows(spec, rule) == [{"folds": 10}]
    plain = age_histogram(ages).to_dict()
    assert "layer" not in plain and plain["mark"]["type"] == "bar"


def _predictions() -> pd.DataFrame:
    # reader age 2 predicted as 2, 2, 3; reader age 3 as 3, 5; reader age 4 as 4; age 5 is never a reader age
    return pd.DataFrame({"true_age": [2, 2, 2, 3, 3, 4], "pred_age": [2, 2, 3, 3, 5, 4]})


def test_confusion_matrix_counts_every_cell_of_the_full_age_grid():
    predictions = _predictions()
    spec = confusion_matrix(predictions).to_dict()
    heat, label = _layers(spec)
    assert heat["mark"]["type"] == "rect" and heat["encoding"]["color"]["field"] == "n"
    assert (heat["encoding"]["x"]["field"], heat["encoding"]["y"]["field"]) == ("pred_age", "true_age")
    assert label["encoding"]["text"]["field"] == "n"
    cells = pd.DataFrame(_rows(spec, heat)).set_index(["true_age", "pred_age"])
    ages = [2, 3, 4, 5]
    assert len(cells) == len(ages) ** 2  # every (reader, predicted) pair, zeros included
    expected = pd.crosstab(predictions.true_age, predictions.pred_age).reindex(index=ages, columns=ages, fill_value=0)
    for (true, pred), n in expected.stack().items():
        assert cells.loc[(true, pred), "n"] == n, (true, pred)
    assert cells["n"].sum() == len(predictions)
    within = cells["within_1"]
    assert within[(2, 3)] and within[(3, 2)] and not within[(3, 5)] and not within[(2, 4)]


def test_confusion_matrix_row_shares_sum_to_one_when_normalised():
    predictions = _predictions()
    spec = confusion_matrix(predictions, normalise=True).to_dict()
    heat, label = _layers(spec)
    assert heat["encoding"]["color"]["field"] == "share" and label["encoding"]["text"]["field"] == "share"
    cells = pd.DataFrame(_rows(spec, heat))
    sums = cells.groupby("true_age")["share"].sum()
    np.testing.assert_allclose(sums[[2, 3, 4]], 1.0)  # every reader age that has images
    assert sums[5] == 0  # a predicted-only age has no row to share out
    share = cells.set_index(["true_age", "pred_age"])["share"]
    assert share[(2, 2)] == pytest.approx(2 / 3) and share[(3, 5)] == pytest.approx(1 / 2)


def test_age_bias_plot_draws_mean_and_interval_per_reader_age_against_the_one_to_one_line():
    agebias = pd.DataFrame({"encoder": ["e"] * 3, "head": ["ridge"] * 3, "true_age": [2, 3, 5], "n": [4, 5, 2],
                            "mean_pred": [2.5, 3.1, 4.0], "ci_low": [2.0, 2.6, np.nan], "ci_high": [3.0, 3.6, np.nan]})
    spec = age_bias_plot(agebias).to_dict()
    identity, bars, points = _layers(spec)
    assert [r["age"] for r in _rows(spec, identity)] == [2, 3, 5]
    assert identity["encoding"]["x"]["field"] == identity["encoding"]["y"]["field"] == "age"
    assert (bars["encoding"]["y"]["field"], bars["encoding"]["y2"]["field"]) == ("ci_low", "ci_high")
    assert points["encoding"]["y"]["field"] == "mean_pred" and points["encoding"]["x"]["field"] == "true_age"
    assert {r["model"] for r in _rows(spec, points)} == {"e / ridge"}


def test_learning_curve_chart_shows_mean_and_sd_over_folds():
    curve = pd.DataFrame({"encoder": ["e"] * 4, "head": ["ridge"] * 4, "train_fraction": [0.5, 0.5, 1.0, 1.0],
                          "repeat": [0] * 4, "fold": [0, 1, 0, 1], "n_train": [10, 12, 20, 24],
                          "accuracy": [0.3, 0.5, 0.6, 0.6], "pm1_accuracy": [0.8] * 4, "rmse": [1.0] * 4})
    spec = learning_curve_chart(curve, "accuracy").to_dict()
    band, line = _layers(spec)
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == ("low", "high")
    assert line["encoding"]["y"]["field"] == "mean" and line["encoding"]["x"]["field"] == "n_train"
    rows = pd.DataFrame(_rows(spec, line)).set_index("train_fraction")
    sd = np.std([0.3, 0.5], ddof=1)
    assert rows.loc[0.5, "n_train"] == 11 and rows.loc[0.5, "mean"] == pytest.approx(0.4)
    assert rows.loc[0.5, "low"] == pytest.approx(0.4 - sd) and rows.loc[0.5, "high"] == pytest.approx(0.4 + sd)
    assert rows.loc[1.0, "low"] == rows.loc[1.0, "high"] == pytest.approx(0.6)



def test_per_age_heatmap_has_a_cell_per_model_and_age_with_its_value():
    from otolith_core.charts import per_age_heatmap
    from otolith_core.comparison import PER_AGE_COLUMNS, per_age_scores

    rows = [{"encoder": "enc-a", "head": "ridge", **r}
            for r in per_age_scores(np.array([1, 1, 2, 2, 3]), np.array([1, 2, 2, 2, 1]))]
    per_age = pd.DataFrame(rows, columns=PER_AGE_COLUMNS)
    spec = per_age_heatmap(per_age, "recall").to_dict()
    cells, text = _layers(spec)
    data = _rows(spec, cells)
    assert [(r["model"], r["age"], r["shown"]) for r in data] == [("enc-a / ridge", 1, 0.5), ("enc-a / ridge", 2, 1.0),
                                                                   ("enc-a / ridge", 3, 0.0)]
    assert cells["mark"]["type"] == "rect" and text["encoding"]["text"]["field"] == "shown"
    diverging = per_age_heatmap(per_age, "mean_error").to_dict()
    assert _layers(diverging)[0]["encoding"]["color"]["scale"]["domain"] == [-2.0, 2.0]  # symmetric around 0
    with pytest.raises(ValueError, match="recall"):
        per_age_heatmap(per_age, "kappa")


def test_the_no_skill_row_is_a_dotted_rule_not_a_bar():
    summary = _summary()
    baseline = {"encoder": "no-skill", "head": "most-frequent"}
    for k, metric in enumerate(BAR_METRICS):
        baseline[f"{metric}_mean"], baseline[f"{metric}_sd"] = 0.2 + k, 0.01
    summary = pd.concat([summary, pd.DataFrame([baseline])], ignore_index=True)
    spec = metric_bars(summary, "accuracy").to_dict()
    layers = _layers(spec)
    bars = _rows(spec, layers[0])
    assert "no-skill" not in {row["encoder"] for row in bars} and len(bars) == 3
    dotted = [layer for layer in layers if layer["mark"].get("strokeDash") == [2, 2]]
    assert len(dotted) == 1 and _rows(spec, dotted[0])[0]["value"] == pytest.approx(0.2)
    assert len(_layers(metric_bars(_summary(), "accuracy").to_dict())) == len(layers) - 2  # no row, no rule


def test_metric_bars_fade_the_models_told_apart_from_the_best_and_name_the_test_and_level():
    from otolith_core.charts import APART, TIED

    summary = _summary()
    summary["rmse_tied_with_best"] = pd.array([True, False, True], dtype="boolean")
    spec = metric_bars(summary, "rmse", tie_level=0.01).to_dict()
    bars = _layers(spec)[0]
    opacity = bars["encoding"]["opacity"]
    assert opacity["field"] == "tie" and opacity["scale"] == {"domain": [TIED, APART], "range": [1.0, 0.3]}
    assert "Holm" in opacity["legend"]["title"] and "0.01" in opacity["legend"]["title"]
    assert [row["tie"] for row in _rows(spec, bars)] == [TIED, APART, TIED]
    assert "opacity" not in _layers(metric_bars(summary, "accuracy").to_dict())[0]["encoding"]  # no column: no mark


def _map_points() -> pd.DataFrame:
    return pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.5, 1.5, 2.5], "image": ["a", "b", "c"],
                         "reader_age": [1, 2, 3], "model_age": [1, 3, 3]})


def test_embedding_map_picks_by_click_boxes_by_drag_and_rings_the_images_selected_elsewhere():
    spec = embedding_map(_map_points(), title="enc", selected=["b", "not on this map"]).to_dict()
    params = {p["name"]: p["select"] for p in spec["params"]}
    assert params["picked"]["type"] == "point" and params["picked"]["fields"] == ["image"]
    assert params["boxed"]["type"] == "interval" and params["boxed"]["encodings"] == ["x", "y"]
    assert [(r["image"], r["selected"]) for r in _rows(spec, spec)] == [("a", False), ("b", True), ("c", False)]
    encoding = spec["encoding"]
    assert encoding["opacity"] == {"condition": {"test": "datum.selected", "value": 0.95}, "value": 0.15}
    assert encoding["strokeWidth"] == {"condition": {"test": "datum.selected", "value": 1.2}, "value": 0}


def test_embedding_map_without_a_selection_fades_all_but_the_clicked_image():
    spec = embedding_map(_map_points(), title="enc").to_dict()
    assert not any(r["selected"] for r in _rows(spec, spec))
    assert spec["encoding"]["opacity"] == {"condition": {"param": "picked", "value": 0.9}, "value": 0.25}


def test_embedding_map_refuses_a_string_for_the_selected_ids():
    with pytest.raises(TypeError, match="not the string 'a'"):
        embedding_map(_map_points(), title="enc", selected="a")


def test_no_chart_leaves_altair_to_look_up_a_channel_class(monkeypatch):
    """Every builder hands Altair channel objects: a channel given as a plain string or dict makes Altair build a
    look-up table of every Vega-Lite class (about 7 ms, several times a chart), which made a page's charts slow."""
    from altair.utils import schemapi

    from otolith_core.charts import per_age_heatmap, reader_bias_plot
    from otolith_core.comparison import PER_AGE_COLUMNS, per_age_scores

    looked_up, build = [], schemapi._FromDict.__init__
    monkeypatch.setattr(schemapi._FromDict, "__init__", lambda self, *a: looked_up.append(a) or build(self, *a))
    summary = _summary()
    summary["accuracy_tied_with_best"] = [True, False, True]
    summary = pd.concat([summary, summary.head(1).assign(encoder="no-skill")], ignore_index=True)
    predictions = pd.DataFrame({"true_age": [2, 2, 3], "pred_age": [2, 3, 3]})
    bias = pd.DataFrame({"encoder": ["e"] * 2, "head": ["ridge"] * 2, "true_age": [2, 3], "n": [4, 5],
                         "mean_pred": [2.5, 3.1], "ci_low": [2.0, 2.6], "ci_high": [3.0, 3.6]})
    curve = pd.DataFrame({"encoder": ["e"] * 2, "head": ["ridge"] * 2, "train_fraction": [0.5, 1.0],
                          "n_train": [10, 20], "accuracy": [0.3, 0.6]})
    per_age = pd.DataFrame([{"encoder": "e", "head": "ridge", **r}
                            for r in per_age_scores(np.array([1, 2, 2]), np.array([1, 2, 1]))], columns=PER_AGE_COLUMNS)
    readers = bias.rename(columns={"true_age": "modal_age", "mean_pred": "mean_age"}).assign(reader="GS")
    charts = [metric_bars(summary, "accuracy"), fold_lines(pd.DataFrame({"encoder": ["e"], "head": ["ridge"],
                                                                        "fold": [0], "rmse": [1.0]}), "rmse"),
              age_histogram(pd.Series([1, 2, 2]), n_folds=10), confusion_matrix(predictions),
              confusion_matrix(predictions, normalise=True), age_bias_plot(bias), reader_bias_plot(readers),
              learning_curve_chart(curve), per_age_heatmap(per_age), per_age_heatmap(per_age, "mean_error"),
              embedding_map(_map_points(), title="enc"), embedding_map(_map_points(), title="enc", selected=["a"])]
    for chart in charts:
        chart.to_dict(validate=False)
    assert looked_up == []
    monkeypatch.undo()
    for chart in charts:  # and every one is valid Vega-Lite: the dashboard draws them unchecked (views/widgets.py)
        chart.to_dict()
