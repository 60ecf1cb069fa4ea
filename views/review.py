"""Review page: doubtful reader ages ranked from out-of-fold probabilities, and blind second readings."""

import pandas as pd
import streamlit as st

from otolith_core.evaluation import model_label
from otolith_core.readings import add_reading, agreement, latest_readings, load_readings, manifest_with_readings
from otolith_core.report import csv_bytes
from otolith_core.review import doubtful_ages, probabilistic
from views import cached
from views.comparison import current_comparison
from views.widgets import show_thumbnail

st.title("Review")
shown = current_comparison()
if shown is None:
    st.stop()
settings, comparison, dataset = shown.settings, shown.comparison, shown.dataset
models = {model_label(r.encoder, r.head.label): r for r in probabilistic(comparison.results)}
if not models:
    st.info("Doubtful ages are ranked from a head's out-of-fold class probabilities: add the **logistic** head in "
            "the sidebar and run the comparison again.")
    st.stop()

st.subheader("Doubtful reader ages")
st.markdown(
    "Each image was scored by models that never saw it in training. An image's **score** is the mean over the "
    "chosen models of 1 − the probability the model gives the reader's age (cleanlab's self-confidence): near 1, "
    "the models are confident the reader's age is wrong. **flagged** counts the models whose confident learning "
    "(cleanlab `find_label_issues`) calls it a label issue. The score says which otoliths to read again, not which "
    "age is right; a model near no skill only adds noise, so rank with the ones you trust.")
chosen = st.multiselect("Models that rank", list(models), default=list(models), key="review_models")
if not chosen:
    st.caption("Choose at least one model.")
    st.stop()
table = doubtful_ages([models[m] for m in chosen])
records = {r.id: r for r in dataset.records}

f1, f2, f3 = st.columns(3)
ages = sorted(table["reader_age"].unique().tolist())
picked_ages = f1.multiselect("Reader age", ages, default=[], key="review_ages", placeholder="all ages")
min_score = f2.slider("Score of at least", 0.0, 1.0, 0.5, 0.05, key="review_min_score")
blind = f3.toggle("Hide ages (blind re-reading)", key="review_blind",
                  help="Hide the reader's and the models' ages in the gallery, so a second reading is not anchored.")
selected = table[(table["score"] >= min_score) & (table["reader_age"].isin(picked_ages) if picked_ages else True)]
limit = st.slider("Images shown at most", 6, 60, 18, step=6, key="review_limit")
st.caption(f"{len(selected)} of {len(table)} images have a score ≥ {min_score:.2f}"
           + (f"; showing the first {limit}" if len(selected) > limit else ""))
columns = st.columns(6)
for i, (_, row) in enumerate(selected.head(limit).iterrows()):
    column = columns[i % 6]
    ages_text = "" if blind else (f" · reader {row['reader_age']} · models "
                                  + ", ".join(str(row[f"{m} age"]) for m in chosen))
    show_thumbnail(column, records[row["image"]], f"#{row['rank']} · score {row['score']:.2f}{ages_text}")
    if column.button("Read again", key=f"reread-{row['image']}"):
        st.session_state["review_image"] = row["image"]
with st.expander("The whole ranking (label_review.csv)"):
    st.dataframe(table, hide_index=True, width="stretch", height=300)
st.download_button("label_review.csv", csv_bytes(table), file_name="label_review.csv", mime="text/csv",
                   key="download-label_review")

st.subheader("Second reading")
readings = load_readings(settings.cache_dir, dataset)  # read each run: another tab or person may have added one
image = st.session_state.get("review_image")
if image not in records:
    st.caption("Press **Read again** under an image to read it blind: its ages stay hidden until you have "
               "entered yours.")
else:
    record = records[image]
    left, right = st.columns([3, 2])
    with right:
        brightness = st.slider("Brightness", 0.3, 3.0, 1.0, 0.05, key="review_brightness")
        contrast = st.slider("Contrast", 0.3, 3.0, 1.0, 0.05, key="review_contrast")
    picture = cached.large_image(record, brightness, contrast)
    if picture is None:
        left.error(f"{record.id} cannot be decoded.")
    else:
        left.image(picture, caption=record.id, width="stretch")
    saved = st.session_state.get("review_saved", {})
    with right.form("second_reading", clear_on_submit=False):
        reader = st.text_input("Your name or initials", key="reader_name")
        age = st.number_input("Your age reading (years)", min_value=0, max_value=100, step=1, value=None,
                              key=f"second_age-{image}")
        submitted = st.form_submit_button("Save reading", type="primary")
    if submitted:
        if age is None or not reader.strip():
            right.warning("Enter your name and an age, then save.")
        else:
            add_reading(settings.cache_dir, dataset, record, int(age), reader=reader)
            saved[image] = int(age)
            st.session_state["review_saved"] = saved
            readings = load_readings(settings.cache_dir, dataset)
    if image in saved:
        row = table.set_index("image").loc[image]
        right.success(f"Saved: you read **{saved[image]}**. The reader's age was **{record.age}**; the models said "
                      + ", ".join(f"{m}: {int(row[f'{m} age'])}" for m in chosen) + ".")

latest = latest_readings(readings, dataset)
if len(latest):
    first = latest["first_age"].to_numpy()
    second = latest["second_age"].to_numpy()
    by_image = table.set_index("image")
    consensus = by_image.loc[latest["image"], "consensus_age"].to_numpy()
    readers, model = agreement(first, second), agreement(first, consensus)
    st.markdown(f"**{readers.n} {'image' if readers.n == 1 else 'images'} read twice.** Between the two readers: APE {readers.ape:.1f} %, "
                f"CV {readers.cv:.1f} %, {readers.exact:.0%} the same age. Models (their most common age) against "
                f"the first reader on the same images: APE {model.ape:.1f} %, CV {model.cv:.1f} %, "
                f"{model.exact:.0%} the same.")
    st.dataframe(readings, hide_index=True, width="stretch", height=200)
    left, right = st.columns(2)
    left.download_button("second_readings.csv", csv_bytes(readings), file_name="second_readings.csv",
                         mime="text/csv", key="download-second_readings")
    right.download_button("manifest with second_age", csv_bytes(manifest_with_readings(dataset, readings)),
                          file_name="manifest_with_second_age.csv", mime="text/csv", key="download-manifest-second",
                          help="The manifest with a second_age column (blank where not re-read), to load back.")
else:
    st.caption("No second readings yet for this data set; they are saved at once to "
               "`second_readings.csv` in the cache folder.")
