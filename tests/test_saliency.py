import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from otolith_core.data import load_dataset
from otolith_core.encoders import registry, resolve_encoder
from otolith_core.encoders.timm_models import pooled_tokens
from otolith_core.saliency import PatchTower, age_direction, heat_map, load_vit, overlay, patch_tower, \
    what_the_encoder_sees


def _vit(**kwargs):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)
    return VisionTransformer(**{**args, **kwargs}).eval()


def test_the_grid_is_the_models_patch_grid():
    vit = _vit(img_size=(48, 32))
    heat = heat_map(vit, torch.rand(3, 48, 32), np.ones(16), scaling="l2")
    assert heat.grid == tuple(vit.patch_embed.grid_size) == (6, 4) and heat.kind == "ridge"


def test_patches_take_the_pooled_embeddings_own_path():
    """Mean pooling and a linear projection: the patches' mean score is the pooled embedding's score."""
    vit = _vit(global_pool="avg", fc_norm=False, num_classes=5)
    image = torch.rand(3, 32, 32)
    direction = np.random.default_rng(0).normal(size=5)
    heat = heat_map(vit, image, direction, scaling="none")
    with torch.inference_mode():
        pooled = vit(image.unsqueeze(0))[0].double().numpy()
    assert heat.values.mean() == pytest.approx(pooled @ direction)


def test_an_attention_pooled_tower_shows_its_attention_weights():
    vit = _vit(global_pool="map", class_token=False)
    heat = heat_map(vit, torch.rand(3, 32, 32), None, scaling="l2")
    assert heat.kind == "attention" and heat.grid == (4, 4)
    assert heat.values.sum() == pytest.approx(1.0) and (heat.values > 0).all()
    assert "attends" in heat.describe()


def test_registry_pooling_is_found_behind_its_wrapper():
    vit = _vit()
    assert patch_tower(pooled_tokens(vit, "cls", encoder="x")) == PatchTower(vit, "cls")
    assert patch_tower(vit) == PatchTower(vit, "default")
    assert patch_tower(torch.nn.Linear(2, 2)) is None


def _eva(**kwargs):
    """A tiny DINOv3-shaped timm ``Eva`` (rotary embeddings, class token + 4 registers)."""
    import timm

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)
    return timm.create_model("vit_large_patch16_dinov3", pretrained=False, **{**args, **kwargs}).eval()


def test_an_eva_tower_dinov3_pooled_by_the_registry_is_mapped():
    """DINOv3 and Perception Encoder are timm ``Eva`` models: their patches are mapped like a ViT's, past the
    class token and registers; with mean pooling the patches' mean score is the embedding's score."""
    eva = _eva()
    assert eva.num_prefix_tokens == 5
    wrapped = pooled_tokens(eva, "mean", encoder="x")
    image = torch.rand(3, 32, 32)
    direction = np.random.default_rng(0).normal(size=16)
    heat = heat_map(wrapped, image, direction, scaling="none")
    with torch.inference_mode():
        pooled = wrapped(image.unsqueeze(0))[0].double().numpy()
    assert heat.grid == (4, 4) and heat.kind == "ridge"
    assert heat.values.mean() == pytest.approx(pooled @ direction)


def test_an_open_clip_timm_trunk_goes_through_its_projection():
    """open_clip builds SigLIP/PE towers as a timm trunk plus a projection: a patch takes both, so the patches'
    mean score is the tower's embedding's score (mean pooling, linear projection)."""
    from open_clip.timm_model import TimmModel

    torch.manual_seed(0)
    tower = TimmModel("vit_tiny_patch16_224", embed_dim=8, pool="avg", proj="linear").eval()
    found = patch_tower(tower)
    assert found.vit is tower.trunk and found.projection is tower.head and not found.attention_pooled
    image = torch.rand(3, 224, 224)
    direction = np.random.default_rng(0).normal(size=8)
    heat = heat_map(tower, image, direction, scaling="none")
    with torch.inference_mode():
        pooled = tower(image.unsqueeze(0))[0].double().numpy()
    assert heat.grid == (14, 14)
    assert heat.values.mean() == pytest.approx(pooled @ direction, rel=1e-5)


def test_a_perception_encoder_shaped_tower_shows_attention_past_its_class_token():
    """PE's Eva pools every token (class token included) by attention: the map covers the patches only."""
    import timm

    torch.manual_seed(0)
    eva = timm.create_model("vit_pe_core_large_patch14_336", pretrained=False, img_size=28, patch_size=14,
                            embed_dim=16, depth=1, num_heads=2, num_classes=8, global_pool="map").eval()
    heat = heat_map(eva, torch.rand(3, 28, 28), None, scaling="l2")
    assert heat.kind == "attention" and heat.grid == (2, 2)
    assert 0 < heat.values.sum() < 1 and (heat.values > 0).all()  # the class token takes the rest


def test_built_ins_say_they_have_no_patch_tokens():
    with pytest.raises(ValueError, match="no patch tokens"):
        load_vit(registry()["pixels-32"])


def test_a_local_timm_model_maps_a_demo_photo(tiny_timm_dir, demo_manifest):
    spec = resolve_encoder(f"local-dir:{tiny_timm_dir}")
    tower, transform = load_vit(spec)
    data = load_dataset(demo_manifest)
    features = np.random.default_rng(0).normal(size=(len(data), spec.embed_dim))
    photo, heat = what_the_encoder_sees(spec, tower, transform, data.records[0], features, data.ages)
    assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
    assert heat.grid == (4, 4) and np.isfinite(heat.values).all()
    assert overlay(photo, heat).shape == photo.shape


def test_a_local_siglip_shaped_open_clip_model_shows_its_attention_pooling(tmp_path, demo_manifest):
    """A SigLIP-shaped OpenCLIP model (timm trunk, ``map`` pooling, no projection) saved as a local-dir model:
    the same loading path as the registry's SigLIP entries gives an attention map over the photo."""
    from conftest import TINY_MODEL_CFG, save_tiny_open_clip

    model_cfg = {**TINY_MODEL_CFG, "embed_dim": 192,
                 "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224",
                                "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}}
    folder = save_tiny_open_clip(tmp_path / "tiny-siglip", model_cfg=model_cfg)
    spec = resolve_encoder(f"local-dir:{folder}")
    assert not spec.bf16_via_timm  # not a plain ViT: open_clip's own tower runs it
    tower, transform = load_vit(spec)
    assert tower.attention_pooled
    data = load_dataset(demo_manifest)
    photo, heat = what_the_encoder_sees(spec, tower, transform, data.records[0], np.zeros((len(data), 192)),
                                        data.ages)
    assert photo.shape == (224, 224, 3) and heat.kind == "attention" and heat.grid == (14, 14)
    assert heat.values.sum() == pytest.approx(1.0)


def test_the_age_direction_is_a_ridge_on_the_scaled_embeddings():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(1)
    features, ages = rng.normal(size=(40, 6)), rng.integers(1, 9, 40)
    np.testing.assert_allclose(age_direction(features, ages, scaling="l2"),
                               Ridge(alpha=6.0).fit(normalize(features), ages).coef_)
