"""The one function that names everything changing an encoder's embeddings: the cache key's ingredients."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .encoder import EXTRACTOR_VERSION, decode_min_side
from .open_clip_models import implementation_for
from .spec import EncoderSpec
from .weights import local_weights_file


def cache_identity(spec: EncoderSpec, *, precision: str, file_sha256: Callable[[Path], str],
                   revision: str | None = None) -> dict[str, Any]:
    """Everything that changes ``spec``'s embeddings in ``precision`` (not its display name); the cache adds
    its own schema version.

    Parameters
    ----------
    spec : the encoder, variant included (a pinned revision is not itself an ingredient: the commit it
        resolves to is, through ``revision``).
    precision : the arithmetic it runs in.
    file_sha256 : content hash of a local weights file (the cache remembers these by path, size and time).
    revision : commit of the hub snapshot the weights come from, named when the cache keys a store by it.

    Ingredients added after a store format existed appear only when they differ from what was implied
    before (fp32, the model's own preprocessing, open_clip's code), so existing stores keep their keys.
    The hub revision is the same kind of ingredient: an encoder's first store is keyed without it and
    records the revision it holds instead; only a store for another revision names it in its key
    (:func:`otolith_core.cache.store_fingerprint` decides which).
    """
    weights: str | None = spec.pretrained
    if spec.loader in ("checkpoint", "local-dir"):
        found = local_weights_file(spec)
        weights = file_sha256(found) if found else "missing"
    elif spec.loader == "builtin":
        from ..morphometrics import BUILTIN_VERSIONS

        # An id with no extractor gets 0: it embeds nothing (load_builtin names it), but may still be keyed.
        weights = f"builtin-v{BUILTIN_VERSIONS.get(spec.model_id, 0)}"
    preprocessing = asdict(spec.preprocessing) if spec.preprocessing else None
    if preprocessing and preprocessing["crop_pct"] == 1.0:
        del preprocessing["crop_pct"]
    identity: dict[str, Any] = {
        "extractor_version": EXTRACTOR_VERSION,
        "loader": spec.loader,
        "model_id": spec.model_id if spec.loader != "local-dir" else "local-dir",
        "architecture": spec.architecture,
        "weights": weights,
        "preprocessing": preprocessing,
        "decode_min_side": decode_min_side(spec),
    }
    if precision != "fp32":
        identity["precision"] = precision
    if spec.family == "timm":
        identity.update(family="timm", pooling=spec.pooling, keep_head=spec.keep_head)
    implementation = implementation_for(spec, precision)
    if implementation != spec.family:
        identity["implementation"] = implementation
    if spec.variant:
        identity["variant"] = asdict(spec.variant)
    if revision is not None:
        identity["weights_revision"] = revision
    return identity
