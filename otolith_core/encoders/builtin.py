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
        self._threads = None  # threadpoolctl's controller of the BLAS libraries loaded, found at the first batch

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One row per image, computed with one BLAS thread: the extractors' least-squares fits are small, and more
        threads only spin (with 2 on 2 cores a photo's morphometrics took twice the CPU, in the same time and to the
        same bits). The caller's thread setting is back afterwards.

        The libraries are looked up once per encoder: a lookup reads every loaded library (7 ms with torch loaded,
        a fifth of a pixels-32 batch), a limit then costs microseconds."""
        if self._threads is None:
            from threadpoolctl import ThreadpoolController

            self._threads = ThreadpoolController()
        with self._threads.limit(limits=1, user_api="blas"):
            return np.stack([np.asarray(self._function(im), dtype=np.float32) for im in images])


def load_builtin(spec: EncoderSpec) -> BuiltinEncoder:
    from ..morphometrics import BUILTIN_EXTRACTORS

    if spec.model_id not in BUILTIN_EXTRACTORS:
        raise EncoderUnavailable(f"encoder {spec.name!r}: no built-in extractor {spec.model_id!r}; "
                                 f"choose from {sorted(BUILTIN_EXTRACTORS)}")
    return BuiltinEncoder(spec, BUILTIN_EXTRACTORS[spec.model_id])
