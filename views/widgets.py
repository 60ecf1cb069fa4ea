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


def chart(container, key: tuple, make) -> None:
    """Draw the Altair chart ``make()`` builds, built and turned into its Vega-Lite spec once per ``key`` (a stored
    comparison's key, then the chart's name and parameters: ``cached.derived``): building a layered Altair chart
    costs a few hundred milliseconds, so a rerun that changes nothing it shows must not build it again.

    The spec is not checked against Vega-Lite's schema here (two thirds of a confusion matrix's 45 ms):
    tests/test_charts.py checks every builder's spec. Its datasets are kept as the Arrow bytes Streamlit sends:
    left as rows, Streamlit turned them into a table and then into Arrow at every rerun (a sixth of the Results
    page's rerun)."""
    container.vega_lite_chart(spec=cached.derived(key, lambda: _arrow_datasets(make().to_dict(validate=False))),
                              width="stretch")


def _arrow_datasets(spec: dict) -> dict:
    """``spec`` with each of its named datasets (rows) as the Arrow bytes ``st.vega_lite_chart`` makes of them."""
    try:
        from streamlit.dataframe_util import convert_anything_to_arrow_bytes
    except ImportError:  # a Streamlit without it converts the rows itself, at each rerun, as before
        return spec
    if not spec.get("datasets"):
        return spec
    datasets = {name: convert_anything_to_arrow_bytes(rows) if isinstance(rows, list) else rows  # rows of a table
                for name, rows in spec["datasets"].items()}
    return {**spec, "datasets": datasets}


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


def result_downloads(comparison: Comparison, settings: Settings, key: str) -> None:
    """A download button per result file: the same bytes ``otolith run`` writes, plus run.json; made once per
    comparison (``key``), tie level and state of the second readings."""
    from otolith_core.readings import readings_file

    try:
        stat = readings_file(settings.cache_dir).stat()
        readings = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        readings = None
    files = cached.derived((key, "downloads", settings.tie_level, readings),
                           lambda: _result_files(comparison, settings))
    columns = st.columns(4)
    for i, (name, content) in enumerate(files.items()):
        columns[i % 4].download_button(name, content, file_name=name, key=f"download-{name}",
                                       mime="application/json" if name.endswith(".json") else "text/csv")


def _result_files(comparison: Comparison, settings: Settings) -> dict[str, bytes]:
    from otolith_core.readings import load_readings, second_readings
    from otolith_core.report import csv_bytes, provenance, result_tables

    data = cached.dataset(settings)  # second readings: beside the ranking in label_review.csv, summarised in run.json
    second = second_readings(data, load_readings(settings.cache_dir), cache_dir=settings.cache_dir)
    tables = result_tables(comparison, second=second.table, tie_level=settings.tie_level)
    files = {name: csv_bytes(frame) for name, frame in tables.items()}
    specs, _ = cached.resolve(settings.encoders)
    record = provenance(comparison, data, {spec.name: spec for spec in specs.values()}, list(settings.heads),
                        cache_dir=settings.cache_dir, second=second, tie_level=settings.tie_level)
    record["command"] = "streamlit run app.py (dashboard)"
    files["run.json"] = json.dumps(record, indent=2, default=str).encode("utf-8")
    return files
