"""Errors page: confusion matrices, a gallery of misclassified images, and where two models disagree."""

import pandas as pd
import streamlit as st

from otolith_core.charts import confusion_matrix
from otolith_core.comparison import NO_SKILL
from otolith_core.cross_validation import model_label
from views import cached
from views.comparison import current_comparison
from views.widgets import chart, show_thumbnail

st.title("Errors")
shown = current_comparison()
if shown is None:
    st.stop()
comparison, dataset, key = shown.comparison, shown.dataset, shown.key


def _model_predictions() -> pd.DataFrame:
    predictions = comparison.predictions_frame()
    predictions = predictions[predictions["encoder"] != NO_SKILL].copy()  # the baseline's errors are every fish's
    predictions["model"] = [model_label(e, h) for e, h in zip(predictions["encoder"], predictions["head"])]
    return predictions


predictions = cached.derived((key, "model predictions"), _model_predictions)  # shared: never changed here
models = list(dict.fromkeys(predictions["model"]))
records = {r.id: r for r in dataset.records}

repeat = 0
if comparison.repeats > 1:
    repeat = st.selectbox("Repeat", range(comparison.repeats), key="gallery_repeat",
                          format_func=lambda r: f"repeat {r} (seed {comparison.seed + r})",
                          help="Each repeat predicts every image once; the confusion matrices, the gallery and the "
                               "disagreements below show one repeat's own predictions, so each image counts once.")

st.subheader("Confusion matrices")
once = predictions[predictions["repeat"] == repeat]  # every repeat predicts each image: count one of them
st.caption("Rows: reader age; columns: predicted age. Outlined cells are within ±1 year. "
           + (f"Each of the {comparison.results[0].n_images} images counted once: repeat {repeat}'s predictions."
              if comparison.repeats > 1 else ""))
normalise = st.toggle("Row-normalised (share of each reader age)", key="cm_normalise")
for start in range(0, len(models), 3):
    for column, model in zip(st.columns(3), models[start:start + 3]):
        chart(column, (key, "confusion", repeat, model, normalise),
              lambda model=model: confusion_matrix(once[once["model"] == model], normalise=normalise, title=model))

st.subheader("Misclassified images")
wide = cached.derived((key, "per image", repeat), lambda: comparison.per_image(repeat))
f1, f2, f3 = st.columns(3)
shown_models = f1.multiselect("Models", models, default=models[:1], key="gallery_models")
ages = sorted(predictions["true_age"].unique())
true_ages = f2.multiselect("Reader age", ages, default=[], key="gallery_ages", placeholder="all ages")
min_error = f3.number_input("Error of at least (years)", min_value=1, max_value=20, value=1, key="gallery_error")
limit = st.slider("Images shown at most", 6, 60, 18, step=6, key="gallery_limit")
if shown_models:
    errors = pd.concat([(wide[m] - wide["true_age"]).abs() for m in shown_models], axis=1).max(axis=1)
    selected = wide[(errors >= min_error) & (wide["true_age"].isin(true_ages) if true_ages else True)]
    st.caption(f"{len(selected)} images wrong by ≥ {min_error} year(s) for at least one chosen model"
               + (f"; showing {min(limit, len(selected))}" if len(selected) > limit else ""))
    columns = st.columns(6)
    for i, (_, row) in enumerate(selected.head(limit).iterrows()):
        caption = f"{row['image']} · true {int(row['true_age'])} · " + ", ".join(f"{m}: {int(row[m])}" for m in shown_models)
        show_thumbnail(columns[i % 6], records[row["image"]], caption)

st.subheader("Where two models disagree")
if len(models) < 2:
    st.caption("Choose at least two encoder/head combinations.")
else:
    a_col, b_col = st.columns(2)
    model_a = a_col.selectbox("Model A", models, index=0, key="disagree_a")
    model_b = b_col.selectbox("Model B", models, index=1, key="disagree_b")
    right_a = wide[model_a] == wide["true_age"]
    right_b = wide[model_b] == wide["true_age"]
    for title, mask, column in ((f"A right, B wrong ({model_a} beats {model_b})", right_a & ~right_b, a_col),
                                (f"B right, A wrong ({model_b} beats {model_a})", right_b & ~right_a, b_col)):
        column.markdown(f"**{title}**: {int(mask.sum())} images")
        column.dataframe(wide.loc[mask, ["image", "true_age", model_a, model_b]], hide_index=True,
                         width="stretch", height=240)
