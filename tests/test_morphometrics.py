"""Otolith morphometrics on drawn photos of one otolith: bright on dark cloth or dark on light cloth,
the cloth textured and vignetted, perhaps dyed and lit by a band of light along one edge, the otolith
straight, banana or crescent shaped, whole or broken, inside the frame or cut by its edge."""

import numpy as np
import pytest
from PIL import Image

from otolith_core import morphometrics

FULL_SIZE = (5616, 3744)  # a 21 MP camera frame
TEST_SIZE = (936, 624)  # a sixth of it: still shrunk to WORK_SIDE, 36 times fewer pixels to draw
DRAW_SIDE = 1404  # shapes and shading are drawn at most this wide and enlarged; cloth weave and grain at full size
SHAPES = {
    "straight": {"bend": 0.0, "aspect": 0.3},
    "banana": {"bend": 1.0, "aspect": 0.2},
    "crescent": {"bend": 2.0, "aspect": 0.15, "blunt": True},  # its centroid lies outside it
}


def _smooth_noise(rng, shape, grid, amplitude):
    """A smooth random field, ``shape`` float32: noise on a ``grid`` of cells, enlarged bicubically."""
    coarse = Image.fromarray(rng.standard_normal(grid).astype(np.float32))
    return amplitude * np.asarray(coarse.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def draw_photo(*, size=TEST_SIZE, cloth="dark", bend=0.0, aspect=0.3, blunt=False, broken=False, at_edge=False,
               otolith=True, vignetting=0.45, falloff=2, seed=0):
    """A photo of one otolith on cloth, and the drawn otolith's mask ``(height, width)``.

    The otolith is a bright (dark cloth) or dark (light cloth) ellipse along a centre line that is
    straight or a circular arc, with a pale nucleus, six opaque/translucent zones and a crenulated
    edge; ``size`` is ``(width, height)``.

    bend : half the arc the centre line turns through, in radians (0 straight, 2 a crescent).
    aspect : half-width over half-length.
    blunt : rounded ends, as wide as the middle nearly to the tips (a crescent's centroid then falls outside it).
    broken : one end snapped off along a jagged line.
    at_edge : the otolith runs off the left edge of the frame.
    otolith : False draws the cloth alone.
    vignetting : the share of the light the corners lose; it falls off as the distance from the centre
        to the power ``falloff`` (2 is a quadratic surface, as the segmentation models it).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    step = max(1.0, width / DRAW_SIDE)
    w, h = round(width / step), round(height / step)
    a = 0.36 * w  # half-length along the centre line
    b = aspect * a
    angle = rng.uniform(-0.25, 0.25)
    reach = a if bend == 0 else a / bend * np.sin(min(bend, np.pi / 2))  # half the width the centre line spans
    mid_x = 0.75 * reach if at_edge else w / 2 + rng.uniform(-0.03, 0.03) * w
    mid_y = h / 2 + rng.uniform(-0.03, 0.03) * h + 0.35 * b * bend
    rows = (np.arange(h, dtype=np.float32) - mid_y)[:, None]
    cols = (np.arange(w, dtype=np.float32) - mid_x)[None, :]
    x = cols * np.cos(angle) + rows * np.sin(angle)
    y = -cols * np.sin(angle) + rows * np.cos(angle)
    if bend > 0:  # (u, v): arc length along the circular centre line, and offset from it
        radius = a / bend
        u = radius * np.arctan2(x, radius + y)
        v = radius - np.hypot(x, radius + y)
    else:
        u, v = x, y
    taper = 1.0 - 0.15 * np.clip(u / a, -1, 1)  # one end (the rostrum) more pointed
    t = np.arctan2(v, u)
    crenulation = 1.0 + 0.012 * np.cos(14 * t + rng.uniform(0, 6)) + 0.008 * np.cos(23 * t + rng.uniform(0, 6))
    rho = np.sqrt(np.abs(u / a) ** (4 if blunt else 2) + (v / (b * taper)) ** 2) / crenulation  # 1 on the outline
    inside = (rho <= 1.0) & otolith
    if broken:
        across = np.linspace(-1.2 * b, 1.2 * b, 64)
        jag = 0.7 * a + np.cumsum(rng.normal(0, 0.02 * a, across.size))
        inside &= u < np.interp(v, across, jag)
    zones = 0.5 + 0.5 * np.cos(2 * np.pi * 6 * np.sqrt(np.clip(rho, 0, 1)))
    dark = cloth == "dark"
    body = (160 if dark else 95) + (45 if dark else 30) * zones + 40 * np.exp(-(rho / 0.06) ** 2)
    body *= 1.0 - 0.2 * np.clip(rho, 0, 1) ** 4  # the thin rim lets the cloth show through
    mottle = _smooth_noise(rng, (h, w), (16, 24), 10) + _smooth_noise(rng, (h, w), (h // 6, w // 6), 6)
    grey = np.where(inside, body, (40 if dark else 205) + mottle).astype(np.float32)
    corner = np.hypot((np.arange(h)[:, None] - h / 2) / (h / 2), (np.arange(w)[None, :] - w / 2) / (w / 2)) / np.sqrt(2)
    grey *= 1.0 - vignetting * corner**falloff  # by default the corners get about half the light
    if step > 1:
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
        inside = np.asarray(Image.fromarray(inside).resize(size, Image.Resampling.NEAREST))
    weave = np.outer(np.sin(np.arange(height) * 0.45), np.sin(np.arange(width) * 0.45)).astype(np.float32)
    grain = rng.normal(0, 4, (256, 256)).astype(np.float32)
    grey = grey + 6 * weave * ~inside + np.tile(grain, (height // 256 + 1, width // 256 + 1))[:height, :width]
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB"), inside


def _work_mask(drawn: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A drawn mask shrunk to the working grey image's ``(height, width)``."""
    shrunk = Image.fromarray(drawn.astype(np.uint8) * 255).resize(shape[::-1], Image.Resampling.BILINEAR)
    return np.asarray(shrunk) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _centroid_is_inside(mask: np.ndarray) -> bool:
    cy, cx = np.argwhere(mask).mean(axis=0)
    return bool(mask[round(cy), round(cx)])


VARIANTS = [
    pytest.param(dict(cloth=cloth, **SHAPES[shape], broken=broken, at_edge=at_edge),
                 id=f"{cloth}-{shape}{'-broken' if broken else ''}{'-at_edge' if at_edge else ''}")
    for cloth in ("dark", "light") for shape in SHAPES for broken in (False, True) for at_edge in (False, True)
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_are_finite_for_every_kind_of_photo(variant):
    photo, drawn = draw_photo(**variant, seed=1)
    assert drawn[:, 0].any() == variant["at_edge"]  # the drawing is what the name says
    features = morphometrics.otolith_morphometrics(photo)
    assert features.shape == (morphometrics.MORPHOMETRICS_DIM,) and np.isfinite(features).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_mask_covers_the_drawn_otolith(variant):
    photo, drawn = draw_photo(**variant, seed=2)
    grey, _ = morphometrics._work_grey(photo)
    mask = morphometrics.segment_otolith(grey)
    assert _iou(mask, _work_mask(drawn, grey.shape)) >= 0.8


@pytest.mark.slow
def test_a_full_size_photo_of_a_broken_curved_otolith_is_measured():
    # The photo from the issue: bright, elongated, curved and broken, across half a 21 MP frame of
    # dark cloth, its centroid outside it.
    photo, drawn = draw_photo(size=FULL_SIZE, cloth="dark", **SHAPES["crescent"], broken=True, seed=3)
    assert not _centroid_is_inside(drawn)
    features = morphometrics.otolith_morphometrics(photo)
    assert features.shape == (morphometrics.MORPHOMETRICS_DIM,) and np.isfinite(features).all()
    grey, scale = morphometrics._work_grey(photo)
    assert max(grey.shape) == morphometrics.WORK_SIDE and scale == pytest.approx(FULL_SIZE[0] / morphometrics.WORK_SIDE)
    assert _iou(morphometrics.segment_otolith(grey), _work_mask(drawn, grey.shape)) >= 0.8


@pytest.mark.parametrize("cloth", ["dark", "light"])
def test_a_crescent_is_measured_from_a_start_inside_it(cloth):
    photo, drawn = draw_photo(cloth=cloth, **SHAPES["crescent"], seed=4)
    grey, _ = morphometrics._work_grey(photo)
    mask = morphometrics.segment_otolith(grey)
    assert not _centroid_is_inside(drawn) and not _centroid_is_inside(mask)
    row, col = morphometrics.find_ray_start(mask)
    assert mask[round(row), round(col)]
    assert np.isfinite(morphometrics.otolith_morphometrics(photo)).all()


def test_the_ray_start_is_well_inside_a_crescent_mask():
    from scipy import ndimage

    rows, cols = np.mgrid[0:300, 0:400]
    radius = np.hypot(rows - 60, cols - 200)
    crescent = (radius > 120) & (radius < 170) & (rows > 60)  # the lower half of a ring
    assert not _centroid_is_inside(crescent)
    row, col = morphometrics.find_ray_start(crescent)
    depth = ndimage.distance_transform_edt(crescent)
    assert crescent[round(row), round(col)] and depth[round(row), round(col)] >= 0.5 * depth.max()


def test_the_ray_start_is_the_centroid_of_a_convex_otolith():
    rows, cols = np.mgrid[0:200, 0:300]
    ellipse = ((cols - 140.3) / 110) ** 2 + ((rows - 97.6) / 50) ** 2 <= 1
    start = morphometrics.find_ray_start(ellipse)
    np.testing.assert_allclose(start, np.argwhere(ellipse).mean(axis=0))


@pytest.mark.parametrize("cloth", ["dark", "light"])
def test_cloth_with_no_otolith_is_named(cloth):
    photo, _ = draw_photo(cloth=cloth, otolith=False, seed=5)
    with pytest.raises(ValueError, match="^no otolith found"):
        morphometrics.otolith_morphometrics(photo)


@pytest.mark.parametrize("pixels", [
    np.random.default_rng(0).integers(10, 14, (64, 64, 3), dtype=np.uint8),  # faint: no contrast at all
    np.random.default_rng(1).integers(0, 256, (384, 512, 3), dtype=np.uint8),  # noise everywhere
    np.full((384, 512, 3), 128, dtype=np.uint8),
], ids=["faint", "noise", "flat"])
def test_a_blank_image_is_named(pixels):
    with pytest.raises(ValueError, match="^no otolith found"):
        morphometrics.otolith_morphometrics(Image.fromarray(pixels))


def test_segment_otolith_names_a_wrong_shape():
    with pytest.raises(ValueError, match=r"2-D array, got shape \(8, 8, 3\)"):
        morphometrics.segment_otolith(np.zeros((8, 8, 3)))


# The photos from the issue "a built-in extractor drops real photos": 3 of 31 real cod sections were
# rejected. A bright ringed otolith fills a third of the frame on dark blue textured cloth, with a
# bright yellow band of light along one edge.
ISSUE_SIZE = (1500, 1000)
DARK_BLUE = (0.6, 0.85, 2.0)  # per channel, times the cloth's grey: navy (about (24, 34, 80)), nearly as grey
BAND_YELLOW = (255, 225, 70)
GLARE_WHITE = (255, 255, 250)
THIRD_OF_FRAME = {"aspect": 0.5}  # the drawn half-length is 0.36 of the width: the ellipse covers 0.31 of a 3:2 frame


def band_weight(shape, band, band_width):
    """How much of a band of light along one edge each pixel gets, ``shape`` float in [0, 1].

    band : "top", "bottom", "left" or "right", the edge the band runs along.
    band_width : the band's depth from the edge as a share of the frame's shorter side; it varies by
        +-15% along the edge (the lamp is nearer one end) and fades out over a quarter of its depth.
    """
    from scipy.special import expit

    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    depth, along = {"top": (rows, cols / width), "bottom": (height - 1 - rows, cols / width),
                    "left": (cols, rows / height), "right": (width - 1 - cols, rows / height)}[band]
    reach = band_width * min(height, width)
    return expit((reach * (0.85 + 0.3 * along) - depth) / (0.25 * reach))


def light_photo(photo, drawn, *, dye=None, band=None, band_width=0.06, band_colour=BAND_YELLOW):
    """A drawn photo with its cloth dyed and a band of light along one edge (see ``band_weight``).

    dye : per-channel factors the cloth's pixels are multiplied by (None: left grey).
    band : the edge the band runs along (None: no band).
    band_colour : the band's colour where it is brightest (at the edge).
    """
    pixels = np.asarray(photo, dtype=np.float32)
    if dye is not None:
        pixels = np.where(drawn[..., None], pixels, pixels * np.asarray(dye, dtype=np.float32))
    if band is not None:
        weight = band_weight(drawn.shape, band, band_width)[..., None]
        pixels = pixels * (1 - weight) + np.asarray(band_colour, dtype=np.float32) * weight
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _assert_measures_the_drawn_otolith(photo, drawn, *, iou=0.9, length=0.03):
    """The extractor accepts the photo, its mask matches the drawing and its Feret length the drawn one."""
    features = morphometrics.otolith_morphometrics(photo)
    assert features.shape == (morphometrics.MORPHOMETRICS_DIM,) and np.isfinite(features).all()
    grey, _ = morphometrics._work_grey(photo)
    assert _iou(morphometrics.segment_otolith(grey), _work_mask(drawn, grey.shape)) >= iou
    drawn_length, _ = morphometrics._feret_length_width(np.argwhere(drawn))
    assert np.exp(features[2]) == pytest.approx(drawn_length, rel=length)  # features[2]: log Feret length


@pytest.mark.parametrize("band", ["top", "left"])  # along a long and a short edge (the others below)
def test_a_band_of_light_along_an_edge_is_not_cloth(band):
    photo, drawn = draw_photo(size=ISSUE_SIZE, **THIRD_OF_FRAME, seed=6)
    photo = light_photo(photo, drawn, dye=DARK_BLUE, band=band)
    _assert_measures_the_drawn_otolith(photo, drawn)


# Smaller photos from here on: all are measured at WORK_SIDE.
UNEVEN_LIGHT = {
    # corners at a fifth of the light, falling off faster than the quadratic surface models
    "strong-vignetting": dict(draw=dict(vignetting=0.8, falloff=4), light=dict(dye=DARK_BLUE, band="top")),
    "glare-band": dict(draw=dict(vignetting=0.7, falloff=3),
                       light=dict(dye=DARK_BLUE, band="bottom", band_width=0.12, band_colour=GLARE_WHITE)),
    "light-cloth-white-glare": dict(draw=dict(cloth="light"), light=dict(band="top", band_colour=GLARE_WHITE)),
    "light-cloth-yellow-band": dict(draw=dict(cloth="light"), light=dict(band="right")),
}


@pytest.mark.parametrize("light", UNEVEN_LIGHT.values(), ids=UNEVEN_LIGHT.keys())
def test_an_otolith_in_uneven_light_is_measured(light):
    photo, drawn = draw_photo(**THIRD_OF_FRAME, **light["draw"], seed=7)
    photo = light_photo(photo, drawn, **light["light"])
    _assert_measures_the_drawn_otolith(photo, drawn)


TOUCHING_BAND = dict(dye=DARK_BLUE, band="left", band_width=0.24)


def test_a_band_of_light_over_the_otolith_tip_is_cut_off_it():
    photo, drawn = draw_photo(**THIRD_OF_FRAME, seed=6)
    light = band_weight(drawn.shape, TOUCHING_BAND["band"], TOUCHING_BAND["band_width"])
    visible = drawn & (light < 0.5)
    assert visible.sum() < drawn.sum()  # the band covers the tip: what lies under it cannot be seen
    photo = light_photo(photo, drawn, **TOUCHING_BAND)
    grey, _ = morphometrics._work_grey(photo)
    assert not morphometrics.segment_otolith(grey)[:, 0].any()  # none of the band is taken for otolith
    # The band is cut a quarter deeper than it reaches along most of the edge (it may widen towards
    # its lamp), so a little of the otolith goes with it.
    _assert_measures_the_drawn_otolith(photo, visible, iou=0.85, length=0.08)


@pytest.mark.parametrize("light", [*UNEVEN_LIGHT.values(), dict(draw={}, light=TOUCHING_BAND)],
                         ids=[*UNEVEN_LIGHT.keys(), "wide-band"])
def test_cloth_in_uneven_light_with_no_otolith_is_named(light):
    photo, drawn = draw_photo(**light["draw"], otolith=False, seed=8)
    photo = light_photo(photo, drawn, **light["light"])
    with pytest.raises(ValueError, match="^no otolith found: nothing stands out from the background"):
        morphometrics.otolith_morphometrics(photo)


def test_measures_taken_on_the_masks_bounding_box_equal_those_over_the_whole_frame():
    """Filled holes, the ray start, the perimeter and the outline are measured on the mask's bounding box with a
    ring of background (a quarter less time a photo); on masks of every kind, touching the frame or not, with holes
    or in pieces, they equal the whole frame's, to the last bit."""
    import pyefd
    from scipy import ndimage
    from skimage import measure

    def ray_start_over_the_frame(mask):  # find_ray_start as it was, on the whole frame
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        deep = depth >= 0.5 * depth.max()
        cy, cx = np.argwhere(mask).mean(axis=0)
        if deep[round(cy), round(cx)]:
            return float(cy), float(cx)
        rows, cols = np.nonzero(deep)
        nearest = np.argmin((rows - cy) ** 2 + (cols - cx) ** 2)
        return float(rows[nearest]), float(cols[nearest])

    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = rng.integers(3, 48, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.95)
        if trial % 2:  # blobs with holes, rather than salt
            mask = ndimage.binary_opening(mask)
        if trial % 5 == 0:  # away from the frame's edges
            mask = np.pad(mask, int(rng.integers(1, 6)))
        if not mask.any():
            continue
        assert np.array_equal(morphometrics._fill_holes(mask), ndimage.binary_fill_holes(mask)), trial
        assert morphometrics.find_ray_start(mask) == ray_start_over_the_frame(mask), trial
        assert morphometrics._perimeter(mask) == measure.perimeter(mask), trial
        outline = max(measure.find_contours(np.pad(mask, 1).astype(float), 0.5), key=len)
        with np.errstate(all="ignore"):  # a mask of one or two pixels has a degenerate outline: NaN either way
            expected = pyefd.elliptic_fourier_descriptors(outline, order=morphometrics.EFD_ORDER, normalize=True)
            np.testing.assert_array_equal(morphometrics._efd_features(mask), expected.ravel()[3:], err_msg=str(trial))


def test_a_builtin_extractor_computes_with_one_blas_thread_and_leaves_the_setting_as_it_was():
    """NumPy's BLAS threads spin through the morphometrics' small least-squares fits: with 2 threads on 2 cores a
    demo photo cost 0.24 CPU-s against 0.13 with one, in the same wall time and with the same bits. A built-in
    extractor computes with one BLAS thread, then gives the caller's setting back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from otolith_core.encoders.builtin import BuiltinEncoder
    from otolith_core.encoders.registry import registry

    def blas_threads() -> int:
        return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

    seen = []

    def extractor(image: Image.Image) -> np.ndarray:
        seen.append(blas_threads())
        return np.zeros(3, dtype=np.float32)

    encoder = BuiltinEncoder(registry()["otolith-morphometrics"], extractor)
    image = Image.new("RGB", (64, 48))
    with threadpool_limits(2, user_api="blas"):
        assert blas_threads() == 2
        assert encoder.embed([image, image]).shape == (2, 3)
        assert blas_threads() == 2
    assert seen == [1, 1]


@pytest.mark.slow
def test_the_peak_count_is_scipys_find_peaks_with_a_prominence():
    """morphometrics.peak_count counts what ``scipy.signal.find_peaks(x, prominence=p)`` finds (it is written out
    so that extracting imports no scipy.signal): on noisy, stepped (flat runs and ties), wandering and three-level
    profiles, at prominences 0, 0.5 (the ring profile's) and 1."""
    from scipy import signal

    rng = np.random.default_rng(0)
    for trial in range(1200):
        n = int(rng.integers(3, 100))
        profile = [rng.normal(size=n), np.round(rng.normal(size=n) * 2) / 2, np.cumsum(rng.normal(size=n)),
                   rng.integers(0, 3, n).astype(float)][trial % 4]
        for prominence in (0.0, 0.5, 1.0):
            expected = len(signal.find_peaks(profile, prominence=prominence)[0])
            assert morphometrics.peak_count(profile, min_prominence=prominence) == expected, (profile, prominence)
