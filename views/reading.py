"""The Review page's reading view: otoliths read again one at a time by a named reader, blind, as age readers
work in their re-reading apps; and the age-reading exchange report of every reader, the models beside them.

A reader sees no other reader's age of an image (the first reader's included) until having read it: in the
reading view, the ranking and every table (``otolith_core.exchange.visible_readings``). Readings are saved the
moment a button is pressed (``otolith_core.readings.add_reading``), so a reload, a restart or a second reader in
another tab loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from otolith_core.data import Dataset, ImageRecord
from otolith_core.encoders.spec import DEFAULT_CLAHE_CLIP_LIMIT, DEFAULT_CLAHE_KERNEL
from otolith_core.exchange import collect_readings, exchange_report, has_exchange, readers_by_image, visible_readings
from otolith_core.readings import (FIRST_READER, RESERVED_READERS, UNUSABLE, SecondReadings, add_reading, load_readings,
                                   second_readings)
from otolith_core.report import csv_bytes
from views import cached
from views.state import Settings
from views.widgets import chart

NEW_READER = "someone new…"
NUMBER_KEYS = 10  # ages 0-9 have their digit as a keyboard key
HIDDEN_WORDS = ("age", "id", "path", "image", "file", "url", "reader", "x0", "y0", "x1", "y1")  # never shown to a reader
SHOWN_BY_DEFAULT = ("length", "month", "latitude", "longitude", "lat", "lon")
LATITUDE, LONGITUDE = ("latitude", "lat"), ("longitude", "lon", "long")


@dataclass(frozen=True)
class Readings:
    """Every reader's latest age of each image of a data set (``collect_readings``), and the second readings."""

    per_reader: pd.DataFrame  # image, reader, age, flags, comment, source
    second: SecondReadings  # the second readings (the manifest's second_age, readings typed here)
    file: pd.DataFrame  # the readings file as typed (load_readings)


def current_readings(settings: Settings, dataset: Dataset) -> Readings:
    """The readings as they are now: read at every rerun, since another tab or person may have added one."""
    file = load_readings(settings.cache_dir)
    second = second_readings(dataset, file, cache_dir=settings.cache_dir)
    return Readings(collect_readings(dataset, second), second, file)


def readings_seen_by(readings: Readings, reader: str, dataset: Dataset, cache_dir) -> Readings:
    """The readings as ``reader`` may see them: the readings file's rows of the images they have read (none while
    no reader is chosen), and the second readings made from those."""
    read = set(readings.per_reader.loc[readings.per_reader["reader"] == reader, "image"]) if reader else set()
    file = readings.file[readings.file["image"].isin(read)] if len(readings.file) else readings.file
    # a manifest's own second_age column is part of the data the user loaded: it stays in
    return Readings(readings.per_reader[readings.per_reader["image"].isin(read)],
                    second_readings(dataset, file, cache_dir=cache_dir), file)


def choose_reader(readings: Readings) -> str:
    """The reader's name: one of the readers so far, or a new one typed; '' until there is one."""
    known = sorted(set(readings.per_reader["reader"]) - set(RESERVED_READERS) - {FIRST_READER})
    left, right = st.columns(2)
    left.selectbox("Reader", [*known, NEW_READER], index=len(known), key="reader_pick",
                   help="Every reader keeps their own readings; the exchange report below compares them.")
    if st.session_state.get("reader_pick") == NEW_READER:
        right.text_input("Your name or initials", key="reader_name")
    reader = current_reader()
    if not reader and st.session_state.get("reader_name", "").strip() in RESERVED_READERS:
        right.warning("That name stands for the manifest's own ages; choose another.")
    return reader


def current_reader() -> str:
    """The reader chosen or typed, as the widgets hold it now (a button's callback runs before the page is drawn
    again, so it reads the name here rather than from the run that drew the button)."""
    state = st.session_state
    pick = state.get("reader_pick", NEW_READER)
    name = (state.get("reader_name", "") if pick == NEW_READER else pick).strip()
    return "" if name in RESERVED_READERS else name


def reading_view(settings: Settings, dataset: Dataset, queue: list[str], readings: Readings, reader: str, *,
                 model_ages: dict[str, dict[str, int]] | None = None) -> None:
    """Read the images of ``queue`` (in that order) one at a time as ``reader``; ``model_ages``: model -> image ->
    its out-of-fold age, revealed with the other ages once the image is read."""
    records = {r.id: r for r in dataset.records}
    queue = [image for image in queue if image in records]
    mine = set(readings.per_reader.loc[readings.per_reader["reader"] == reader, "image"]) if reader else set()
    done = sum(image in mine for image in queue)
    st.caption(f"{done} of {len(queue)} read by you" if reader else f"{len(queue)} images to read; choose a reader")
    if not queue:
        return
    image = st.session_state.get("review_image")
    if image not in records:  # resume at the first image this reader has not read
        image = next((i for i in queue if i not in mine), queue[0])
        st.session_state["review_image"] = image
    record = records[image]
    position = queue.index(image) if image in queue else None
    left, right = st.columns([3, 2])
    _show_photo(left, right, record, position, len(queue))
    with right:
        _reading_controls(settings, record, sorted({r.read_age for r in dataset.records}))
        if reader and image in mine:
            _reveal(readings, record, reader, model_ages or {})
        _moves(queue, position, mine)
        _metadata(record, dataset)


def _show_photo(left, right, record: ImageRecord, position: int | None, total: int) -> None:
    with right:
        if st.button("Reset view", key="review_reset"):
            for key in ("review_brightness", "review_contrast", "review_clahe"):
                st.session_state.pop(key, None)
        brightness = st.slider("Brightness", 0.3, 3.0, 1.0, 0.05, key="review_brightness")
        contrast = st.slider("Contrast", 0.3, 3.0, 1.0, 0.05, key="review_contrast")
        clahe = st.toggle("CLAHE contrast", key="review_clahe",
                          help=f"Contrast-limited adaptive histogram equalisation as the encoders' @clahe variant "
                               f"does it (clip limit {DEFAULT_CLAHE_CLIP_LIMIT}, tile {DEFAULT_CLAHE_KERNEL:g} of "
                               f"the side).")
    picture = cached.large_image(record, brightness, contrast, clahe=clahe)
    caption = f"Image {position + 1} of {total}" if position is not None else "An image outside the filters"
    if picture is None:
        left.error(f"{caption} cannot be decoded ({record.name}); flag it unusable.")
    else:
        left.image(picture, caption=caption, width="stretch")  # no id: it may carry the age or the fish


def _reading_controls(settings: Settings, record: ImageRecord, ages: list[int]) -> None:
    image = record.id
    flags = st.columns(2)
    flags[0].checkbox("uncertain", key=f"flag_uncertain-{image}", help="You gave an age but are not sure of it.")
    flags[1].checkbox("unusable", key=f"flag_unusable-{image}",
                      help="Broken, unreadable or the wrong structure: no age can be read.")
    st.text_input("Comment", key=f"comment-{image}", placeholder="optional")
    if ages:
        st.caption("Your age (one click saves it; keys 0-9 for those ages):")
        # six a row: eight left a two-digit age too narrow a button in the reading pane ("10" showed as "1.")
        columns = st.columns(min(6, max(1, len(range(min(ages), max(ages) + 1)))))
        for i, age in enumerate(range(min(ages), max(ages) + 1)):
            columns[i % len(columns)].button(str(age), key=f"age_button-{age}", width="stretch",
                                             shortcut=str(age) if age < NUMBER_KEYS else None,
                                             on_click=_save, args=(settings.cache_dir, record, age))
    with st.form(f"second_reading-{image}", clear_on_submit=False, border=False):
        st.number_input("Your age reading (years)", min_value=0, max_value=100, step=1, value=None,
                        key=f"second_age-{image}")
        st.form_submit_button("Save reading", type="primary", on_click=_save_typed, args=(settings.cache_dir, record))
    st.button("Save as unusable (no age)", key=f"save_unusable-{image}", on_click=_save,
              args=(settings.cache_dir, record, None, True))
    problem = st.session_state.pop("review_problem", None)
    if problem:
        st.warning(problem)


def _save_typed(cache_dir, record: ImageRecord) -> None:
    _save(cache_dir, record, st.session_state.get(f"second_age-{record.id}"))


def _save(cache_dir, record: ImageRecord, age: int | None, unusable: bool = False) -> None:
    """Save a reading with the image's flags and comment (a button's callback: before the page is drawn)."""
    state = st.session_state
    reader = current_reader()
    flags = [name for name in ("uncertain", UNUSABLE) if state.get(f"flag_{name}-{record.id}")]
    if unusable and UNUSABLE not in flags:
        flags.append(UNUSABLE)
    if not reader:
        state["review_problem"] = "Choose or type your name first: every reading is saved under its reader."
        return
    if age is None and UNUSABLE not in flags:
        state["review_problem"] = "Enter an age, or flag the image unusable."
        return
    try:
        add_reading(cache_dir, record, None if age is None else int(age), reader=reader, flags=flags,
                    comment=state.get(f"comment-{record.id}", ""))
    except ValueError as exc:
        state["review_problem"] = str(exc)


def _reveal(readings: Readings, record: ImageRecord, reader: str, model_ages: dict[str, dict[str, int]]) -> None:
    """Once read: this reader's age, the first reader's, every other reader's and the models'."""
    rows = readings.per_reader[readings.per_reader["image"] == record.id]
    own = rows[rows["reader"] == reader].iloc[-1]
    own_text = "unusable" if pd.isna(own["age"]) else f"**{int(own['age'])}**"
    others = [f"{r.reader}: {'unusable' if pd.isna(r.age) else int(r.age)}" for r in rows.itertuples()
              if r.reader not in (reader, FIRST_READER)]
    models = [f"{m}: {int(ages[record.id])}" for m, ages in model_ages.items() if record.id in ages]
    st.success(f"Saved: you read {own_text}" + (f" ({own['flags']})" if own["flags"] else "")
               + f". The reader's age was **{record.read_age}**"
               + (f"; other readers: {', '.join(others)}" if others else "")
               + (f"; the models said {', '.join(models)}" if models else "") + ".")


def _moves(queue: list[str], position: int | None, mine: set[str]) -> None:
    previous, following, unread = st.columns(3)
    at = -1 if position is None else position
    if at > 0:
        previous.button("Previous", key="review_previous", shortcut="Left", on_click=pick, args=(queue[at - 1],))
    if at + 1 < len(queue):
        following.button("Next", key="review_forward", shortcut="Right", on_click=pick, args=(queue[at + 1],))
    later = [i for i in queue[at + 1:] + queue[:max(at, 0)] if i not in mine and i != (queue[at] if at >= 0 else None)]
    if later:
        unread.button("Next image to read", key="review_next", on_click=pick, args=(later[0],),
                      help="The next image in this order without a reading by you.")
    else:
        unread.caption("You have read every image of this order.")


def pick(image: str) -> None:
    """Read ``image`` next (a button's callback); the embedding space shows its neighbours too."""
    st.session_state["review_image"] = st.session_state["space_image"] = image


def reader_columns(dataset: Dataset) -> list[str]:
    """The manifest columns a reader may be shown: none naming an id, an age, a path or a reader."""
    columns = list(dict.fromkeys(k for r in dataset.records[:200] for k in r.metadata))
    return [c for c in columns if not any(word in c.lower().replace("-", "_").split("_") or c.lower() == word
                                          or c.lower().endswith(word) for word in HIDDEN_WORDS)]


def _metadata(record: ImageRecord, dataset: Dataset) -> None:
    """What a reader may know of the fish (the columns chosen for this data set), and where it was caught."""
    allowed = reader_columns(dataset)
    if not allowed:
        return
    key = f"reader_columns-{dataset.source}"
    default = [c for c in allowed if c.lower() in SHOWN_BY_DEFAULT]
    with st.expander("What readers are shown of the fish"):
        chosen = st.multiselect("Columns", allowed, default=default, key=key,
                                help="Ids and earlier ages are never shown. The choice holds for this data set.")
    chosen = st.session_state.get(key, default)
    values = {c: record.metadata.get(c, "") for c in chosen}
    text = [f"{c}: {v}" for c, v in values.items() if str(v).strip() and c.lower() not in LATITUDE + LONGITUDE]
    if text:
        st.markdown(" · ".join(text))
    lat = next((values[c] for c in chosen if c.lower() in LATITUDE), None)
    lon = next((values[c] for c in chosen if c.lower() in LONGITUDE), None)
    try:
        where = pd.DataFrame({"lat": [float(lat)], "lon": [float(lon)]})
    except (TypeError, ValueError):
        return
    st.map(where, zoom=3, height=180, size=20000)


def readers_table(readings: Readings, reader: str) -> pd.DataFrame:
    """Every reader's age of the images ``reader`` has read (columns per reader, the modal age of the human
    readers, APE and CV); empty when no reader is chosen."""
    if not reader:
        return pd.DataFrame()
    visible = visible_readings(readings.per_reader, reader)
    return readers_by_image(visible) if len(visible) else pd.DataFrame()


def exchange_section(readings: Readings, model_ages: pd.DataFrame | None, key: str) -> None:
    """The age-reading exchange report (ICES / SmartDots): agreement with the modal age, CV, APE and bias per
    reader, the models as extra readers; tests between readers; and an age-bias plot. ``key``: the stored
    comparison's; the report is made once per it and state of the readings file (appended to, never rewritten)."""
    st.subheader("Age-reading exchange")
    if not has_exchange(readings.per_reader):
        st.caption("The report needs images read by at least two readers (the manifest's age counts as the first).")
        return
    report = cached.derived((key, "exchange", len(readings.file), len(readings.per_reader)),
                            lambda: exchange_report(readings.per_reader, model_ages))
    st.markdown(f"**{report.n_images} images** read by two or more human readers; **{report.n_no_mode}** of them "
                "have no modal age (the most frequent ages tie: *no agreement*) and are left out of every column that "
                "compares with the mode. Models are extra readers: their first repeat's out-of-fold ages against the "
                "humans' unclipped modal age; they never count toward the mode. With only two readers every "
                "disagreement is a tie, so compare them in the tests below.")
    st.dataframe(report.readers, hide_index=True, width="stretch")
    with st.expander("Tests between readers (exchange_tests.csv)"):
        st.caption("Each test's p-values are also given Holm-adjusted over the pairs (`*_p_holm`): read those when "
                   "you look at every pair at once.")
        st.dataframe(report.pairs, hide_index=True, width="stretch")
    with st.expander("Agreement, APE and CV by modal age (exchange_by_age.csv)"):
        st.dataframe(report.by_age, hide_index=True, width="stretch")
    if len(report.bias):
        from otolith_core.charts import reader_bias_plot

        chart(st, (key, "exchange bias", len(readings.file), len(readings.per_reader)),
              lambda: reader_bias_plot(report.bias))
    tables = report.tables()
    for column, (name, table) in zip(st.columns(len(tables)), tables.items()):
        column.download_button(name, csv_bytes(table), file_name=name, mime="text/csv", key=f"download-{name}")
