"""The built-in extractors (no download, numpy on the CPU) as encoders."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .encoder import Encoder
from .spec import EncoderSpec, EncoderUnavailable


class BuiltinEncoder(Encoder):
    """A per-image numpy extractor shipped with the package."""

    def __init__(self, spec: EncoderSpec, function: Callable[[Image.Image], np.ndarray]) -> None:
        super().__init__(spec, device="cpu", batch_size=16)
        self._function = function

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One row per image, computed with one BLAS thread: the extractors' least-squares fits are small, and more
        threads only spin (with 2 on 2 cores a photo's morphometrics took twice the CPU, in the same time and to the
        same bits). The caller's thread setting is back afterwards."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return np.stack([np.asarray(self._function(im), dtype=np.float32) for im in images])


def load_builtin(spec: EncoderSpec) -> BuiltinEncoder:
    from ..morphometrics import BUILTIN_EXTRACTORS

    if spec.model_id not in BUILTIN_EXTRACTORS:
        raise EncoderUnavailable(f"encoder {spec.name!r}: no built-in extractor {spec.model_id!r}; "
                                 f"choose from {sorted(BUILTIN_EXTRACTORS)}")
    return BuiltinEncoder(spec, BUILTIN_EXTRACTORS[spec.model_id])
