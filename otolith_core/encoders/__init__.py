"""Encoders: from a name to a loaded model that turns images into embeddings.

Read in this order::

    spec.py              what an encoder is, as data (EncoderSpec, Preprocessing, Precision, Variant)
    config.yaml          the registered encoders, as data
    registry.py          a name -> EncoderSpec (registry entries, OpenCLIP/timm/hub/folder names, @revision=, @variants)
    weights.py           where the files are: Hugging Face cache (at a revision), download, folder
    variants.py          pad / squash / crop / CLAHE, applied to the photo before the model's preprocessing
    open_clip_models.py  OpenCLIP towers (and their timm twin for fast bf16)
    timm_models.py       timm models (DINOv2/DINOv3, any timm image model)
    builtin.py           the built-in numpy extractors
    encoder.py           a loaded encoder: embed(images); device and precision rules
    loading.py           load_encoder: spec -> Encoder, for every family
    identity.py          cache_identity: everything that changes the embeddings

Imports run one way: spec <- weights <- families <- registry / loading / identity. Nothing imports
torch until a model is built (or an ad hoc name can only be resolved by asking a library).
"""

from .encoder import (EXTRACTOR_VERSION, REDUCED_PRECISION_COSINE_FLOOR, Encoder, TorchEncoder, check_precision,
                      continues_on, cpu_has_bf16, decode_min_side, default_batch_size, runs_on, select_device)
from .identity import cache_identity
from .loading import load_encoder
from .open_clip_models import implementation_for
from .registry import presets, registry, resolve_encoder, resolve_encoders, with_revision, with_variant
from .spec import (ENCODER_ERRORS, PRECISIONS, REVISION_PIN, EncoderSpec, EncoderUnavailable, Precision, Preprocessing,
                   Variant, error_message)
from .variants import apply_variant
from .weights import require_weights_when_offline, resolve_revision, weights_available

__all__ = [
    "ENCODER_ERRORS", "EXTRACTOR_VERSION", "PRECISIONS", "REDUCED_PRECISION_COSINE_FLOOR", "Encoder", "EncoderSpec",
    "EncoderUnavailable", "Precision", "Preprocessing", "REVISION_PIN", "TorchEncoder", "Variant", "apply_variant",
    "cache_identity", "check_precision", "continues_on", "cpu_has_bf16", "decode_min_side", "default_batch_size", "error_message",
    "implementation_for", "load_encoder", "presets", "registry", "resolve_encoder", "resolve_encoders",
    "require_weights_when_offline", "resolve_revision", "runs_on", "select_device", "weights_available",
    "with_revision", "with_variant",
]
