"""timm encoders, loaded through the same code path a user's `timm:` / `hf-hub:` / `local-dir:` name takes."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import place_in_hf_cache, save_tiny_timm
from otolith_core.encoders import EncoderUnavailable, Variant, load_encoder, resolve_encoder, weights_available


def _images(n=3):
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


def _timm_reference(folder, images):
    """timm itself: the model from the folder, its own data config and transform, pre-logits features."""
    import timm
    import torch

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    batch = torch.stack([transform(im) for im in images])
    with torch.inference_mode():
        return model.forward_head(model.forward_features(batch), pre_logits=True).numpy(), model


def test_local_dir_timm_model_equals_timm_own_pre_logits(tiny_timm_dir):
    spec = resolve_encoder(f"local-dir:{tiny_timm_dir}")
    assert spec.family == "timm" and spec.loader == "local-dir" and spec.embed_dim == 32
    images = _images()
    reference, model = _timm_reference(tiny_timm_dir, images)
    own = model.pretrained_cfg
    assert spec.preprocessing.size == own["input_size"][-1] and spec.preprocessing.crop_pct == own["crop_pct"]
    assert (spec.preprocessing.mean, spec.preprocessing.std) == (tuple(own["mean"]), tuple(own["std"]))
    assert spec.preprocessing.interpolation == own["interpolation"]
    ours = load_encoder(spec, device="cpu").embed(images)
    assert ours.dtype == np.float32 and ours.shape == (3, 32)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_hf_hub_timm_repo_loads_offline_from_the_hub_cache(tiny_timm_dir, tmp_path, offline_hub):
    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "someorg/tiny-timm", {n: tiny_timm_dir / n for n in ("config.json", "model.safetensors")})
    spec = resolve_encoder("hf-hub:someorg/tiny-timm", weights_dir=cache)
    assert spec.family == "timm" and weights_available(spec, weights_dir=cache)
    images = _images()
    ours = load_encoder(spec, device="cpu", weights_dir=cache).embed(images)
    np.testing.assert_allclose(ours, _timm_reference(tiny_timm_dir, images)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_timm_name_resolves_from_the_cache_without_torch_and_loads(tmp_path):
    """`timm:MODEL.TAG` with its files in the HF cache: resolved in a fresh interpreter with no torch import,
    then built by timm from those files (a full-size vit_tiny with random weights), offline."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    folder = tmp_path / "saved"
    save_for_hf(model, str(folder), safe_serialization=True)
    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                      {n: folder / n for n in ("config.json", "model.safetensors")})
    name = "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    code = textwrap.dedent(f"""
        import sys
        from otolith_core.encoders import resolve_encoder, weights_available
        spec = resolve_encoder({name!r}, weights_dir={str(cache)!r})
        assert spec.family == "timm" and spec.embed_dim == 192 and not spec.keep_head, spec
        assert weights_available(spec, weights_dir={str(cache)!r})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "open_clip")))
        from otolith_core.cache import FileHashes, encoder_fingerprint
        print(encoder_fingerprint(spec, FileHashes({str(tmp_path / "keys")!r})))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    modules, key = done.stdout.split()
    assert modules == "[]"

    from otolith_core.cache import FileHashes, encoder_fingerprint

    spec = resolve_encoder(name, weights_dir=cache)  # torch is imported here: timm itself is asked
    assert encoder_fingerprint(spec, FileHashes(tmp_path / "keys")) == key  # both routes key the same store
    assert spec.preprocessing.size == 224 and spec.preprocessing.crop_pct == model.pretrained_cfg["crop_pct"]
    encoder = load_encoder(spec, device="cpu", weights_dir=cache)
    image = _images(1)
    import torch

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    with torch.inference_mode():
        reference = model.eval().forward_head(model.forward_features(transform(image[0])[None]), pre_logits=True)
    np.testing.assert_allclose(encoder.embed(image), reference.numpy(), rtol=1e-4, atol=1e-4)


def test_timm_name_without_cached_files_asks_timm_and_fails_offline_with_instructions(tmp_path, offline_hub):
    spec = resolve_encoder("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights_dir=tmp_path)
    assert spec.weights_repo == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" and spec.embed_dim == 192
    assert not weights_available(spec, weights_dir=tmp_path)
    with pytest.raises(EncoderUnavailable, match="local-dir:"):
        load_encoder(spec, device="cpu", weights_dir=tmp_path)
    with pytest.raises(KeyError, match="no weights tag"):
        resolve_encoder("timm:vit_tiny_patch16_224.not_a_tag")
    with pytest.raises(KeyError, match="unknown timm model"):
        resolve_encoder("timm:vit_tinyy_patch16_224")


def test_pooling_is_a_setting_and_part_of_the_key(tiny_timm_dir, tmp_path):
    import dataclasses

    import torch

    from otolith_core.cache import FileHashes, encoder_fingerprint

    base = resolve_encoder(f"local-dir:{tiny_timm_dir}")
    cls, mean = (dataclasses.replace(base, pooling=p) for p in ("cls", "mean"))
    images = _images()
    _, model = _timm_reference(tiny_timm_dir, images)
    encoder = load_encoder(mean, device="cpu")
    with torch.inference_mode():
        tokens = model.forward_features(torch.stack([encoder.transform(im) for im in images]))
    np.testing.assert_allclose(encoder.embed(images), tokens[:, model.num_prefix_tokens:].mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(load_encoder(cls, device="cpu").embed(images), tokens[:, 0].numpy(), atol=1e-5)
    hashes = FileHashes(tmp_path)
    assert len({encoder_fingerprint(s, hashes) for s in (base, cls, mean)}) == 3


def test_clip_family_head_is_kept_as_the_projection(tmp_path):
    """A CLIP tower in timm: the head is CLIP's image projection, so the embedding is the projected one."""
    folder = save_tiny_timm(tmp_path / "clip", architecture="vit_base_patch32_clip_224.openai", num_classes=16)
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["tag"] == "openai"
    spec = resolve_encoder(f"local-dir:{folder}")
    assert spec.keep_head and spec.embed_dim == 16
    images = _images(2)
    reference, model = _timm_reference(folder, images)
    assert reference.shape == (2, 32)  # pre-logits: before the projection
    import torch

    with torch.inference_mode():
        projected = model.head(torch.from_numpy(reference)).numpy()
    np.testing.assert_allclose(load_encoder(spec, device="cpu").embed(images), projected, rtol=1e-5, atol=1e-5)


def test_local_dir_with_both_configs_stays_open_clip(tiny_model_dir, tiny_timm_dir, tmp_path):
    import shutil

    both = tmp_path / "both"
    shutil.copytree(tiny_model_dir, both)
    shutil.copy(tiny_timm_dir / "config.json", both / "config.json")
    assert resolve_encoder(f"local-dir:{both}").family == "open_clip"


def test_a_pinned_revision_of_a_timm_hub_repo_loads_that_snapshot(tiny_timm_dir, tmp_path, offline_hub, network_calls):
    from conftest import HUB_COMMIT, NEWER_COMMIT

    cache = tmp_path / "hf"
    newer = save_tiny_timm(tmp_path / "newer", seed=1)
    names = ("config.json", "model.safetensors")
    place_in_hf_cache(cache, "someorg/tiny-timm", {n: tiny_timm_dir / n for n in names}, commit=HUB_COMMIT)
    place_in_hf_cache(cache, "someorg/tiny-timm", {n: newer / n for n in names}, commit=NEWER_COMMIT)
    images = _images()
    pinned = resolve_encoder(f"hf-hub:someorg/tiny-timm@revision={HUB_COMMIT}@squash", weights_dir=cache)
    assert pinned.family == "timm" and pinned.revision == HUB_COMMIT and pinned.variant.fit == "squash"
    encoder = load_encoder(dataclasses.replace(pinned, variant=Variant(), name=pinned.base_name), device="cpu",
                           weights_dir=cache)
    assert encoder.weights_revision == HUB_COMMIT
    np.testing.assert_allclose(encoder.embed(images), _timm_reference(tiny_timm_dir, images)[0], rtol=1e-5, atol=1e-5)
    main = resolve_encoder("hf-hub:someorg/tiny-timm", weights_dir=cache)
    latest = load_encoder(main, device="cpu", weights_dir=cache)
    assert latest.weights_revision == NEWER_COMMIT
    np.testing.assert_allclose(latest.embed(images), _timm_reference(newer, images)[0], rtol=1e-5, atol=1e-5)
    assert network_calls == []


def test_the_garbage_collector_is_paused_while_a_model_loads_and_left_as_it_was(tiny_timm_dir, monkeypatch):
    """torch, timm and open_clip load (and the model is built) with Python's cyclic collector off: the full
    collections their 700,000 objects set off cost a job's start a second or more. After, the collector is as it
    was before: on for a job, off where a caller had turned it off."""
    import gc

    from otolith_core.encoders import timm_models

    build, seen = timm_models.build_model, []

    def build_noting_the_collector(*args, **kwargs):
        seen.append(gc.isenabled())
        return build(*args, **kwargs)

    monkeypatch.setattr(timm_models, "build_model", build_noting_the_collector)
    spec = resolve_encoder(f"local-dir:{tiny_timm_dir}")
    assert gc.isenabled()
    load_encoder(spec, device="cpu")
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        load_encoder(spec, device="cpu")
        assert seen == [False, False] and not gc.isenabled()  # not turned on behind its caller's back
    finally:
        gc.enable()
