"""Preprocessing variants: how the photo is fitted into the square input, and contrast enhancement.

A variant is part of an encoder's name, ``ENCODER@OPTION+OPTION`` (``dinov3-vitl16@pad+clahe``), so each
has its own cache store and its own rows in every table. It runs on the decoded photo, before the model's
own preprocessing, which then only resizes the square (see ``EncoderSpec.input_preprocessing``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .spec import FITS, REVISION_PIN, VARIANT_OPTIONS, Variant


def split_variant(name: str) -> tuple[str, list[str] | None]:
    """``(base name, options)`` of ``name``; options are None when there is no variant suffix.

    The suffix is the text after the last ``@`` when every ``+``-joined token in it is a variant option,
    so ``hf-hub:org/model@revision=REV`` (a pinned revision, see :mod:`.registry`) stays a plain name.
    """
    base, at, suffix = name.rpartition("@")
    if not at or not base:
        return name, None
    tokens = [t.strip() for t in suffix.split("+")]
    if not all(t in VARIANT_OPTIONS for t in tokens):
        return name, None
    return base, tokens


def parse_variant(name: str, options: list[str], *, clahe_clip_limit: float | None = None,
                  clahe_kernel: float | None = None) -> Variant:
    """The :class:`Variant` the options of ``name`` ask for, or a ValueError naming the valid options."""
    if len(set(options)) != len(options):
        raise ValueError(f"encoder {name!r}: an option is repeated in its variant suffix")
    fits = [t for t in options if t in FITS]
    if len(fits) > 1:
        raise ValueError(f"encoder {name!r}: choose one of {', '.join(FITS)} (got {' and '.join(fits)}); "
                         f"variant options are {', '.join(VARIANT_OPTIONS)}, joined by '+'")
    return Variant(fit=fits[0] if fits else None, clahe="clahe" in options,
                   clip_limit=clahe_clip_limit, kernel=clahe_kernel)


def bad_suffix(model: str, *, name: str) -> str | None:
    """The error for a model name that still holds an ``@`` suffix once its pin and variant are taken off, or None.

    ``model`` is ``name`` without its ``@revision=REV`` and variant suffix (``pixels-32@padd``, or
    ``x@pad`` of ``x@pad@revision=main``). A folder may have ``@`` in its path.
    """
    pin = REVISION_PIN
    base, at, suffix = model.rpartition("@")
    if not at or not base:
        return None
    if model.startswith("local-dir:") and Path(model[len("local-dir:"):]).expanduser().exists():
        return None
    if suffix.startswith(pin):
        return f"encoder {name!r}: pin the revision once, right after the model name: {base}@{pin}REV"
    if all(t.strip() in VARIANT_OPTIONS for t in suffix.split("+")):
        if f"@{pin}" not in name:
            return f"encoder {name!r}: a name has one variant suffix, its options joined by '+' (e.g. {base}@pad+clahe)"
        revision = name.rpartition(f"@{pin}")[2].split("@")[0] or "REV"
        return (f"encoder {name!r}: the variant comes last, after a pinned revision: "
                f"{base}@{pin}{revision}@{suffix}")
    return (f"encoder {name!r}: {suffix!r} is not a preprocessing variant; the options are "
            f"{', '.join(VARIANT_OPTIONS)}, joined by '+' (e.g. {base}@pad+clahe); a hub model's revision is "
            f"pinned as {base}@{pin}{suffix}")


def apply_variant(image: Image.Image, variant: Variant, *, work_side: int) -> Image.Image:
    """The photo as the variant prepares it: CLAHE at ``work_side`` (shorter side), then fitted to a square."""
    if variant.clahe:
        image = clahe(_at_most(image, work_side), clip_limit=variant.clip_limit, kernel=variant.kernel)
    if variant.fit:
        image = fit_square(image, variant.fit)
    return image


def fit_square(image: Image.Image, fit: str) -> Image.Image:
    """``pad``: the whole photo on a square of its border's median colour; ``crop``: the centre square;
    ``squash``: stretched to a square of the shorter side."""
    width, height = image.size
    if fit == "pad":
        side = max(width, height)
        fill = tuple(int(v) for v in border_median(image))
        square = Image.new("RGB", (side, side), fill)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        return square
    if fit == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))
    if fit == "squash":
        side = min(width, height)
        return image.resize((side, side), Image.Resampling.BICUBIC)
    raise ValueError(f"fit {fit!r} is not one of {FITS}")


def border_median(image: Image.Image) -> np.ndarray:
    """Per-channel median of the outermost ring of pixels (the cloth the otolith lies on)."""
    rgb = np.asarray(image.convert("RGB"))
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return np.median(ring, axis=0)


def clahe(image: Image.Image, *, clip_limit: float, kernel: float) -> Image.Image:
    """Contrast-limited adaptive histogram equalisation of the luminance (Y of YCbCr), colour kept.

    ``kernel`` is the tile side as a fraction of each image side (skimage's default is 1/8).
    """
    from skimage.exposure import equalize_adapthist

    y, cb, cr = image.convert("YCbCr").split()
    luminance = np.asarray(y, dtype=np.float64) / 255.0
    if np.ptp(luminance) == 0:
        return image  # a flat image has no contrast to equalise
    tile = (max(8, round(luminance.shape[0] * kernel)), max(8, round(luminance.shape[1] * kernel)))
    equalised = equalize_adapthist(luminance, kernel_size=tile, clip_limit=clip_limit)
    y = Image.fromarray(np.clip(np.round(equalised * 255), 0, 255).astype(np.uint8))
    return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")


def _at_most(image: Image.Image, side: int) -> Image.Image:
    """Downscaled so the shorter side is ``side`` (never enlarged): CLAHE's tiles then mean the same at any photo size."""
    width, height = image.size
    if min(width, height) <= side:
        return image
    scale = side / min(width, height)
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
