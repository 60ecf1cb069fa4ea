"""Built-in extractors that need no download: classic otolith morphometrics and a 32x32 thumbnail.

``otolith_morphometrics`` is the shape analysis fisheries labs have used for decades: segment the
otolith, measure area, perimeter, Feret length and width, aspect ratio, circularity, rectangularity,
solidity, normalised elliptic Fourier descriptors, then read the radial grey profile from the
nucleus outwards (opaque and translucent zones) and its spectrum, which carries the ring spacing.

The segmentation expects one otolith on a contrasting background: brighter or darker than the
cloth, which may be textured and unevenly lit (vignetting, a band of light or glare along an edge of
the frame); the otolith may be thin, curved, broken or cut by the frame.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

# Bump an extractor's version when its numbers change, or when it accepts images it rejected (its
# failures are cached too): the version is part of that extractor's cache key, and of no other's.
BUILTIN_VERSIONS = {"otolith-morphometrics": 4, "pixels-32": 3}
WORK_SIDE = 512  # images are measured at this longest side; lengths are scaled back to input pixels
EFD_ORDER = 10
PROFILE_SAMPLES = 96
PROFILE_FEATURES = 32
SPECTRUM_BINS = 32
RAY_SPREAD_DEG = 20.0
RAYS_PER_SIDE = 9
MORPHOMETRICS_DIM = 11 + (4 * EFD_ORDER - 3) + PROFILE_FEATURES + SPECTRUM_BINS + 1
SMOOTHING_SIGMA = 2.0  # working pixels: wipes out cloth weave and sensor grain, keeps the outline
BORDER_SHARE_MAX = 0.25  # a part covering more of the frame's border than this is background, not otolith
MIN_SEPARATION = 5.0  # otolith minus cloth grey, in standard deviations of the cloth, below which nothing stands out
SURFACE_FITS = 6  # at most: the robust background fit usually settles after 2 or 3
EDGE_BAND_FILL = 0.5  # bright (dark) over more than this share of an edge: a band of light (shadow) runs along it
EDGE_BAND_SPREAD = 1.25  # a band of light is at most this much deeper than its median depth (wider towards the lamp)


def otolith_morphometrics(image: Image.Image) -> np.ndarray:
    """Shape and ring-profile features of the one otolith in a photo, shape ``(MORPHOMETRICS_DIM,)``.

    Raises ``ValueError`` when no otolith can be segmented (blank or contrast-free image).
    """
    from skimage import measure

    grey, scale = _work_grey(image)
    mask = segment_otolith(grey)
    props = measure.regionprops(mask.astype(np.uint8))
    if not props or props[0].area < 50:
        raise ValueError("no otolith found: the segmented object is smaller than 50 pixels")
    region = props[0]

    shape = _shape_features(region, mask, scale)
    efd = _efd_features(mask)
    profile, spectrum, n_peaks = _ring_features(grey, mask, region)
    return np.concatenate([shape, efd, profile, spectrum, [np.log1p(n_peaks)]]).astype(np.float32)


def _work_grey(image: Image.Image) -> tuple[np.ndarray, float]:
    """The photo in grey, ``(height, width)`` float, longest side at most ``WORK_SIDE``, and the factor it shrank by."""
    grey = image.convert("L")
    scale = max(grey.size) / WORK_SIDE
    if scale > 1:
        size = (max(1, round(grey.width / scale)), max(1, round(grey.height / scale)))
        # reducing_gap: a box reduction, then the bilinear resample: nearly the same pixels, a third of the time.
        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    else:
        scale = 1.0
    return np.asarray(grey, dtype=np.float64), scale


def segment_otolith(grey: np.ndarray) -> np.ndarray:
    """Mask of the one otolith in a grey photo, whether it is brighter or darker than its background.

    Parameters
    ----------
    grey : ``(height, width)`` grey levels, at working size (see ``WORK_SIDE``).

    Returns
    -------
    mask : ``(height, width)`` bool, True on the otolith, holes filled.

    Raises ``ValueError`` ("no otolith found: ...") when nothing stands out from the background.
    """
    from scipy import ndimage

    if grey.ndim != 2:
        raise ValueError(f"grey must be a 2-D array, got shape {grey.shape}")
    if min(grey.shape) < 16 or np.ptp(grey) < 8:
        raise ValueError("no otolith found: the image is too small or has no contrast")
    smooth = ndimage.gaussian_filter(grey, SMOOTHING_SIGMA)
    border = np.zeros(grey.shape, dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    # A bright otolith on dark cloth or a dark one on light cloth: try both, keep the one that
    # stands out more from the cloth around it.
    mask, separation = max((_segment_bright(signed, border) for signed in (smooth, -smooth)), key=lambda t: t[1])
    if separation < MIN_SEPARATION:
        raise ValueError(f"no otolith found: nothing stands out from the background "
                         f"(separation {separation:.1f} < {MIN_SEPARATION} standard deviations of the cloth)")
    return _fill_holes(mask)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``, computed on the mask's bounding box and the ring of background around it.

    The same mask: a hole is background that no path of background joins to the frame's edge, and a path out of the
    box crosses that ring, which is background and wraps the box (where the box meets the frame, the frame's edge
    is outside as before). The otolith fills a small part of the frame, so this is a fraction of the work.
    """
    from scipy import ndimage

    if not mask.any():
        return mask.copy()
    box = _bounding_box(mask)
    filled = np.zeros_like(mask)
    filled[box] = ndimage.binary_fill_holes(np.pad(mask[box], 1))[1:-1, 1:-1]
    return filled


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and the columns that hold the True pixels of ``mask`` (at least one)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _segment_bright(signed: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, float]:
    """Mask of the largest bright object and how far it stands out, in robust standard deviations of the cloth.

    The separation is 0 where the object covers more than ``BORDER_SHARE_MAX`` of the frame's border
    (the background fills the border) or leaves too little background to measure.
    """
    from skimage import filters

    margin = max(2, round(0.02 * max(signed.shape)))  # cloth starts this far out: the outline is blurred
    mask, bands = _split_edge_bands(signed > filters.threshold_otsu(signed), border, margin)
    cloth = ~_grow(mask | bands, margin)
    if cloth.mean() < 0.05:
        return mask, 0.0
    # Vignetting and uneven light are smooth over the frame: a quadratic surface fitted to the cloth
    # around the first mask and subtracted leaves the cloth near 0 from the centre to the corners.
    flat = signed - _fit_quadratic_surface(signed, cloth)
    mask, bands = _split_edge_bands(flat > filters.threshold_otsu(flat), border, margin)
    cloth = ~_grow(mask | bands, margin)
    if not mask.any() or cloth.mean() < 0.05 or mask[border].sum() > BORDER_SHARE_MAX * border.sum():
        return mask, 0.0
    return mask, _separation(flat[mask], flat[cloth])


def _split_edge_bands(candidates: np.ndarray, border: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The otolith among candidate pixels, and the bands of light along the frame's edges taken out first.

    A band of light (or shadow) along an edge is neither otolith nor cloth: taking it out cuts a band
    that touches the otolith off it, and keeps the band out of the cloth that the surface and the
    separation read.

    Parameters
    ----------
    candidates : ``(height, width)`` bool, pixels brighter than the threshold.
    border : ``(height, width)`` bool, the frame's outermost pixels.
    margin : pixels the bands are grown by: their inner edge fades out raggedly, in wisps that would
        otherwise be left over as small bright objects.

    Returns
    -------
    mask : ``(height, width)`` bool, the otolith (see ``_pick_otolith``).
    bands : ``(height, width)`` bool, the edge bands, grown.
    """
    bands = np.zeros(candidates.shape, dtype=bool)
    for turns in range(4):  # each edge in turn brought to the top
        bands |= np.rot90(_top_band(np.rot90(candidates, turns)), -turns)
    if bands.any():
        bands = _grow(bands, margin)
    return _pick_otolith(candidates & ~bands, border), bands


def _top_band(candidates: np.ndarray) -> np.ndarray:
    """The band of candidate pixels along the top edge, ``(height, width)`` bool; none if they fill half of it or less.

    An otolith, even one cut by the frame, covers less than ``EDGE_BAND_FILL`` of an edge; a band of
    light runs along it. Column by column, the band is the run of candidates down from the edge, cut
    at ``EDGE_BAND_SPREAD`` times the median run: the run goes on into an otolith that touches the
    band, over less than half the edge, and that must not be taken for band.
    """
    height = candidates.shape[0]
    if candidates[0].mean() <= EDGE_BAND_FILL:
        return np.zeros(candidates.shape, dtype=bool)
    runs = np.where(candidates.all(axis=0), height, np.argmin(candidates, axis=0))  # first non-candidate row
    depth = np.minimum(runs, EDGE_BAND_SPREAD * np.median(runs))
    return np.arange(height)[:, None] < depth[None, :]


def _separation(inside: np.ndarray, cloth: np.ndarray) -> float:
    """How far the object's grey stands out from the cloth's, in robust standard deviations of the cloth.

    Medians, and the cloth's median absolute deviation scaled to a standard deviation, so that a
    strip of glare, a dark corner or a bit of the otolith's rim left among the cloth pixels cannot
    inflate the spread: a mean and standard deviation would let a bright band a twentieth of the
    cloth wide hide an otolith that stands out by twenty standard deviations.

    Parameters
    ----------
    inside : ``(n_object_pixels,)`` grey levels of the object, background-flattened.
    cloth : ``(n_cloth_pixels,)`` grey levels of the cloth around it, flattened the same way.

    Returns
    -------
    separation : (object median - cloth median) / (1.4826 * cloth median absolute deviation).
    """
    centre = np.median(cloth)
    spread = 1.4826 * np.median(np.abs(cloth - centre))
    return float((np.median(inside) - centre) / (spread + 1e-9))


def _pick_otolith(candidates: np.ndarray, border: np.ndarray) -> np.ndarray:
    """The largest connected part of a candidate mask, preferring parts that leave the frame's border to the cloth."""
    from scipy import ndimage

    # The opening (5 x 5) drops specks of cloth texture and cuts thin bridges to them.
    if candidates.sum() > 200:
        candidates = ndimage.grey_opening(candidates.view(np.uint8), size=5).astype(bool)
    labels, count = ndimage.label(candidates)
    if count == 0:
        return candidates
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    border_share = np.bincount(labels[border], minlength=count + 1)[1:] / border.sum()
    score = areas + labels.size * (border_share <= BORDER_SHARE_MAX)
    return labels == np.argmax(score) + 1


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by ``pixels`` in every direction (a square: a max filter is the fastest dilation)."""
    from scipy import ndimage

    return ndimage.maximum_filter(mask.view(np.uint8), size=2 * pixels + 1).astype(bool)


def _fit_quadratic_surface(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Robust least-squares ``a + bx + cy + dx^2 + exy + fy^2`` through ``values[where]``, evaluated everywhere.

    Each fit after the first leaves out the pixels far off the one before (more than 3 robust standard
    deviations), until the pixels left out stay the same: a piece of otolith, or a band of glare along
    an edge, inside ``where`` does not bend the surface. A band bends the first fit far enough that
    one round of leaving out is not enough.
    """
    def terms(y: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        return [np.ones_like(x * y), x, y, x**2, x * y, y**2]

    def fit(design: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(design, target, rcond=None)[0]

    rows, cols = np.nonzero(where)
    picked = slice(None, None, max(1, rows.size // 5000))  # a few thousand pixels pin six numbers down
    design = np.stack(terms(rows[picked] / values.shape[0] - 0.5, cols[picked] / values.shape[1] - 0.5), axis=1)
    target = values[rows[picked], cols[picked]]
    keep = np.ones(target.size, dtype=bool)
    for _ in range(SURFACE_FITS):
        coeffs = fit(design[keep], target[keep])
        residuals = target - design @ coeffs
        centre = np.median(residuals)
        spread = 1.4826 * np.median(np.abs(residuals - centre))  # a standard deviation a few otolith pixels barely move
        kept, keep = keep, np.abs(residuals - centre) <= 3 * spread + 1e-9
        if np.array_equal(keep, kept):
            break
    y = (np.arange(values.shape[0]) / values.shape[0] - 0.5)[:, None]
    x = (np.arange(values.shape[1]) / values.shape[1] - 0.5)[None, :]
    return sum(c * t for c, t in zip(coeffs, terms(y, x)))


def find_ray_start(mask: np.ndarray) -> tuple[float, float]:
    """Where the ring profile starts, ``(row, col)``: the centroid if well inside the mask, else the nearest such point.

    "Well inside" is at least half as far from the outline as the deepest point (distance transform).
    A curved or broken otolith's centroid can lie outside it or near its edge; from a point well
    inside, every ray runs at least that half depth before it leaves the mask.
    """
    from scipy import ndimage

    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"mask must be a 2-D array with at least one True pixel, got shape {mask.shape}")
    # The distance of each pixel to the nearest background pixel, on the mask's bounding box padded with one ring of
    # background: the same distances as over the whole frame (the nearest background pixel of a pixel in the box is
    # never beyond that ring: moved onto the ring, a pixel further out only comes closer), and padding with
    # background makes the frame's edge count as outline for an otolith it cuts.
    box = _bounding_box(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1]
    deep = depth >= 0.5 * depth.max()
    cy, cx = np.argwhere(mask).mean(axis=0)
    top, left = box[0].start, box[1].start
    if deep[round(cy) - top, round(cx) - left]:  # the centroid lies in the box
        return float(cy), float(cx)
    rows, cols = np.nonzero(deep)
    rows, cols = rows + top, cols + left
    nearest = np.argmin((rows - cy) ** 2 + (cols - cx) ** 2)
    return float(rows[nearest]), float(cols[nearest])


def _shape_features(region, mask: np.ndarray, scale: float) -> np.ndarray:
    area = region.area * scale**2
    perimeter = max(_perimeter(mask), 1.0) * scale
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


def _perimeter(mask: np.ndarray) -> float:
    """``skimage.measure.perimeter(mask)``, measured on the mask's bounding box with a ring of background: the same
    number (the outline lies in the box, and the ring stands for the background around it)."""
    from skimage import measure

    return float(measure.perimeter(np.pad(mask[_bounding_box(mask)], 1)))


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

    # Traced on the mask's bounding box with a ring of background: the same outline, shifted, and the descriptors
    # read only its steps.
    contours = measure.find_contours(np.pad(mask[_bounding_box(mask)], 1).astype(float), 0.5)
    contour = max(contours, key=len)
    coeffs = pyefd.elliptic_fourier_descriptors(contour, order=EFD_ORDER, normalize=True)
    return coeffs.ravel()[3:]  # the first three are fixed at 1, 0, 0 by normalisation


def _ring_features(grey: np.ndarray, mask: np.ndarray, region) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean grey profile from inside the otolith to its edge along the long axis, its spectrum, and its peak count."""
    from scipy import ndimage

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
    pooled = detail.reshape(PROFILE_FEATURES, -1).mean(axis=1)
    return pooled, spectrum, float(peak_count(detail, min_prominence=0.5))


def peak_count(values: np.ndarray, *, min_prominence: float) -> int:
    """How many peaks of a 1-D profile stand at least ``min_prominence`` above their surroundings: the number of
    peaks ``scipy.signal.find_peaks(values, prominence=min_prominence)`` finds (tests/test_morphometrics.py checks it
    on profiles with plateaus and ties).

    A peak is a sample (or the middle of a flat run, rounded down) higher than the samples on either side, the ends
    excluded; its prominence is its height above the higher of the lowest points on its two sides before a higher
    sample. Written out here because importing ``scipy.signal`` costs a new process about a second (a shard's or a
    command's), for a loop over 96 samples.
    """
    x = np.asarray(values, dtype=np.float64).tolist()
    last = len(x) - 1
    count, i = 0, 1
    while i < last:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < last and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                top = x[(i + ahead - 1) // 2]
                lowest = []
                for step in (-1, 1):  # the lowest sample on each side before one higher than the peak
                    j, low = (i + ahead - 1) // 2, top
                    while 0 <= j <= last and x[j] <= top:
                        low = min(low, x[j])
                        j += step
                    lowest.append(low)
                count += top - max(lowest) >= min_prominence
                i = ahead
        i += 1
    return count


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
