import contextlib
import json
from unittest import mock

import pytest

from otolith_core.encoders import EncoderSpec, Preprocessing, presets, registry, resolve_encoder

REQUIRED = {"clip-vit-l-14-336", "siglip-so400m-14-384", "siglip2-so400m-14-378", "siglip2-so400m-16-384",
            "otolith-morphometrics", "pixels-32"}
UNVERIFIABLE_OFFLINE = {"bioclip-2"}  # its config lives only on its hub repo (README: "what was verified")
OPENCLIP_ENTRIES = [s for s in registry().values() if s.family == "open_clip" and s.name not in UNVERIFIABLE_OFFLINE]
TORCH_ENTRIES = [s for s in registry().values() if s.family != "builtin"]
# bf16 without bf16 instructions (this CI machine) is emulated and many times slower than fp32, so the bf16 check
# (and the heat map's grid) runs once per tower type. The SigLIP entries share siglip2-so400m-14-378's tower code
# and width; DINOv2 and BioCLIP 2 run bf16 as timm's VisionTransformer ViT-L, as CLIP's twin does (checked).
# benchmarks/precision.py checked every entry on a machine with bf16 instructions (benchmarks/README.md).
SAME_TOWER_AS_CHECKED = {"siglip-so400m-14-384", "siglip2-so400m-16-384", "siglip2-so400m-16-512",
                         "dinov2-vitl14-reg", "bioclip-2"}


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

    from otolith_core.encoders.open_clip_models import preprocessing_from_config

    arch = spec.model_id if spec.loader == "openclip" else spec.architecture
    tag = spec.pretrained if spec.loader == "openclip" else "webli"
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    assert tag_cfg, f"open_clip has no {arch}:{tag}"
    model_cfg = open_clip.get_model_config(arch)
    own, dim = preprocessing_from_config({"model_cfg": model_cfg, "preprocess_cfg": tag_cfg})
    assert own == spec.preprocessing
    assert dim == spec.embed_dim
    repo = spec.weights_repo or spec.model_id
    assert tag_cfg["hf_hub"].rstrip("/") == repo
    assert bool(tag_cfg.get("quick_gelu", False)) == bool(model_cfg.get("quick_gelu", False))
    # every plain OpenCLIP ViT says so, so that bf16 runs it through timm (open_clip's tower is slow there)
    from otolith_core.encoders.open_clip_models import timm_vit_args

    assert spec.bf16_via_timm == (timm_vit_args(model_cfg) is not None)


TIMM_ENTRIES = [s for s in registry().values() if s.family == "timm"]


@pytest.mark.parametrize("spec", TIMM_ENTRIES, ids=lambda s: s.name)
def test_entry_agrees_with_timm_own_configuration(spec):
    """Name, tag, weights repo and preprocessing as the installed timm has them (no weights needed)."""
    import timm
    import torch

    from otolith_core.encoders.timm_models import preprocessing_from_pretrained_cfg

    assert spec.model_id in timm.list_pretrained(spec.architecture + ".*")
    with torch.device("meta"):
        model = timm.create_model(spec.model_id, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg
    assert (cfg["architecture"], cfg["tag"], cfg["hf_hub_id"]) == (spec.architecture, spec.pretrained, spec.weights_repo)
    own = preprocessing_from_pretrained_cfg(dict(cfg, **timm.data.resolve_model_data_config(model)))
    assert own == spec.preprocessing
    assert model.num_features == spec.embed_dim and not spec.keep_head
    assert spec.pooling == "cls" and model.cls_token is not None  # DINOv2/v3 authors evaluate the class token
    licence = cfg.get("license", "")
    assert licence.split("-")[0].lower() in spec.licence.lower().replace(" ", "")


def test_bioclip_2_states_what_its_model_card_says():
    """Unverifiable offline (its config lives on its hub repo): at least its architecture's facts agree."""
    import open_clip

    spec = registry()["bioclip-2"]
    cfg = open_clip.get_model_config(spec.architecture)
    assert spec.embed_dim == cfg["embed_dim"] == 768 and spec.preprocessing.size == cfg["vision_cfg"]["image_size"]
    assert spec.loader == "hf-hub" and spec.model_id == "imageomics/bioclip-2" and spec.licence == "MIT"


def test_every_entry_states_its_licence_and_download():
    for spec in registry().values():
        assert spec.licence, f"{spec.name} states no licence"
        assert spec.loader == "builtin" or spec.download_size_mb, f"{spec.name} states no download size"
        assert spec.scaling == ("none" if spec.loader == "builtin" else "l2"), spec.name  # README "Feature scaling"


# Store keys of the entries that existed before the encoders package: computed by the code of that time,
# so users' caches stay valid (an hour of extraction must never be recomputed because code moved).
KEYS_BEFORE = {
    ("clip-vit-l-14-336", "fp32"): "15d7abbb8a843bf5",
    ("siglip-so400m-14-384", "fp32"): "fd4af81bb40993b3", ("siglip-so400m-14-384", "bf16"): "3696a6f346df09f5",
    ("siglip2-so400m-14-378", "fp32"): "7c0cd1164cc13807", ("siglip2-so400m-14-378", "bf16"): "08415ec78d09b41c",
    ("siglip2-so400m-16-384", "fp32"): "2029ccd8ee9517c8", ("siglip2-so400m-16-384", "bf16"): "b29f958c10ea70be",
    # morphometrics v4 (was 83b4e5326764f8cf): it measures photos with a band of light along an edge
    # that v3 rejected, and cached failures must not be reused; pixels-32 did not change and keeps its store.
    ("otolith-morphometrics", "fp32"): "e14c34d09f7d7f12", ("pixels-32", "fp32"): "e31986bfd0cbdd04",
}


def test_existing_stores_keep_their_keys(tmp_path):
    from otolith_core.cache import FileHashes, encoder_fingerprint

    hashes = FileHashes(tmp_path)
    specs = registry()
    for (name, precision), key in KEYS_BEFORE.items():
        assert encoder_fingerprint(specs[name], hashes, precision)[:16] == key, (name, precision)
    # CLIP in bf16 now runs through timm: a store of its own, never the old open_clip-bf16 one (a7558e11...)
    assert encoder_fingerprint(specs["clip-vit-l-14-336"], hashes, "bf16")[:16] != "a7558e114b10ea16"


def _random_model(spec, *, depth: int | None = None, device: str = "cpu"):
    """(module computing the embedding in the encoder's fp32 implementation, transform, twin or None) with random
    weights, built by the code that loads the encoder; for a plain OpenCLIP ViT the twin is timm's ViT holding the
    same weights (its bf16 implementation). ``depth``: that many blocks (None: as the model name says); ``device``
    "meta": every module and shape, no weights."""
    import torch

    from otolith_core.encoders import open_clip_models, timm_models

    torch.manual_seed(0)
    if spec.family == "timm":
        import timm

        with torch.device(device):
            model = timm.create_model(spec.model_id, pretrained=False, **({} if spec.keep_head else {"num_classes": 0}),
                                      **({"depth": depth} if depth else {}))
        own = timm_models.preprocessing_from_pretrained_cfg(
            dict(model.pretrained_cfg, **timm.data.resolve_model_data_config(model)))
        assert own == spec.preprocessing, f"{spec.name}: stated {spec.preprocessing}, timm's own {own}"
        if spec.pooling != "default":
            model = timm_models.pooled_tokens(model, spec.pooling, encoder=spec.name)
        return model.eval(), timm_models.build_transform(spec.preprocessing), None
    import open_clip

    cfg = open_clip.get_model_config(spec.model_id if spec.loader == "openclip" else spec.architecture)
    if depth:
        cfg = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": depth}}
    with torch.device(device), _timm_depth(depth):  # a timm trunk (SigLIP, PE) takes no depth from open_clip's config
        tower = open_clip_models.open_clip_tower(cfg).eval()
        twin = None
        if spec.bf16_via_timm:
            twin = open_clip_models.timm_tower(cfg, tower.state_dict(), encoder=spec.name).eval()
    return tower, open_clip_models.build_transform(spec.preprocessing), twin


@contextlib.contextmanager
def _timm_depth(depth: int | None):
    """Within: every ``timm.create_model`` builds ``depth`` blocks (None: as the model name says)."""
    import timm

    if depth is None:
        yield
        return
    create = timm.create_model
    with mock.patch.object(timm, "create_model", lambda *a, **k: create(*a, **{**k, "depth": depth})):
        yield


def _cosine(a, b):
    import numpy as np

    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("spec", TORCH_ENTRIES, ids=lambda s: s.name)
def test_real_architecture_with_random_weights_has_the_stated_shape_and_precision(spec):
    """Each registered model built at full size on torch's meta device (every module and shape, no arithmetic):
    input size and dim, through the implementation the encoder picks for fp32 and its timm twin. Then the same
    tower with 2 blocks and random weights, computed on the CPU: twin and tower agree, the heat map covers the
    patch grid, and the stated CPU precision stays within the cosine floor of fp32.

    Full-size arithmetic with random weights took 50-130 s a model on this CI machine (bf16 is emulated without
    bf16 instructions) and checks nothing a shape does not: width, patch grid, pooling and input size do not
    depend on the depth. The precision margin was measured at both depths (CLIP, 1 - cosine: 1.4e-5 at 24 blocks,
    4.6e-6 at 2; the floor allows 1e-3); benchmarks/precision.py checks every entry at full size with real weights
    on a machine with bf16 instructions (benchmarks/README.md)."""
    import numpy as np
    import torch
    from PIL import Image

    from otolith_core.encoders import REDUCED_PRECISION_COSINE_FLOOR, TorchEncoder, implementation_for

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8))
    module, transform, twin = _random_model(spec, device="meta")
    tensor = transform(image)
    assert tuple(tensor.shape) == (3, spec.preprocessing.size, spec.preprocessing.size)
    with torch.device("meta"), torch.inference_mode():
        batch = tensor[None].to("meta")
        for implementation in (module, twin):
            if implementation is not None:
                assert tuple(implementation(batch).shape) == (1, spec.embed_dim)
    if spec.name == "clip-vit-l-14-336":
        from open_clip.transformer import QuickGELU

        assert any(isinstance(m, QuickGELU) for m in module.modules()), "OpenAI weights need QuickGELU"

    module, transform, twin = _random_model(spec, depth=2)
    run = dict(device="cpu", batch_size=1, implementation=spec.family)
    plain = TorchEncoder(spec, module, transform, precision="fp32", **run).embed([image])
    assert plain.shape == (1, spec.embed_dim) and np.isfinite(plain).all()
    if twin is not None:  # the same weights in timm's ViT: the same embedding
        same = TorchEncoder(spec, twin, transform, precision="fp32", **run).embed([image])
        assert _cosine(plain[0], same[0]) >= 0.9999
    _check_heat_map(spec, twin if twin is not None else module, transform(image))
    if spec.precision.cpu != "fp32" and spec.name not in SAME_TOWER_AS_CHECKED:
        fast = twin if implementation_for(spec, spec.precision.cpu) != spec.family else module
        reduced = TorchEncoder(spec, fast, transform, precision=spec.precision.cpu, **run).embed([image])
        cosine = _cosine(plain[0], reduced[0])
        assert cosine >= REDUCED_PRECISION_COSINE_FLOOR, f"{spec.name} in {spec.precision.cpu}: cosine {cosine}"
        assert not np.array_equal(plain, reduced), "autocast did not run"


def _check_heat_map(spec, module, tensor):
    """Every ViT in the registry has a heat map (the Review page): its patch tower is found, and (once per tower
    type) its map covers the model's patch grid, ridge or attention as the tower pools."""
    import numpy as np

    from otolith_core.saliency import heat_map, patch_tower

    tower = patch_tower(module)
    assert tower is not None, f"{spec.name}: no patch tower for the heat map"
    if spec.name in SAME_TOWER_AS_CHECKED:
        return
    patch = tower.vit.patch_embed.patch_size[0]
    direction = None if tower.attention_pooled else np.random.default_rng(0).normal(size=spec.embed_dim)
    heat = heat_map(tower, tensor, direction, scaling=spec.scaling)
    assert heat.grid == (spec.preprocessing.size // patch,) * 2 and np.isfinite(heat.values).all()
    assert heat.kind == ("attention" if spec.name.startswith(("siglip", "pe-")) else "ridge")


def test_precision_is_stated_per_device_and_checked():
    from otolith_core.encoders import Precision

    specs = registry()
    assert specs["clip-vit-l-14-336"].precision == Precision(cpu="bf16", cuda="fp16")  # bf16 through timm's ViT
    for name in ("siglip-so400m-14-384", "siglip2-so400m-14-378", "siglip2-so400m-16-384"):
        assert specs[name].precision == Precision(cpu="bf16", cuda="bf16")
    assert specs["pixels-32"].precision == Precision()  # fp32 unless stated
    clip = specs["clip-vit-l-14-336"].precision
    assert (clip.for_device("cpu"), clip.for_device("cuda:1"), clip.for_device("mps")) == ("bf16", "fp16", "fp32")
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


# ----------------------------------------------------------------------------------------------------
# Pinned hub revisions: NAME@revision=REV, before any variant suffix (README "Pinning a revision").


def test_a_revision_pin_parses_for_registry_openclip_and_timm_names():
    from conftest import NEWER_COMMIT as PIN
    from otolith_core.encoders import Variant

    clip = resolve_encoder(f"clip-vit-l-14-336@revision={PIN}")
    assert clip.name == f"clip-vit-l-14-336@revision={PIN}" and clip.revision == PIN
    plain = registry()["clip-vit-l-14-336"]
    assert clip.model_id == plain.model_id and plain.revision is None
    openclip = resolve_encoder(f"ViT-B-32:laion2b_s34b_b79k@revision={PIN}@clahe+pad")
    assert openclip.name == f"ViT-B-32:laion2b_s34b_b79k@revision={PIN}@pad+clahe"  # one canonical name
    assert (openclip.revision, openclip.variant) == (PIN, Variant(fit="pad", clahe=True))
    assert openclip.base_name == f"ViT-B-32:laion2b_s34b_b79k@revision={PIN}"
    assert openclip.weights_repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    timm_model = resolve_encoder("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k@revision=refs/pr/1")
    assert timm_model.family == "timm" and timm_model.revision == "refs/pr/1"  # a branch or tag is a revision too
    assert timm_model.model_id == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def test_a_pinned_hub_name_reads_its_config_at_that_revision(tiny_model_dir, tmp_path, offline_hub, network_calls):
    """The config (preprocessing) of the pinned snapshot, not of the one refs/main names."""
    from conftest import HUB_COMMIT, NEWER_COMMIT, place_in_hf_cache

    cache = tmp_path / "hf"
    place_in_hf_cache(cache, "someorg/tiny-clip", {"open_clip_config.json": tiny_model_dir / "open_clip_config.json"},
                      commit=HUB_COMMIT)
    newer = tmp_path / "newer.json"
    config = json.loads((tiny_model_dir / "open_clip_config.json").read_text())
    newer.write_text(json.dumps(dict(config, preprocess_cfg=dict(config["preprocess_cfg"], resize_mode="shortest"))))
    place_in_hf_cache(cache, "someorg/tiny-clip", {"open_clip_config.json": newer}, commit=NEWER_COMMIT)
    pinned = resolve_encoder(f"hf-hub:someorg/tiny-clip@revision={HUB_COMMIT}@pad", weights_dir=cache)
    assert (pinned.loader, pinned.model_id, pinned.revision) == ("hf-hub", "someorg/tiny-clip", HUB_COMMIT)
    assert pinned.preprocessing.resize_mode == "squash" and pinned.variant.fit == "pad"
    assert resolve_encoder("hf-hub:someorg/tiny-clip", weights_dir=cache).preprocessing.resize_mode == "shortest"
    assert network_calls == []


@pytest.mark.parametrize("name, words", [
    ("hf-hub:org/x@revision=", "empty"),
    ("hf-hub:org/x@revision=abc1234", "'abc1234'.*shortened commit hash.*40"),
    ("hf-hub:org/x@revision=main+pad", r"'main\+pad'.*hf-hub:org/x@revision=REV@pad"),
    ("hf-hub:org/x@revision=../../etc", "'../../etc'"),
    ("hf-hub:org/x@pad@revision=main", "variant comes last.*hf-hub:org/x@revision=main@pad"),
    ("hf-hub:org/x@revision=a@revision=b", "once"),
    ("hf-hub:org/x@main", "'main' is not a preprocessing variant.*hf-hub:org/x@revision=main"),
    ("pixels-32@revision=main", "'pixels-32@revision=main'.*no hub revision"),
])
def test_a_bad_pin_is_one_clear_error_naming_the_value(name, words, offline_hub, network_calls):
    with pytest.raises(ValueError, match=words):
        resolve_encoder(name)
    assert network_calls == []


def test_a_folder_has_no_revision_to_pin(tiny_model_dir):
    with pytest.raises(ValueError, match="no hub revision"):
        resolve_encoder(f"local-dir:{tiny_model_dir}@revision=main")
