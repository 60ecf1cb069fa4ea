import dataclasses
import shutil

import numpy as np
import pytest

from otolith_core.cache import EmbeddingStore, FileHashes, encoder_fingerprint
from otolith_core.data import load_dataset
from otolith_core.embeddings import EmbeddingSet, cached_count, extract_embeddings
from otolith_core.encoders import Preprocessing, registry, resolve_encoder


class CountingEncoder:
    """Wraps a real encoder and counts the images it is asked to embed."""

    def __init__(self, inner, fail_after_batches=None):
        self.inner, self.spec, self.batch_size, self.precision = inner, inner.spec, 4, inner.precision
        self.seen, self.batches, self.fail_after = 0, 0, fail_after_batches

    def embed(self, images):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-extraction
        self.batches += 1
        self.seen += len(images)
        return self.inner.embed(images)


def _pixels():
    from otolith_core.encoders import load_encoder

    return load_encoder(registry()["pixels-32"])


def test_fingerprint_changes_with_everything_that_changes_numbers(tmp_path):
    hashes = FileHashes(tmp_path)
    spec = resolve_encoder("clip-vit-l-14-336")
    base = encoder_fingerprint(spec, hashes)
    assert base == encoder_fingerprint(dataclasses.replace(spec, name="renamed", description="x"), hashes)
    changes = [
        dataclasses.replace(spec, pretrained="laion2b"),
        dataclasses.replace(spec, model_id="ViT-L-14-336"),
        dataclasses.replace(spec, preprocessing=dataclasses.replace(spec.preprocessing, resize_mode="squash")),
        dataclasses.replace(spec, preprocessing=dataclasses.replace(spec.preprocessing, size=224)),
        dataclasses.replace(spec, preprocessing=Preprocessing(336, "shortest", (0.5,) * 3, (0.5,) * 3)),
        dataclasses.replace(spec, preprocessing=dataclasses.replace(spec.preprocessing, interpolation="bilinear")),
    ]
    assert len({base, *(encoder_fingerprint(s, hashes) for s in changes)}) == len(changes) + 1
    # Reduced precision changes numbers; fp32 adds nothing, so stores written before precisions existed stay valid.
    assert encoder_fingerprint(spec, hashes, "fp32") == base
    assert len({base, encoder_fingerprint(spec, hashes, "bf16"), encoder_fingerprint(spec, hashes, "fp16")}) == 3


@pytest.fixture(autouse=True)
def _cpu_with_bf16(monkeypatch):
    """These tests follow the CPU choice of bf16, whatever CPU runs them."""
    monkeypatch.setattr("otolith_core.encoders.encoder.cpu_has_bf16", lambda: True)


def _bf16_tiny(tiny_model_dir):
    from otolith_core.encoders import Precision

    return dataclasses.replace(resolve_encoder(f"local-dir:{tiny_model_dir}"), precision=Precision(cpu="bf16", cuda="bf16"))


def test_each_precision_has_its_own_store_and_auto_reads_the_fullest(demo_manifest, tiny_model_dir, tmp_path):
    data = load_dataset(demo_manifest).subset(range(24))
    spec = _bf16_tiny(tiny_model_dir)
    cache = tmp_path / "cache"
    assert cached_count(data, spec, cache_dir=cache) == 0 and not (cache / "embeddings").exists()  # counting creates nothing
    half = extract_embeddings(data.subset(range(12)), spec, cache_dir=cache, device="cpu", precision="fp32")
    assert half.precision == "fp32" and half.n_extracted == 12
    # auto, on a CPU whose choice is bf16: the fp32 store already begun is finished, not started over in bf16
    finished = extract_embeddings(data, spec, cache_dir=cache, device="cpu")
    assert finished.precision == "fp32" and finished.n_extracted == 12
    np.testing.assert_array_equal(finished.features[:12], half.features)
    reduced = extract_embeddings(data, spec, cache_dir=cache, device="cpu", precision="bf16")
    assert reduced.precision == "bf16" and reduced.n_extracted == 24  # its own store: nothing mixed
    cosine = np.sum(reduced.features * finished.features, 1) / np.linalg.norm(reduced.features, axis=1) \
        / np.linalg.norm(finished.features, axis=1)
    assert cosine.min() >= 0.999 and not np.array_equal(reduced.features, finished.features)
    both_full = extract_embeddings(data, spec, cache_dir=cache, cached_only=True)
    assert both_full.precision == "fp32" and len(both_full.rows) == 24  # a tie goes to fp32
    assert len(list((cache / "embeddings").iterdir())) == 2


def test_a_resident_encoder_continues_a_store_begun_in_another_precision(demo_manifest, tiny_model_dir, tmp_path):
    from otolith_core.encoders import load_encoder

    data = load_dataset(demo_manifest).subset(range(12))
    spec = _bf16_tiny(tiny_model_dir)
    resident = load_encoder(spec, device="cpu")  # the dashboard keeps one loaded
    assert resident.precision == "bf16"
    extract_embeddings(data.subset(range(6)), spec, cache_dir=tmp_path, device="cpu", precision="fp32")
    finished = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=resident)
    assert finished.precision == "fp32" and finished.n_extracted == 6
    assert resident.precision == "bf16"  # switched on a copy only
    clean = extract_embeddings(data, spec, cache_dir=tmp_path / "clean", device="cpu", precision="fp32")
    np.testing.assert_allclose(finished.features, clean.features, rtol=1e-5, atol=1e-6)


def test_a_fresh_extraction_uses_the_encoders_precision_for_the_device(demo_manifest, tiny_model_dir, tmp_path):
    data = load_dataset(demo_manifest).subset(range(8))
    spec = _bf16_tiny(tiny_model_dir)
    first = extract_embeddings(data, spec, cache_dir=tmp_path, device="cpu")
    assert first.precision == "bf16" and first.n_extracted == 8
    warm = extract_embeddings(data, spec, cache_dir=tmp_path, cached_only=True)  # no device known, no torch needed
    assert warm.precision == "bf16" and len(warm.rows) == 8
    np.testing.assert_array_equal(warm.features, first.features)
    from otolith_core.encoders import EncoderUnavailable

    with pytest.raises(EncoderUnavailable, match="fp16 needs a CUDA GPU"):
        extract_embeddings(data, spec, cache_dir=tmp_path / "other", device="cpu", precision="fp16")


def test_file_hashes_open_their_store_only_for_a_hash_not_remembered(tmp_path):
    """The dashboard asks for each encoder's cache stamp on every rerun: with nothing to hash, or every hash known in
    this process, no store is opened (opening one cost 9 ms a stamp); a new file's hash is stored and read back."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"an otolith")
    hashes = FileHashes(tmp_path / "cache")
    hashes.close()
    assert not (tmp_path / "cache" / "file_hashes").exists()  # asked for nothing: nothing opened
    hashes = FileHashes(tmp_path / "cache")
    first = hashes.sha256(photo)
    hashes.close()
    assert (tmp_path / "cache" / "file_hashes").is_dir()  # a new hash is stored for the next process
    hashes = FileHashes(tmp_path / "other")
    assert hashes.sha256(photo) == first
    hashes.close()
    assert not (tmp_path / "other" / "file_hashes").exists()  # known in this process: read from memory


def test_local_weights_are_keyed_by_content(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    hashes = FileHashes(tmp_path / "c")
    same = encoder_fingerprint(resolve_encoder(f"local-dir:{copy}"), hashes)
    assert same == encoder_fingerprint(resolve_encoder(f"local-dir:{tiny_model_dir}"), hashes)
    from conftest import save_tiny_open_clip

    save_tiny_open_clip(copy, seed=1)  # same config, other weights
    assert encoder_fingerprint(resolve_encoder(f"local-dir:{copy}"), hashes) != same


def test_crop_box_is_part_of_the_image_key(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,age,x0,y0,x1,y1\na.png,1,,,,\na.png,2,0,0,10,10\n")
    data = load_dataset(tmp_path / "m.csv")
    store = EmbeddingStore(tmp_path / "cache", registry()["pixels-32"])
    first, second = store.keys_for(data.records)
    assert first != second and first.split(":")[0] == second.split(":")[0]


def test_second_run_extracts_nothing_and_new_images_only_are_extracted(demo_manifest, tmp_path):
    data = load_dataset(demo_manifest)
    spec = registry()["pixels-32"]
    head = data.subset(range(100))
    enc = CountingEncoder(_pixels())
    first = extract_embeddings(head, spec, cache_dir=tmp_path, encoder=enc)
    assert enc.seen == 100 and first.n_extracted == 100 and first.features.shape == (100, 1024)
    again = extract_embeddings(head, spec, cache_dir=tmp_path, encoder=enc)
    assert enc.seen == 100 and again.n_extracted == 0
    np.testing.assert_array_equal(first.features, again.features)
    full = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=enc)
    assert enc.seen == len(data) and full.n_extracted == len(data) - 100
    assert cached_count(data, spec, cache_dir=tmp_path) == len(data)


def test_interrupted_extraction_keeps_finished_batches(demo_manifest, tmp_path):
    data = load_dataset(demo_manifest).subset(range(40))
    spec = registry()["pixels-32"]
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(data, spec, cache_dir=tmp_path, encoder=CountingEncoder(_pixels(), fail_after_batches=3))
    assert cached_count(data, spec, cache_dir=tmp_path) == 12
    resumed = CountingEncoder(_pixels())
    result = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=resumed)
    assert resumed.seen == 28
    clean = extract_embeddings(data, spec, cache_dir=tmp_path / "clean", encoder=_pixels())
    np.testing.assert_array_equal(result.features, clean.features)


def test_unreadable_images_are_named_and_the_rest_embedded(tmp_path):
    from PIL import Image

    good = Image.new("RGB", (20, 20), (9, 9, 9))
    good.paste((200, 200, 200), (5, 5, 15, 15))
    good.save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "m.csv").write_text("path,age\ngood.png,1\nbad.jpg,2\n")
    data = load_dataset(tmp_path / "m.csv")
    result = extract_embeddings(data, registry()["pixels-32"], cache_dir=tmp_path / "c")
    assert result.rows.tolist() == [0]
    assert [f.path for f in result.failures] == ["bad.jpg"] and "cannot decode" in result.failures[0].reason


def test_reasons_are_kept_when_no_image_could_be_embedded(tmp_path, tiny_model_dir):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "m.csv").write_text("path,age\nbad.jpg,2\n")
    data = load_dataset(tmp_path / "m.csv")
    spec = _bf16_tiny(tiny_model_dir)
    first = extract_embeddings(data, spec, cache_dir=tmp_path / "c", device="cpu")
    again = extract_embeddings(data, spec, cache_dir=tmp_path / "c", cached_only=True)  # a store holding no embedding
    assert first.precision == again.precision == "bf16"
    assert "cannot decode" in again.failures[0].reason


def test_morphometrics_names_an_image_with_no_otolith(tmp_path):
    from PIL import Image

    faint = np.random.default_rng(0).integers(10, 14, (64, 64, 3), dtype=np.uint8)  # noise, no object
    Image.fromarray(faint).save(tmp_path / "faint.png")
    (tmp_path / "m.csv").write_text("path,age\nfaint.png,1\n")
    data = load_dataset(tmp_path / "m.csv")
    result = extract_embeddings(data, registry()["otolith-morphometrics"], cache_dir=tmp_path / "c")
    assert len(result.rows) == 0 and "no otolith" in result.failures[0].reason


def test_a_dataset_matrix_is_read_back_as_one_blob(demo_manifest, tmp_path):
    data = load_dataset(demo_manifest)
    spec = registry()["pixels-32"]
    first = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=_pixels())
    store = EmbeddingStore(tmp_path, spec)
    keys = store.keys_for(data.records)
    reads = []
    real_get = store._cache.get
    store._cache.get = lambda key, *a, **k: reads.append(key) or real_get(key, *a, **k)
    matrix, found = store.get_many(keys)
    assert len(reads) == 1 and found.tolist() == list(range(len(keys)))
    np.testing.assert_array_equal(matrix, first.features)
    reads.clear()
    part, _ = store.get_many(keys[:10])  # another image list: row by row, never the stale matrix
    assert len(reads) == 11
    np.testing.assert_array_equal(part, first.features[:10])
    store.close()


def _extract_command(manifest, cache, model="otolith-morphometrics"):
    import sys

    return [sys.executable, "-m", "otolith_core.cli", "extract", "--data", str(manifest), "--model", model,
            "--cache-dir", str(cache), "--batch-size", "4"]


@pytest.mark.slow
def test_an_extraction_killed_with_sigkill_resumes_with_identical_embeddings(demo_manifest, demo_cache, tmp_path):
    import subprocess
    import time

    import pandas as pd

    rows = pd.read_csv(demo_manifest).head(40)  # enough to be killed halfway: the subprocess writes 4 at a time
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    manifest = tmp_path / "first40.csv"
    rows.to_csv(manifest, index=False)
    data = load_dataset(manifest)
    spec = registry()["otolith-morphometrics"]
    process = subprocess.Popen(_extract_command(manifest, tmp_path / "cache"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (tmp_path / "cache" / "embeddings").exists() and cached_count(data, spec, cache_dir=tmp_path / "cache") >= 12:
            break
        time.sleep(0.2)
    process.kill()  # SIGKILL: no clean-up code runs
    process.wait()
    kept = cached_count(data, spec, cache_dir=tmp_path / "cache")
    assert 12 <= kept < len(data), kept
    resumed = extract_embeddings(data, spec, cache_dir=tmp_path / "cache")
    assert resumed.n_extracted == len(data) - kept  # nothing finished was redone
    shutil.copytree(demo_cache, tmp_path / "clean")  # a clean extraction of the same images, made once per session
    clean = extract_embeddings(data, spec, cache_dir=tmp_path / "clean")
    assert clean.n_extracted == 0
    np.testing.assert_array_equal(resumed.features, clean.features)
    np.testing.assert_array_equal(resumed.rows, clean.rows)


@pytest.mark.slow
def test_two_processes_extracting_into_one_cache_both_finish_correctly(demo_manifest, tmp_path):
    import subprocess

    command = _extract_command(demo_manifest, tmp_path / "cache", model="pixels-32")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.wait(timeout=300) == 0, second.stderr.read()
    data = load_dataset(demo_manifest)
    shared = extract_embeddings(data, registry()["pixels-32"], cache_dir=tmp_path / "cache")
    clean = extract_embeddings(data, registry()["pixels-32"], cache_dir=tmp_path / "clean", encoder=_pixels())
    assert shared.n_extracted == 0
    np.testing.assert_array_equal(shared.features, clean.features)


def test_a_cache_of_another_schema_version_is_never_read(demo_manifest, tmp_path, monkeypatch):
    from otolith_core import cache as cache_module

    data = load_dataset(demo_manifest).subset(range(8))
    spec = registry()["pixels-32"]
    monkeypatch.setattr(cache_module, "SCHEMA_VERSION", cache_module.SCHEMA_VERSION - 1)
    extract_embeddings(data, spec, cache_dir=tmp_path, encoder=_pixels())
    monkeypatch.undo()
    assert cached_count(data, spec, cache_dir=tmp_path) == 0  # rebuilt under the current schema


def test_a_damaged_cache_entry_is_recomputed_not_read(demo_manifest, tmp_path):
    data = load_dataset(demo_manifest).subset(range(12))
    spec = registry()["pixels-32"]
    clean = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=_pixels())
    store = EmbeddingStore(tmp_path, spec)
    keys = store.keys_for(data.records)
    store._cache.delete("__matrix__")
    store._cache.set(keys[3], b"\x00\x01\x02")  # truncated write
    store._cache.set(keys[5], np.full(1024, np.nan, dtype=np.float32).tobytes())
    store.close()
    counter = CountingEncoder(_pixels())
    again = extract_embeddings(data, spec, cache_dir=tmp_path, encoder=counter)
    assert counter.seen == 2
    np.testing.assert_array_equal(again.features, clean.features)


def test_cached_only_reads_without_extracting_and_repeats_the_failure_reason(tmp_path):
    from PIL import Image

    good = Image.new("RGB", (20, 20), (9, 9, 9))
    good.paste((200, 200, 200), (5, 5, 15, 15))
    good.save(tmp_path / "good.png")
    good.save(tmp_path / "later.png", format="PNG", compress_level=1)  # same pixels, other bytes: another image
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "m.csv").write_text("path,age\ngood.png,1\nbad.jpg,2\n")
    spec = registry()["pixels-32"]
    extract_embeddings(load_dataset(tmp_path / "m.csv"), spec, cache_dir=tmp_path / "c")
    (tmp_path / "m.csv").write_text("path,age\ngood.png,1\nbad.jpg,2\nlater.png,3\n")
    counter = CountingEncoder(_pixels())
    result = extract_embeddings(load_dataset(tmp_path / "m.csv"), spec, cache_dir=tmp_path / "c", encoder=counter,
                                cached_only=True)
    assert counter.seen == 0 and result.rows.tolist() == [0]
    reasons = {f.path: f.reason for f in result.failures}
    assert set(reasons) == {"bad.jpg"} and "cannot decode" in reasons["bad.jpg"]
    assert result.pending == ("later.png",) and not result.complete  # not tried yet: pending, not failed


def test_a_stored_comparison_is_keyed_by_the_codes_version_and_the_resolved_scaling(monkeypatch):
    """An upgrade of the package, or a registry entry whose scaling changed (``auto`` resolves to it), must not
    serve a comparison computed before."""
    from importlib import metadata

    from otolith_core.cache import results_key

    ingredients = {"data": "d", "scalings": {"pixels-32": "none"}, "heads": ["ridge"]}
    key = results_key(ingredients)
    assert results_key(dict(ingredients)) == key
    assert results_key({**ingredients, "scalings": {"pixels-32": "l2"}}) != key
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "99.0" if name == "otolith-dashboard" else real(name))
    assert results_key(ingredients) != key


def test_the_dashboards_comparison_key_names_each_encoders_resolved_scaling(monkeypatch):
    from dataclasses import replace

    from otolith_core.encoders import registry
    from otolith_core.heads import HeadSpec
    from views import cached
    from views.state import Settings

    settings = Settings("demo.csv", "sig", False, ("pixels-32",), (HeadSpec("ridge"),), 10, 0, None, "cache")
    spec = registry()["pixels-32"]
    embeddings = {"pixels-32": (EmbeddingSet("pixels-32", np.zeros((3, 2), np.float32), np.arange(3)), "digest")}
    monkeypatch.setattr(cached, "resolve", lambda names: ({"pixels-32": spec}, {}))
    before = cached.comparison_key(settings, embeddings)
    monkeypatch.setattr(cached, "resolve", lambda names: ({"pixels-32": replace(spec, scaling="l2")}, {}))
    assert cached.comparison_key(settings, embeddings) != before


def test_the_tie_level_only_marks_results_it_neither_keys_the_comparison_nor_makes_a_run_old(monkeypatch):
    from dataclasses import replace

    from otolith_core.encoders import registry
    from otolith_core.heads import HeadSpec
    from views import cached
    from views.state import Settings

    settings = Settings("demo.csv", "sig", False, ("pixels-32",), (HeadSpec("ridge"),), 10, 0, None, "cache")
    embeddings = {"pixels-32": (EmbeddingSet("pixels-32", np.zeros((3, 2), np.float32), np.arange(3)), "digest")}
    monkeypatch.setattr(cached, "resolve", lambda names: ({"pixels-32": registry()["pixels-32"]}, {}))
    marked = replace(settings, tie_level=0.01)
    assert cached.comparison_key(marked, embeddings) == cached.comparison_key(settings, embeddings)
    assert marked != settings and marked.same_run_as(settings)
    assert not replace(settings, seed=1).same_run_as(settings)


# ----------------------------------------------------------------------------------------------------
# Hub weights: every store records the revision (the snapshot's commit) its embeddings were computed from.

HUB_REPO = "someorg/tiny-clip"


def _on_the_hub(hf, folder, commit):
    """``folder``'s model as downloaded at ``commit`` (refs/main then names it)."""
    from conftest import place_in_hf_cache

    names = ("open_clip_config.json", "open_clip_model.safetensors")
    return place_in_hf_cache(hf, HUB_REPO, {n: folder / n for n in names}, commit=commit)


def test_a_new_hub_revision_gets_a_store_of_its_own_and_the_old_one_is_kept(demo_manifest, tiny_model_dir, tmp_path,
                                                                           offline_hub):
    from conftest import HUB_COMMIT, NEWER_COMMIT, save_tiny_open_clip
    from otolith_core.embeddings import embedding_stamp

    hf, cache = tmp_path / "hf", tmp_path / "cache"
    _on_the_hub(hf, tiny_model_dir, HUB_COMMIT)
    data = load_dataset(demo_manifest).subset(range(8))
    spec = resolve_encoder(f"hf-hub:{HUB_REPO}", weights_dir=hf)
    options = dict(cache_dir=cache, device="cpu", precision="fp32", weights_dir=hf)
    first = extract_embeddings(data, spec, **options)
    assert first.weights_revision == HUB_COMMIT and first.n_extracted == 8
    [old] = (cache / "embeddings").iterdir()
    assert old.name.endswith(encoder_fingerprint(spec, FileHashes(tmp_path / "h"))[:16])  # the key it always had
    store = EmbeddingStore(cache, spec)
    assert store.revision == HUB_COMMIT and len(store) == 8  # recorded in the store itself
    store.close()
    stamp = embedding_stamp(spec, cache_dir=cache, weights_dir=hf)

    # The hub repo changed and was downloaded again: refs/main names a snapshot with other weights.
    _on_the_hub(hf, save_tiny_open_clip(tmp_path / "newer", seed=1), NEWER_COMMIT)
    assert embedding_stamp(spec, cache_dir=cache, weights_dir=hf) != stamp
    assert cached_count(data, spec, cache_dir=cache, weights_dir=hf) == 0  # the old weights' embeddings are not these
    second = extract_embeddings(data, spec, **options)
    assert second.weights_revision == NEWER_COMMIT and second.n_extracted == 8
    assert not np.allclose(second.features, first.features, atol=1e-3)
    assert len(list((cache / "embeddings").iterdir())) == 2
    warm = extract_embeddings(data, spec, cache_dir=cache, weights_dir=hf, cached_only=True)
    assert warm.weights_revision == NEWER_COMMIT and np.array_equal(warm.features, second.features)

    # The old store is untouched: pinned to its revision, it is read as it was, nothing extracted.
    pinned = resolve_encoder(f"hf-hub:{HUB_REPO}@revision={HUB_COMMIT}", weights_dir=hf)
    again = extract_embeddings(data, pinned, **options)
    assert again.n_extracted == 0 and again.weights_revision == HUB_COMMIT
    np.testing.assert_array_equal(again.features, first.features)
    store = EmbeddingStore(cache, spec, revision=HUB_COMMIT)
    assert store.path == old and store.revision == HUB_COMMIT and len(store) == 8
    store.close()
    latest = resolve_encoder(f"hf-hub:{HUB_REPO}@revision={NEWER_COMMIT}", weights_dir=hf)  # pinned to the new one
    assert extract_embeddings(data, latest, **options).n_extracted == 0
    assert len(list((cache / "embeddings").iterdir())) == 2


@pytest.mark.parametrize("pinned", [False, True], ids=["by-name", "pinned-to-main"])
def test_a_store_from_before_revisions_were_recorded_adopts_the_current_one(pinned, demo_manifest, tiny_model_dir,
                                                                           tmp_path, offline_hub, monkeypatch):
    from conftest import HUB_COMMIT, NEWER_COMMIT, save_tiny_open_clip

    hf, cache = tmp_path / "hf", tmp_path / "cache"
    _on_the_hub(hf, save_tiny_open_clip(tmp_path / "newer", seed=1), NEWER_COMMIT)
    _on_the_hub(hf, tiny_model_dir, HUB_COMMIT)  # refs/main names HUB_COMMIT, as when the store was filled
    data = load_dataset(demo_manifest).subset(range(8))
    spec = resolve_encoder(f"hf-hub:{HUB_REPO}", weights_dir=hf)
    reference = extract_embeddings(data, spec, cache_dir=tmp_path / "elsewhere", device="cpu", precision="fp32",
                                   weights_dir=hf)
    legacy = EmbeddingStore(cache, spec)  # as this package wrote stores before: the same key, no revision in it
    legacy.put_many(list(reference.keys), reference.features)
    assert legacy.revision is None
    legacy.close()
    [folder] = (cache / "embeddings").iterdir()
    other = resolve_encoder(f"hf-hub:{HUB_REPO}@revision={NEWER_COMMIT}", weights_dir=hf)
    assert cached_count(data, other, cache_dir=cache, weights_dir=hf) == 0  # a pin to another revision never adopts it

    monkeypatch.setattr("otolith_core.embeddings.load_encoder", lambda *a, **k: pytest.fail("nothing to extract"))
    name = f"hf-hub:{HUB_REPO}@revision={HUB_COMMIT}" if pinned else f"hf-hub:{HUB_REPO}"
    warm = extract_embeddings(data, resolve_encoder(name, weights_dir=hf), cache_dir=cache, weights_dir=hf)
    assert warm.n_extracted == 0 and warm.weights_revision == HUB_COMMIT
    np.testing.assert_array_equal(warm.features, reference.features)
    assert [p.name for p in (cache / "embeddings").iterdir()] == [folder.name]  # its key is kept
    adopted = EmbeddingStore(cache, spec)
    assert adopted.path == folder and adopted.revision == HUB_COMMIT
    adopted.close()


def test_the_stamp_changes_with_every_write_and_never_with_a_read(demo_manifest, tmp_path):
    """The dashboard keeps its read of an encoder's embeddings until the stamp changes. Opening a store (its SQLite
    files change then, a read included) used to change it, so every rerun read 8,637 embeddings again; a batch
    extracted, a failure recorded or a damaged entry dropped must change it."""
    from otolith_core.embeddings import embedding_stamp

    cache = tmp_path / "cache"
    spec = registry()["pixels-32"]
    data = load_dataset(demo_manifest)
    empty = embedding_stamp(spec, cache_dir=cache)
    extract_embeddings(data.subset(range(8)), spec, cache_dir=cache)
    written = embedding_stamp(spec, cache_dir=cache)
    assert written != empty
    for _ in range(2):
        extract_embeddings(data, spec, cache_dir=cache, cached_only=True)  # what a dashboard rerun does
        cached_count(data, spec, cache_dir=cache)
        assert embedding_stamp(spec, cache_dir=cache) == written
    extract_embeddings(data.subset(range(12)), spec, cache_dir=cache)
    assert embedding_stamp(spec, cache_dir=cache) != written
    again = embedding_stamp(spec, cache_dir=cache)
    store = EmbeddingStore(cache, spec)
    store.record_failures({"some image key": "cannot be decoded"})
    store.close()
    assert embedding_stamp(spec, cache_dir=cache) != again
