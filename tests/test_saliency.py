import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from otolith_core.data import load_dataset
from otolith_core.encoders import registry, resolve_encoder
from otolith_core.encoders.timm_models import pooled_tokens
from otolith_core.saliency import age_direction, heat_map, load_vit, overlay, vit_of, what_the_encoder_sees


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
    assert vit_of(pooled_tokens(vit, "cls", encoder="x")) == (vit, "cls")
    assert vit_of(vit) == (vit, "default")
    assert vit_of(torch.nn.Linear(2, 2)) is None


def test_built_ins_say_they_have_no_patch_tokens():
    with pytest.raises(ValueError, match="no patch tokens"):
        load_vit(registry()["pixels-32"])


def test_a_local_timm_model_maps_a_demo_photo(tiny_timm_dir, demo_manifest):
    spec = resolve_encoder(f"local-dir:{tiny_timm_dir}")
    vit, pooling, transform = load_vit(spec)
    data = load_dataset(demo_manifest)
    features = np.random.default_rng(0).normal(size=(len(data), spec.embed_dim))
    photo, heat = what_the_encoder_sees(spec, vit, pooling, transform, data.records[0], features, data.ages)
    assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
    assert heat.grid == (4, 4) and np.isfinite(heat.values).all()
    assert overlay(photo, heat).shape == photo.shape


def test_the_age_direction_is_a_ridge_on_the_scaled_embeddings():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(1)
    features, ages = rng.normal(size=(40, 6)), rng.integers(1, 9, 40)
    np.testing.assert_allclose(age_direction(features, ages, scaling="l2"),
                               Ridge(alpha=6.0).fit(normalize(features), ages).coef_)
