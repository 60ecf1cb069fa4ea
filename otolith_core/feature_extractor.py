"""Load an encoder and embed images: one API for OpenCLIP models and the built-in extractors.

OpenCLIP models are built as their image tower only (``open_clip.model._build_vision_tower``) and
given the ``visual.*`` part of the checkpoint: the text tower and tokenizer are never built. The
input transform is built from the spec's :class:`~otolith_core.registry.Preprocessing`, and for
models that carry their own preprocessing (hub and local-dir configs, open_clip tags) the two are
checked to agree, so a SigLIP never silently gets CLIP's resize and mean/std.

torch and open_clip are imported only when an OpenCLIP encoder is loaded.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from .registry import EncoderSpec, EncoderUnavailable, Preprocessing, preprocessing_from_open_clip_config

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Bump when decoding or transforms change the numbers an encoder produces: it is part of every cache key.
EXTRACTOR_VERSION = 2  # 2: JPEGs decoded at reduced DCT scale, never below twice the model's input side
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LOCAL_WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin",
)
NETWORK_PROBE_SECONDS = 3.0
# Reduced precision (bf16/fp16 autocast) is chosen for an encoder only if its embeddings stay at least this
# cosine-similar to fp32 (tests/test_registry.py checks every registry entry's CPU choice).
REDUCED_PRECISION_COSINE_FLOOR = 0.999


class Encoder:
    """A loaded encoder: ``embed(images)`` -> float32 array ``(n_images, dim)``, computed in ``precision``."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 1, precision: str = "fp32") -> None:
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.precision = precision

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def with_precision(self, precision: str) -> "Encoder":
        """The same loaded model computing in ``precision`` (a shallow copy; the weights are shared)."""
        import copy

        other = copy.copy(self)
        other.precision = check_precision(precision, self.device)
        return other


class BuiltinEncoder(Encoder):
    """A per-image numpy extractor shipped with the package (no download, CPU)."""

    def __init__(self, spec: EncoderSpec, function: Callable[[Image.Image], np.ndarray]) -> None:
        super().__init__(spec, device="cpu", batch_size=16)
        self._function = function

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([np.asarray(self._function(im), dtype=np.float32) for im in images])


class OpenClipEncoder(Encoder):
    """An OpenCLIP image tower with the spec's own preprocessing, run in fp32 or under ``torch.autocast``."""

    def __init__(
        self, spec: EncoderSpec, visual: "torch.nn.Module", device: str, batch_size: int, precision: str = "fp32"
    ) -> None:
        super().__init__(spec, device=device, batch_size=batch_size, precision=check_precision(precision, device))
        self.visual = visual.to(device).eval()
        self.transform = build_transform(spec.preprocessing)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import contextlib

        import torch

        batch = torch.stack([self.transform(im) for im in images]).to(self.device)
        if self.device.startswith("cuda") and self.precision == "fp32":
            # fp32 means fp32: no TensorFloat-32 shortcut in matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        autocast = contextlib.nullcontext() if self.precision == "fp32" else torch.autocast(
            device_type=self.device.split(":")[0], dtype=getattr(torch, AUTOCAST_DTYPES[self.precision]))
        with torch.inference_mode(), autocast:
            features = self.visual(batch)
        return features.float().cpu().numpy()


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # precision -> torch dtype name


def check_precision(precision: str, device: str) -> str:
    """``precision`` if ``device`` can run it, else a clear error."""
    from .registry import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, {', '.join(PRECISIONS)}")
    if not runs_on(precision, device):
        raise EncoderUnavailable(f"precision {precision} cannot run on device {device!r} "
                                 f"(fp16 needs a CUDA GPU; Apple MPS runs fp32); use --precision auto or fp32")
    return precision


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), the only CPUs where bf16 autocast was
    measured to pay. Read from ``/proc/cpuinfo``; elsewhere (macOS, Windows) we cannot tell and say no."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def runs_on(precision: str, device: str) -> bool:
    """Whether autocast in ``precision`` is offered on ``device``."""
    if precision == "fp32":
        return True
    if device.startswith("cuda"):
        return True
    return device == "cpu" and precision == "bf16"


def build_transform(preprocessing: Preprocessing) -> Callable[[Image.Image], "torch.Tensor"]:
    """open_clip's own eval transform for this preprocessing (resize mode, size, mean/std)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(
        size=preprocessing.size, mode="RGB", mean=preprocessing.mean, std=preprocessing.std,
        interpolation=preprocessing.interpolation, resize_mode=preprocessing.resize_mode,
    )
    return image_transform_v2(cfg, is_train=False)


def select_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; an explicit device is checked to exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderUnavailable("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EncoderUnavailable("device 'mps' was asked for but Apple MPS is not available; use --device auto or cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or mps")
    return device


def decode_min_side(spec: EncoderSpec) -> int:
    """Smallest shorter side a JPEG may be decoded at for this encoder: twice what the encoder looks at."""
    if spec.preprocessing is not None:
        return 2 * spec.preprocessing.size
    from .morphometrics import BUILTIN_DECODE_SIDE

    return BUILTIN_DECODE_SIDE.get(spec.model_id, 2048)


def default_batch_size(device: str) -> int:
    return 32 if device.startswith("cuda") else 8


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
    spec : from :func:`otolith_core.registry.resolve_encoder`.
    device : ``auto`` (cuda -> mps -> cpu), ``cpu``, ``cuda`` or ``mps``; built-in extractors run on the CPU.
    precision : ``auto`` (the spec's choice for the device), ``fp32``, ``bf16`` or ``fp16`` (CUDA only);
        built-in extractors always compute in numpy float32.
    batch_size : images per forward pass (default by device).
    weights_dir : Hugging Face cache folder for downloads (default: the HF default, ``HF_HUB_CACHE``).

    Raises
    ------
    EncoderUnavailable : weights missing and not downloadable, corrupt weights, a config that disagrees.
    """
    if spec.loader == "builtin":
        from .morphometrics import BUILTIN_EXTRACTORS

        if spec.model_id not in BUILTIN_EXTRACTORS:
            raise EncoderUnavailable(f"encoder {spec.name!r}: no built-in extractor {spec.model_id!r}; "
                                     f"choose from {sorted(BUILTIN_EXTRACTORS)}")
        return BuiltinEncoder(spec, BUILTIN_EXTRACTORS[spec.model_id])
    device = select_device(device)
    if precision == "auto":
        precision = spec.precision.for_device(device)
        if device == "cpu" and precision == "bf16" and not cpu_has_bf16():
            precision = "fp32"  # without bf16 instructions, bf16 autocast is emulated and slower than fp32
    precision = check_precision(precision, device)
    visual = _load_visual_tower(spec, weights_dir)
    return OpenClipEncoder(spec, visual, device, batch_size or default_batch_size(device), precision)


# ----------------------------------------------------------------------------------------------------
# Weights: find them locally, or download them when the hub can be reached; never hang offline.


def weights_available(spec: EncoderSpec, *, weights_dir: str | Path | None = None) -> bool:
    """Whether the encoder can be built without a download (no network access, no torch import)."""
    if spec.loader == "builtin":
        return True
    if spec.loader == "local-dir":
        return _local_checkpoint(Path(spec.model_id)) is not None
    if spec.loader == "checkpoint":
        return Path(spec.weights_path or "").expanduser().is_file()
    repo = spec.weights_repo or (spec.model_id if spec.loader == "hf-hub" else None)
    if repo is None:
        return False
    files = [_cached_hub_file(repo, f, weights_dir) for f in HUB_WEIGHT_FILES]
    config_ok = spec.loader != "hf-hub" or _cached_hub_file(repo, "open_clip_config.json", weights_dir)
    return any(files) and bool(config_ok)


def _cached_hub_file(repo: str, filename: str, weights_dir: str | Path | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(weights_dir) if weights_dir else None)
    return found if isinstance(found, str) else None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = NETWORK_PROBE_SECONDS) -> tuple[bool, str]:
    """Can a TCP connection to the Hugging Face endpoint be opened within ``timeout`` seconds?

    Name lookup has no timeout of its own, so the probe runs in a daemon thread.
    """
    from urllib.request import getproxies

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme) or getproxies().get("all")
    if proxy and not _bypasses_proxy(host):
        proxy_url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or host, proxy_url.port or 8080  # behind a proxy, the proxy must answer
    outcome: list[str] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append("")
        except OSError as exc:
            outcome.append(f"{host} unreachable: {exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return False, f"{host} did not answer within {timeout:.0f} s"
    return outcome[0] == "", outcome[0]


def _bypasses_proxy(host: str) -> bool:
    from urllib.request import proxy_bypass

    try:
        return bool(proxy_bypass(host))
    except OSError:
        return False


def fetch_hub_file(
    repo: str,
    filenames: str | Sequence[str],
    *,
    encoder: str,
    download_size: str = "unknown size",
    weights_dir: str | Path | None = None,
) -> str:
    """Local path of the first of ``filenames`` in hub repo ``repo``: from the cache, else downloaded.

    Fails within a few seconds, with instructions, when the file is not cached and the hub cannot be
    reached (instead of huggingface_hub's ~25 s of retries per file).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    for name in names:
        cached = _cached_hub_file(repo, name, weights_dir)
        if cached:
            return cached
    if _hub_offline():
        raise EncoderUnavailable(_missing_weights_message(encoder, repo, names, download_size, "HF_HUB_OFFLINE is set", weights_dir))
    ok, why = hub_reachable()
    if not ok:
        raise EncoderUnavailable(_missing_weights_message(encoder, repo, names, download_size, why, weights_dir))
    last_error: Exception | None = None
    for name in names:
        try:
            return hf_hub_download(repo, name, cache_dir=str(weights_dir) if weights_dir else None)
        except EntryNotFoundError as exc:
            last_error = exc
        except Exception as exc:  # network faults, auth, disk full: all end the same way for the user
            raise EncoderUnavailable(
                _missing_weights_message(encoder, repo, names, download_size, f"download failed: {exc}", weights_dir)
            ) from exc
    raise EncoderUnavailable(f"encoder {encoder!r}: hub repo {repo!r} has none of {names} ({last_error})")


def _missing_weights_message(
    encoder: str, repo: str, names: Sequence[str], size: str, why: str, weights_dir: str | Path | None
) -> str:
    from huggingface_hub import constants

    where = weights_dir or constants.HF_HUB_CACHE
    return (
        f"weights for encoder {encoder!r} ({size}) are not on this machine and cannot be downloaded now ({why}).\n"
        f"  - On a connected machine run `otolith extract --model {encoder} ...` once; weights are cached in {where}.\n"
        f"  - Or download open_clip_config.json and {names[0]} from https://huggingface.co/{repo} into one folder "
        f"and use `--model local-dir:/path/to/that/folder`."
    )


# ----------------------------------------------------------------------------------------------------
# OpenCLIP image tower.


def _load_visual_tower(spec: EncoderSpec, weights_dir: str | Path | None) -> "torch.nn.Module":
    import open_clip

    model_cfg, own_preprocessing, checkpoint = _resolve_openclip_source(spec, weights_dir, open_clip)
    if own_preprocessing is not None and own_preprocessing != spec.preprocessing:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: its stated preprocessing {spec.preprocessing} differs from the model's own "
            f"{own_preprocessing}; fix the entry in config.yaml (embeddings would be computed on the wrong input)"
        )
    from open_clip.model import _build_vision_tower

    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # weights come from the checkpoint, never from timm's hub
    visual = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False)))
    state = _read_visual_state(spec, checkpoint, open_clip)
    try:
        visual.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: weights file {checkpoint!r} does not fit architecture "
            f"{spec.architecture or spec.model_id!r}: {str(exc)[:500]}"
        ) from exc
    return visual.eval()


def _resolve_openclip_source(spec: EncoderSpec, weights_dir, open_clip) -> tuple[dict, Preprocessing | None, str]:
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
        own, _ = preprocessing_from_open_clip_config({"model_cfg": model_cfg, "preprocess_cfg": tag_cfg})
        if not spec.weights_repo:
            raise EncoderUnavailable(f"encoder {spec.name!r}: weights {spec.pretrained!r} have no Hugging Face copy; "
                                     f"download them yourself and use the checkpoint loader")
        checkpoint = fetch_hub_file(spec.weights_repo, HUB_WEIGHT_FILES, encoder=spec.name,
                                    download_size=spec.download_size, weights_dir=weights_dir)
        return model_cfg, own, checkpoint
    if spec.loader == "hf-hub":
        config_path = fetch_hub_file(spec.model_id, "open_clip_config.json", encoder=spec.name,
                                     download_size=spec.download_size, weights_dir=weights_dir)
        config = _read_json(config_path, spec)
        own, _ = preprocessing_from_open_clip_config(config)
        checkpoint = fetch_hub_file(spec.model_id, HUB_WEIGHT_FILES, encoder=spec.name,
                                    download_size=spec.download_size, weights_dir=weights_dir)
        return config.get("model_cfg", config), own, checkpoint
    if spec.loader == "local-dir":
        folder = Path(spec.model_id)
        config = _read_json(folder / "open_clip_config.json", spec)
        own, _ = preprocessing_from_open_clip_config(config)
        checkpoint = _local_checkpoint(folder)
        if checkpoint is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: folder {str(folder)!r} has no weights file; "
                                     f"expected one of {list(LOCAL_WEIGHT_FILES)}")
        return config.get("model_cfg", config), own, str(checkpoint)
    if spec.loader == "checkpoint":
        model_cfg = open_clip.get_model_config(spec.architecture)
        if model_cfg is None:
            raise EncoderUnavailable(f"encoder {spec.name!r}: open_clip has no architecture {spec.architecture!r}")
        path = Path(spec.weights_path).expanduser()
        if not path.is_file():
            raise EncoderUnavailable(f"encoder {spec.name!r}: weights file {str(path)!r} does not exist")
        return model_cfg, None, str(path)  # a bare file carries no preprocessing: the spec's is the truth
    raise EncoderUnavailable(f"encoder {spec.name!r}: loader {spec.loader!r} does not build an OpenCLIP model")


def _read_json(path: str | Path, spec: EncoderSpec) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderUnavailable(f"encoder {spec.name!r}: cannot read model config {str(path)!r}: {exc}") from exc


def _local_checkpoint(folder: Path) -> Path | None:
    for name in LOCAL_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


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
