"""A loaded encoder: ``embed(images) -> (n_images, dim)`` float32, plus the device and precision rules.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from .open_clip_models import implementation_for
from .spec import PRECISIONS, EncoderSpec, EncoderUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Bump when decoding or transforms change the numbers an encoder produces: it is part of every cache key.
EXTRACTOR_VERSION = 2  # 2: JPEGs decoded at reduced DCT scale, never below twice the model's input side
# Reduced precision (bf16/fp16 autocast) is chosen for an encoder only if its embeddings stay at least this
# cosine-similar to fp32 (tests/test_encoders_*.py check every registry entry's CPU choice).
REDUCED_PRECISION_COSINE_FLOOR = 0.999
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # precision -> torch dtype name


class Encoder:
    """A loaded encoder: ``embed(images)`` -> float32 array ``(n_images, dim)``, computed in ``precision``."""

    implementation = "builtin"  # the code computing the embedding (open_clip, timm, builtin)
    weights_revision: str | None = None  # commit of the hub snapshot its weights were read from (None: no hub weights)

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 1, precision: str = "fp32") -> None:
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.precision = precision

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def with_precision(self, precision: str) -> "Encoder":
        """The same loaded model computing in ``precision`` (a shallow copy; the weights are shared).

        Only where the same implementation computes that precision (the cache keys it): CLIP under bf16 is
        timm's twin, another model to load.
        """
        if implementation_for(self.spec, precision) != self.implementation:
            raise ValueError(f"encoder {self.spec.name!r} runs {precision} through {implementation_for(self.spec, precision)}, "
                             f"not {self.implementation}: load it again with load_encoder(precision={precision!r})")
        other = copy.copy(self)
        other.precision = check_precision(precision, self.device)
        return other


class TorchEncoder(Encoder):
    """A torch image model and its input transform, run in fp32 or under ``torch.autocast``.

    ``module(batch)`` returns the embedding: an OpenCLIP image tower, or a timm model whose head is
    either removed (pooled pre-logits) or CLIP's image projection.
    """

    def __init__(self, spec: EncoderSpec, module: "torch.nn.Module", transform: Callable[[Image.Image], "torch.Tensor"],
                 *, device: str, batch_size: int, precision: str = "fp32", implementation: str,
                 weights_revision: str | None = None) -> None:
        super().__init__(spec, device=device, batch_size=batch_size, precision=check_precision(precision, device))
        self.module = module.to(device).eval()
        self.transform = transform
        self.implementation = implementation
        self.weights_revision = weights_revision

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        batch = torch.stack([self.transform(im) for im in images]).to(self.device)
        if self.device.startswith("cuda") and self.precision == "fp32":
            # fp32 means fp32: no TensorFloat-32 shortcut in matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        autocast = contextlib.nullcontext() if self.precision == "fp32" else torch.autocast(
            device_type=self.device.split(":")[0], dtype=getattr(torch, AUTOCAST_DTYPES[self.precision]))
        with torch.inference_mode(), autocast:
            features = self.module(batch)
        return features.float().cpu().numpy()


def check_precision(precision: str, device: str) -> str:
    """``precision`` if ``device`` can run it, else a clear error."""
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


def continues_on(precision: str, device: str) -> str | None:
    """The device a store begun in ``precision`` goes on being filled on, given the device asked for (``auto``
    resolved), or None where ``precision`` is not offered there. fp32 runs on every device: the device is returned
    as asked, without asking torch (a built-in extractor's extraction or shard never loads it)."""
    if precision == "fp32":
        return device
    where = select_device(device)
    return where if runs_on(precision, where) else None


def auto_precision(spec: EncoderSpec, device: str) -> str:
    """The spec's precision for ``device``; bf16 on a CPU without bf16 instructions is emulated, so fp32."""
    precision = spec.precision.for_device(device)
    if device == "cpu" and precision == "bf16" and not cpu_has_bf16():
        return "fp32"
    return precision


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


def default_batch_size(device: str) -> int:
    return 32 if device.startswith("cuda") else 8


def decode_min_side(spec: EncoderSpec) -> int:
    """Smallest shorter side a JPEG may be decoded at for this encoder: twice what the encoder looks at."""
    if spec.preprocessing is not None:
        return 2 * spec.preprocessing.size
    from ..morphometrics import BUILTIN_DECODE_SIDE

    return BUILTIN_DECODE_SIDE.get(spec.model_id, 2048)
