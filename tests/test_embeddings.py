"""The .npz exchange: images matched across files by path, checked against a plain dict-based reference."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from otolith_core.data import Skipped, load_dataset
from otolith_core.embeddings import extract_embeddings, load_npz_embeddings


def reference_load(named_files):
    """What ``load_npz_embeddings`` promises, one image at a time: (images, ages, skipped, features by name)."""
    loaded = {}
    for name, file in named_files.items():
        with np.load(file) as data:
            paths = [str(p) for p in data["paths"]] if "paths" in data.files else None
            loaded[name] = (data["features"].astype(np.float32), data["labels"].astype(int), paths)
    skipped = []
    if all(paths is not None for _, _, paths in loaded.values()):
        seen = {name: set(paths) for name, (_, _, paths) in loaded.items()}
        images = [p for p in next(iter(loaded.values()))[2] if all(p in s for s in seen.values())]
        for name, (_, _, paths) in loaded.items():
            for p in paths:
                entry = Skipped(p, f"only in some embedding files (not all have it; seen in {name})")
                if p not in images and entry not in skipped:
                    skipped.append(entry)
        row_of = {name: {p: i for i, p in enumerate(paths)} for name, (_, _, paths) in loaded.items()}
    else:
        images = [f"row_{i + 1}" for i in range(len(next(iter(loaded.values()))[1]))]
        row_of = {name: {p: i for i, p in enumerate(images)} for name in loaded}
    ages = {}
    for name, (_, y, _) in loaded.items():
        for image in images:
            age = int(y[row_of[name][image]])
            if ages.setdefault(image, age) != age:
                raise ValueError(f"embedding files disagree on the age of {image!r}: {ages[image]} vs {age} (in {name})")
    features = {name: x[np.array([row_of[name][image] for image in images], dtype=int)]
                for name, (x, _, _) in loaded.items()}
    return images, ages, skipped, features


def _write(folder, name, paths, ages, *, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"features": rng.normal(size=(len(ages), dim)).astype(np.float32), "labels": np.asarray(ages, dtype=int)}
    if paths is not None:
        arrays["paths"] = np.asarray(paths, dtype=str)
    np.savez(folder / f"{name}.npz", **arrays)
    return folder / f"{name}.npz"


def _files(folder, seed, *, n=60, n_files=3):
    """Files holding overlapping, shuffled subsets of n images (names include spaces and non-ASCII)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"fish {i:03d}/otólito_{i}.jpg" for i in range(n)])
    ages = rng.integers(1, 11, n)
    files = {}
    for f in range(n_files):
        keep = rng.permutation(n)[: int(n * rng.uniform(0.6, 1.0))]
        files[f"enc-{f}"] = _write(folder, f"enc-{f}", names[keep], ages[keep], dim=2 + f, seed=seed + f)
    return files


def _assert_same_as_reference(files):
    images, ages, skipped, features = reference_load(files)
    dataset, sets = load_npz_embeddings(files)
    assert [r.id for r in dataset.records] == images
    assert all(type(r.id) is str for r in dataset.records)  # not np.str_ (its repr differs in messages)
    assert [r.age for r in dataset.records] == [ages[i] for i in images]
    assert [r.path for r in dataset.records] == [Path(i) for i in images]
    assert list(dataset.skipped) == skipped
    assert dataset.kind == "embeddings" and dataset.source == Path(next(iter(files.values()))).resolve()
    assert list(sets) == list(files)
    for name, emb in sets.items():
        assert emb.encoder == name and emb.features.dtype == np.float32
        np.testing.assert_array_equal(emb.features, features[name])
        np.testing.assert_array_equal(emb.rows, np.arange(len(images)))


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_and_partly_missing_paths_match_the_reference(tmp_path, seed):
    files = _files(tmp_path, seed)
    _assert_same_as_reference(files)
    dataset, _ = load_npz_embeddings(files)
    assert dataset.skipped and all("only in some embedding files" in s.reason for s in dataset.skipped)


def test_one_file_and_files_sharing_no_image(tmp_path):
    _assert_same_as_reference({"only": _write(tmp_path, "only", ["b.jpg", "a.jpg"], [2, 1])})
    files = {"a": _write(tmp_path, "a", ["a.jpg", "b.jpg"], [1, 2]), "b": _write(tmp_path, "b", ["c.jpg"], [3])}
    _assert_same_as_reference(files)
    dataset, sets = load_npz_embeddings(files)
    assert len(dataset) == 0 and sets["a"].features.shape == (0, 3)
    assert [s.path for s in dataset.skipped] == ["a.jpg", "b.jpg", "c.jpg"]


def test_files_without_paths_are_matched_by_row(tmp_path):
    files = {"a": _write(tmp_path, "a", None, [1, 2, 3, 4]), "b": _write(tmp_path, "b", None, [1, 2, 3, 4], seed=1)}
    _assert_same_as_reference(files)
    assert [r.id for r in load_npz_embeddings(files)[0].records] == ["row_1", "row_2", "row_3", "row_4"]
    files["c"] = _write(tmp_path, "c", None, [1, 2, 3])
    with pytest.raises(ValueError, match=re.escape("must have the same number of rows, got {'a': 4, 'b': 4, 'c': 3}")):
        load_npz_embeddings(files)


def test_files_with_and_without_paths_are_refused_by_name(tmp_path):
    files = {"a": _write(tmp_path, "a", ["x.jpg", "y.jpg"], [1, 2]), "b": _write(tmp_path, "b", None, [1, 2])}
    with pytest.raises(ValueError, match=r"'paths' in all embedding files or in none.*lack it: \['b'\]"):
        load_npz_embeddings(files)


@pytest.mark.parametrize("seed", range(3))
def test_an_age_disagreement_names_the_image_and_both_ages_as_the_reference_does(tmp_path, seed):
    files = _files(tmp_path, seed)
    images = reference_load(files)[0]
    rng = np.random.default_rng(seed)
    for name in ("enc-1", "enc-2"):  # two later files disagree, on several shared images each
        with np.load(files[name]) as data:
            arrays = dict(data)
        changed = np.isin(arrays["paths"], rng.choice(images, 3, replace=False))
        arrays["labels"][changed] += 1
        np.savez(files[name], **arrays)
    with pytest.raises(ValueError) as expected:
        reference_load(files)
    assert "disagree on the age of" in str(expected.value)
    with pytest.raises(ValueError, match=re.escape(str(expected.value)) + "$"):
        load_npz_embeddings(files)


# ----------------------------------------------------------------------------------------------------
# Trays: many crop boxes per photo, each photo decoded once.


def _trays(folder):
    """Two trays of 20 like-sized boxes with their rows interleaved, a box outside tray A, and a broken tray of 3 boxes."""
    from conftest import grid_boxes, write_tray

    boxes = grid_boxes(20, box=(200, 150))
    write_tray(folder / "a.jpg", boxes, seed=1)
    write_tray(folder / "b.jpg", boxes, orientation=6, seed=2)
    (folder / "c.jpg").write_bytes((folder / "a.jpg").read_bytes()[:400])
    rows = []
    for i, box in enumerate(boxes):
        rows += [("a.jpg", box), ("b.jpg", box)] + ([("c.jpg", box)] if i in (3, 9, 15) else [])
    rows.insert(7, ("a.jpg", (1100, 700, 1300, 850)))  # past the right and bottom edges
    lines = ["path,age,x0,y0,x1,y1"] + [f"{p},{1 + i % 9},{','.join(map(str, b))}" for i, (p, b) in enumerate(rows)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    from otolith_core.data import load_dataset

    return load_dataset(folder / "m.csv")


@pytest.mark.parametrize("name", ["pixels-32", "tiny-timm"])  # a built-in extractor and a ViT
def test_a_tray_extraction_equals_each_box_decoded_alone_and_reads_each_photo_once(tmp_path, monkeypatch, name,
                                                                                  tiny_timm_dir):
    """Against the plain reference: load_image of each record alone + the same encoder, one image at a time."""
    import otolith_core.data as data_module
    from otolith_core.data import load_image
    from otolith_core.embeddings import extract_embeddings
    from otolith_core.encoders import decode_min_side, load_encoder, registry, resolve_encoder

    data = _trays(tmp_path)
    spec = resolve_encoder(f"local-dir:{tiny_timm_dir}") if name == "tiny-timm" else registry()[name]
    encoder = load_encoder(spec, device="cpu")
    opened, real_open = [], data_module.Image.open
    monkeypatch.setattr(data_module.Image, "open", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k))
    result = extract_embeddings(data, spec, cache_dir=tmp_path / "cache", encoder=encoder)
    assert sorted(opened) == ["a.jpg", "b.jpg", "c.jpg"]  # 44 boxes of three photos: three reads
    monkeypatch.setattr(data_module.Image, "open", real_open)

    expected_rows, expected_failures, reference = [], [], []
    for i, record in enumerate(data.records):
        try:
            image = load_image(record, min_side=decode_min_side(spec))
        except ValueError as exc:
            expected_failures.append((record.id, record.row, str(exc)))
            continue
        expected_rows.append(i)
        reference.append(encoder.embed([image])[0])
    assert result.rows.tolist() == expected_rows  # the dataset's order, whatever order the work ran in
    assert [(f.image, f.row, f.reason) for f in result.failures] == expected_failures
    assert [(f.path, f.reason.split(":")[0]) for f in result.failures] == [
        ("a.jpg", "crop box (1100, 700, 1300, 850) lies outside the 1200x800 image")] + [("c.jpg", "cannot decode image")] * 3
    if name == "tiny-timm":  # a batch of boxes through the ViT, against one at a time: float rounding only
        np.testing.assert_allclose(result.features, np.stack(reference), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(result.features, np.stack(reference))
    assert result.keys == tuple(result.keys) and len(set(result.keys)) == len(expected_rows)


def test_a_photo_a_job_could_not_download_is_named_not_waited_for(tmp_path, photo_server):
    """The dashboard reads the cache without downloading: a photo still to fetch is pending, one whose download
    failed (in a job) is named with the job's reason, so the other images are compared without it."""
    from conftest import presigned_query, write_tray_export
    from otolith_core.data import ManifestColumns, download_missing
    from otolith_core.encoders import registry

    dead = f"{photo_server.url}/lost.jpg?{presigned_query('s1')}"
    csv = write_tray_export(photo_server.folder, boxes_per_tray=3, base_url=photo_server.url,
                            extra_rows=(f'M90,ST9,5.0,40,"[[0, 0], [20, 20]]",{dead}',))
    columns = ManifestColumns(path="image__content__url", box="bounding_box", id="measurement_id")
    cache = tmp_path / "cache"
    spec = registry()["pixels-32"]
    before = extract_embeddings(load_dataset(csv, columns=columns, cache_dir=cache), spec, cache_dir=cache,
                                cached_only=True)
    assert len(before.pending) == 7 and not before.failures
    extract_embeddings(download_missing(load_dataset(csv, columns=columns, cache_dir=cache)), spec, cache_dir=cache)
    seen = extract_embeddings(load_dataset(csv, columns=columns, cache_dir=cache), spec, cache_dir=cache,
                              cached_only=True)
    assert len(seen.rows) == 6 and not seen.pending
    (failure,) = seen.failures
    assert failure.image == "M90" and failure.reason.startswith("download failed: HTTP 404")


@pytest.mark.slow
def test_missing_hub_weights_offline_are_named_before_torch_is_imported(tmp_path):
    """An extraction of a hub encoder whose weights are not here, offline, stops with the loader's advice before
    torch is imported (a job then fails in about a second, not after the seconds torch takes to import)."""
    import subprocess
    import sys

    from conftest import write_tiny_photos_manifest

    manifest = write_tiny_photos_manifest(tmp_path, "path,age\no0.png,3\no1.png,4\n", seed=0)
    script = f"""
import sys
from otolith_core.data import load_dataset
from otolith_core.embeddings import extract_embeddings
from otolith_core.encoders import EncoderUnavailable, registry
try:
    extract_embeddings(load_dataset({str(manifest)!r}), registry()["clip-vit-l-14-336"], cache_dir={str(tmp_path / "c")!r},
                       weights_dir={str(tmp_path / "hf")!r})
except EncoderUnavailable as exc:
    print("unavailable:", "not on this machine" in str(exc), "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip() == "unavailable: True False", done.stdout + done.stderr


def test_a_built_in_extractor_continuing_its_store_never_imports_torch(demo_manifest, tmp_path):
    """A built-in extractor needs no torch: continuing a store it began (in one process, and in a shard) must not
    import torch to ask which device could continue it. It did, costing each such job and shard seconds of CPU."""
    import subprocess
    import sys

    import pandas as pd

    from otolith_core.encoders import registry

    rows = pd.read_csv(demo_manifest).head(8)
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    data = load_dataset(tmp_path / "manifest.csv")
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    for cache in (one, sharded):  # a store begun: 5 of the 8 images
        extract_embeddings(data.subset(range(5)), registry()["pixels-32"], cache_dir=cache)
    code = f"""
import sys
from otolith_core.data import load_dataset
from otolith_core.embeddings import extract_embeddings
from otolith_core.encoders import registry
from otolith_core.shards import plan_shards, run_shard
data = load_dataset(r'{tmp_path / "manifest.csv"}')
extracted = extract_embeddings(data, registry()['pixels-32'], cache_dir=r'{one}').n_extracted
plan = plan_shards(data, 'pixels-32', cache_dir=r'{sharded}', n_shards=1)
shard = run_shard(plan.folder, 0)
print(extracted, shard.extracted, 'torch' in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "3", "False"]
