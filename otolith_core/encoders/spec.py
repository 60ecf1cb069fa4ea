"""What an encoder is, as data: :class:`EncoderSpec` and its parts. Imports nothing heavy.

A spec names the library that builds the model (``family``), where its weights come from
(``loader``), the preprocessing the model was trained with, the arithmetic it runs in per device,
for a preprocessing *variant* (``name@pad+clahe``), how the photo is fitted into the square input
before that preprocessing, and, for hub weights pinned by name (``name@revision=REV``), their revision.
Everything that changes the numbers is read from here by
:func:`otolith_core.encoders.identity.cache_identity`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

LOADERS = ("openclip", "hf-hub", "local-dir", "checkpoint", "timm", "builtin")
HUB_LOADERS = ("openclip", "hf-hub", "timm")  # weights from a Hugging Face Hub repo, so from one of its revisions
REVISION_PIN = "revision="  # NAME@revision=REV pins a hub model's weights (a variant suffix may follow: @pad)
# A branch, tag or full commit hash as git and the Hub write them ("main", "v1.0", "refs/pr/3"); no '@' or '+',
# which would read as the next suffix of a name, and no '..' path step (refs are files in the HF cache).
_REVISION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9._-]+)*")
_SHORT_COMMIT = re.compile(r"[0-9a-f]{7,39}")
FAMILIES = ("open_clip", "timm", "builtin")  # the library that builds the model
RESIZE_MODES = ("shortest", "squash", "longest")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp32: no autocast; bf16/fp16: torch.autocast with that dtype
POOLINGS = ("default", "cls", "mean")  # timm towers: the model's own, the class token, the mean of patch tokens
SCALINGS = ("none", "l2", "standardize")  # feature scaling a head fits inside each training fold
FITS = ("pad", "squash", "crop")  # how a variant fits the photo into the square input
VARIANT_OPTIONS = FITS + ("clahe",)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLAHE_CLIP_LIMIT = 0.01  # skimage's default
DEFAULT_CLAHE_KERNEL = 0.125  # tile side as a fraction of the image side (skimage's default of 1/8)


class EncoderUnavailable(RuntimeError):
    """An encoder cannot be built: weights missing offline, a corrupt file, a bad config.

    The message is written for the person running the tool and says what to do.
    """


# Everything resolving or loading an encoder raises for a cause the user can fix.
ENCODER_ERRORS = (KeyError, ValueError, FileNotFoundError, EncoderUnavailable)


def check_revision(revision: str, *, encoder: str) -> str:
    """``revision`` if it can name a hub revision (branch, tag or full commit hash), else a ValueError naming it."""
    if not revision:
        raise ValueError(f"encoder {encoder!r}: the revision after '@{REVISION_PIN}' is empty; give a commit hash "
                         f"(all 40 characters), a branch or a tag")
    if not _REVISION_PATTERN.fullmatch(revision) or ".." in revision:
        base = encoder.split(f"@{REVISION_PIN}")[0]
        raise ValueError(f"encoder {encoder!r}: revision {revision!r} is not a commit hash, branch or tag (letters, "
                         f"digits, '.', '_', '-' and '/'); a preprocessing variant goes after it, as its own suffix: "
                         f"{base}@{REVISION_PIN}REV@pad")
    if _SHORT_COMMIT.fullmatch(revision):
        raise ValueError(f"encoder {encoder!r}: revision {revision!r} looks like a shortened commit hash; the Hugging "
                         f"Face Hub needs all 40 characters of it")
    return revision


def error_message(exc: BaseException) -> str:
    """The sentence an error carries (a KeyError's repr would add quotes around it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor, in the model library's own terms.

    ``resize_mode`` is open_clip's: ``shortest`` resizes the shorter side to ``size / crop_pct`` and
    centre-crops ``size`` (timm's ``crop_mode="center"``), ``squash`` resizes both sides to ``size``.
    ``crop_pct`` below 1 is timm's eval crop (e.g. 0.9: resize to size/0.9, keep the centre).
    """

    size: int
    resize_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if int(self.size) <= 0:
            raise ValueError(f"preprocessing size must be positive, got {self.size!r}")
        if not 0 < float(self.crop_pct) <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {self.crop_pct!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
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
class Variant:
    """How the photo is prepared before the model's own preprocessing (the ``@pad+clahe`` suffix).

    ``fit``: ``pad`` keeps the aspect ratio and fills the square with the median colour of the image's
    border; ``squash`` stretches to square; ``crop`` resizes the shorter side and keeps the centre square;
    None leaves the model's own resize. ``clahe``: contrast-limited adaptive histogram equalisation of
    the luminance with ``clip_limit`` and a tile of ``kernel`` times the image side.
    """

    fit: str | None = None
    clahe: bool = False
    clip_limit: float | None = None
    kernel: float | None = None

    def __post_init__(self) -> None:
        if self.fit is not None and self.fit not in FITS:
            raise ValueError(f"fit {self.fit!r} is not one of {FITS}")
        if self.clahe:
            clip = DEFAULT_CLAHE_CLIP_LIMIT if self.clip_limit is None else float(self.clip_limit)
            kernel = DEFAULT_CLAHE_KERNEL if self.kernel is None else float(self.kernel)
            if not 0 < clip <= 1:
                raise ValueError(f"CLAHE clip limit must lie in (0, 1], got {clip}")
            if not 0 < kernel <= 1:
                raise ValueError(f"CLAHE kernel must be a fraction of the image side in (0, 1], got {kernel}")
            object.__setattr__(self, "clip_limit", clip)
            object.__setattr__(self, "kernel", kernel)
        else:  # parameters of a step that does not run are no part of the identity
            object.__setattr__(self, "clip_limit", None)
            object.__setattr__(self, "kernel", None)

    @property
    def suffix(self) -> str:
        """``pad+clahe`` etc., in a fixed order (fit first), so one variant has one name."""
        return "+".join(([self.fit] if self.fit else []) + (["clahe"] if self.clahe else []))

    def __bool__(self) -> bool:
        return bool(self.fit or self.clahe)


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
    family: str = ""  # library that builds it; filled from the loader when not stated
    preprocessing: Preprocessing | None = None
    precision: Precision = Precision()
    pooling: str = "default"  # timm towers: which pooled feature is the embedding
    keep_head: bool = False  # timm towers: the head is CLIP's image projection (kept), not a classifier
    bf16_via_timm: bool = False  # OpenCLIP plain ViTs: under bf16 run as timm's ViT, same weights (much faster)
    variant: Variant = Variant()
    revision: str | None = None  # hub weights pinned to this revision (commit, branch, tag); None: what refs/main names
    scaling: str = "l2"  # the feature scaling that suits these embeddings (heads fit it per training fold)
    description: str = ""
    year: int | None = None
    embed_dim: int | None = None
    download_size_mb: int | None = None
    licence: str = ""
    ad_hoc: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(f"encoder {self.name!r}: loader {self.loader!r} is not one of {LOADERS}")
        if not self.family:
            family = {"builtin": "builtin", "timm": "timm"}.get(self.loader, "open_clip")
            object.__setattr__(self, "family", family)
        if self.family not in FAMILIES:
            raise ValueError(f"encoder {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"encoder {self.name!r}: scaling {self.scaling!r} is not one of {SCALINGS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder {self.name!r}: pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.pooling != "default" and self.family != "timm":
            raise ValueError(f"encoder {self.name!r}: pooling is a setting of timm towers only")
        if self.loader != "builtin" and self.preprocessing is None:
            raise ValueError(f"encoder {self.name!r}: a {self.loader} encoder needs its preprocessing stated")
        if self.loader == "openclip" and not self.pretrained:
            raise ValueError(
                f"encoder {self.name!r}: an openclip encoder needs a weights tag, e.g. 'ViT-B-32:laion2b_s34b_b79k'"
            )
        if self.loader == "checkpoint" and not (self.weights_path and self.architecture):
            raise ValueError(f"encoder {self.name!r}: a checkpoint encoder needs 'architecture' and 'weights_path'")
        if self.revision is not None:
            if self.loader not in HUB_LOADERS:
                raise ValueError(f"encoder {self.name!r}: a {self.loader} encoder has no hub revision to pin "
                                 f"({self.revision!r}); only OpenCLIP, timm and hf-hub models come from the Hub")
            check_revision(self.revision, encoder=self.name)

    @property
    def base_name(self) -> str:
        """The name without its variant suffix (a pinned revision stays: ``name@revision=REV``)."""
        return self.name[: -len(self.variant.suffix) - 1] if self.variant else self.name

    @property
    def input_preprocessing(self) -> Preprocessing | None:
        """The preprocessing actually applied: a variant hands the model a square, resized as a whole."""
        pre = self.preprocessing
        if pre is None or not self.variant.fit:
            return pre
        from dataclasses import replace

        return replace(pre, resize_mode="squash", crop_pct=1.0)

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
