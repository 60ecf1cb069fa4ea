"""The encoders, as data: ``config.yaml`` entries and ad hoc OpenCLIP names -> :class:`EncoderSpec`.

Nothing here imports torch. Ad hoc names (``ViT-B-32:laion2b_s34b_b79k``, ``hf-hub:org/name``,
``local-dir:/path``) are resolved to a full spec by reading the model's own configuration, so the
cache key and the applied preprocessing always come from one place: the spec.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CONFIG_PATH = Path(__file__).with_name("config.yaml")
LOADERS = ("openclip", "hf-hub", "local-dir", "checkpoint", "builtin")
RESIZE_MODES = ("shortest", "squash", "longest")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp32: no autocast; bf16/fp16: torch.autocast with that dtype
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderUnavailable(RuntimeError):
    """An encoder cannot be built: weights missing offline, a corrupt file, a bad config.

    The message is written for the person running the tool and says what to do.
    """


# Everything resolving or loading an encoder raises for a cause the user can fix.
ENCODER_ERRORS = (KeyError, ValueError, FileNotFoundError, EncoderUnavailable)


def error_message(exc: BaseException) -> str:
    """The sentence an error carries (a KeyError's repr would add quotes around it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor (open_clip's ``PreprocessCfg`` terms)."""

    size: int
    resize_mode: str  # "shortest": resize shortest side + centre crop; "squash": both sides to size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if int(self.size) <= 0:
            raise ValueError(f"preprocessing size must be positive, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))


@dataclass(frozen=True)
class Precision:
    """Arithmetic an encoder runs in, per kind of device; reduced precision only where it measurably helps.

    ``fp32`` is the plain path. ``bf16``/``fp16`` run the forward pass under ``torch.autocast`` (layer
    norms and softmax stay in fp32). Apple MPS always runs fp32, and a CPU without bf16 instructions runs
    a bf16 choice in fp32 (decided when the encoder is loaded). The precision actually used is part of
    the cache key, so embeddings of different precisions are never mixed.
    """

    cpu: str = "fp32"
    cuda: str = "fp32"

    def __post_init__(self) -> None:
        for device, value in (("cpu", self.cpu), ("cuda", self.cuda)):
            if value not in PRECISIONS:
                raise ValueError(f"precision for {device} must be one of {PRECISIONS}, got {value!r}")
        if self.cpu == "fp16":
            raise ValueError("fp16 autocast is for CUDA GPUs; on the CPU choose fp32 or bf16")

    def for_device(self, device: str) -> str:
        """The precision on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
        if device.startswith("cuda"):
            return self.cuda
        return self.cpu if device == "cpu" else "fp32"


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build an encoder and to key its embeddings."""

    name: str
    loader: str
    model_id: str
    pretrained: str | None = None
    architecture: str | None = None  # open_clip built-in config (hf-hub entries: for offline checks)
    weights_repo: str | None = None  # Hugging Face repo holding the weights (availability checks)
    weights_path: str | None = None  # checkpoint loader: local weights file
    preprocessing: Preprocessing | None = None
    precision: Precision = Precision()
    description: str = ""
    year: int | None = None
    embed_dim: int | None = None
    download_size_mb: int | None = None
    ad_hoc: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(f"encoder {self.name!r}: loader {self.loader!r} is not one of {LOADERS}")
        if self.loader != "builtin" and self.preprocessing is None:
            raise ValueError(f"encoder {self.name!r}: a {self.loader} encoder needs its preprocessing stated")
        if self.loader == "openclip" and not self.pretrained:
            raise ValueError(
                f"encoder {self.name!r}: an openclip encoder needs a weights tag, e.g. 'ViT-B-32:laion2b_s34b_b79k'"
            )
        if self.loader == "checkpoint" and not (self.weights_path and self.architecture):
            raise ValueError(f"encoder {self.name!r}: a checkpoint encoder needs 'architecture' and 'weights_path'")

    @property
    def download_size(self) -> str:
        """Human-readable download size, e.g. ``'about 1.7 GB'``."""
        if self.loader in ("builtin", "local-dir", "checkpoint"):
            return "no download"
        if not self.download_size_mb:
            return "unknown size"
        mb = self.download_size_mb
        return f"about {mb / 1000:.1f} GB" if mb >= 1000 else f"about {mb} MB"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("ad_hoc")
        return data


def _spec_from_entry(entry: dict[str, Any]) -> EncoderSpec:
    entry = dict(entry)
    pre = entry.pop("preprocessing", None)
    precision = entry.pop("precision", None) or {}
    unknown = set(entry) - {f for f in EncoderSpec.__dataclass_fields__ if f not in ("preprocessing", "precision")}
    if unknown:
        raise ValueError(f"encoder entry {entry.get('name')!r} has unknown field(s) {sorted(unknown)}")
    return EncoderSpec(**entry, preprocessing=Preprocessing(**pre) if pre else None, precision=Precision(**precision))


@lru_cache(maxsize=4)
def load_config(path: str | Path = CONFIG_PATH) -> dict[str, Any]:
    """The parsed ``config.yaml`` (encoders and presets)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def registry(path: str | Path = CONFIG_PATH) -> dict[str, EncoderSpec]:
    """Registered encoders by name, in config order."""
    return {e["name"]: _spec_from_entry(e) for e in load_config(path)["encoders"]}


def presets(path: str | Path = CONFIG_PATH) -> dict[str, dict[str, Any]]:
    """Per-species settings (``age_range``, ...) by name."""
    return dict(load_config(path).get("presets") or {})


def resolve_encoder(name: str, *, weights_dir: str | Path | None = None) -> EncoderSpec:
    """A registered name or an ad hoc OpenCLIP model -> :class:`EncoderSpec`.

    Parameters
    ----------
    name : a registry name (``clip-vit-l-14-336``), ``ARCH:TAG`` (``ViT-B-32:laion2b_s34b_b79k``),
        ``hf-hub:org/name`` or ``local-dir:/path/to/folder``.
    weights_dir : Hugging Face cache folder used for hf-hub configs (default: the HF default).
    """
    name = name.strip()
    known = registry()
    if name in known:
        return known[name]
    if name.startswith("local-dir:"):
        return _local_dir_spec(name)
    if name.startswith("hf-hub:"):
        return _hf_hub_spec(name, weights_dir)
    if ":" in name:
        return _openclip_spec(name)
    close = difflib.get_close_matches(name, list(known) + _openclip_names(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(
        f"unknown encoder {name!r}{hint} Choose from {sorted(known)}, or give an OpenCLIP model as "
        f"'ARCH:TAG' (e.g. ViT-B-32:laion2b_s34b_b79k), 'hf-hub:org/name' or 'local-dir:/path'"
    )


def resolve_encoders(names, *, weights_dir: str | Path | None = None) -> tuple[dict[str, EncoderSpec], dict[str, str]]:
    """Resolve several names at once: ``({name: spec}, {name: why it cannot be used})``; never raises for a name."""
    specs, problems = {}, {}
    for name in names:
        try:
            specs[name] = resolve_encoder(name, weights_dir=weights_dir)
        except ENCODER_ERRORS as exc:
            problems[name] = error_message(exc)
    return specs, problems


def _openclip_names() -> list[str]:
    try:
        import open_clip  # deferred: imports torch
    except ImportError:
        return []
    return list(open_clip.list_models())


def preprocessing_from_open_clip_config(config: dict[str, Any]) -> tuple[Preprocessing, int | None]:
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


def _local_dir_spec(name: str) -> EncoderSpec:
    folder = Path(name[len("local-dir:"):]).expanduser()
    config_path = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"encoder {name!r}: folder {str(folder)!r} does not exist")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"encoder {name!r}: {str(config_path)!r} is missing; a local-dir model needs open_clip_config.json "
            f"(with model_cfg and preprocess_cfg) next to its weights file"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"encoder {name!r}: {str(config_path)!r} is not valid JSON: {exc}") from exc
    if "model_cfg" not in config:
        raise ValueError(f"encoder {name!r}: {str(config_path)!r} has no 'model_cfg' section")
    preprocessing, dim = preprocessing_from_open_clip_config(config)
    return EncoderSpec(
        name=name, loader="local-dir", model_id=str(folder.resolve()), preprocessing=preprocessing,
        embed_dim=dim, description=f"OpenCLIP model from {folder}", ad_hoc=True,
    )


def _hf_hub_spec(name: str, weights_dir: str | Path | None) -> EncoderSpec:
    from .feature_extractor import fetch_hub_file  # weights logic lives with the loader

    repo = name[len("hf-hub:"):]
    config = json.loads(Path(fetch_hub_file(repo, "open_clip_config.json", encoder=name, weights_dir=weights_dir)).read_text())
    preprocessing, dim = preprocessing_from_open_clip_config(config)
    return EncoderSpec(
        name=name, loader="hf-hub", model_id=repo, weights_repo=repo, preprocessing=preprocessing,
        embed_dim=dim, description=f"OpenCLIP model {repo} from the Hugging Face Hub", ad_hoc=True,
    )


def _openclip_spec(name: str) -> EncoderSpec:
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
    preprocessing, dim = preprocessing_from_open_clip_config({"model_cfg": model_cfg, "preprocess_cfg": cfg})
    hub = cfg.get("hf_hub", "")
    hub = "/".join(hub.split("/")[:2]) if hub else None  # 'org/name/' or 'org/name/file.bin' -> 'org/name'
    return EncoderSpec(
        name=name, loader="openclip", model_id=arch, pretrained=tag, weights_repo=hub,
        preprocessing=preprocessing, embed_dim=dim, description=f"OpenCLIP {arch} with {tag} weights", ad_hoc=True,
    )
