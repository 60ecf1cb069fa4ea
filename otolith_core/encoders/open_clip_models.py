"""OpenCLIP encoders: their specs from open_clip's configs, and their image towers.

A tower is built alone (``open_clip.model._build_vision_tower``) and given the ``visual.*`` part of
the checkpoint: the text tower and tokenizer are never built. A plain OpenCLIP ViT (OpenAI CLIP and
its kind) can also run as timm's ``VisionTransformer`` with the same weights, converted by timm's own
checkpoint filter: under bf16 on a CPU that is many times faster than open_clip's tower
(benchmarks/README.md), so :func:`implementation_for` picks it there.

torch and open_clip are imported only by the functions that build or list models.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from .spec import OPENAI_MEAN, OPENAI_STD, EncoderSpec, EncoderUnavailable, Preprocessing
from .weights import OPEN_CLIP_CONFIG, OPEN_CLIP_HUB_WEIGHTS, OPEN_CLIP_LOCAL_WEIGHTS, fetch_hub_file, \
    local_weights_file, read_json

# Keys of open_clip's vision_cfg a plain ViT may carry, with the values that keep it plain; any other key
# or value (attention pooling, a timm trunk, layer scale, ...) keeps the tower on open_clip's own code.
_PLAIN_VIT_DEFAULTS = {"patch_dropout": 0.0, "output_tokens": False,
                       "attentional_pool": False, "pool_type": "tok", "final_ln_after_pool": False,
                       "no_ln_pre": False, "pos_embed_type": "learnable", "ls_init_value": None,
                       "global_average_pool": False, "input_patchnorm": False}


def preprocessing_from_config(config: dict[str, Any]) -> tuple[Preprocessing, int | None]:
    """``open_clip_config.json`` contents -> (preprocessing, embedding dim), open_clip's defaults filled in."""
    model_cfg = config.get("model_cfg", config)
    pre = config.get("preprocess_cfg", {}) or {}
    size = model_cfg.get("vision_cfg", {}).get("image_size", pre.get("size", 224))
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square input size {size} is not supported")
        size = size[0]
    preprocessing = Preprocessing(
        size=int(size),
        resize_mode=pre.get("resize_mode", "shortest"),
        mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)),
        interpolation=pre.get("interpolation", "bicubic"),
    )
    return preprocessing, model_cfg.get("embed_dim")


def timm_vit_args(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Arguments of timm's ``VisionTransformer`` equal to this OpenCLIP tower, or None if it is not a plain ViT."""
    vision = dict(model_cfg.get("vision_cfg") or {})
    required = ("layers", "width", "patch_size", "image_size", "head_width", "mlp_ratio")  # any value maps to timm
    if not all(k in vision for k in required[:4]) or not isinstance(vision["layers"], int):
        return None  # a ResNet (layers as a tuple) or a timm/HF trunk
    size = vision["image_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            return None
        size = size[0]
    for key, value in vision.items():
        if key not in required and (key not in _PLAIN_VIT_DEFAULTS or value != _PLAIN_VIT_DEFAULTS[key]):
            return None
    head_width = vision.get("head_width", 64)
    if vision["width"] % head_width:
        return None
    return {
        "img_size": int(size), "patch_size": int(vision["patch_size"]), "embed_dim": int(vision["width"]),
        "depth": int(vision["layers"]), "num_heads": int(vision["width"]) // head_width,
        "mlp_ratio": float(vision.get("mlp_ratio", 4.0)), "pre_norm": True, "class_token": True,
        "global_pool": "token", "num_classes": int(model_cfg["embed_dim"]),
        "act_layer": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
    }


def implementation_for(spec: EncoderSpec, precision: str) -> str:
    """The code that computes ``spec``'s embeddings in ``precision``: ``timm`` for a plain ViT under bf16."""
    if spec.family == "open_clip" and spec.bf16_via_timm and precision == "bf16":
        return "timm"
    return spec.family


# ----------------------------------------------------------------------------------------------------
# Specs of ad hoc names (registry entries state theirs in config.yaml).


def list_models() -> list[str]:
    try:
        import open_clip  # deferred: imports torch
    except ImportError:
        return []
    return list(open_clip.list_models())


def spec_from_tag(name: str) -> EncoderSpec:
    """``ARCH:TAG`` (an open_clip architecture and weights tag) -> spec."""
    import open_clip  # deferred: imports torch

    arch, tag = name.split(":", 1)
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5)
        raise KeyError(f"unknown OpenCLIP architecture {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise KeyError(f"OpenCLIP architecture {arch!r} has no weights tag {tag!r}; choose from {tags}")
    model_cfg = open_clip.get_model_config(arch)
    preprocessing, dim = preprocessing_from_config({"model_cfg": model_cfg, "preprocess_cfg": cfg})
    hub = cfg.get("hf_hub", "")
    hub = "/".join(hub.split("/")[:2]) if hub else None  # 'org/name/' or 'org/name/file.bin' -> 'org/name'
    return EncoderSpec(
        name=name, loader="openclip", model_id=arch, pretrained=tag, weights_repo=hub, preprocessing=preprocessing,
        embed_dim=dim, bf16_via_timm=timm_vit_args(model_cfg) is not None,
        description=f"OpenCLIP {arch} with {tag} weights", ad_hoc=True,
    )


def spec_from_config(name: str, config: dict[str, Any], *, loader: str, model_id: str, where: str) -> EncoderSpec:
    """An ``open_clip_config.json`` (hub repo or folder) -> spec."""
    if "model_cfg" not in config:
        raise ValueError(f"encoder {name!r}: {where} has no 'model_cfg' section")
    preprocessing, dim = preprocessing_from_config(config)
    return EncoderSpec(
        name=name, loader=loader, model_id=model_id, weights_repo=model_id if loader == "hf-hub" else None,
        preprocessing=preprocessing, embed_dim=dim, bf16_via_timm=timm_vit_args(config["model_cfg"]) is not None,
        description=f"OpenCLIP model {model_id}" + (" from the Hugging Face Hub" if loader == "hf-hub" else ""),
        ad_hoc=True,
    )


# ----------------------------------------------------------------------------------------------------
# Building the tower.


def build_tower(spec: EncoderSpec, *, implementation: str, weights_dir: str | Path | None = None):
    """(torch module computing the embedding, input transform) for ``spec`` with its weights loaded."""
    import open_clip

    model_cfg, own_preprocessing, checkpoint = _source(spec, weights_dir, open_clip)
    if own_preprocessing is not None and own_preprocessing != spec.preprocessing:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: its stated preprocessing {spec.preprocessing} differs from the model's own "
            f"{own_preprocessing}; fix the entry in config.yaml (embeddings would be computed on the wrong input)"
        )
    state = _read_visual_state(spec, checkpoint, open_clip)
    if implementation == "timm":
        module = timm_tower(model_cfg, state, encoder=spec.name, checkpoint=checkpoint)
    else:
        module = open_clip_tower(model_cfg)
        _load(module, state, spec.name, checkpoint)
    return module.eval(), build_transform(spec.input_preprocessing)


def open_clip_tower(model_cfg: dict[str, Any]):
    """open_clip's image tower for ``model_cfg``, random weights (a timm trunk is never fetched from its hub)."""
    from open_clip.model import _build_vision_tower

    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    return _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False)))


def timm_tower(model_cfg: dict[str, Any], visual_state: dict, *, encoder: str, checkpoint: str = "the weights"):
    """timm's ``VisionTransformer`` holding an OpenCLIP tower's weights (converted by timm's checkpoint filter)."""
    from functools import partial

    import torch
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    args = timm_vit_args(model_cfg)
    if args is None:
        raise EncoderUnavailable(f"encoder {encoder!r}: its image tower is not a plain ViT timm can run")
    model = VisionTransformer(**args, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5))
    converted = checkpoint_filter_fn({f"visual.{k}": v for k, v in visual_state.items()}, model)
    _load(model, converted, encoder, checkpoint)
    return model


def build_transform(preprocessing: Preprocessing):
    """open_clip's own eval transform for this preprocessing (resize mode, size, mean/std)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    if preprocessing.crop_pct != 1.0:
        raise ValueError("open_clip preprocessing has no crop_pct; state it for timm models only")
    cfg = PreprocessCfg(
        size=preprocessing.size, mode="RGB", mean=preprocessing.mean, std=preprocessing.std,
        interpolation=preprocessing.interpolation, resize_mode=preprocessing.resize_mode,
    )
    return image_transform_v2(cfg, is_train=False)


def _load(module, state: dict, encoder: str, checkpoint: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderUnavailable(
            f"encoder {encoder!r}: weights file {checkpoint!r} does not fit its architecture: {str(exc)[:500]}"
        ) from exc


def _source(spec: EncoderSpec, weights_dir, open_clip) -> tuple[dict, Preprocessing | None, str]:
    """(model config, the model's own preprocessing or None, local checkpoint path)."""
    if spec.loader == "openclip":
        model_cfg = open_clip.get_model_config(spec.model_id)
        tag_cfg = open_clip.get_pretrained_cfg(spec.model_id, spec.pretrained)
        if model_cfg is None or not tag_cfg:
            raise EncoderUnavailable(f"encoder {spec.name!r}: open_clip has no {spec.model_id!r} with weights {spec.pretrained!r}")
        if bool(tag_cfg.get("quick_gelu", False)) != bool(model_cfg.get("quick_gelu", False)):
            raise EncoderUnavailable(
                f"encoder {spec.name!r}: weights {spec.pretrained!r} were trained with quick_gelu="
                f"{tag_cfg.get('quick_gelu', False)} but {spec.model_id!r} uses the other activation; "
                f"use the '-quickgelu' variant of the architecture"
            )
        own, _ = preprocessing_from_config({"model_cfg": model_cfg, "preprocess_cfg": tag_cfg})
        if not spec.weights_repo:
            raise EncoderUnavailable(f"encoder {spec.name!r}: weights {spec.pretrained!r} have no Hugging Face copy; "
                                     f"download them yourself and use the checkpoint loader")
        checkpoint = fetch_hub_file(spec.weights_repo, OPEN_CLIP_HUB_WEIGHTS, encoder=spec.name,
                                    download_size=spec.download_size, weights_dir=weights_dir, revision=spec.revision)
        return model_cfg, own, checkpoint
    if spec.loader == "hf-hub":
        config_path = fetch_hub_file(spec.model_id, OPEN_CLIP_CONFIG, encoder=spec.name,
                                     download_size=spec.download_size, weights_dir=weights_dir, revision=spec.revision)
        config = read_json(config_path, encoder=spec.name)
        own, _ = preprocessing_from_config(config)
        checkpoint = fetch_hub_file(spec.model_id, OPEN_CLIP_HUB_WEIGHTS, encoder=spec.name,
                                    download_size=spec.download_size, weights_dir=weights_dir, revision=spec.revision)
        return config.get("model_cfg", config), own, checkpoint
    if spec.loader == "local-dir":
        folder = Path(spec.model_id)
        config = read_json(folder / OPEN_CLIP_CONFIG, encoder=spec.name)
        own, _ = preprocessing_from_config(config)
        checkpoint = local_weights_file(spec)
        if checkpoint is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: folder {str(folder)!r} has no weights file; "
                                     f"expected one of {list(OPEN_CLIP_LOCAL_WEIGHTS)}")
        return config.get("model_cfg", config), own, str(checkpoint)
    if spec.loader == "checkpoint":
        model_cfg = open_clip.get_model_config(spec.architecture)
        if model_cfg is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: open_clip has no architecture {spec.architecture!r}")
        checkpoint = local_weights_file(spec)
        if checkpoint is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: weights file {spec.weights_path!r} does not exist")
        return model_cfg, None, str(checkpoint)  # a bare file carries no preprocessing: the spec's is the truth
    raise EncoderUnavailable(f"encoder {spec.name!r}: loader {spec.loader!r} does not build an OpenCLIP model")


def _read_visual_state(spec: EncoderSpec, checkpoint: str, open_clip) -> dict:
    """The image tower's tensors from a full OpenCLIP checkpoint (``weights_only`` loading)."""
    try:
        state = open_clip.factory.load_state_dict(checkpoint, device="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad safetensors header, pickle refused by weights_only
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: cannot read weights file {checkpoint!r} ({type(exc).__name__}: {str(exc)[:300]}); "
            f"it may be truncated or corrupt: delete it and download again"
        ) from exc
    visual = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
    if not visual:
        raise EncoderUnavailable(f"encoder {spec.name!r}: weights file {checkpoint!r} holds no image tower ('visual.*' tensors)")
    return visual
