"""Review page: doubtful reader ages ranked from out-of-fold probabilities, blind second readings, and the
embedding space (a 2-D map per encoder, nearest neighbours of a picked image)."""

from functools import partial

import pandas as pd
import streamlit as st

from otolith_core.charts import embedding_map
from otolith_core.encoders import ENCODER_ERRORS, error_message
from otolith_core.cross_validation import model_label
from otolith_core.readings import agreement, manifest_with_readings
from otolith_core.report import csv_bytes
from otolith_core.review import doubtful_ages, probabilistic, seeded_order, with_second_ages
from otolith_core.saliency import overlay
from otolith_core.space import MAP_METHODS, nearest, umap_available
from views import cached, reading
from views.comparison import current_comparison
from views.widgets import show_thumbnail

st.title("Review")
shown = current_comparison()
if shown is None:
    st.stop()
settings, comparison, dataset = shown.settings, shown.comparison, shown.dataset
models = {model_label(r.encoder, r.head.label): r for r in probabilistic(comparison.results)}
records = {r.id: r for r in dataset.records}


def _doubtful_ages(reader: str, readings: reading.Readings) -> list[str]:
    """The ranking of doubtful reader ages, its filters and gallery; returns the images the filters choose, most
    doubtful first (ties in the seeded order), for the reading view to go through."""
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
        return []
    table = _ranking(tuple(chosen))
    unscored = table[table["score"].isna()]
    if len(unscored):
        st.info(f"**{len(unscored)} {'image' if len(unscored) == 1 else 'images'} could not be scored**: every model "
                "that predicted them was trained without their reader age, so it gave that age probability 0 whatever "
                "the photo shows. They are listed last in the ranking, unranked, and not in the gallery; read them "
                "again if in doubt.\n\n"
                + "\n".join(f"- {n} × {reason}" for reason, n in unscored["not_scored_because"].value_counts().items()))

    f1, f2, f3 = st.columns(3)
    ages = sorted(table["reader_age"].unique().tolist())
    picked_ages = f1.multiselect("Reader age", ages, default=[], key="review_ages", placeholder="all ages")
    min_score = f2.slider("Score of at least", 0.0, 1.0, 0.5, 0.05, key="review_min_score")
    blind = f3.toggle("Hide ages (blind re-reading)", key="review_blind",
                      help="Hide the reader's and the models' ages in the gallery and the ranking, so a second "
                           "reading is not anchored.")
    # an unscored image (NaN score) is never at least min_score: not in the gallery, nor next to read
    selected = table[(table["score"] >= min_score) & (table["reader_age"].isin(picked_ages) if picked_ages else True)]
    limit = st.slider("Images shown at most", 6, 60, 18, step=6, key="review_limit")
    st.caption(f"{len(selected)} of {len(table) - len(unscored)} scored images have a score ≥ {min_score:.2f}"
               + (f"; showing the first {limit}" if len(selected) > limit else ""))
    columns = st.columns(6)
    for i, (_, row) in enumerate(selected.head(limit).iterrows()):
        column = columns[i % 6]
        ages_text = "" if blind else (f" · reader {row['reader_age']} · models "
                                      + ", ".join(str(row[f"{m} age"]) for m in chosen))
        show_thumbnail(column, records[row["image"]], f"#{row['rank']} · score {row['score']:.2f}{ages_text}")
        column.button("Read again", key=f"reread-{row['image']}", on_click=reading.pick, args=(row["image"],))
    ranking = _as_the_reader_may_see(with_second_ages(table, readings.second.table), reader, readings, blind)
    with st.expander("The whole ranking (label_review.csv)"):
        st.dataframe(ranking, hide_index=True, width="stretch", height=300)
    st.download_button("label_review.csv", csv_bytes(ranking), file_name="label_review.csv", mime="text/csv",
                       key="download-label_review")
    return list(selected["image"])


def _per_image() -> pd.DataFrame:
    """Each model's out-of-fold age of each image in the first repeat, made once per stored comparison."""
    return cached.derived((shown.key, "per image", 0), lambda: comparison.per_image(0))


def _ranking(chosen: tuple[str, ...]) -> pd.DataFrame:
    """The doubtful-ages ranking by the ``chosen`` models, computed once per stored comparison and choice."""
    return cached.derived((shown.key, "doubtful ages", chosen), lambda: doubtful_ages(
        [models[m] for m in chosen], fish=comparison.fish or None, tie_seed=comparison.seed))


def _as_the_reader_may_see(ranking: pd.DataFrame, reader: str, readings: reading.Readings, blind: bool
                           ) -> pd.DataFrame:
    """The ranking without the ages ``reader`` may not see: the second readings of images they have not read
    (all of them while no reader is chosen), and with ``blind`` every age of those images."""
    read = set(readings.per_reader.loc[readings.per_reader["reader"] == reader, "image"]) if reader else set()
    unread = ~ranking["image"].isin(read)
    ranking = ranking.copy()
    ages = ["second_age"] if "second_age" in ranking else []
    if blind:
        ages += ["reader_age", "consensus_age", *[c for c in ranking.columns if c.endswith(" age")]]
    for column in ages:
        ranking[column] = ranking[column].astype(object).where(~unread, None)
    return ranking


def _reading_again(reader: str, readings: reading.Readings, queue: list[str]) -> None:
    st.subheader("Reading again")
    wide = _per_image()
    model_ages = {m: dict(zip(wide["image"], wide[m])) for m in wide.columns if " / " in m}
    reading.reading_view(settings, dataset, queue, readings, reader, model_ages=model_ages)
    second, found = readings.second.table, readings.second
    if found.bad_values:
        st.warning(f"{len(found.bad_values)} `second_age` value(s) in the manifest are not whole years and do not "
                   "count: " + "; ".join(found.bad_values[:5]) + (" …" if len(found.bad_values) > 5 else ""))
    if found.unmatched:
        st.warning(f"{len(found.unmatched)} reading(s) typed here do not count because the photo has changed since "
                   "(its bytes differ: an edit or an EXIF rewrite); read them again: "
                   + ", ".join(f"{u.image} (by {u.reader})" for u in found.unmatched[:5])
                   + (" …" if len(found.unmatched) > 5 else ""))
    if not len(second):
        st.caption("No second readings yet for this data set; they are saved at once to "
                   "`second_readings.csv` in the cache folder. A manifest with a `second_age` column brings its own.")
        return
    readers = agreement(second["first_age"], second["second_age"])
    sources = second["source"].value_counts()
    where = " and ".join(f"{n} {'typed here' if source == 'dashboard' else 'from the manifest’s second_age'}"
                         for source, n in sources.items())
    text = (f"**{readers.n} {'image' if readers.n == 1 else 'images'} read twice** ({where}). Between the first "
            f"reader and the latest second reading: APE {readers.ape:.1f} %, CV {readers.cv:.1f} %, "
            f"{readers.exact:.0%} the same age.")
    if models:
        table = _ranking(tuple(models))
        compared = second[second["image"].isin(table["image"])]  # an image outside this comparison has no model age
        model = agreement(compared["first_age"], table.set_index("image").loc[compared["image"], "consensus_age"])
        text += (f" Models (their most common age) against the first reader on the same {model.n} images: "
                 f"APE {model.ape:.1f} %, CV {model.cv:.1f} %, {model.exact:.0%} the same.")
    st.markdown(text + " Ages as read: an age range clips only what the heads learn.")
    shown = reading.readers_table(readings, reader)
    if len(shown):
        st.caption("Every reader's age of the images you have read (the others stay hidden until you read them):")
        st.dataframe(shown, hide_index=True, width="stretch", height=200)
    # the downloads hold other readers' ages: only of the images this reader has read (the blind rule)
    seen = reading.readings_seen_by(readings, reader, dataset, settings.cache_dir)
    left, right = st.columns(2)
    left.download_button("second_readings.csv", csv_bytes(seen.file), file_name="second_readings.csv",
                         mime="text/csv", key="download-second_readings", disabled=seen.file.empty,
                         help="Every reading typed here of the images you have read, in the order typed (the "
                              "whole file is second_readings.csv in the cache folder).")
    right.download_button("manifest with second_age", csv_bytes(manifest_with_readings(dataset, seen.second)),
                          file_name="manifest_with_second_age.csv", mime="text/csv", key="download-manifest-second",
                          disabled=not reader,
                          help="Your manifest as it is, every row and column, with a second_age column (blank "
                               "where not re-read, and for the images you have not read yet). Save it beside the "
                               "photos and load it as the data set: its second_age counts as the second reader.")


def _embedding_space() -> None:
    st.subheader("The embedding space")
    encoders = [name for name in comparison.precisions]  # the encoders with embeddings of their own
    if not encoders:
        st.caption("No encoder embeddings in this comparison (embeddings from .npz files have no map here).")
        return
    left, right = st.columns([3, 1])
    names = left.multiselect("Encoders (two side by side)", encoders, default=encoders[:2], max_selections=2,
                             key="space_encoders")
    method = right.radio("Map", list(MAP_METHODS), format_func=str.upper, horizontal=True, key="space_method",
                         help="PCA: the two directions of largest variance (deterministic). UMAP: a neighbourhood "
                              "map (seeded); needs `pip install umap-learn`, and its first map after a start "
                              "compiles for up to a minute.")
    if method == "umap" and not umap_available():
        right.warning("UMAP needs `pip install umap-learn`; showing PCA.")
        method = "pca"
    if not names:
        return
    wide = _per_image()
    ages = dict(zip(wide["image"], wide["true_age"]))
    spaces = {}
    selection = st.session_state.get("space_selection")  # ids of the images boxed on a map (None: no box)
    drawn = []  # the models whose ages the maps show
    for column, name in zip(st.columns(len(names)), names):
        space = cached.embedding_space(settings, dataset, name, list(wide["image"]), method)
        if space is None:
            column.warning(f"{name}: its embeddings are not all in the cache.")
            continue
        spaces[name] = space
        model = next((c for c in wide.columns if c.startswith(f"{name} / ")), None)
        points = pd.DataFrame({"x": space.coords[:, 0], "y": space.coords[:, 1], "image": space.images,
                               "reader_age": [ages[i] for i in space.images],
                               "model_age": wide.set_index("image").loc[space.images, model].to_numpy() if model else None})
        drawn += [model] if model else []
        # no thumbnails on hover: the images would travel with each of the 8,637 points on every rerun
        key = f"space-{name}-{st.session_state.get('space_rounds', {}).get(name, 0)}"
        column.altair_chart(embedding_map(points, title=f"{name} ({method.upper()}, {space.scaling} scaling)",
                                          selected=selection or ()),
                            on_select=partial(_picked_on_map, key, name, points), key=key, width="stretch")
    st.caption("Each point is an image, coloured by its reader age; hover for its ages, click on the map to pick the "
               "nearest image and see it and its nearest neighbours below, drag a box to select the images inside "
               "it (ringed on every map, shown below). The map uses each encoder's own scaling.")
    if selection is not None:  # kept across runs: a later comparison may leave some of its images out
        shown = wide.set_index("image")[["true_age", *drawn]]
        _selected_images([i for i in selection if i in records and i in shown.index], shown)
    picked = st.session_state.get("space_image")  # the last image clicked on a map or read again
    if picked not in records or not spaces:
        st.caption("Click on a map (or press **Read again** under an image) to see an image's nearest neighbours.")
        return
    k = st.slider("Neighbours", 3, 15, 6, key="space_k")
    st.markdown(f"**{picked}** · reader age {records[picked].age}")
    show_thumbnail(st.columns(6)[0], records[picked], picked)
    for name, space in spaces.items():
        found = nearest(space.features, space.images.index(picked), k=k)
        st.markdown(f"Nearest in **{name}** (cosine similarity):")
        for column, index, similarity in zip(st.columns(max(k, 6)), found.index, found.similarity):
            image = space.images[index]
            show_thumbnail(column, records[image], f"age {records[image].age} · {similarity:.3f}")
    _what_the_encoder_sees(picked, encoders)


def _picked_on_map(key: str, name: str, points: pd.DataFrame) -> None:
    """A click on a map picks its image (a later Read again picks another; the last one wins); a box drawn on
    ``name``'s map (``points`` as drawn) selects the images inside it instead of the last selection."""
    selection = st.session_state[key].selection
    box = selection.get("boxed") or {}  # {"x": [x0, x1], "y": [y0, y1]} in map units; {} once a click clears it
    if box:  # a click starts a new box of no size, which clears this one: a box and a pick never come together
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        inside = points["x"].between(x0, x1) & points["y"].between(y0, y1)
        st.session_state["space_selection"] = points.loc[inside, "image"].tolist()
        _forget_boxes(keep=name)
        return
    picked = selection.get("picked", [])
    if picked and picked[0].get("image") in records:
        st.session_state["space_image"] = picked[0]["image"]


def _forget_boxes(keep: str | None = None) -> None:
    """Draw the maps but ``keep``'s afresh (a new key): their boxes are gone, so no box is left on a map that
    no longer matches the selection (a clear, or a box on another map)."""
    rounds = st.session_state.setdefault("space_rounds", {})
    for name in comparison.precisions:
        if name != keep:
            rounds[name] = rounds.get(name, 0) + 1


def _clear_selection() -> None:
    st.session_state.pop("space_selection", None)
    _forget_boxes()


def _selected_images(selection: list[str], ages: pd.DataFrame, limit: int = 24) -> None:
    """The images boxed on a map (none: an empty box), at most ``limit`` of them, each with its ages (``ages``: by
    image, the reader's ``true_age`` and a column per model on the maps)."""
    st.markdown(f"**{len(selection)} selected**" + (f", showing the first {limit}" if len(selection) > limit else "")
                + ("" if selection else ": no image inside the box"))
    st.button("Clear the selection", key="space_clear", on_click=_clear_selection)
    columns = st.columns(6)
    for i, image in enumerate(selection[:limit]):
        row = ages.loc[image]
        show_thumbnail(columns[i % 6], records[image], f"{image} · reader {row['true_age']}"
                       + "".join(f" · {model} {row[model]}" for model in ages.columns[1:]))


def _what_the_encoder_sees(picked: str, encoders: list[str]) -> None:
    st.subheader("What the encoder sees")
    specs, _ = cached.resolve(tuple(encoders))
    vits = [name for name, spec in specs.items() if spec.family != "builtin"]
    if not vits:
        st.caption("The encoders of this comparison are built-in extractors: they have no patch tokens to map.")
        return
    here = cached.weights_here(tuple(vits))
    left, right = st.columns([1, 2])
    name = left.selectbox("Encoder", vits, key="seen_encoder",
                          format_func=lambda n: n if here.get(n) else f"{n} (weights not on this computer)")
    if not here.get(name):
        left.caption("The heat map needs the weights on this computer; extracting embeddings puts them there.")
        return
    if not left.button("Show the heat map", key="seen_show", help=f"for {picked}; computed once, then cached"):
        if not st.session_state.get(f"seen-{name}-{picked}"):
            return
    st.session_state[f"seen-{name}-{picked}"] = True
    embedding, digest = cached.cached_embeddings(settings, dataset, [name])[name]
    record = records[picked]
    try:
        photo, heat = cached.heat_map(settings.data_key, name, digest, picked, record.path.stat().st_mtime_ns,
                                      settings, dataset)
    except (OSError, *ENCODER_ERRORS) as exc:
        left.warning(f"No heat map for {name}: {error_message(exc) if isinstance(exc, ENCODER_ERRORS) else exc}")
        return
    opacity = left.slider("Heat map opacity", 0.0, 1.0, 0.45, 0.05, key="seen_opacity")
    right.image(overlay(photo, heat, opacity=opacity), caption=f"{picked} as {name} received it "
                f"({heat.grid[0]} x {heat.grid[1]} patches)", width="stretch")
    left.caption(heat.describe().capitalize() + ".")


current = reading.current_readings(settings, dataset)  # read at every run: another tab or reader may have added one
who = reading.choose_reader(current)
if models:
    to_read = _doubtful_ages(who, current)
else:
    st.info("Doubtful ages are ranked from a head's out-of-fold class probabilities: add the **logistic** head in "
            "the sidebar and run the comparison again. Until then the images are read in a seeded order.")
    to_read = seeded_order(list(_per_image()["image"]), comparison.seed)
_reading_again(who, current, to_read)
_embedding_space()
reading.exchange_section(current, _per_image(), shown.key)  # last: the first chart on the page stays the map
