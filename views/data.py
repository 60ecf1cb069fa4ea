"""Data page: what was found, how ages are spread, what was skipped, and what matters for CV."""

from collections import Counter
from pathlib import Path

import pandas as pd
import streamlit as st

from otolith_core.charts import age_histogram
from otolith_core.comparison import duplicate_warnings, skipped_frame
from views import cached
from views.widgets import chart, settings_and_data, show_note, show_thumbnail

st.title("Data")
settings, dataset = settings_and_data()

if settings.is_demo:
    st.warning("**Synthetic demo**: these images are drawn by a program (ring count = age). Use them to try the "
               "tool, never to judge an encoder.")
ages = pd.Series(dataset.ages, name="age")
left, mid, right = st.columns(3)
left.metric("Images", len(dataset))
mid.metric("Ages", f"{ages.min()}–{ages.max()}")
right.metric("Skipped", len(dataset.skipped))
st.caption(f"Source: `{dataset.source}` ({dataset.kind})"
           + (f"; ages clipped to {dataset.age_range[0]}–{dataset.age_range[1]}" if dataset.age_range else "")
           + ("" if dataset.columns.native else "; columns: " + ", ".join(
               f"{role} ← `{column}`" for role, column in (("path", dataset.columns.path), ("age", dataset.columns.age),
                                                          ("fish", dataset.has_fish_ids and dataset.columns.fish),
                                                          ("box", dataset.columns.box),
                                                          ("id", dataset.columns.id)) if column)))

behind_urls = {r.path for r in dataset.records if r.url is not None}
if behind_urls:
    waiting = {r.path for r in dataset.to_download}
    st.info(f"**{len(behind_urls)} photos are behind URLs**: {len(behind_urls) - len(waiting)} downloaded into the cache, "
            f"{len(waiting)} still to download. An extraction (Embeddings page) downloads what is missing first, once "
            "for every encoder; a re-export of the manifest with fresh links downloads nothing again.")

counts = ages.value_counts().sort_index()
sparse = counts[counts < settings.n_folds]
if len(sparse):
    st.warning(f"Ages with fewer images than the {settings.n_folds} folds: "
               + ", ".join(f"age {a}: {n}" for a, n in sparse.items())
               + ". Some test folds will hold none of them. Remedies: clip the age range in the sidebar to merge "
                 "them into a neighbour, or use fewer folds.")
if dataset.has_fish_ids:
    fish = pd.Series([r.fish_id for r in dataset.records]).value_counts()
    repeated = fish[fish > 1]
    if len(repeated):
        st.warning(f"{len(repeated)} fish have several photos ({int(repeated.sum())} images). Plain stratified CV can "
                   "put photos of one fish in both training and test folds, which flatters every encoder alike.")

if settings.covariates:
    from otolith_core.covariates import LEAK_ACCURACY

    try:
        alone = cached.covariates_alone_accuracy(settings.data_key, settings.covariates, settings.impute_covariates,
                                                 dataset)
    except ValueError as exc:
        st.error(f"Fish covariates: {exc}")
    else:
        if alone >= LEAK_ACCURACY:
            st.warning(f"The chosen covariates alone ({', '.join(settings.covariates)}) read {alone:.0%} of the ages "
                       "exactly (a decision tree, 5-fold CV): no fish measurement does that. Does one of these columns "
                       "hold the age, or was it derived from it? Every '+ covariates' row would be worthless.")

# What the chosen encoders already know about the images, read from the cache (nothing is extracted here).
embedded = [e for e, _ in cached.cached_embeddings(settings, dataset, settings.encoders).values()]
with_keys = next((e for e in embedded if len(e.rows)), None)
if with_keys is not None:
    for note in duplicate_warnings(with_keys, with_keys.rows, [dataset.records[i].id for i in with_keys.rows],
                                   dataset.ages[with_keys.rows], []):
        show_note(note)

trays = Counter(r.path for r in dataset.records if r.crop is not None)
if trays:
    st.subheader("Photos and their boxes")
    first_of = {}  # photo -> its first record (its name as the manifest gives it: a URL without its query)
    for record in dataset.records:
        first_of.setdefault(record.path, record)
    photos = [path for path, _ in trays.most_common()]
    photo = st.selectbox("Photo", photos, key="tray_photo",
                         format_func=lambda p: f"{Path(first_of[p].name).name} ({trays[p]} boxes)",
                         help="Each box is an image of its own, named by its id; check that the boxes sit on the "
                              "otoliths (they are read in pixels of the upright photo).")
    shown = Path(first_of[photo].name).name
    # labelled by the id column when one is mapped, else by manifest row (an id of path + box is too long to read)
    by_id = dataset.columns.id is not None
    boxes = tuple((r.crop, r.id if by_id or r.row is None else f"row {r.row}") for r in dataset.records
                  if r.path == photo and r.crop is not None)
    url = first_of[photo].url
    if not photo.exists() and url is not None:
        st.info(f"{shown} is behind a URL and not downloaded yet (an extraction downloads it).")
        if st.button("Download this photo now to check its boxes", key="download_tray"):
            from otolith_core.downloads import DownloadFailed, fetch

            try:
                with st.spinner(f"Downloading {shown}…"):
                    fetch(url, photo)
            except DownloadFailed as exc:
                st.error(f"{first_of[photo].name} cannot be downloaded: {exc}")
            else:
                st.rerun()
    elif not photo.exists():
        st.warning(f"{shown} is not there any more.")
    else:
        drawn = cached.boxes_drawn(str(photo), photo.stat().st_mtime_ns, boxes)
        if drawn is None:
            st.warning(f"{shown} cannot be decoded.")
        else:
            st.image(drawn, caption=f"{shown}: {len(boxes)} boxes and their " + (
                "ids" if by_id else "manifest rows (map an image id column to see ids)"), width="stretch")

st.subheader("Images per age")
chart(st, ("age histogram", tuple((int(age), int(n)) for age, n in counts.items()), settings.n_folds),
      lambda: age_histogram(ages, n_folds=settings.n_folds))

st.subheader("Examples per age")
per_age = st.slider("Images shown per age", 1, 8, 4, key="thumbs_per_age")
for age in counts.index:
    records = [r for r in dataset.records if r.age == age][:per_age]
    cols = st.columns(per_age + 1)
    cols[0].markdown(f"**age {age}**  \n{counts[age]} images")
    for col, record in zip(cols[1:], records):
        show_thumbnail(col, record, record.id)

st.subheader("Skipped files and rows")
unusable = {f.image: f for e in embedded for f in e.failures}  # images an encoder tried and could not use
skipped = skipped_frame([*dataset.skipped, *unusable.values()])
if len(skipped):
    st.dataframe(skipped, hide_index=True, width="stretch")
else:
    st.caption("Nothing was skipped.")

st.subheader("Flagged unusable by a reader")
flagged = cached.flagged_unusable(settings)
if flagged:
    left_out = bool(settings.excluded)
    st.markdown(f"**{len(flagged)} {'image' if len(flagged) == 1 else 'images'}** flagged unusable on Review "
                "(broken, unreadable, the wrong structure); "
                + ("the sidebar leaves them out of the run (they are in the skipped list above)." if left_out else
                   "they are still in the run: the sidebar's **Leave out images flagged unusable** takes them out."))
    st.dataframe(pd.DataFrame(flagged, columns=["image", "why"]), hide_index=True, width="stretch")
else:
    st.caption("No reader has flagged an image of this data set unusable.")
