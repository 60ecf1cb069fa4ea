import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from otolith_core.data import load_dataset
from otolith_core.readings import (READING_COLUMNS, add_reading, agreement, load_readings, manifest_with_readings,
                                   match_readings, parse_flags, readings_file, second_readings)


@pytest.fixture
def data(demo_manifest):
    return load_dataset(demo_manifest)


def test_a_reading_is_on_disk_at_once_and_survives_a_restart(data, tmp_path):
    record = data.records[0]
    row = add_reading(tmp_path, record, record.age + 1, reader="GS")
    assert row["first_age"] == record.age and row["second_age"] == record.age + 1 and len(row["content_sha256"]) == 64
    # a fresh interpreter (a restarted dashboard) reads it back from the file alone
    code = textwrap.dedent(f"""
        from otolith_core.data import load_dataset
        from otolith_core.readings import load_readings
        table = load_readings({str(tmp_path)!r})
        print(table.image.tolist(), table.second_age.tolist())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"[{record.id!r}] [{record.age + 1}]"
    assert list(load_readings(tmp_path).columns) == READING_COLUMNS


@pytest.mark.slow
def test_two_writers_at_once_lose_nothing(data, tmp_path):
    writer = textwrap.dedent(f"""
        import sys
        from otolith_core.data import load_dataset
        from otolith_core.readings import add_reading
        data = load_dataset({str(data.source)!r})
        for record in data.records[:40]:
            add_reading({str(tmp_path)!r}, record, record.age, reader=sys.argv[1])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer, name]) for name in ("A", "B")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    table = load_readings(tmp_path)
    assert len(table) == 80 and table.groupby("reader").size().to_dict() == {"A": 40, "B": 40}
    assert readings_file(tmp_path).read_text().count("image,path") == 1  # one header


def test_each_readers_latest_reading_is_kept_and_a_changed_photo_is_named(data, tmp_path):
    from shutil import copytree

    copy = tmp_path / "copy"
    copytree(data.source.parent, copy)
    mine = load_dataset(copy / "manifest.csv")
    first, second = mine.records[:2]
    cache = tmp_path / "cache"
    add_reading(cache, first, 3, reader="A")
    add_reading(cache, first, 4, reader="A")
    add_reading(cache, first, 6, reader="B")
    add_reading(cache, second, 5, reader="B")
    readings = load_readings(cache)
    per_reader, unmatched, n_other = match_readings(readings, mine)
    assert sorted(zip(per_reader.image, per_reader.reader, per_reader.second_age)) == sorted(
        [(first.id, "A", 4), (first.id, "B", 6), (second.id, "B", 5)])  # one latest per reader, none lost
    assert unmatched == [] and n_other == 0
    found = second_readings(mine, readings)
    assert found.table.set_index("image").second_age.to_dict() == {first.id: 6, second.id: 5}  # latest by anyone

    second.path.write_bytes(second.path.read_bytes() + b"\0")  # the photo was replaced: its reading no longer applies
    found = second_readings(mine, readings, cache_dir=cache)
    assert found.table.image.tolist() == [first.id]
    assert [(u.image, u.reader) for u in found.unmatched] == [(second.id, "B")]
    assert "changed" in found.problems()[0] and second.id in found.problems()[0]
    manifest = manifest_with_readings(mine, found)
    assert manifest.loc[0, "second_age"] == "6" and manifest.loc[1, "second_age"] == ""
    assert {"path", "age", "fish_id", "length", "month"} <= set(manifest.columns)


def test_an_age_typed_beside_the_unusable_flag_is_no_second_age(data, tmp_path):
    """A reader who flags an image unusable judged it unreadable: an age typed beside the flag is kept in the file
    but is no second age (the earlier reading by anyone is), as it counts nowhere in the exchange report."""
    first, second = data.records[:2]
    add_reading(tmp_path, first, 4, reader="A")
    add_reading(tmp_path, first, 9, reader="B", flags=["unusable"], comment="crushed")
    add_reading(tmp_path, second, 7, reader="B", flags=["unusable"])
    found = second_readings(data, load_readings(tmp_path))
    assert found.table.set_index("image").second_age.to_dict() == {first.id: 4}
    assert sorted(found.per_reader.second_age.dropna().astype(int)) == [4, 7, 9]  # every reading is kept


def test_readings_follow_the_photos_not_the_manifest(data, tmp_path):
    """A moved or renamed manifest (here: absolute paths, another folder and name) keeps its readings, matched by
    content and crop box; a reading of an image of another data set is counted, not called lost."""
    cache = tmp_path / "cache"
    record = data.records[0]
    add_reading(cache, record, record.age, reader="A")
    moved = pd.read_csv(data.source)
    moved["path"] = [str(data.source.parent / p) for p in moved.path]
    (tmp_path / "elsewhere").mkdir()
    moved.iloc[5:].to_csv(tmp_path / "elsewhere" / "renamed.csv", index=False)
    moved.iloc[:5].to_csv(tmp_path / "elsewhere" / "first five.csv", index=False)
    other = load_dataset(tmp_path / "elsewhere" / "renamed.csv")  # the read image is not in it
    found = second_readings(other, load_readings(cache))
    assert found.table.empty and found.unmatched == () and found.n_other == 1
    again = load_dataset(tmp_path / "elsewhere" / "first five.csv")
    found = second_readings(again, load_readings(cache))
    assert found.table.image.tolist() == [again.records[0].id] and again.records[0].id != record.id


def test_a_crop_box_is_part_of_what_a_reading_is_of(tmp_path):
    """Two otoliths of one tray photo: a reading of one box never lands on the other."""
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (60, 120, 3), dtype=np.uint8)).save(tmp_path / "tray.png")
    (tmp_path / "m.csv").write_text("path,age,x0,y0,x1,y1\ntray.png,4,0,0,60,60\ntray.png,6,60,0,120,60\n")
    tray = load_dataset(tmp_path / "m.csv")
    add_reading(tmp_path / "cache", tray.records[1], 7, reader="A")
    table = second_readings(tray, load_readings(tmp_path / "cache")).table
    assert table.image.tolist() == [tray.records[1].id] and table.second_age.tolist() == [7]


def test_readings_written_by_an_earlier_version_still_count(data, tmp_path):
    """Before, one file per data set (keyed by its path) and no crop column."""
    record = data.records[3]
    legacy = tmp_path / "readings" / "0123456789abcdef" / "second_readings.csv"
    legacy.parent.mkdir(parents=True)
    from otolith_core.data import file_sha256

    legacy.write_text("image,path,content_sha256,first_age,second_age,reader,time\n"
                      f"{record.id},{record.name},{file_sha256(record.path)},1,{record.age},old,2026-01-01T00:00:00+00:00\n")
    add_reading(tmp_path, data.records[4], 2, reader="new")
    table = second_readings(data, load_readings(tmp_path)).table
    assert table.set_index("image").second_age.to_dict() == {record.id: record.age, data.records[4].id: 2}
    assert table.set_index("image").loc[record.id, "first_age"] == record.read_age  # never the file's first_age


def test_agreement_between_readers_is_on_the_ages_as_read_not_clipped(tmp_path):
    """A second reader who agrees with a manifest age of 10 under a 1-8 clip agrees: APE 0, CV 0, all the same,
    whether typed here or from the manifest's second_age; the heads still learn the clipped age."""
    from PIL import Image

    rng = np.random.default_rng(2)
    rows = ["path,age,second_age"]
    for i, (age, second) in enumerate([(10, ""), (12, "12"), (3, "")]):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"o{i}.png")
        rows.append(f"o{i}.png,{age},{second}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    clipped = load_dataset(tmp_path / "m.csv", age_range=(1, 8))
    assert clipped.ages.tolist() == [8, 8, 3] and [r.read_age for r in clipped.records] == [10, 12, 3]
    row = add_reading(tmp_path / "cache", clipped.records[0], 10, reader="A")
    assert row["first_age"] == 10
    table = second_readings(clipped, load_readings(tmp_path / "cache")).table
    assert table.first_age.tolist() == [10, 12] and table.second_age.tolist() == [10, 12]
    same = agreement(table.first_age, table.second_age)
    assert (same.ape, same.cv, same.exact) == (0.0, 0.0, 1.0)


def test_the_manifest_to_load_back_is_the_users_own_with_second_age(tmp_path):
    """Every row and column as it was (skipped rows, ages as read, the user's own text), plus second_age."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"o{i}.png")
    text = ("path,age,fish_id,station,note\n"
            "o0.png,11,F1,north,\"a, b\"\n"
            "missing.png,4,F2,south,\n"
            "o1.png,,F3,south,blank age\n"
            "o1.png,5.0,F4,east,\n"
            "o0.png,11,F1,north,duplicate\n"
            "o2.png,6,F5,west,\n")
    (tmp_path / "m.csv").write_text(text)
    data = load_dataset(tmp_path / "m.csv", age_range=(1, 8))
    assert len(data) == 3 and len(data.skipped) == 3
    by_name = {r.name: r for r in data.records}
    add_reading(tmp_path / "cache", by_name["o0.png"], 11, reader="A")
    add_reading(tmp_path / "cache", by_name["o2.png"], 7, reader="A")
    manifest = manifest_with_readings(data, second_readings(data, load_readings(tmp_path / "cache")))
    original = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns) == [*original.columns, "second_age"]
    pd.testing.assert_frame_equal(manifest[original.columns], original)
    assert manifest.second_age.tolist() == ["11", "", "", "", "", "7"]
    (tmp_path / "back.csv").write_text(manifest.to_csv(index=False))
    back = load_dataset(tmp_path / "back.csv")
    assert second_readings(back, None).table.set_index("image").second_age.to_dict() == {"o0.png": 11, "o2.png": 7}


def test_a_folder_data_set_gets_a_manifest_built_from_it(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    for age in (3, 9):
        (tmp_path / "photos" / str(age)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "photos" / str(age) / "a.png")
    data = load_dataset(tmp_path / "photos", age_range=(1, 8))
    add_reading(tmp_path / "cache", data.records[1], 9, reader="A")
    manifest = manifest_with_readings(data, second_readings(data, load_readings(tmp_path / "cache")))
    assert manifest.to_dict("list") == {"path": ["3/a.png", "9/a.png"], "age": [3, 9], "second_age": ["", "9"]}


def test_agreement_is_ape_and_cv_between_two_readers():
    result = agreement([4, 5, 6, 2], [4, 6, 6, 2])
    assert result.n == 4 and result.exact == 0.75
    assert result.ape == pytest.approx(100 * (1 / 11) / 4)
    assert result.cv == pytest.approx(np.sqrt(2) * result.ape)
    assert np.isnan(agreement([], []).ape)


def test_a_reading_needs_a_reader_and_a_whole_age(data, tmp_path):
    with pytest.raises(ValueError, match="reader's name"):
        add_reading(tmp_path, data.records[0], 3, reader=" ")
    with pytest.raises(ValueError, match="whole number"):
        add_reading(tmp_path, data.records[0], 2.5, reader="A")
    assert load_readings(tmp_path).empty and isinstance(load_readings(tmp_path), pd.DataFrame)


def test_a_manifest_loaded_back_brings_its_second_ages(data, tmp_path):
    """The downloaded manifest with ``second_age``, loaded as a data set of its own with another cache (the
    readings typed into the first cache stay there): its column is the second reader; a reading typed later wins;
    a value that is not a whole number of years is named and left out of the statistics (but kept in the
    manifest); writing the manifest again keeps the column."""
    from shutil import copytree

    copytree(data.source.parent, tmp_path / "demo")  # the manifest goes beside the photos, not into the shared demo
    data = load_dataset(tmp_path / "demo" / "manifest.csv")
    first, second, third = data.records[:3]
    add_reading(tmp_path / "cache", first, first.age + 1, reader="A")
    add_reading(tmp_path / "cache", second, second.age, reader="A")
    manifest = manifest_with_readings(data, second_readings(data, load_readings(tmp_path / "cache")))
    manifest.loc[2, "second_age"] = "4.5"
    (tmp_path / "demo" / "with_second.csv").write_text(manifest.to_csv(index=False))
    loaded = load_dataset(tmp_path / "demo" / "with_second.csv")
    other_cache = tmp_path / "other-cache"
    assert load_readings(other_cache).empty

    found = second_readings(loaded, load_readings(other_cache))
    table, problems = found.table, found.problems()
    assert table.set_index("image").second_age.to_dict() == {first.id: first.age + 1, second.id: second.age}
    assert set(table.source) == {"manifest"} and (table.first_age.to_numpy() == [first.age, second.age]).all()
    assert len(problems) == 1 and third.id in problems[0] and "'4.5'" in problems[0]

    add_reading(other_cache, loaded.records[0], first.age + 2, reader="B")
    found = second_readings(loaded, load_readings(other_cache))
    assert found.table.set_index("image").loc[first.id, ["second_age", "source", "reader"]].tolist() == [
        first.age + 2, "dashboard", "B"]
    again = manifest_with_readings(loaded, found)
    assert again.second_age.tolist()[:3] == [str(first.age + 2), str(second.age), "4.5"]
    assert again.second_age.tolist()[3:] == [""] * (len(again) - 3)
    # the first cache's readings follow the same photos into the loaded-back manifest: typed wins, same ages
    assert second_readings(loaded, load_readings(tmp_path / "cache")).table.source.tolist() == ["dashboard"] * 2


@pytest.fixture
def three(tmp_path):
    """Three tiny photos in a manifest (ages 4, 6, 0) and a cache folder beside them."""
    from conftest import write_tiny_photos_manifest

    manifest = write_tiny_photos_manifest(tmp_path, "path,age\no0.png,4\no1.png,6\no2.png,0\n", seed=5)
    return load_dataset(manifest), tmp_path / "cache"


def test_a_reading_carries_flags_and_a_comment_and_an_unusable_image_needs_no_age(three):
    data, cache = three
    a, b, _ = data.records
    add_reading(cache, a, 5, reader="A", flags=["uncertain"], comment="edge, hard to see")
    row = add_reading(cache, b, None, reader="A", flags=("unusable", "uncertain"), comment="broken")
    assert row["flags"] == "uncertain;unusable" and row["second_age"] is None  # FLAGS order, whatever was given
    table = load_readings(cache)
    assert list(table.columns) == READING_COLUMNS
    assert table["flags"].tolist() == ["uncertain", "uncertain;unusable"]
    assert table.comment.tolist() == ["edge, hard to see", "broken"]
    assert table.second_age.iloc[0] == 5 and pd.isna(table.second_age.iloc[1])
    # a reading without an age is kept per reader, but is no second age
    found = second_readings(data, table)
    assert found.table.image.tolist() == [a.id] and found.table.second_age.tolist() == [5]
    assert sorted(found.per_reader.image) == sorted([a.id, b.id])


def test_flags_are_checked_and_only_unusable_may_go_without_an_age(three):
    data, cache = three
    with pytest.raises(ValueError, match=r"unknown reading flag\(s\) \['blurry'\]; choose from"):
        add_reading(cache, data.records[0], 3, reader="A", flags=["blurry"])
    with pytest.raises(ValueError, match="without an age must be flagged 'unusable'"):
        add_reading(cache, data.records[0], None, reader="A", flags="uncertain")
    with pytest.raises(ValueError, match="names the manifest's own ages"):
        add_reading(cache, data.records[0], 3, reader="first reader")
    assert load_readings(cache).empty
    assert parse_flags("unusable; uncertain") == ("uncertain", "unusable") and parse_flags("") == ()


def test_a_file_of_the_version_before_flags_loads_and_takes_new_readings(three):
    """The header lacks flags and comment: it loads with them blank, and the first new reading rewrites the
    header (every old row kept as it was) instead of appending ten fields under eight names."""
    data, cache = three
    a, b, _ = data.records
    from otolith_core.data import file_sha256

    old_header = "image,path,content_sha256,crop,first_age,second_age,reader,time\n"
    old_row = f"{a.id},{a.name},{file_sha256(a.path)},,4,5,old,2026-01-01T00:00:00+00:00\n"
    file = readings_file(cache)
    file.parent.mkdir(parents=True)
    file.write_text(old_header + old_row)
    before = load_readings(cache)
    assert before[["reader", "second_age", "flags", "comment"]].values.tolist() == [["old", 5, "", ""]]
    add_reading(cache, b, None, reader="new", flags=["unusable"], comment="cracked")
    lines = file.read_text().splitlines()
    assert lines[0] == ",".join(READING_COLUMNS) and lines[1] == old_row.strip() + ",,"
    after = load_readings(cache)
    assert after[["reader", "flags", "comment"]].values.tolist() == [["old", "", ""], ["new", "unusable", "cracked"]]
    assert not list(file.parent.glob("*.upgrading"))


def test_a_file_with_columns_this_version_does_not_know_is_not_rewritten(three):
    data, cache = three
    file = readings_file(cache)
    file.parent.mkdir(parents=True)
    file.write_text(",".join(READING_COLUMNS) + ",confidence\n")
    with pytest.raises(ValueError, match=r"\['confidence'\] that this version does not know"):
        add_reading(cache, data.records[0], 3, reader="A")
    assert file.read_text() == ",".join(READING_COLUMNS) + ",confidence\n"
