import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL_CFG, place_in_hf_cache, save_tiny_open_clip
from otolith_core.encoders import (
    EncoderSpec, EncoderUnavailable, Preprocessing, load_encoder, registry, resolve_encoder, weights_available,
)
from otolith_core.encoders.open_clip_models import build_transform
from otolith_core.encoders.weights import fetch_hub_file


def _images(n=3, size=(50, 40)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)]


def _reference_embeddings(folder, images):
    """The full OpenCLIP model built by open_clip itself: what our image-tower-only path must equal."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    with torch.inference_mode():
        return model.encode_image(torch.stack([preprocess(im) for im in images])).numpy()


def test_local_dir_image_tower_equals_full_open_clip_model(tiny_model_dir, monkeypatch):
    import open_clip.model

    text_towers = []
    real = open_clip.model._build_text_tower
    monkeypatch.setattr(open_clip.model, "_build_text_tower", lambda *a, **k: text_towers.append(1) or real(*a, **k))
    spec = resolve_encoder(f"local-dir:{tiny_model_dir}")
    encoder = load_encoder(spec, device="cpu")
    assert text_towers == []  # the text tower is never built
    images = _images()
    ours = encoder.embed(images)
    assert ours.dtype == np.float32 and ours.shape == (3, TINY_MODEL_CFG["embed_dim"])
    np.testing.assert_allclose(ours, _reference_embeddings(tiny_model_dir, images), rtol=1e-5, atol=1e-5)
    assert text_towers == [1]  # open_clip's full model, the reference, does build one


def test_hf_hub_model_loads_offline_from_the_hub_cache(tiny_model_dir, tmp_path, offline_hub):
    """The same code path that downloads hf-hub:timm/... for users, fed from a temporary HF cache."""
    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "someorg/tiny-clip", {
        "open_clip_config.json": tiny_model_dir / "open_clip_config.json",
        "open_clip_model.safetensors": tiny_model_dir / "open_clip_model.safetensors",
    })
    spec = resolve_encoder("hf-hub:someorg/tiny-clip", weights_dir=cache)
    assert spec.preprocessing.resize_mode == "squash" and spec.preprocessing.mean == (0.5, 0.5, 0.5)
    assert weights_available(spec, weights_dir=cache)
    encoder = load_encoder(spec, device="cpu", weights_dir=cache)
    images = _images()
    np.testing.assert_allclose(encoder.embed(images), _reference_embeddings(tiny_model_dir, images), rtol=1e-5, atol=1e-5)


def test_registered_hub_encoder_checks_its_stated_preprocessing(tiny_model_dir, tmp_path, offline_hub):
    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "someorg/tiny-clip", {
        "open_clip_config.json": tiny_model_dir / "open_clip_config.json",
        "open_clip_model.safetensors": tiny_model_dir / "open_clip_model.safetensors",
    })
    clip_like = Preprocessing(size=32, resize_mode="shortest", mean=(0.48145466, 0.4578275, 0.40821073),
                              std=(0.26862954, 0.26130258, 0.27577711))
    wrong = EncoderSpec(name="tiny", loader="hf-hub", model_id="someorg/tiny-clip", preprocessing=clip_like)
    with pytest.raises(EncoderUnavailable, match="differs from the model's own"):
        load_encoder(wrong, device="cpu", weights_dir=cache)


def test_checkpoint_loader_uses_the_stated_preprocessing_not_clip_defaults(tiny_model_dir, tmp_path, monkeypatch):
    """A bare weights file carries no preprocessing: the spec's squash + 0.5 mean/std is what runs."""
    import open_clip

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "Tiny-Test", json.loads(json.dumps(TINY_MODEL_CFG)))
    squash = Preprocessing(size=32, resize_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = EncoderSpec(name="tiny-ckpt", loader="checkpoint", model_id="tiny", architecture="Tiny-Test",
                       weights_path=str(tiny_model_dir / "open_clip_model.safetensors"), preprocessing=squash)
    encoder = load_encoder(spec, device="cpu")
    images = _images(size=(64, 32))  # not square: squash and centre-crop differ
    np.testing.assert_allclose(encoder.embed(images), _reference_embeddings(tiny_model_dir, images), rtol=1e-5, atol=1e-5)


def test_missing_weights_offline_fail_with_instructions_and_no_network_attempt(tmp_path, offline_hub, network_calls):
    spec = registry()["siglip2-so400m-14-378"]
    assert not weights_available(spec, weights_dir=tmp_path)
    with pytest.raises(EncoderUnavailable) as info:
        load_encoder(spec, device="cpu", weights_dir=tmp_path)
    assert network_calls == []
    message = str(info.value)
    assert "siglip2-so400m-14-378" in message and "GB" in message and "local-dir:" in message


def test_missing_weights_without_network_fail_after_one_short_probe(tmp_path, monkeypatch):
    """Not marked offline, but the hub cannot be reached: one probe with a short timeout answers, and
    huggingface_hub's download (~25 s of retries per file) is never started."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    from otolith_core.encoders.weights import NETWORK_PROBE_SECONDS

    probes, downloads = [], []

    def unreachable(address, timeout=None, *args, **kwargs):
        probes.append(timeout)
        raise ConnectionRefusedError("refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a))
    with pytest.raises(EncoderUnavailable, match="clip-vit-l-14-336.*refused"):
        fetch_hub_file("timm/vit_large_patch14_clip_336.openai", ["open_clip_model.safetensors"],
                       encoder="clip-vit-l-14-336", download_size="about 1.7 GB", weights_dir=tmp_path)
    assert probes == [NETWORK_PROBE_SECONDS] and downloads == []


def test_corrupt_weights_file_is_a_clear_error(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = (broken / "open_clip_model.safetensors").read_bytes()
    (broken / "open_clip_model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(EncoderUnavailable, match="truncated or corrupt"):
        load_encoder(resolve_encoder(f"local-dir:{broken}"), device="cpu")


def test_local_dir_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json.*config.json"):
        resolve_encoder(f"local-dir:{tmp_path}")


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    other = dict(TINY_MODEL_CFG, vision_cfg=dict(TINY_MODEL_CFG["vision_cfg"], width=48, head_width=16))
    folder = save_tiny_open_clip(tmp_path / "a")
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"] = other
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderUnavailable, match="does not fit"):
        load_encoder(resolve_encoder(f"local-dir:{folder}"), device="cpu")


@pytest.mark.parametrize("mode,size", [("squash", (40, 20)), ("shortest", (40, 20))])
def test_transform_follows_resize_mode(mode, size):
    pre = Preprocessing(size=16, resize_mode=mode, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = Image.new("RGB", size)
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white left quarter
    tensor = build_transform(pre)(image)
    assert tuple(tensor.shape) == (3, 16, 16)
    white_columns = int((tensor[0, 8] > 0.5).sum())
    # squash keeps the whole width (a quarter is white); centre-crop cuts the white edge away.
    assert white_columns == (4 if mode == "squash" else 0)


# morphometrics imports scikit-image and scipy in the fresh interpreter: seconds
BUILTIN_ENCODERS = [pytest.param(name, marks=pytest.mark.slow) if name == "otolith-morphometrics" else name
                    for name, spec in registry().items() if spec.loader == "builtin"]


@pytest.mark.parametrize("name", BUILTIN_ENCODERS)
def test_builtin_encoders_need_no_torch(name):
    """Loaded and used in a fresh interpreter, a built-in encoder never imports torch (warm CLI runs rely on it)."""
    code = textwrap.dedent(f"""
        import sys
        from PIL import Image, ImageDraw
        from otolith_core.encoders import load_encoder, registry

        image = Image.new("RGB", (200, 150), (20, 20, 20))
        ImageDraw.Draw(image).ellipse((40, 40, 160, 110), fill=(200, 200, 200))  # an otolith-like blob
        spec = registry()[{name!r}]
        features = load_encoder(spec).embed([image, image.rotate(20)])
        assert features.shape == (2, spec.embed_dim) and str(features.dtype) == "float32", features.shape
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip", "timm")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch):
    """Institutes reach the hub through a proxy: probing the hub directly would wrongly say 'offline'."""
    import socket

    from otolith_core.encoders import weights

    seen = []

    def fake_connect(address, timeout):
        seen.append(address)
        raise OSError("refused")

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    monkeypatch.setattr(socket, "create_connection", fake_connect)
    ok, why = weights.hub_reachable(timeout=1)
    assert not ok and seen == [("proxy.example.org", 3128)]


def test_reduced_scale_jpeg_decoding_keeps_embeddings_close(tiny_model_dir, tmp_path):
    """The fast path (JPEG DCT scaling to >= 2x the input side) against full decoding: cosine >= 0.999."""
    from pathlib import Path

    from otolith_core.data import ImageRecord, load_image
    from otolith_core.encoders import decode_min_side

    rng = np.random.default_rng(0)
    pixels = (rng.random((2000, 3000, 3)) * 40).astype(np.uint8)
    pixels[500:1500, 700:2300] += 160  # a bright otolith-sized object
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=90)
    spec = resolve_encoder(f"local-dir:{tiny_model_dir}")
    encoder = load_encoder(spec, device="cpu")
    for crop in (None, (600, 400, 2400, 1600)):
        record = ImageRecord(Path(tmp_path / "photo.jpg"), "photo.jpg", 3, crop=crop)
        fast_image = load_image(record, min_side=decode_min_side(spec))
        assert min(fast_image.size) < min(load_image(record).size)  # it really decoded smaller
        full, fast = encoder.embed([load_image(record)])[0], encoder.embed([fast_image])[0]
        cosine = float(full @ fast / np.linalg.norm(full) / np.linalg.norm(fast))
        assert cosine >= 0.999, cosine


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_cpu_choice_of_bf16_needs_bf16_instructions(tiny_model_dir, monkeypatch, has_bf16, expected):
    import dataclasses

    from otolith_core.encoders import Precision, encoder

    monkeypatch.setattr(encoder, "cpu_has_bf16", lambda: has_bf16)
    spec = dataclasses.replace(resolve_encoder(f"local-dir:{tiny_model_dir}"), precision=Precision(cpu="bf16"))
    assert load_encoder(spec, device="cpu").precision == expected
    assert load_encoder(spec, device="cpu", precision="bf16").precision == "bf16"  # asked for: given


def test_a_plain_vit_runs_as_timm_twin_under_bf16_with_the_same_weights(tiny_model_dir):
    """CLIP at bf16 speed: under bf16 a plain OpenCLIP ViT (here a local-dir one) is built as timm's
    VisionTransformer from the same checkpoint; in fp32 the twin equals open_clip's tower (cosine >= 0.9999),
    and its bf16 embeddings stay within the floor of fp32."""
    from otolith_core.encoders import REDUCED_PRECISION_COSINE_FLOOR, TorchEncoder, implementation_for
    from otolith_core.encoders.open_clip_models import build_tower

    spec = resolve_encoder(f"local-dir:{tiny_model_dir}")
    assert spec.bf16_via_timm
    assert (implementation_for(spec, "bf16"), implementation_for(spec, "fp32")) == ("timm", "open_clip")
    images = _images()
    reference = _reference_embeddings(tiny_model_dir, images)
    twin, transform = build_tower(spec, implementation="timm")
    assert type(twin).__name__ == "VisionTransformer" and type(twin).__module__.startswith("timm")
    same = TorchEncoder(spec, twin, transform, device="cpu", batch_size=3, implementation="timm").embed(images)
    cosine = np.sum(same * reference, 1) / np.linalg.norm(same, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999
    fast = load_encoder(spec, device="cpu", precision="bf16")
    assert fast.implementation == "timm" and load_encoder(spec, device="cpu").implementation == "open_clip"
    reduced = fast.embed(images)
    cosine = np.sum(reduced * reference, 1) / np.linalg.norm(reduced, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= REDUCED_PRECISION_COSINE_FLOOR and not np.allclose(reduced, reference, atol=1e-7)


def test_a_loaded_encoder_switched_to_bf16_is_never_open_clips_tower_under_a_timm_key(tiny_model_dir):
    """A store keyed 'bf16, timm' must be filled by the timm twin: an fp32 OpenCLIP encoder handed to the
    extraction for a bf16 store is replaced by a loaded twin, and cannot be merely switched to bf16."""
    from otolith_core.embeddings import _encoder_for

    spec = resolve_encoder(f"local-dir:{tiny_model_dir}")
    fp32 = load_encoder(spec, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="load it again"):
        fp32.with_precision("bf16")
    switched = _encoder_for(spec, fp32, None, "auto", "bf16", None, None)
    assert (switched.implementation, switched.precision, switched.device) == ("timm", "bf16", "cpu")
    assert _encoder_for(spec, fp32, None, "auto", "fp32", None, None) is fp32


def _two_snapshots(cache, tiny_model_dir, newer_dir, repo="someorg/tiny-clip"):
    """The repo as downloaded once (HUB_COMMIT) and again after it changed (NEWER_COMMIT, other weights)."""
    from conftest import HUB_COMMIT, NEWER_COMMIT

    names = ("open_clip_config.json", "open_clip_model.safetensors")
    place_in_hf_cache(cache, repo, {n: tiny_model_dir / n for n in names}, commit=HUB_COMMIT)
    place_in_hf_cache(cache, repo, {n: newer_dir / n for n in names}, commit=NEWER_COMMIT)  # refs/main moves here


@pytest.mark.parametrize("loader", ["hf-hub", "openclip"])
def test_a_pinned_revision_loads_that_snapshot_not_main(loader, tiny_model_dir, tmp_path, offline_hub, network_calls,
                                                        monkeypatch):
    import open_clip

    from conftest import HUB_COMMIT, NEWER_COMMIT
    from otolith_core.encoders import resolve_revision

    cache = tmp_path / "hf"
    newer = save_tiny_open_clip(tmp_path / "newer", seed=1)
    _two_snapshots(cache, tiny_model_dir, newer)
    if loader == "hf-hub":
        main = resolve_encoder("hf-hub:someorg/tiny-clip", weights_dir=cache)
        pinned = resolve_encoder(f"hf-hub:someorg/tiny-clip@revision={HUB_COMMIT}", weights_dir=cache)
    else:  # an OpenCLIP ARCH:TAG whose weights tag lives in a hub repo
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "Tiny-Test", json.loads(json.dumps(TINY_MODEL_CFG)))
        tag_cfg = {"hf_hub": "someorg/tiny-clip/", "mean": (0.5,) * 3, "std": (0.5,) * 3, "resize_mode": "squash"}
        monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                            lambda arch, tag: tag_cfg if (arch, tag) == ("Tiny-Test", "t") else {})
        squash = Preprocessing(size=32, resize_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
        main = EncoderSpec(name="Tiny-Test:t", loader="openclip", model_id="Tiny-Test", pretrained="t",
                           weights_repo="someorg/tiny-clip", preprocessing=squash)
        pinned = dataclasses.replace(main, name=f"Tiny-Test:t@revision={HUB_COMMIT}", revision=HUB_COMMIT)
    assert resolve_revision(main, weights_dir=cache) == NEWER_COMMIT
    assert resolve_revision(pinned, weights_dir=cache) == HUB_COMMIT and weights_available(pinned, weights_dir=cache)
    images = _images()
    encoder = load_encoder(pinned, device="cpu", weights_dir=cache)
    assert encoder.weights_revision == HUB_COMMIT
    np.testing.assert_allclose(encoder.embed(images), _reference_embeddings(tiny_model_dir, images),
                               rtol=1e-5, atol=1e-5)
    latest = load_encoder(main, device="cpu", weights_dir=cache)
    assert latest.weights_revision == NEWER_COMMIT
    np.testing.assert_allclose(latest.embed(images), _reference_embeddings(newer, images), rtol=1e-5, atol=1e-5)
    assert network_calls == []


def test_a_pinned_revision_not_on_this_machine_is_named_offline(tiny_model_dir, tmp_path, offline_hub, network_calls):
    from otolith_core.encoders import resolve_revision

    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "someorg/tiny-clip", {n: tiny_model_dir / n for n in ("open_clip_config.json",
                                                                                   "open_clip_model.safetensors")})
    spec = dataclasses.replace(resolve_encoder("hf-hub:someorg/tiny-clip", weights_dir=cache), revision="v2")
    assert not weights_available(spec, weights_dir=cache) and resolve_revision(spec, weights_dir=cache) is None
    with pytest.raises(EncoderUnavailable, match="revision 'v2'"):
        load_encoder(spec, device="cpu", weights_dir=cache)
    with pytest.raises(EncoderUnavailable, match="revision 'v2'"):
        resolve_encoder("hf-hub:someorg/tiny-clip@revision=v2", weights_dir=cache)
    assert network_calls == []
