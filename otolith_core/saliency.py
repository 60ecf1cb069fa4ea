"""What an encoder sees: a heat map over the photo from a ViT's patch tokens.

Each patch token leaves the last block through the same final norm, pooling norm and projection as the
pooled embedding, is scaled as the heads scale embeddings, and is projected on the direction of a ridge
fitted on every image's embedding (in the same scaling): a patch that scores high pushes the predicted
age up. For an attention-pooled tower (SigLIP's ``map`` head) a patch's share of the pooled embedding is
not its own token, so the map shows the pooling's attention weights (mean over heads) instead, and says so.
The ViT is timm's (``VisionTransformer``, or ``Eva`` for DINOv3 and Perception Encoder): a timm encoder as
the registry builds it, an open_clip tower with a timm trunk (SigLIP, PE) and its projection, or a plain
OpenCLIP ViT as its timm twin. Towers without patch tokens (the built-ins, CNNs) have no such map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

KINDS = ("ridge", "attention")


@dataclass(frozen=True)
class HeatMap:
    """Values over the model's patch grid (row-major, ``grid`` = (rows, columns) of patches)."""

    values: np.ndarray  # (rows, columns)
    kind: str  # "ridge": projection on the age direction; "attention": the pooling's attention weights

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    def describe(self) -> str:
        if self.kind == "ridge":
            return ("each patch's token, through the same final norm and projection as the embedding and in the same "
                    "scaling, projected on the age direction of a ridge fitted on all images: red pushes the "
                    "predicted age up, blue down")
        return ("this tower pools its tokens by attention, so a patch's own token is not its share of the embedding: "
                "shown instead is how much the pooling attends to each patch (mean over heads)")


@dataclass(frozen=True)
class PatchTower:
    """A timm ViT (``VisionTransformer``, or ``Eva``: DINOv3, Perception Encoder) as an encoder runs it."""

    vit: Any
    pooling: str = "default"  # "cls" / "mean": the registry's pooling of the normed tokens; "default": the ViT's head
    projection: Any = None  # a module after the ViT's own head (open_clip's ``TimmModel`` projection), if any

    @property
    def attention_pooled(self) -> bool:
        return self.pooling == "default" and getattr(self.vit, "attn_pool", None) is not None


def patch_tower(module) -> PatchTower | None:
    """The timm ViT inside an encoder's module (as built by ``otolith_core.encoders``) and what follows its
    tokens; None when there is none (built-ins, CNNs, open_clip's own ViT)."""
    pooling, projection = "default", None
    if module.__class__.__name__ == "PooledTokens":  # the registry's cls / mean pooling of a timm model
        module, pooling = module.model, module.pooling
    elif module.__class__.__name__ == "TimmModel":  # open_clip's timm trunk (SigLIP, PE) + its projection
        module, projection = module.trunk, module.head
    if not _is_timm_vit(module):
        return None
    return PatchTower(module, pooling, projection)


def _is_timm_vit(module) -> bool:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(module, (VisionTransformer, Eva))


def load_vit(spec, *, weights_dir=None):
    """(:class:`PatchTower` computing ``spec``'s embedding, its input transform) with the weights on this
    machine; ``ValueError`` saying why when the encoder has no patch tokens to map."""
    if spec.family == "builtin":
        raise ValueError(f"{spec.name} is a built-in extractor: it has no patch tokens")
    if spec.family == "timm":
        from .encoders.timm_models import build_model

        module, transform = build_model(spec, weights_dir=weights_dir)
    else:
        from .encoders.open_clip_models import build_tower

        # a plain ViT as timm's twin with the same weights (run here in fp32); a timm trunk (SigLIP, PE) as it is
        implementation = "timm" if spec.bf16_via_timm else "open_clip"
        module, transform = build_tower(spec, implementation=implementation, weights_dir=weights_dir)
    tower = patch_tower(module)
    if tower is None:
        raise ValueError(f"{spec.name}: its tower is not a vision transformer with patch tokens")
    tower.vit.eval()
    return tower, transform


def what_the_encoder_sees(spec, tower: PatchTower, transform, record, features: np.ndarray, ages: np.ndarray):
    """(the photo as the model received it ``(H, W, 3)`` uint8, its :class:`HeatMap`) for one image record.

    ``features``/``ages``: every image's embedding by this encoder and reader age, for the ridge direction.
    """
    from .data import load_image
    from .encoders import apply_variant, decode_min_side

    min_side = decode_min_side(spec)
    image = load_image(record, min_side=min_side)
    if spec.variant:
        image = apply_variant(image, spec.variant, work_side=min_side)
    tensor = transform(image)
    direction = None if tower.attention_pooled else age_direction(features, ages, scaling=spec.scaling)
    heat = heat_map(tower, tensor, direction, scaling=spec.scaling)
    pre = spec.input_preprocessing
    pixels = tensor.double().numpy() * np.asarray(pre.std)[:, None, None] + np.asarray(pre.mean)[:, None, None]
    photo = (np.clip(pixels.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
    return photo, heat


def heat_map(tower, image: "torch.Tensor", direction: np.ndarray | None, *, scaling: str) -> HeatMap:
    """The heat map of one preprocessed image ``(3, H, W)``.

    Parameters
    ----------
    tower : :class:`PatchTower`, or a module :func:`patch_tower` finds one in (eval mode), as it computes the
        embedding.
    direction : ``(dim,)`` ridge coefficients on the scaled embeddings; not needed for an attention-pooled tower.
    scaling : ``none | l2 | standardize`` as the heads scale the embeddings (``standardize`` is given by its
        ``direction`` already divided by the SD; the mean shift is the same for every patch).
    """
    import torch

    if not isinstance(tower, PatchTower):
        found = patch_tower(tower)
        if found is None:
            raise ValueError(f"{tower.__class__.__name__} is not a vision transformer with patch tokens")
        tower = found
    vit = tower.vit
    patch_rows, patch_columns = vit.patch_embed.patch_size
    rows, columns = image.shape[-2] // patch_rows, image.shape[-1] // patch_columns
    with torch.inference_mode():
        tokens = vit.forward_features(image.unsqueeze(0).float())  # (1, prefix + patches, dim), final norm applied
        patches = tokens[:, vit.num_prefix_tokens:]
        if patches.shape[1] != rows * columns:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form the {rows} x {columns} grid of the input")
        if tower.attention_pooled:
            weights = _attention_weights(vit, tokens)
            return HeatMap(weights.reshape(rows, columns), "attention")
        if tower.pooling == "default":
            embedded = vit.head(vit.fc_norm(patches))  # the pooled token's path, token by token
            if tower.projection is not None:
                embedded = tower.projection(embedded)
        else:
            embedded = patches  # cls / mean pooling takes the normed tokens as they are
    values = embedded[0].double().numpy()
    if scaling == "l2":
        values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    if direction is None:
        raise ValueError("a ridge direction is needed for this tower's heat map")
    return HeatMap((values @ np.asarray(direction, dtype=float)).reshape(rows, columns), "ridge")


def _attention_weights(vit, tokens) -> np.ndarray:
    """Mean over heads (and latents) of the attention pooling's weights on each patch token (timm's ViT pools
    its patches or all tokens as ``pool_include_prefix`` says; Eva pools all tokens)."""
    pool = vit.attn_pool
    include_prefix = getattr(vit, "pool_include_prefix", vit.__class__.__name__ == "Eva")
    x = tokens if include_prefix else tokens[:, vit.num_prefix_tokens:]
    if pool.pos_embed is not None:
        x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
    batch, n, _ = x.shape
    q = pool.q(pool.latent.expand(batch, -1, -1)).reshape(batch, pool.latent_len, pool.num_heads, pool.head_dim)
    k = pool.kv(x).reshape(batch, n, 2, pool.num_heads, pool.head_dim)[:, :, 0]
    q, k = pool.q_norm(q.transpose(1, 2)), pool.k_norm(k.transpose(1, 2))
    attention = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (batch, heads, latents, n)
    weights = attention.mean(dim=(1, 2))[0].double().numpy()
    if include_prefix:
        weights = weights[vit.num_prefix_tokens:]
    return weights


def age_direction(features: np.ndarray, ages: np.ndarray, *, scaling: str, alpha: float = 6.0) -> np.ndarray:
    """Coefficients ``(dim,)`` of a ridge (the paper's alpha) fitted on all images' scaled embeddings; for
    ``standardize`` they are divided by each feature's SD so they apply to unscaled values."""
    from sklearn.linear_model import Ridge

    from .space import scaled

    X = scaled(features, scaling)
    coef = Ridge(alpha=alpha).fit(X, np.asarray(ages, dtype=float)).coef_
    if scaling == "standardize":
        coef = coef / np.maximum(np.asarray(features, dtype=float).std(axis=0), 1e-12)
    return coef


def overlay(photo: np.ndarray, heat: HeatMap, *, opacity: float = 0.45) -> np.ndarray:
    """``photo`` ``(H, W, 3)`` uint8 with the heat map laid over it (blue-white-red for ridge, black-yellow for
    attention), the patch grid stretched to the photo."""
    from PIL import Image

    values = heat.values.astype(float)
    if heat.kind == "ridge":
        scale = np.max(np.abs(values)) or 1.0
        t = values / scale  # -1 .. 1
        colour = np.stack([np.clip(1 + np.minimum(t, 0), 0, 1), 1 - np.abs(t), np.clip(1 - np.maximum(t, 0), 0, 1)], -1)
    else:
        t = (values - values.min()) / ((values.max() - values.min()) or 1.0)
        colour = np.stack([t, t, 0.2 * np.ones_like(t)], -1)
    height, width = photo.shape[:2]
    layer = np.asarray(Image.fromarray((colour * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
    return np.clip((1 - opacity) * photo + opacity * layer, 0, 255).astype(np.uint8)
