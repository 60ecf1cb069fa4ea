import os
from pathlib import Path

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
    with pytest.raises(ValueError, match=r"lacks 'path' for the path \(or name another with --path-column\), "
                                         r"'age' for the age \(or name another with --age-column\); "
                                         r"its columns are \['file', 'years'\]"):
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


def _lab_export(folder: Path) -> Path:
    """A lab platform's export, as it comes: one row per otolith, tray photos with a box column, ages as 6.0, a
    presigned-style URL (read without a cache folder to download into), a whole-frame row, an unreadable box."""
    from PIL import Image

    rng = np.random.default_rng(0)
    tray = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    Image.fromarray(tray).save(folder / "tray 1.jpg", quality=95)
    Image.fromarray(tray[:, ::-1].copy()).save(folder / "tray 2.png")
    rows = ["measurement_id,sample_id_x,station_id,cruise_id,age,length,sex_number,bounding_box,image__content__url"]
    boxes = ["[[10, 20], [110, 90]]", "[[200, 20], [330, 100]]", "[[400, 250], [560, 380]]"]
    for i, box in enumerate(boxes):
        rows.append(f'M{i},S{i},ST1,C1,{i + 4}.0,{30 + i},1,"{box}",tray 1.jpg')
    rows.append('M3,S3,ST1,C1,5.0,33,2,"[[0, 0], [600, 400]]",tray 1.jpg')  # the tray itself
    rows.append('M4,S4,ST2,C1,6.0,34,1,"[10, 20, 110, 90]",tray 2.png')
    rows.append('M5,S5,ST2,C1,7.0,35,2,"10,20",tray 2.png')
    rows.append('M6,S6,ST2,C2,8.0,36,1,"[[1, 2], [50, 60]]",'
                'https://bucket.s3.amazonaws.com/t/tray3.jpg?AWSAccessKeyId=AKIA123&Signature=abc%2Bdef&Expires=9')
    (folder / "export.csv").write_text("\n".join(rows) + "\n")
    return folder / "export.csv"


def test_a_lab_export_is_read_as_it_is_with_its_columns_mapped(tmp_path):
    from otolith_core.data import ManifestColumns

    columns = ManifestColumns(path="image__content__url", box="bounding_box", id="measurement_id", fish="sample_id_x")
    data = load_dataset(_lab_export(tmp_path), columns=columns)
    assert data.ids == ["M0", "M1", "M2", "M4"] and data.ages.tolist() == [4, 5, 6, 6]
    assert [r.crop for r in data.records] == [(10, 20, 110, 90), (200, 20, 330, 100), (400, 250, 560, 380),
                                              (10, 20, 110, 90)]
    assert data.records[0].fish_id == "S0" and data.columns == columns
    assert set(data.records[0].metadata) == {"station_id", "cruise_id", "length", "sex_number"}  # mapped ones gone
    reasons = {s.row: s.reason for s in data.skipped}
    assert "covers the whole 600x400 photo" in reasons[5] and "3 other boxes" in reasons[5]
    assert "box '10,20' cannot be read" in reasons[7]
    assert "needs a cache folder" in reasons[8]
    url = next(s for s in data.skipped if s.row == 8)
    assert url.path == "https://bucket.s3.amazonaws.com/t/tray3.jpg"  # never the signature
    assert "Signature" not in " ".join(f"{s.path} {s.reason}" for s in data.skipped)
    pixels = np.asarray(load_image(data.records[1]))
    assert pixels.shape == (80, 130, 3)


def test_photos_behind_urls_are_downloaded_once_for_all_their_boxes(tmp_path, photo_server):
    """An export naming its trays by presigned URLs (one dead): every box becomes an image named by its id, its
    pixels the box's; the dead URL is named per row with its HTTP status; a re-export with fresh signatures has
    the same data signature and downloads nothing."""
    from conftest import presigned_query, write_tray_export
    from otolith_core.data import ManifestColumns, data_signature, download_missing, download_signature

    served = photo_server.folder
    dead = f"{photo_server.url}/lost.jpg?{presigned_query('s1')}"
    csv = write_tray_export(served, boxes_per_tray=4, base_url=photo_server.url,
                            extra_rows=(f'M90,ST9,5.0,40,"[[0, 0], [20, 20]]",{dead}',
                                        f'M91,ST9,6.0,41,"[[20, 0], [40, 20]]",{dead}'))
    columns = ManifestColumns(path="image__content__url", box="bounding_box", id="measurement_id")
    cache = tmp_path / "cache"
    data = load_dataset(csv, columns=columns, cache_dir=cache)
    assert len(data) == 10 and len({r.path for r in data.to_download}) == 3
    signature = data_signature(csv, columns, cache)
    unfetched, downloads = data_signature(csv, columns), download_signature(csv, columns, cache)
    seen = []
    data = download_missing(data, progress=lambda *counts: seen.append(counts))
    assert seen[-1] == (3, 3, 1) and not data.to_download
    assert data.ids == [f"M{t}{b:02d}" for t in range(2) for b in range(4)]
    assert {r.name for r in data.records} == {f"{photo_server.url}/tray0.jpg", f"{photo_server.url}/tray1.jpg"}
    tray = np.asarray(Image.open(served / "tray1.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(load_image(data.records[5])), tray[10:190, 50:90])
    reasons = {s.row: s.reason for s in data.skipped}
    assert set(reasons) == {10, 11} and reasons[10].startswith("download failed: HTTP 404")
    assert all("Signature" not in f"{s.path} {s.reason}" for s in data.skipped)
    assert data_signature(csv, columns, cache) != signature  # the downloads are part of what was read
    assert data_signature(csv, columns) == unfetched and download_signature(csv, columns, cache) != downloads
    signature = data_signature(csv, columns, cache)
    csv.write_text(csv.read_text().replace("Signature=s1", "Signature=fresh"))
    assert data_signature(csv, columns, cache) == signature
    again = download_missing(load_dataset(csv, columns=columns, cache_dir=cache))
    assert photo_server.requests == {"tray0.jpg": 1, "tray1.jpg": 1, "lost.jpg": 2}  # the dead one is tried again
    assert again.ids == data.ids


def test_a_whole_frame_box_is_told_once_its_photo_is_downloaded(tmp_path, photo_server):
    from conftest import presigned_query, write_tray_export
    from otolith_core.data import ManifestColumns, download_missing

    whole = f"{photo_server.url}/tray0.jpg?{presigned_query('s1')}"
    csv = write_tray_export(photo_server.folder, boxes_per_tray=3, base_url=photo_server.url,
                            extra_rows=(f'M99,ST0,5.0,40,"[[0, 0], [150, 200]]",{whole}',))
    columns = ManifestColumns(path="image__content__url", box="bounding_box", id="measurement_id")
    data = load_dataset(csv, columns=columns, cache_dir=tmp_path / "cache")
    assert "M99" in data.ids  # not downloaded yet: its size is unknown
    data = download_missing(data)
    assert "M99" not in data.ids and "covers the whole 150x200 photo" in data.skipped[-1].reason


def test_boxes_in_every_written_form_and_as_widths(tmp_path):
    from otolith_core.data import parse_box

    for text in ("[[10, 20], [110, 90]]", "[10, 20, 110, 90]", "10,20,110,90", " [ [10.0,20] , [110 , 90.0] ] "):
        assert parse_box(text) == ((10, 20, 110, 90), None), text
    assert parse_box("[10, 20, 100, 70]", box_format="xywh") == ((10, 20, 110, 90), None)
    assert parse_box("") == (None, None)
    assert "inverted" in parse_box("[[110, 20], [10, 90]]")[1]
    assert "whole pixel" in parse_box("[10.5, 20, 110, 90]")[1]
    with pytest.raises(ValueError, match="unknown box format 'yxyx'"):
        from otolith_core.data import ManifestColumns

        ManifestColumns(box_format="yxyx")


def test_an_export_missing_a_mapped_column_names_it_and_the_option(tmp_path):
    from otolith_core.data import ManifestColumns

    manifest = _lab_export(tmp_path)
    with pytest.raises(ValueError, match=r"lacks 'path' for the path \(or name another with --path-column\).*"
                                         r"'measurement_id'"):
        load_dataset(manifest, columns=ManifestColumns(box="bounding_box"))
    with pytest.raises(ValueError, match="apply to a CSV manifest"):
        load_dataset(tmp_path, columns=ManifestColumns(path="image__content__url"))  # a folder, not the export


def test_an_id_column_must_name_each_image_once(tmp_path):
    from otolith_core.data import ManifestColumns

    _save(tmp_path / "a.png")
    _save(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,age,mid\na.png,3,X\nb.png,4,X\nb.png,4,\n")
    data = load_dataset(tmp_path / "m.csv", columns=ManifestColumns(id="mid"))
    assert data.ids == ["X"]
    reasons = {s.row: s.reason for s in data.skipped}
    assert "'X' is already manifest row 2's" in reasons[3] and "blank 'mid'" in reasons[4]


def test_the_signature_changes_with_the_column_mapping(tmp_path):
    from otolith_core.data import ManifestColumns, data_signature

    manifest = _lab_export(tmp_path)
    plain = data_signature(manifest)
    assert data_signature(manifest, ManifestColumns()) == plain
    mapped = data_signature(manifest, ManifestColumns(path="image__content__url", box="bounding_box"))
    assert mapped != plain
    assert data_signature(manifest, ManifestColumns(path="image__content__url", box="bounding_box",
                                                    box_format="xywh")) != mapped


def _tray_manifest(folder, boxes, *, name="tray.jpg", **tray):
    from conftest import write_tray

    write_tray(folder / name, boxes, **tray)
    lines = ["path,age,x0,y0,x1,y1"] + [f"{name},{1 + i % 9},{x0},{y0},{x1},{y1}" for i, (x0, y0, x1, y1) in enumerate(boxes)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(folder / "m.csv")


def _counting_opens(monkeypatch):
    """Paths passed to PIL's ``Image.open`` from otolith_core.data, in call order."""
    import otolith_core.data as data_module

    opened, real_open = [], Image.open
    monkeypatch.setattr(data_module.Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    return opened


@pytest.mark.parametrize("orientation", [None, 6])
@pytest.mark.parametrize("min_side", [None, 40])
def test_boxes_of_one_photo_are_cut_as_load_image_cuts_each_alone(tmp_path, orientation, min_side):
    from conftest import grid_boxes

    from otolith_core.data import load_images

    boxes = grid_boxes(20, size=(800, 1200), columns=4)  # random sizes: with min_side=40, several DCT scales
    data = _tray_manifest(tmp_path, boxes, size=(800, 1200), orientation=orientation)
    together = load_images(data.records, min_side=min_side)
    for record, image in zip(data.records, together):
        alone = load_image(record, min_side=min_side)
        assert image.mode == "RGB" and image.size == alone.size
        np.testing.assert_array_equal(np.asarray(image), np.asarray(alone))


def test_a_tray_of_like_sized_boxes_is_opened_once(tmp_path, monkeypatch):
    from conftest import grid_boxes

    from otolith_core.data import load_images

    data = _tray_manifest(tmp_path, grid_boxes(20, box=(200, 150)), orientation=8)
    opened = _counting_opens(monkeypatch)
    images = load_images(data.records, min_side=64)
    assert len(opened) == 1  # one decode, at the DCT scale every box allows (1/2 here)
    assert [im.size for im in images] == [(100, 75)] * 20
    assert len(load_images(list(data.records) * 2)) == 40 and len(opened) == 2  # any order, any repeats


def test_a_box_outside_fails_alone_and_an_undecodable_photo_fails_every_box(tmp_path):
    from conftest import grid_boxes

    from otolith_core.data import Skipped, load_images

    boxes = grid_boxes(6, columns=3, box=(100, 100))
    boxes[2] = (1100, 700, 1300, 800)  # past the right edge of the 1200 x 800 photo
    data = _tray_manifest(tmp_path, boxes)
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "tray.jpg").read_bytes()[:300])
    broken = [dataclasses_replace(r, path=tmp_path / "broken.jpg", name="broken.jpg") for r in data.records[:3]]
    outcomes = load_images([broken[0], *data.records, broken[1], broken[2]], min_side=40)
    failed = [o for o in outcomes if isinstance(o, Skipped)]
    assert [(f.path, f.row) for f in failed] == [("broken.jpg", 2), ("tray.jpg", 4), ("broken.jpg", 3), ("broken.jpg", 4)]
    assert "lies outside the 1200x800 image" in failed[1].reason
    assert all(f.reason.startswith("cannot decode image") for f in failed if f.path == "broken.jpg")
    assert sum(isinstance(o, Image.Image) for o in outcomes) == 5


def dataclasses_replace(record, **changes):
    import dataclasses

    return dataclasses.replace(record, **changes)


def _write_dng(path, *, orientation=1, size=(96, 64)):
    """A tiny valid DNG (16-bit RGGB mosaic, identity colour matrix) with a bright block in its upper-left part."""
    tifffile = pytest.importorskip("tifffile")
    width, height = size
    mosaic = np.full((height, width), 1000, dtype=np.uint16)
    mosaic[height // 4: height // 2, width // 4: width // 2] = 3000
    mosaic += np.random.default_rng(0).integers(0, 50, mosaic.shape, dtype=np.uint16)
    tags = [(33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
            (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
            (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
            (50708, "s", 0, "Test Camera", True),  # UniqueCameraModel
            (50714, "H", 1, 0, True), (50717, "H", 1, 4095, True),  # BlackLevel, WhiteLevel
            (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1: identity
            (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
            (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
            (274, "H", 1, orientation, True)]  # Orientation
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=tags, subfiletype=0)
    return path


def test_camera_raw_rows_name_the_extra_when_rawpy_is_missing(tmp_path, monkeypatch):
    import sys

    from otolith_core.data import RAW_NEEDS_EXTRA, ImageRecord

    monkeypatch.setitem(sys.modules, "rawpy", None)  # `import rawpy` now fails as if it were not installed
    for name in ("a.nef", "b.CR2", "c.arw", "d.dng"):
        (tmp_path / name).write_bytes(b"raw bytes")
    _save(tmp_path / "e.jpg")
    (tmp_path / "m.csv").write_text("path,age\na.nef,3\nb.CR2,4\nc.arw,5\nd.dng,6\ne.jpg,7\n")
    data = load_dataset(tmp_path / "m.csv")
    assert [r.name for r in data.records] == ["e.jpg"]
    assert [(s.path, s.row, s.reason) for s in data.skipped] == [
        (name, row, RAW_NEEDS_EXTRA) for row, name in enumerate(["a.nef", "b.CR2", "c.arw", "d.dng"], start=2)]
    assert RAW_NEEDS_EXTRA == "camera RAW: install otolith-dashboard[raw]"
    _save(tmp_path / "folder" / "4" / "e.jpg")
    (tmp_path / "a.nef").rename(tmp_path / "folder" / "4" / "a.nef")
    folder = load_dataset(tmp_path / "folder")
    assert [r.name for r in folder.records] == ["4/e.jpg"] and [(s.path, s.reason) for s in folder.skipped] == [
        ("4/a.nef", RAW_NEEDS_EXTRA)]
    with pytest.raises(ValueError, match=r"install otolith-dashboard\[raw\]"):
        load_image(ImageRecord(tmp_path / "d.dng", "d.dng", 3))


def test_camera_raw_is_decoded_by_rawpy_with_the_options_we_chose(tmp_path, monkeypatch):
    """rawpy mocked: the options passed, the array made an 8-bit RGB image, boxes cut, LibRaw's errors named."""
    import sys
    import types

    from otolith_core.data import ImageRecord, Skipped, load_images

    class LibRawError(Exception):
        pass

    calls = []

    class Raw:
        def __init__(self, path):
            if path.endswith("bad.nef"):
                raise LibRawError("unsupported file format or not RAW file")
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def postprocess(self, **options):
            calls.append(options)
            return np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)

    monkeypatch.setitem(sys.modules, "rawpy", types.SimpleNamespace(imread=Raw, LibRawError=LibRawError))
    (tmp_path / "tray.nef").write_bytes(b"raw")
    (tmp_path / "bad.nef").write_bytes(b"raw")
    records = [ImageRecord(tmp_path / "tray.nef", "tray.nef", 3, crop=(0, 0, 30, 20)),
               ImageRecord(tmp_path / "tray.nef", "tray.nef", 3, crop=(30, 20, 60, 40)),
               ImageRecord(tmp_path / "bad.nef", "bad.nef", 3, row=9)]
    first, second, bad = load_images(records, min_side=8)
    assert calls == [{"use_camera_wb": True, "output_bps": 8}]  # one decode for both boxes
    assert first.mode == "RGB" and first.size == (30, 20)
    expected = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)[20:40, 30:60]
    np.testing.assert_array_equal(np.asarray(second), expected)
    assert isinstance(bad, Skipped) and bad.row == 9 and "cannot decode image: unsupported file format" in bad.reason


def test_a_real_dng_is_decoded_upright_and_cut(tmp_path):
    """A DNG written here, decoded by the real rawpy (skipped without the extra): the camera's orientation applied."""
    pytest.importorskip("rawpy")
    from otolith_core.data import ImageRecord, load_images

    _write_dng(tmp_path / "flat.dng")
    _write_dng(tmp_path / "turned.dng", orientation=6)  # shown turned 90 degrees clockwise
    (tmp_path / "bad.dng").write_bytes(b"II*\x00 not a raw file")
    whole = load_image(ImageRecord(tmp_path / "flat.dng", "flat.dng", 3))
    turned = load_image(ImageRecord(tmp_path / "turned.dng", "turned.dng", 3))
    assert whole.size == (96, 64) and turned.size == (64, 96)
    np.testing.assert_array_equal(np.asarray(turned), np.rot90(np.asarray(whole), k=-1))
    bright = np.asarray(whole).mean(axis=2) > np.asarray(whole).mean()
    rows, cols = np.nonzero(bright)
    assert 14 <= rows.min() and rows.max() <= 33 and 22 <= cols.min() and cols.max() <= 49
    box, bad = load_images([ImageRecord(tmp_path / "flat.dng", "flat.dng", 3, crop=(20, 12, 52, 36)),
                            ImageRecord(tmp_path / "bad.dng", "bad.dng", 3)])
    np.testing.assert_array_equal(np.asarray(box), np.asarray(whole)[12:36, 20:52])
    assert "cannot decode image" in bad.reason
