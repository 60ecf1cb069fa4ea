"""timm encoders (DINOv2/DINOv3 and any timm image model): specs from timm's configs, and the models.

Names: ``timm:MODEL[.TAG]`` (weights from the Hub repo timm's pretrained config names),
``hf-hub:org/repo`` holding a timm ``config.json``, or ``local-dir:PATH`` with ``config.json`` and
weights as ``timm.models.save_for_hf`` / ``push_to_hub`` write them. Models are built with
``timm.create_model`` from the weights file found here (so offline use never waits on the network).

The embedding is the pooled pre-logits feature (``num_classes=0``), pooled as the spec says
(timm's default, or the class token / the mean of the patch tokens of ``forward_features``); for a CLIP-family tower the head is
CLIP's image projection and is kept, so the embedding is the projected one, as open_clip's ``encode_image``.

Resolving a ``timm:`` name reads the model's ``config.json`` from the Hugging Face cache when it is
there, so a warm run never imports torch; otherwise timm itself is asked.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from .spec import EncoderSpec, EncoderUnavailable, Preprocessing
from .weights import TIMM_CONFIG, TIMM_WEIGHTS, cached_hub_file, fetch_hub_file, local_weights_file, read_json

CROP_MODES = {"center": "shortest", "squash": "squash"}  # timm crop_mode -> our resize_mode
_CLASSIFIER_TAGS = ("in1k", "in12k", "in21k", "in22k", "ft_", "inat")  # a head trained to classify, not to project


def preprocessing_from_pretrained_cfg(cfg: dict[str, Any]) -> Preprocessing:
    """timm's data config (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``), as
    timm's own ``resolve_data_config`` reads it by default (not the optional larger test size)."""
    size = cfg.get("input_size") or (3, 224, 224)
    height, width = int(size[-2]), int(size[-1])
    if height != width:
        raise ValueError(f"non-square input size {height}x{width} is not supported")
    crop_mode = cfg.get("crop_mode", "center") or "center"
    if crop_mode not in CROP_MODES:
        raise ValueError(f"timm crop_mode {crop_mode!r} is not supported; choose one of {sorted(CROP_MODES)}")
    return Preprocessing(
        size=height, resize_mode=CROP_MODES[crop_mode], mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))), interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
        crop_pct=float(cfg.get("crop_pct") or 1.0),
    )


def keeps_head(architecture: str, tag: str | None, num_classes: int) -> bool:
    """Whether a model's head is CLIP's image projection (kept) rather than a classifier (removed)."""
    tag = tag or ""
    clip_like = any(word in architecture for word in ("clip", "pe_core"))
    return num_classes > 0 and clip_like and not any(word in tag for word in _CLASSIFIER_TAGS)


def _spec(name: str, *, loader: str, model_id: str, architecture: str, pretrained_cfg: dict[str, Any],
          num_classes: int, num_features: int, weights_repo: str | None, description: str) -> EncoderSpec:
    tag = pretrained_cfg.get("tag")
    keep = keeps_head(architecture, tag, num_classes)
    return EncoderSpec(
        name=name, loader=loader, model_id=model_id, pretrained=tag, architecture=architecture, family="timm",
        weights_repo=weights_repo, preprocessing=preprocessing_from_pretrained_cfg(pretrained_cfg),
        keep_head=keep, embed_dim=num_classes if keep else num_features, licence=pretrained_cfg.get("license") or "",
        description=description, ad_hoc=True,
    )


def spec_from_config(name: str, config: dict[str, Any], *, loader: str, model_id: str, where: str) -> EncoderSpec:
    """A timm ``config.json`` (hub repo or folder) -> spec."""
    missing = [k for k in ("architecture", "pretrained_cfg") if k not in config]
    if missing:
        raise ValueError(f"encoder {name!r}: {where} is not a timm config (no {', '.join(missing)})")
    num_features = config.get("num_features") or (config.get("model_args") or {}).get("embed_dim")
    if not num_features:
        raise ValueError(f"encoder {name!r}: {where} states no num_features")
    return _spec(name, loader=loader, model_id=model_id, architecture=config["architecture"],
                 pretrained_cfg=config["pretrained_cfg"], num_classes=int(config.get("num_classes") or 0),
                 num_features=int(num_features), weights_repo=model_id if loader == "hf-hub" else None,
                 description=f"timm {config['architecture']} from {model_id}")


def spec_from_name(name: str, *, weights_dir: str | Path | None = None, revision: str | None = None) -> EncoderSpec:
    """``timm:MODEL[.TAG]`` -> spec; from the cached ``config.json`` (at ``revision``, default main) without torch
    when possible."""
    model = name[len("timm:"):].strip()
    if "." in model and "torch" not in sys.modules:
        cached = cached_hub_file(f"timm/{model}", TIMM_CONFIG, weights_dir, revision=revision)
        if cached:
            config = read_json(cached, encoder=name)
            if config.get("architecture") == model.split(".", 1)[0]:
                spec = spec_from_config(name, config, loader="timm", model_id=model, where=cached)
                return _as_timm_name(spec, weights_repo=f"timm/{model}")
    import timm  # deferred: imports torch
    import torch

    arch = model.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise KeyError(f"unknown timm model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        pretrained = timm.models.get_pretrained_cfg(model, allow_unregistered=False) if "." in model else None
    except RuntimeError:  # timm's answer to a tag the architecture does not have
        pretrained = None
    if "." in model and pretrained is None:
        tags = [m.split(".", 1)[1] for m in timm.list_pretrained(f"{arch}.*")]
        raise KeyError(f"timm model {arch!r} has no weights tag {model.split('.', 1)[1]!r}; choose from {tags}")
    with torch.device("meta"):  # the architecture's facts without allocating or initialising weights
        built = timm.create_model(model, pretrained=False)
    cfg = built.pretrained_cfg
    if not cfg.get("hf_hub_id"):
        raise KeyError(f"timm model {model!r} has no weights on the Hugging Face Hub; name a tag with weights, "
                       f"e.g. one of {timm.list_pretrained(f'{arch}.*')[:5]}")
    data_cfg = dict(cfg, **timm.data.resolve_model_data_config(built))
    full = f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch
    return _spec(name, loader="timm", model_id=full, architecture=arch, pretrained_cfg=data_cfg,
                 num_classes=int(built.num_classes), num_features=int(built.num_features),
                 weights_repo=cfg["hf_hub_id"].split("@")[0], description=f"timm {full}")


def _as_timm_name(spec: EncoderSpec, *, weights_repo: str) -> EncoderSpec:
    from dataclasses import replace

    return replace(spec, weights_repo=weights_repo, description=f"timm {spec.model_id}")


# ----------------------------------------------------------------------------------------------------
# Building the model.


def build_model(spec: EncoderSpec, *, weights_dir: str | Path | None = None):
    """(timm model whose forward returns the embedding, input transform) with ``spec``'s weights loaded."""
    import timm

    kwargs: dict[str, Any] = {} if spec.keep_head else {"num_classes": 0}
    if spec.loader == "timm":
        pretrained = timm.models.get_pretrained_cfg(spec.model_id, allow_unregistered=False)
        if pretrained is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: the installed timm has no model {spec.model_id!r}; "
                                     f"update timm (pip install -U timm)")
        own = preprocessing_from_pretrained_cfg(pretrained.to_dict())
        weights = fetch_hub_file(spec.weights_repo or pretrained.hf_hub_id, TIMM_WEIGHTS, encoder=spec.name,
                                 download_size=spec.download_size, weights_dir=weights_dir, revision=spec.revision)
        create = dict(model_name=spec.model_id, pretrained_cfg_overlay={"file": weights})
    else:
        config, weights = _config_and_weights(spec, weights_dir)
        own = preprocessing_from_pretrained_cfg(config["pretrained_cfg"])
        pretrained_cfg = {k: v for k, v in config["pretrained_cfg"].items() if k not in ("hf_hub_id", "url", "source")}
        kwargs = dict(config.get("model_args") or {}, **kwargs)
        if spec.keep_head:
            kwargs.pop("num_classes", None)
        create = dict(model_name=config["architecture"], pretrained_cfg=dict(pretrained_cfg, file=weights))
    if own != spec.preprocessing:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: its stated preprocessing {spec.preprocessing} differs from the model's own "
            f"{own}; fix the entry in config.yaml (embeddings would be computed on the wrong input)"
        )
    try:
        model = timm.create_model(pretrained=True, **create, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:  # wrong shapes, unreadable or corrupt file
        raise EncoderUnavailable(f"encoder {spec.name!r}: cannot load weights {str(weights)!r} into "
                                 f"{create['model_name']!r}: {str(exc)[:500]}") from exc
    if spec.pooling != "default":
        model = pooled_tokens(model, spec.pooling, encoder=spec.name)
    return model.eval(), build_transform(spec.input_preprocessing)


def pooled_tokens(model, pooling: str, *, encoder: str):
    """``model`` whose output is its final (normed) tokens pooled as asked: the class token or the mean of
    the patch tokens (registers and class token left out). Changing timm's ``global_pool`` instead would,
    for some ViTs, also move the final norm after the pooling, which the weights were not trained with."""
    import torch

    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        raise EncoderUnavailable(f"encoder {encoder!r}: pooling {pooling!r} needs a transformer with tokens; "
                                 f"this model has none, use its default pooling")
    if pooling == "cls" and getattr(model, "cls_token", None) is None:
        raise EncoderUnavailable(f"encoder {encoder!r}: the model has no class token; use pooling 'mean'")

    class PooledTokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.pooling = pooling  # read by otolith_core.saliency

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            tokens = self.model.forward_features(images)  # (batch, prefix + patches, dim), after the final norm
            return tokens[:, 0] if pooling == "cls" else tokens[:, prefix:].mean(dim=1)

    return PooledTokens()


def build_transform(preprocessing: Preprocessing):
    """timm's own eval transform for this preprocessing."""
    from timm.data import create_transform

    modes = {mode: crop for crop, mode in CROP_MODES.items()}
    if preprocessing.resize_mode not in modes:
        raise ValueError(f"resize_mode {preprocessing.resize_mode!r} has no timm equivalent")
    return create_transform(
        input_size=(3, preprocessing.size, preprocessing.size), is_training=False,
        interpolation=preprocessing.interpolation, mean=preprocessing.mean, std=preprocessing.std,
        crop_pct=preprocessing.crop_pct, crop_mode=modes[preprocessing.resize_mode],
    )


def _config_and_weights(spec: EncoderSpec, weights_dir) -> tuple[dict[str, Any], str]:
    if spec.loader == "local-dir":
        config = read_json(Path(spec.model_id) / TIMM_CONFIG, encoder=spec.name)
        weights = local_weights_file(spec)
        if weights is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: folder {spec.model_id!r} has no weights file; "
                                     f"expected one of {list(TIMM_WEIGHTS)}")
        return config, str(weights)
    if spec.loader == "hf-hub":
        config_path = fetch_hub_file(spec.model_id, TIMM_CONFIG, encoder=spec.name, download_size=spec.download_size,
                                     weights_dir=weights_dir, revision=spec.revision)
        weights = fetch_hub_file(spec.model_id, TIMM_WEIGHTS, encoder=spec.name, download_size=spec.download_size,
                                 weights_dir=weights_dir, revision=spec.revision)
        return read_json(config_path, encoder=spec.name), weights
    raise EncoderUnavailable(f"encoder {spec.name!r}: loader {spec.loader!r} does not build a timm model")
