import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from otolith_core.data import load_dataset
from otolith_core.readings import (READING_COLUMNS, add_reading, agreement, latest_readings, load_readings,
                                   manifest_with_readings, readings_file)


@pytest.fixture
def data(demo_manifest):
    return load_dataset(demo_manifest)


def test_a_reading_is_on_disk_at_once_and_survives_a_restart(data, tmp_path):
    record = data.records[0]
    row = add_reading(tmp_path, data, record, record.age + 1, reader="GS")
    assert row["first_age"] == record.age and row["second_age"] == record.age + 1 and len(row["content_sha256"]) == 64
    # a fresh interpreter (a restarted dashboard) reads it back from the file alone
    code = textwrap.dedent(f"""
        from otolith_core.data import load_dataset
        from otolith_core.readings import load_readings
        table = load_readings({str(tmp_path)!r}, load_dataset({str(data.source)!r}))
        print(table.image.tolist(), table.second_age.tolist())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"[{record.id!r}] [{record.age + 1}]"
    assert list(load_readings(tmp_path, data).columns) == READING_COLUMNS


def test_two_writers_at_once_lose_nothing(data, tmp_path):
    writer = textwrap.dedent(f"""
        import sys
        from otolith_core.data import load_dataset
        from otolith_core.readings import add_reading
        data = load_dataset({str(data.source)!r})
        for record in data.records[:40]:
            add_reading({str(tmp_path)!r}, data, record, record.age, reader=sys.argv[1])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer, name]) for name in ("A", "B")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    table = load_readings(tmp_path, data)
    assert len(table) == 80 and table.groupby("reader").size().to_dict() == {"A": 40, "B": 40}
    assert readings_file(tmp_path, data).read_text().count("image,path") == 1  # one header


def test_the_latest_reading_wins_and_a_changed_file_drops_its_readings(data, tmp_path):
    from shutil import copytree


    copy = tmp_path / "copy"
    copytree(data.source.parent, copy)
    mine = load_dataset(copy / "manifest.csv")
    first, second = mine.records[:2]
    add_reading(tmp_path / "cache", mine, first, 3, reader="A")
    add_reading(tmp_path / "cache", mine, first, 4, reader="A")
    add_reading(tmp_path / "cache", mine, second, 5, reader="B")
    readings = load_readings(tmp_path / "cache", mine)
    latest = latest_readings(readings, mine).set_index("image").second_age.to_dict()
    assert latest == {first.id: 4, second.id: 5}
    second.path.write_bytes(second.path.read_bytes() + b"\0")  # the photo was replaced: its reading no longer applies
    assert latest_readings(readings, mine).image.tolist() == [first.id]
    remembered = latest_readings(readings, mine, cache_dir=tmp_path / "cache")  # hashes kept by path, size and time
    assert remembered.image.tolist() == [first.id]
    manifest = manifest_with_readings(mine, readings)
    assert manifest.loc[0, "second_age"] == 4 and manifest.loc[1, "second_age"] == ""
    assert {"path", "age", "fish_id", "length", "month"} <= set(manifest.columns)


def test_agreement_is_ape_and_cv_between_two_readers():
    result = agreement([4, 5, 6, 2], [4, 6, 6, 2])
    assert result.n == 4 and result.exact == 0.75
    assert result.ape == pytest.approx(100 * (1 / 11) / 4)
    assert result.cv == pytest.approx(np.sqrt(2) * result.ape)
    assert np.isnan(agreement([], []).ape)


def test_a_reading_needs_a_reader_and_a_whole_age(data, tmp_path):
    with pytest.raises(ValueError, match="reader's name"):
        add_reading(tmp_path, data, data.records[0], 3, reader=" ")
    with pytest.raises(ValueError, match="whole number"):
        add_reading(tmp_path, data, data.records[0], 2.5, reader="A")
    assert load_readings(tmp_path, data).empty and isinstance(load_readings(tmp_path, data), pd.DataFrame)


def test_a_manifest_loaded_back_brings_its_second_ages(data, tmp_path):
    """The downloaded manifest with ``second_age``, loaded as a data set of its own (another path, so none of
    the cache's readings follow it): its column is the second reader; a reading typed later wins; a value that
    is not a whole number of years is named and left out of the statistics (but kept in the manifest);
    writing the manifest again keeps the column."""
    from shutil import copytree

    from otolith_core.readings import second_readings

    copytree(data.source.parent, tmp_path / "demo")  # the manifest goes beside the photos, not into the shared demo
    data = load_dataset(tmp_path / "demo" / "manifest.csv")
    first, second, third = data.records[:3]
    add_reading(tmp_path / "cache", data, first, first.age + 1, reader="A")
    add_reading(tmp_path / "cache", data, second, second.age, reader="A")
    manifest = manifest_with_readings(data, load_readings(tmp_path / "cache", data))
    manifest.loc[2, "second_age"] = "4.5"
    (tmp_path / "demo" / "with_second.csv").write_text(manifest.to_csv(index=False))
    loaded = load_dataset(tmp_path / "demo" / "with_second.csv")
    assert load_readings(tmp_path / "cache", loaded).empty

    table, problems = second_readings(loaded, load_readings(tmp_path / "cache", loaded))
    assert table.set_index("image").second_age.to_dict() == {first.id: first.age + 1, second.id: second.age}
    assert set(table.source) == {"manifest"} and (table.first_age.to_numpy() == [first.age, second.age]).all()
    assert len(problems) == 1 and third.id in problems[0] and "'4.5'" in problems[0]

    add_reading(tmp_path / "cache", loaded, loaded.records[0], first.age + 2, reader="B")
    readings = load_readings(tmp_path / "cache", loaded)
    table, _ = second_readings(loaded, readings)
    assert table.set_index("image").loc[first.id, ["second_age", "source", "reader"]].tolist() == [
        first.age + 2, "dashboard", "B"]
    again = manifest_with_readings(loaded, readings)
    assert again.second_age.tolist()[:3] == [first.age + 2, second.age, "4.5"]
    assert again.second_age.tolist()[3:] == [""] * (len(again) - 3)
