"""Built-in extractors that need no download: classic otolith morphometrics and a 32x32 thumbnail.

``otolith_morphometrics`` is the shape analysis fisheries labs have used for decades: segment the
otolith, measure area, perimeter, Feret length and width, aspect ratio, circularity, rectangularity,
solidity, normalised elliptic Fourier descriptors, then read the radial grey profile from the
nucleus outwards (opaque and translucent zones) and its spectrum, which carries the ring spacing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

BUILTIN_VERSION = 3  # bump when a built-in extractor's numbers change: it is part of the cache key
WORK_SIDE = 512  # images are measured at this longest side; lengths are scaled back to input pixels
EFD_ORDER = 10
PROFILE_SAMPLES = 96
PROFILE_FEATURES = 32
SPECTRUM_BINS = 32
RAY_SPREAD_DEG = 20.0
RAYS_PER_SIDE = 9
MORPHOMETRICS_DIM = 11 + (4 * EFD_ORDER - 3) + PROFILE_FEATURES + SPECTRUM_BINS + 1


def otolith_morphometrics(image: Image.Image) -> np.ndarray:
    """Shape and ring-profile features of the largest bright object, shape ``(MORPHOMETRICS_DIM,)``.

    Raises ``ValueError`` when no otolith can be segmented (blank or contrast-free image).
    """
    from scipy import ndimage
    from skimage import filters, measure, morphology

    grey = np.asarray(image.convert("L"), dtype=np.float64)
    scale = max(grey.shape) / WORK_SIDE
    if scale > 1:
        size = (max(1, round(image.width / scale)), max(1, round(image.height / scale)))
        grey = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    else:
        scale = 1.0
    if min(grey.shape) < 16 or np.ptp(grey) < 8:
        raise ValueError("no otolith found: the image is too small or has no contrast")
    smooth = ndimage.gaussian_filter(grey, 2.0)
    mask = smooth > filters.threshold_otsu(smooth)
    labels = measure.label(mask)
    if labels.max() == 0:
        raise ValueError("no otolith found: nothing brighter than the background")
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    mask = ndimage.binary_fill_holes(labels == largest)
    mask = morphology.opening(mask, morphology.disk(2)) if mask.sum() > 200 else mask
    props = measure.regionprops(mask.astype(np.uint8))
    if not props or props[0].area < 50:
        raise ValueError("no otolith found: the segmented object is smaller than 50 pixels")
    region = props[0]

    shape = _shape_features(region, mask, scale)
    efd = _efd_features(mask)
    profile, spectrum, n_peaks = _ring_features(grey, mask, region)
    return np.concatenate([shape, efd, profile, spectrum, [np.log1p(n_peaks)]]).astype(np.float32)


def find_ray_start(mask: np.ndarray) -> tuple[float, float]:
    """Where the ring profile starts, ``(row, col)``: the centroid if it lies well inside the otolith, else the nearest point that does.

    "Well inside" is at least half as far from the outline as the deepest point (distance transform).
    A curved or broken otolith's centroid can lie outside it or near its edge; from a point well
    inside, every ray runs at least that half depth before it leaves the mask.
    """
    from scipy import ndimage

    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"mask must be a 2-D array with at least one True pixel, got shape {mask.shape}")
    # Padding with background makes the frame's edge count as outline for an otolith it cuts.
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    deep = depth >= 0.5 * depth.max()
    cy, cx = np.argwhere(mask).mean(axis=0)
    if deep[round(cy), round(cx)]:
        return float(cy), float(cx)
    rows, cols = np.nonzero(deep)
    nearest = np.argmin((rows - cy) ** 2 + (cols - cx) ** 2)
    return float(rows[nearest]), float(cols[nearest])


def _shape_features(region, mask: np.ndarray, scale: float) -> np.ndarray:
    from skimage import measure

    area = region.area * scale**2
    perimeter = max(measure.perimeter(mask), 1.0) * scale
    length, width = _feret_length_width(region.coords)
    length, width = length * scale, width * scale
    # Sizes enter as logarithms so every feature has a comparable, unit-free spread: a head that
    # scales embeddings to unit length (the default) must not be swamped by an area in pixels.
    return np.array([
        np.log(area),
        np.log(perimeter),
        np.log(length),
        np.log(width),
        width / max(length, 1e-9),  # aspect ratio
        4 * np.pi * area / perimeter**2,  # circularity
        area / max(length * width, 1e-9),  # rectangularity
        region.solidity,
        region.eccentricity,
        np.log(region.axis_major_length * scale),
        np.log(region.axis_minor_length * scale + 1.0),
    ])


def _feret_length_width(coords: np.ndarray) -> tuple[float, float]:
    """Max and min calliper diameters of a pixel set, by projecting its hull on 180 directions."""
    from scipy.spatial import ConvexHull, QhullError

    points = coords.astype(np.float64)
    try:
        points = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        pass
    angles = np.deg2rad(np.arange(180))
    directions = np.stack([np.cos(angles), np.sin(angles)])
    projections = points @ directions
    extents = projections.max(axis=0) - projections.min(axis=0) + 1.0
    return float(extents.max()), float(extents.min())


def _efd_features(mask: np.ndarray) -> np.ndarray:
    """Normalised elliptic Fourier descriptors of the outline (size, rotation, start invariant)."""
    import pyefd
    from skimage import measure

    contours = measure.find_contours(np.pad(mask, 1).astype(float), 0.5)
    contour = max(contours, key=len)
    coeffs = pyefd.elliptic_fourier_descriptors(contour, order=EFD_ORDER, normalize=True)
    return coeffs.ravel()[3:]  # the first three are fixed at 1, 0, 0 by normalisation


def _ring_features(grey: np.ndarray, mask: np.ndarray, region) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean grey profile from inside the otolith to its edge along the long axis, its spectrum, and its peak count."""
    from scipy import ndimage, signal

    cy, cx = find_ray_start(mask)
    # skimage's orientation: angle between the row axis and the major axis.
    theta = region.orientation
    spread = np.deg2rad(np.linspace(-RAY_SPREAD_DEG, RAY_SPREAD_DEG, RAYS_PER_SIDE))
    radii = np.linspace(0.0, 1.0, PROFILE_SAMPLES)
    profiles = []
    for base in (theta, theta + np.pi):
        for delta in spread:
            dy, dx = np.cos(base + delta), np.sin(base + delta)
            edge = _distance_to_edge(mask, cy, cx, dy, dx)
            if edge < 4:
                continue
            rows, cols = cy + dy * radii * edge, cx + dx * radii * edge
            profiles.append(ndimage.map_coordinates(grey, [rows, cols], order=1, mode="nearest"))
    if not profiles:
        raise ValueError("no otolith found: the segmented object has no measurable radius")
    profile = np.mean(profiles, axis=0)
    trend = np.polyval(np.polyfit(radii, profile, 3), radii)
    detail = profile - trend
    detail = detail / (detail.std() + 1e-9)
    spectrum = np.abs(np.fft.rfft(detail))[1: SPECTRUM_BINS + 1]
    spectrum = spectrum / (spectrum.sum() + 1e-9)
    peaks, _ = signal.find_peaks(detail, prominence=0.5)
    pooled = detail.reshape(PROFILE_FEATURES, -1).mean(axis=1)
    return pooled, spectrum, float(len(peaks))


def _distance_to_edge(mask: np.ndarray, cy: float, cx: float, dy: float, dx: float) -> float:
    """Pixels from (cy, cx) along (dy, dx) until the mask ends."""
    limit = int(np.hypot(*mask.shape))
    steps = np.arange(limit)
    rows = np.round(cy + dy * steps).astype(int)
    cols = np.round(cx + dx * steps).astype(int)
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    rows, cols = rows[inside], cols[inside]
    outside = np.flatnonzero(~mask[rows, cols])
    return float(outside[0] if outside.size else rows.size)


def pixels_32(image: Image.Image) -> np.ndarray:
    """A 32x32 grey thumbnail scaled to [0, 1], shape ``(1024,)``: the floor any encoder must beat."""
    thumb = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    return (np.asarray(thumb, dtype=np.float32) / 255.0).ravel()


# Shorter side a JPEG may be reduced to before each extractor (twice what it measures at).
BUILTIN_DECODE_SIDE = {"otolith-morphometrics": 2 * WORK_SIDE, "pixels-32": 64}

BUILTIN_EXTRACTORS: dict[str, Callable[[Image.Image], np.ndarray]] = {
    "otolith-morphometrics": otolith_morphometrics,
    "pixels-32": pixels_32,
}
