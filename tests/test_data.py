import os

import numpy as np
import pytest
from PIL import Image

from otolith_core.data import load_dataset, load_image, to_rgb8


def _save(path, image=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (20, 10), (200, 100, 50))).save(path)
    return path


def test_folder_per_age_accepts_plain_and_prefixed_names(tmp_path):
    _save(tmp_path / "4" / "a.jpg")
    _save(tmp_path / "age_05" / "b.png")
    _save(tmp_path / "unknown" / "c.png")
    (tmp_path / "age_05" / "notes.txt").write_text("x")
    data = load_dataset(tmp_path)
    assert data.kind == "folder"
    assert sorted((r.name, r.age) for r in data.records) == [("4/a.jpg", 4), ("age_05/b.png", 5)]
    reasons = {s.path: s.reason for s in data.skipped}
    assert "not an age" in reasons["unknown/c.png"] and "not an image" in reasons["age_05/notes.txt"]


def test_manifest_rows_are_named_when_unusable(tmp_path):
    _save(tmp_path / "img" / "ok.jpg")
    absolute = _save(tmp_path / "elsewhere" / "abs.png")
    (tmp_path / "m.csv").write_text(
        "path,age,fish_id,x0,y0,x1,y1,station\n"
        "img/ok.jpg,5,F1,0,0,10,5,north\n"
        f"{absolute},7,,,,,,south\n"
        "img/missing.jpg,5,F2,,,,,x\n"
        "img/ok.jpg,five,F3,,,,,x\n"
        "img/ok.jpg,-1,F3,,,,,x\n"
        "img/ok.jpg,4.5,F3,,,,,x\n"
        "img/ok.jpg,,F3,,,,,x\n"
        "img/ok.jpg,3,F3,5,5,2,9,x\n"
    )
    data = load_dataset(tmp_path / "m.csv")
    assert [(r.name, r.age, r.fish_id, r.crop) for r in data.records] == [
        ("img/ok.jpg", 5, "F1", (0, 0, 10, 5)), (str(absolute), 7, None, None)]
    assert data.records[0].metadata == {"station": "north"}
    reasons = [s.reason for s in data.skipped]
    assert len(reasons) == 6
    assert "file not found" in reasons[0]
    assert (data.skipped[0].path, data.skipped[0].row) == ("img/missing.jpg", 4)
    assert [s.row for s in data.skipped] == [4, 5, 6, 7, 8, 9]
    assert "not a number" in reasons[1] and ">= 0" in reasons[2] and "whole number" in reasons[3]
    assert "blank age" in reasons[4] and "inverted" in reasons[5]


def test_manifest_without_required_columns_says_which(tmp_path):
    (tmp_path / "m.csv").write_text("file,years\na.jpg,3\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['path', 'age'\]"):
        load_dataset(tmp_path / "m.csv")


def test_age_range_clips_older_fish_into_the_top_age(tmp_path):
    for age in (0, 3, 12):
        _save(tmp_path / str(age) / "x.jpg")
    data = load_dataset(tmp_path, age_range=(1, 10))
    assert sorted(data.ages.tolist()) == [1, 3, 10]
    with pytest.raises(ValueError, match="min <= max"):
        load_dataset(tmp_path, age_range=(10, 1))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "P", "RGBA", "LA", "L", "1"])
def test_every_pil_mode_becomes_8_bit_rgb(mode):
    if mode in ("I;16", "I", "F"):
        values = np.linspace(0, 65535 if mode != "F" else 1.0, 64 * 32).reshape(32, 64)
        image = Image.fromarray(values.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
        assert image.mode == mode
    else:
        image = Image.new("RGB", (64, 32), (120, 60, 30)).convert(mode)
    rgb = to_rgb8(image)
    assert rgb.mode == "RGB" and rgb.size == (64, 32)
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(rgb)[..., 0]
        assert grey.min() == 0 and grey.max() == 255  # full 16-bit range mapped, not clipped at 255


def test_transparent_pixels_become_the_dark_background():
    image = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert np.asarray(to_rgb8(image)).max() == 0


def test_exif_orientation_and_crop_are_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "r.jpg", exif=exif.tobytes())
    (tmp_path / "m.csv").write_text("path,age,x0,y0,x1,y1\nr.jpg,3,0,0,20,10\n")
    record = load_dataset(tmp_path / "m.csv").records[0]
    loaded = load_image(record)
    assert loaded.size == (20, 10)  # crop of the upright 20x40 image
    assert np.asarray(loaded).mean() > 200  # the white band is at the top once rotated


def test_crop_outside_the_image_and_broken_files_raise_value_error(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "m.csv").write_text("path,age,x0,y0,x1,y1\na.png,3,0,0,500,5\nb.jpg,3,,,,\n")
    outside, broken = load_dataset(tmp_path / "m.csv").records
    with pytest.raises(ValueError, match="outside"):
        load_image(outside)
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(broken)


@pytest.mark.parametrize("image,reason", [(Image.new("RGB", (1, 1), (50, 60, 70)), "only 1x1 pixels"),
                                          (Image.new("RGB", (64, 64), (0, 0, 0)), "blank")])
def test_degenerate_images_are_named(tmp_path, image, reason):
    image.save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,age\nx.png,3\n")
    with pytest.raises(ValueError, match=reason):
        load_image(load_dataset(tmp_path / "m.csv").records[0])


def test_one_photo_with_several_crop_boxes_gives_records_with_unique_ids(tmp_path):
    _save(tmp_path / "plate.png", Image.new("RGB", (40, 20), (200, 100, 50)))
    (tmp_path / "m.csv").write_text(
        "path,age,x0,y0,x1,y1\n"
        "plate.png,3,0,0,20,20\n"
        "plate.png,5,20,0,40,20\n"
        "plate.png,4,0,0,20,20\n"  # the first box again: listed twice, with another age
    )
    data = load_dataset(tmp_path / "m.csv")
    assert data.ids == ["plate.png[0,0,20,20]", "plate.png[20,0,40,20]"]
    assert [r.name for r in data.records] == ["plate.png", "plate.png"]
    (again,) = data.skipped
    assert (again.path, again.row) == ("plate.png", 4)
    assert "same file and crop box as manifest row 2" in again.reason and "with age 3, this row says 4" in again.reason


def test_signature_changes_when_an_image_moves_to_another_age_folder(tmp_path):
    from otolith_core.data import data_signature

    image = _save(tmp_path / "4" / "x.jpg")
    before = data_signature(tmp_path)
    stat = image.stat()
    (tmp_path / "5").mkdir()
    moved = image.rename(tmp_path / "5" / "x.jpg")  # same name, size and modification time
    os.utime(moved, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data_signature(tmp_path) != before
    assert load_dataset(tmp_path).records[0].age == 5


def test_signature_sees_every_file_even_pairs_that_look_alike(tmp_path):
    from otolith_core.data import data_signature

    empty = data_signature(tmp_path)
    a = _save(tmp_path / "4" / "a.jpg")
    b = _save(tmp_path / "5" / "a.jpg")
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    assert data_signature(tmp_path) != empty


def test_signature_of_a_manifest_follows_its_content_and_its_files(tmp_path):
    from otolith_core.data import data_signature

    _save(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,age\na.jpg,3\nb.jpg,4\n")
    stat = manifest.stat()
    first = data_signature(manifest)
    manifest.write_text("path,age\na.jpg,5\nb.jpg,4\n")  # same size, and the same time set back
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = data_signature(manifest)
    assert second != first
    _save(tmp_path / "b.jpg")  # a listed file that was missing appears
    assert data_signature(manifest) != second
    assert data_signature(tmp_path / "m.csv") == data_signature(manifest)
