"""Small helpers several pages share: the page's data, notes by severity, thumbnails, the result downloads."""

from __future__ import annotations

import json

import streamlit as st

from otolith_core.data import Dataset, ImageRecord
from otolith_core.comparison import Comparison
from otolith_core.notes import Note
from views import cached, state
from views.state import Settings


def settings_and_data() -> tuple[Settings, Dataset]:
    """The sidebar's settings and their data set; stops the page with a message when there is none."""
    settings = state.settings()
    if settings is None:
        st.info("Choose the images in the sidebar.")
        st.stop()
    try:
        return settings, cached.dataset(settings)
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"Cannot read the data: {exc}")
        st.stop()


def show_note(note: Note, container=st) -> None:
    """A note in the colour of its severity."""
    {"error": container.error, "warning": container.warning, "info": container.info}[note.severity](note.message)


def show_thumbnail(container, record: ImageRecord, caption: str) -> None:
    try:
        mtime = record.path.stat().st_mtime_ns
    except OSError:
        if record.url is not None:  # behind a URL: an extraction downloads it
            container.caption(f"{record.id}: not downloaded yet")
            return
        mtime = 0
    pixels = cached.thumbnail(str(record.path), record.crop, mtime)
    if pixels is None:
        container.caption(f"{record.id}: cannot be decoded")
    else:
        container.image(pixels, caption=caption, width="stretch")


def result_downloads(comparison: Comparison, settings: Settings) -> None:
    """A download button per result file: the same bytes ``otolith run`` writes, plus run.json."""
    from otolith_core.readings import load_readings, second_readings
    from otolith_core.report import csv_bytes, provenance, result_tables

    data = cached.dataset(settings)  # second readings: beside the ranking in label_review.csv, summarised in run.json
    second = second_readings(data, load_readings(settings.cache_dir), cache_dir=settings.cache_dir)
    tables = result_tables(comparison, second=second.table, tie_level=settings.tie_level)
    columns = st.columns(4)
    for i, (name, frame) in enumerate(tables.items()):
        columns[i % 4].download_button(name, csv_bytes(frame), file_name=name, mime="text/csv", key=f"download-{name}")
    specs, _ = cached.resolve(settings.encoders)
    record = provenance(comparison, data, {spec.name: spec for spec in specs.values()}, list(settings.heads),
                        cache_dir=settings.cache_dir, second=second, tie_level=settings.tie_level)
    record["command"] = "streamlit run app.py (dashboard)"
    columns[len(tables) % 4].download_button("run.json", json.dumps(record, indent=2, default=str).encode("utf-8"),
                                             file_name="run.json", mime="application/json", key="download-run.json")
