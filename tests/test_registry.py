import pytest

from otolith_core.registry import EncoderSpec, Preprocessing, presets, registry, resolve_encoder

REQUIRED = {"clip-vit-l-14-336", "siglip-so400m-14-384", "siglip2-so400m-14-378", "siglip2-so400m-16-384",
            "otolith-morphometrics", "pixels-32"}
OPENCLIP_ENTRIES = [s for s in registry().values() if s.loader in ("openclip", "hf-hub")]


def test_registry_holds_the_required_encoders_with_their_facts():
    specs = registry()
    assert REQUIRED <= set(specs)
    for spec in specs.values():
        assert spec.description and spec.year and spec.download_size
        assert spec.embed_dim, f"{spec.name} states no embedding dim"
    clip = specs["clip-vit-l-14-336"]
    assert (clip.model_id, clip.pretrained) == ("ViT-L-14-336-quickgelu", "openai")
    assert clip.preprocessing.resize_mode == "shortest" and clip.preprocessing.size == 336
    for name in ("siglip-so400m-14-384", "siglip2-so400m-14-378", "siglip2-so400m-16-384"):
        pre = specs[name].preprocessing
        assert pre.resize_mode == "squash" and pre.mean == (0.5,) * 3 and pre.std == (0.5,) * 3


@pytest.mark.parametrize("spec", OPENCLIP_ENTRIES, ids=lambda s: s.name)
def test_entry_agrees_with_open_clip_own_configuration(spec):
    """Stated preprocessing, weights location and activation match what open_clip ships for these weights."""
    import open_clip

    from otolith_core.registry import preprocessing_from_open_clip_config

    arch = spec.model_id if spec.loader == "openclip" else spec.architecture
    tag = spec.pretrained if spec.loader == "openclip" else "webli"
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    assert tag_cfg, f"open_clip has no {arch}:{tag}"
    model_cfg = open_clip.get_model_config(arch)
    own, dim = preprocessing_from_open_clip_config({"model_cfg": model_cfg, "preprocess_cfg": tag_cfg})
    assert own == spec.preprocessing
    assert dim == spec.embed_dim
    repo = spec.weights_repo or spec.model_id
    assert tag_cfg["hf_hub"].rstrip("/") == repo
    assert bool(tag_cfg.get("quick_gelu", False)) == bool(model_cfg.get("quick_gelu", False))


@pytest.mark.slow
@pytest.mark.parametrize("spec", OPENCLIP_ENTRIES, ids=lambda s: s.name)
def test_real_architecture_with_random_weights_has_the_stated_shape_and_precision(spec):
    """Build each registered image tower at full size (random weights) once: dim, input size, and the
    stated CPU precision keeps embeddings within the cosine floor of fp32 (through the encoder's own path)."""
    import numpy as np
    import open_clip
    import torch
    from open_clip.model import _build_vision_tower
    from PIL import Image

    from otolith_core.feature_extractor import REDUCED_PRECISION_COSINE_FLOOR, OpenClipEncoder

    cfg = open_clip.get_model_config(spec.model_id if spec.loader == "openclip" else spec.architecture)
    vision = dict(cfg["vision_cfg"], timm_model_pretrained=False) if "timm_model_name" in cfg["vision_cfg"] else cfg["vision_cfg"]
    torch.manual_seed(0)
    tower = _build_vision_tower(cfg["embed_dim"], vision, quick_gelu=bool(cfg.get("quick_gelu", False))).eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8))
    plain = OpenClipEncoder(spec, tower, "cpu", 1, "fp32").embed([image])
    assert plain.shape == (1, spec.embed_dim)
    if spec.name == "clip-vit-l-14-336":
        from open_clip.transformer import QuickGELU

        assert any(isinstance(m, QuickGELU) for m in tower.modules()), "OpenAI weights need QuickGELU"
    if spec.precision.cpu != "fp32":
        reduced = OpenClipEncoder(spec, tower, "cpu", 1, spec.precision.cpu).embed([image])
        cosine = float(plain[0] @ reduced[0] / np.linalg.norm(plain[0]) / np.linalg.norm(reduced[0]))
        assert cosine >= REDUCED_PRECISION_COSINE_FLOOR, f"{spec.name} in {spec.precision.cpu}: cosine {cosine}"
        assert not np.array_equal(plain, reduced), "autocast did not run"


def test_precision_is_stated_per_device_and_checked():
    from otolith_core.registry import Precision

    specs = registry()
    assert specs["clip-vit-l-14-336"].precision == Precision(cpu="fp32", cuda="fp16")  # bf16 measured 14x slower on the CPU
    for name in ("siglip-so400m-14-384", "siglip2-so400m-14-378", "siglip2-so400m-16-384"):
        assert specs[name].precision == Precision(cpu="bf16", cuda="bf16")
    assert specs["pixels-32"].precision == Precision()  # fp32 unless stated
    clip = specs["clip-vit-l-14-336"].precision
    assert (clip.for_device("cpu"), clip.for_device("cuda:1"), clip.for_device("mps")) == ("fp32", "fp16", "fp32")
    with pytest.raises(ValueError, match="CUDA"):
        Precision(cpu="fp16")
    with pytest.raises(ValueError, match="precision"):
        Precision(cuda="int8")


def test_unknown_name_lists_close_names():
    with pytest.raises(KeyError, match="siglip2-so400m-14-378"):
        resolve_encoder("siglip2-so400m-14-387")


def test_ad_hoc_openclip_name_resolves_with_its_own_preprocessing():
    spec = resolve_encoder("ViT-B-32:laion2b_s34b_b79k")
    assert spec.loader == "openclip" and spec.embed_dim == 512 and spec.preprocessing.size == 224
    assert spec.weights_repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with pytest.raises(KeyError, match="no weights tag"):
        resolve_encoder("ViT-B-32:not-a-tag")


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="loader"):
        EncoderSpec(name="x", loader="magic", model_id="x")
    with pytest.raises(ValueError, match="preprocessing"):
        EncoderSpec(name="x", loader="hf-hub", model_id="org/x")
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocessing(size=224, resize_mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)


def test_cod_preset_clips_ages_to_one_through_ten():
    assert presets()["cod"]["age_range"] == [1, 10]
