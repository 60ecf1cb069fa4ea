"""Build the encoder a spec describes, on a device and in a precision: one entry point for every family."""

from __future__ import annotations

import contextlib
import gc
import threading
from pathlib import Path

from .encoder import Encoder, TorchEncoder, auto_precision, check_precision, default_batch_size, select_device
from .open_clip_models import implementation_for
from .spec import EncoderSpec
from .weights import resolve_revision


def load_encoder(
    spec: EncoderSpec,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    weights_dir: str | Path | None = None,
) -> Encoder:
    """Build the encoder a spec describes, downloading weights on first use.

    Parameters
    ----------
    spec : from :func:`otolith_core.encoders.resolve_encoder`.
    device : ``auto`` (cuda -> mps -> cpu), ``cpu``, ``cuda`` or ``mps``; built-in extractors run on the CPU.
    precision : ``auto`` (the spec's choice for the device), ``fp32``, ``bf16`` or ``fp16`` (CUDA only);
        built-in extractors always compute in numpy float32.
    batch_size : images per forward pass (default by device).
    weights_dir : Hugging Face cache folder for downloads (default: the HF default, ``HF_HUB_CACHE``).

    Returns
    -------
    Encoder ; a hub model's ``weights_revision`` is the commit of the snapshot its weights were read from
    (after a download: the one downloaded), as the cache's refs name it right after loading.

    Raises
    ------
    EncoderUnavailable : weights missing and not downloadable, corrupt weights, a config that disagrees.
    ValueError : a pinned revision the hub does not have.
    """
    if spec.family == "builtin":
        from .builtin import load_builtin

        return load_builtin(spec)
    with _collector_paused():  # torch, torchvision, timm and open_clip load here, the first time
        device = select_device(device)
        precision = check_precision(auto_precision(spec, device) if precision == "auto" else precision, device)
        implementation = implementation_for(spec, precision)
        if spec.family == "timm":
            from .timm_models import build_model

            module, transform = build_model(spec, weights_dir=weights_dir)
        else:
            from .open_clip_models import build_tower

            module, transform = build_tower(spec, implementation=implementation, weights_dir=weights_dir)
    return TorchEncoder(spec, module, transform, device=device, batch_size=batch_size or default_batch_size(device),
                        precision=precision, implementation=implementation,
                        weights_revision=resolve_revision(spec, weights_dir=weights_dir))


_PAUSE = threading.Lock()
_PAUSED = [0, False]  # loads under way; whether the collector was on when the first began


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off within (as long as any thread is within), on again after, if it was on.

    Loading torch, torchvision, timm and open_clip creates some 700,000 objects that live as long as the process.
    Python walks all the objects it holds at each full collection, and the growing heap sets off a dozen of them
    while these modules load: 1.2 to 1.7 s of CPU at the start of every shard or job (a 2-core cloud machine), for
    no garbage."""
    with _PAUSE:
        if _PAUSED[0] == 0:
            _PAUSED[1] = gc.isenabled()
            gc.disable()
        _PAUSED[0] += 1
    try:
        yield
    finally:
        with _PAUSE:
            _PAUSED[0] -= 1
            if _PAUSED[0] == 0 and _PAUSED[1]:
                gc.enable()


def untrained_encoder(spec: EncoderSpec, *, device: str = "cpu", precision: str = "fp32", batch_size: int | None = None,
                      seed: int = 0) -> Encoder:
    """``spec``'s model at full size with random weights (seeded), run as ``load_encoder`` would run it.

    For benchmarks and shape checks without a download; the same ``seed`` gives the same weights in every
    precision and implementation (a bf16 CLIP's timm twin holds the fp32 tower's weights).
    """
    import torch

    from . import open_clip_models, timm_models

    device = select_device(device)
    precision = check_precision(precision, device)
    implementation = implementation_for(spec, precision)
    torch.manual_seed(seed)
    if spec.family == "timm":
        import timm

        module = timm.create_model(spec.model_id, pretrained=False, **({} if spec.keep_head else {"num_classes": 0}))
        if spec.pooling != "default":
            module = timm_models.pooled_tokens(module, spec.pooling, encoder=spec.name)
        transform = timm_models.build_transform(spec.input_preprocessing)
    elif spec.family == "open_clip":
        import open_clip

        cfg = open_clip.get_model_config(spec.model_id if spec.loader == "openclip" else spec.architecture)
        module = open_clip_models.open_clip_tower(cfg)
        if implementation == "timm":
            module = open_clip_models.timm_tower(cfg, module.state_dict(), encoder=spec.name)
        transform = open_clip_models.build_transform(spec.input_preprocessing)
    else:
        raise ValueError(f"encoder {spec.name!r}: built-in extractors have no weights")
    return TorchEncoder(spec, module.eval(), transform, device=device, precision=precision,
                        batch_size=batch_size or default_batch_size(device), implementation=implementation)
