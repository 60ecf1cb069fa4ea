"""Preprocessing variants (`NAME@pad+clahe`): parsing, the image operations, and their own cache stores."""

import numpy as np
import pytest
from PIL import Image

from otolith_core.encoders import Variant, registry, resolve_encoder
from otolith_core.encoders.variants import apply_variant, border_median, clahe, fit_square, split_variant


def test_suffix_is_the_text_after_the_last_at_when_every_token_is_an_option():
    assert split_variant("pixels-32@pad+clahe") == ("pixels-32", ["pad", "clahe"])
    assert split_variant("hf-hub:org/model@main") == ("hf-hub:org/model@main", None)
    assert split_variant("hf-hub:org/model@main@crop") == ("hf-hub:org/model@main", ["crop"])
    assert split_variant("pixels-32") == ("pixels-32", None)


def test_variant_names_resolve_to_one_canonical_name_with_the_options():
    spec = resolve_encoder("pixels-32@clahe+pad")
    assert spec.name == "pixels-32@pad+clahe" and spec.base_name == "pixels-32"
    assert spec.variant == Variant(fit="pad", clahe=True)
    assert spec.variant.clip_limit == 0.01 and spec.variant.kernel == 0.125  # documented defaults
    assert resolve_encoder("pixels-32@crop").variant == Variant(fit="crop")
    assert resolve_encoder("pixels-32").variant == Variant()


@pytest.mark.parametrize("name, words", [("pixels-32@padd", "pad, squash, crop, clahe"),
                                         ("pixels-32@pad+crop", "one of pad, squash, crop"),
                                         ("pixels-32@pad+pad", "repeated")])
def test_a_bad_suffix_is_one_clear_error_naming_the_options(name, words):
    with pytest.raises(ValueError, match=words):
        resolve_encoder(name)


def test_pad_keeps_the_aspect_ratio_on_the_border_colour():
    photo = Image.new("RGB", (300, 100), (30, 40, 50))
    photo.paste((220, 210, 200), (100, 30, 200, 70))  # the otolith
    square = np.asarray(fit_square(photo, "pad"))
    assert square.shape == (300, 300, 3)
    background = np.all(square == (30, 40, 50), axis=2)
    assert background[:100].all() and background[200:].all()  # padding above and below, in the cloth's colour
    object_rows = np.flatnonzero((square == (220, 210, 200)).all(axis=2).any(axis=1))
    object_cols = np.flatnonzero((square == (220, 210, 200)).all(axis=2).any(axis=0))
    assert (object_rows.min(), object_rows.max() + 1) == (130, 170)  # shape not stretched: 100 x 40 as drawn
    assert (object_cols.min(), object_cols.max() + 1) == (100, 200)


def test_border_median_ignores_a_few_odd_pixels():
    photo = Image.new("RGB", (50, 20), (10, 200, 30))
    photo.putpixel((0, 0), (255, 255, 255))
    assert tuple(border_median(photo)) == (10, 200, 30)


def test_crop_and_squash_make_squares():
    photo = Image.new("RGB", (300, 100), (0, 0, 0))
    photo.paste((255, 255, 255), (0, 0, 30, 100))  # a white left edge
    assert fit_square(photo, "crop").size == (100, 100)
    assert np.asarray(fit_square(photo, "crop")).max() == 0  # the centre square has no white edge
    squashed = np.asarray(fit_square(photo, "squash"))
    assert squashed.shape == (100, 100, 3) and squashed[:, :8].min() > 200  # the whole width, stretched


def test_clahe_changes_a_low_contrast_image_and_leaves_a_flat_one():
    yy, xx = np.mgrid[:120, :160]
    rings = 110 + 6 * np.sin(np.hypot(yy - 60, xx - 80) / 3) + xx / 16  # faint rings on a slow gradient
    low = Image.fromarray(rings.astype(np.uint8)).convert("RGB")
    out = np.asarray(clahe(low, clip_limit=0.01, kernel=0.125)).astype(float)
    assert out.std() > np.asarray(low).astype(float).std() * 1.5
    flat = Image.new("RGB", (64, 48), (90, 90, 90))
    assert np.array_equal(np.asarray(clahe(flat, clip_limit=0.01, kernel=0.125)), np.asarray(flat))
    stronger = np.asarray(clahe(low, clip_limit=0.05, kernel=0.125)).astype(float)
    assert stronger.std() > out.std()  # the clip limit is a real parameter


def test_clahe_runs_at_the_work_scale_whatever_the_photo_size():
    photo = Image.new("RGB", (4000, 3000), (90, 90, 90))
    photo.paste((120, 120, 120), (1000, 1000, 3000, 2000))
    prepared = apply_variant(photo, Variant(clahe=True), work_side=600)
    assert min(prepared.size) == 600 and prepared.size == (800, 600)


def test_variant_changes_the_key_and_clahe_parameters_are_part_of_it(tmp_path):
    from otolith_core.cache import FileHashes, encoder_fingerprint

    hashes = FileHashes(tmp_path)
    keys = {encoder_fingerprint(resolve_encoder(name, **options), hashes)
            for name, options in [("pixels-32", {}), ("pixels-32@pad", {}), ("pixels-32@pad+clahe", {}),
                                  ("pixels-32@pad+clahe", {"clahe_clip_limit": 0.02}),
                                  ("pixels-32@pad+clahe", {"clahe_kernel": 0.25})]}
    assert len(keys) == 5
    # without clahe the CLAHE parameters are no part of the identity
    assert encoder_fingerprint(resolve_encoder("pixels-32@pad", clahe_clip_limit=0.5), hashes) == \
        encoder_fingerprint(resolve_encoder("pixels-32@pad"), hashes)


def test_a_variant_hands_the_model_a_square_resized_as_a_whole():
    clip = registry()["clip-vit-l-14-336"]
    padded = resolve_encoder("clip-vit-l-14-336@pad")
    assert clip.input_preprocessing.resize_mode == "shortest"
    assert padded.input_preprocessing.resize_mode == "squash" and padded.input_preprocessing.size == 336
    assert padded.preprocessing == clip.preprocessing  # the model's own config, still checked against the library


def test_variant_embeddings_differ_land_in_their_own_store_and_are_extracted_once(demo_manifest, tmp_path):
    from otolith_core.cache import FileHashes, store_path
    from otolith_core.data import load_dataset
    from otolith_core.embeddings import extract_embeddings

    data = load_dataset(demo_manifest)
    subset = type(data)(data.source, data.kind, data.records[:12], ())
    cache = tmp_path / "cache"
    plain = extract_embeddings(subset, resolve_encoder("pixels-32"), cache_dir=cache)
    spec = resolve_encoder("pixels-32@pad+clahe")
    variant = extract_embeddings(subset, spec, cache_dir=cache)
    assert variant.n_extracted == 12 and variant.features.shape == plain.features.shape
    assert not np.allclose(variant.features, plain.features)
    hashes = FileHashes(cache)
    assert store_path(cache, spec, hashes) != store_path(cache, resolve_encoder("pixels-32"), hashes)
    assert extract_embeddings(subset, spec, cache_dir=cache).n_extracted == 0
