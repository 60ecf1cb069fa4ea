"""A deterministic synthetic otolith data set, so the whole pipeline runs with no download.

Each image is a dark field with one elongated, lobed otolith: a bright nucleus, then alternating
opaque (bright, summer) and translucent (dark, winter) zones whose count is the fish's age and whose
spacing shrinks with age (von Bertalanffy growth). Otolith size grows with age, with individual
variation; blur, noise, uneven lighting, rotation and position vary per photo. A few per cent of
reader ages are off by one, as with real readers, and some fish are photographed twice (``fish_id``).
Every reader age (the ``age`` column, the one the CV stratifies on) holds at least ``MIN_PER_AGE`` images: an
age that reader errors left short gets extra fish of that age, after the planned ones.
The manifest also carries fish covariates: total ``length`` (cm, from the same growth curve with
individual variation, so it tells age only roughly) and the ``month`` of capture.

Everything written here is labelled *synthetic demo*; it carries real ring and size signal but is not
otolith data.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_LABEL = "synthetic demo"
AGE_WEIGHTS = {1: 0.03, 2: 0.06, 3: 0.10, 4: 0.13, 5: 0.17, 6: 0.17, 7: 0.14, 8: 0.09, 9: 0.06, 10: 0.05}
MIN_PER_AGE = 12  # more than the 10 folds of the paper's CV in every age class
WIDTH, HEIGHT = 512, 384
GROWTH_K, GROWTH_T0 = 0.28, 0.6  # von Bertalanffy: L(t) = 1 - exp(-K (t + t0))
READER_ERROR_RATE = 0.05
SECOND_PHOTO_RATE = 0.12
MAX_LENGTH_CM = 110.0  # the growth curve's asymptotic fish length
DEMO_COLUMNS = ("path", "age", "fish_id", "length", "month", "true_age", "source")
DEMO_TRUTH_COLUMNS = ("true_age", "source", "flipped")
FLIP_MIN_YEARS = 3  # a deliberately wrong reader age (--flip) is this far from the fish's own  # what the drawing knows; never a covariate


@dataclass(frozen=True)
class DemoFish:
    """One fish of the demo: what its otolith shows and what the reader wrote down."""

    number: int  # F0001 ... in ``fish_id`` and its images' names; also seeds its own draws
    true_age: int  # the rings drawn
    photos: int
    reader_age: int  # the manifest's ``age`` (with ``--flip``, the wrong one)
    flipped_from: int | None = None  # the reader's age before ``--flip`` moved it


def plan_demo(n_images: int = 400, *, seed: int = 0, flip: int = 0) -> list[DemoFish]:
    """Every fish of the demo and its reader age, without drawing an image.

    Parameters
    ----------
    n_images : approximate number of images; each true age gets its share of ``AGE_WEIGHTS``, at least
        ``MIN_PER_AGE``.
    seed : the same seed always plans the same fish (and ``write_demo_dataset`` draws the same images).
    flip : this many fish get a reader age at least ``FLIP_MIN_YEARS`` away from their own.

    Returns
    -------
    list of DemoFish, in fish-number order. Every reader age holds at least ``MIN_PER_AGE`` images, with or
    without ``flip``: an age that reader errors left short gets extra fish of that age (numbered after the
    planned ones, one photo each, their readings drawn as for any fish), and only fish whose reader age keeps
    ``MIN_PER_AGE`` images without them are flipped, so ``flip`` never changes the images.
    """
    if n_images < MIN_PER_AGE * len(AGE_WEIGHTS):
        raise ValueError(f"n_images must be at least {MIN_PER_AGE * len(AGE_WEIGHTS)} (so every age fills 10 folds), got {n_images}")
    planned = _fish_plan(n_images, np.random.default_rng(seed))
    fish = [_planned_fish(seed, number, true_age, photos) for number, (true_age, photos) in enumerate(planned, start=1)]
    images = Counter()
    for one in fish:
        images[one.reader_age] += one.photos
    for age in AGE_WEIGHTS:
        while images[age] < MIN_PER_AGE:  # counts only grow, so an age filled earlier stays filled
            one = _planned_fish(seed, len(fish) + 1, age, 1)
            fish.append(one)
            images[one.reader_age] += 1
    # In a random order of the planned fish (then the extra ones), every fish whose reader age can spare its
    # photos; the first ``flip`` of them are flipped. The order is the one of earlier versions, so the same fish
    # are flipped wherever their ages can spare them.
    order = np.random.default_rng([seed, 99]).permutation(len(planned)).tolist() + list(range(len(planned), len(fish)))
    can_flip = []
    for index in order:
        if images[fish[index].reader_age] - fish[index].photos >= MIN_PER_AGE:
            images[fish[index].reader_age] -= fish[index].photos
            can_flip.append(index)
    if not 0 <= flip <= len(can_flip):
        raise ValueError(f"flip must be between 0 and {len(can_flip)} (the fish whose reader age keeps {MIN_PER_AGE} "
                         f"images without them), got {flip}")
    for index in can_flip[:flip]:
        one = fish[index]
        wrong = _flipped_age(one.reader_age, np.random.default_rng([seed, one.number, 2]))
        fish[index] = replace(one, reader_age=wrong, flipped_from=one.reader_age)
    return fish


def write_demo_dataset(out_dir: str | Path, *, n_images: int = 400, seed: int = 0, flip: int = 0) -> Path:
    """Write the synthetic set to ``out_dir`` and return the path of its ``manifest.csv``.

    Parameters
    ----------
    out_dir : folder to create (``images/`` and ``manifest.csv`` go inside).
    n_images : approximate number of images (every reader age gets at least ``MIN_PER_AGE``; see ``plan_demo``).
    seed : the same seed always writes the same images.
    flip : this many fish get a reader age at least ``FLIP_MIN_YEARS`` away from their own (all their photos),
        to try the Review page's doubtful ages; a ``flipped`` column marks them (and keeps the age before).
        The images are the same as without.
    """
    plan = plan_demo(n_images, seed=seed, flip=flip)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    # Each fish's photos are drawn from its own random stream, so the fish can be drawn side by side: numpy and
    # Pillow let go of the interpreter while they compute, and threads draw on every core (two: 6.4 -> 3.9 s for
    # 149 photos). The rows keep the plan's order.
    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        rows = [row for fish_rows in pool.map(lambda planned: _write_fish(out_dir, planned, seed, flip), plan)
                for row in fish_rows]
    manifest = out_dir / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(DEMO_COLUMNS) + (["flipped"] if flip else []))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "README.txt").write_text(
        f"This folder is a {DEMO_LABEL} written by `otolith demo` (seed {seed}).\n"
        "The images are drawn by a program: otolith-like shapes whose ring count is the age.\n"
        "They are not real otoliths; use them to try the tool, never to judge an encoder.\n",
        encoding="utf-8",
    )
    return manifest


def _write_fish(out_dir: Path, planned: DemoFish, seed: int, flip: int) -> list[dict]:
    """Draw and write one planned fish's photos into ``out_dir``; their manifest rows."""
    fish_rng = np.random.default_rng([seed, planned.number])
    fish, _ = _read_fish(planned.true_age, fish_rng)  # the plan's draws again, so the photos follow them
    length, month = _covariates(fish, np.random.default_rng([seed, planned.number, 1]))  # images stay as before
    flipped = {"flipped": "" if planned.flipped_from is None else planned.flipped_from} if flip else {}
    rows = []
    for photo in range(planned.photos):
        name = f"images/fish_{planned.number:04d}_{photo + 1}.jpg"
        pixels = render_otolith(fish, fish_rng)
        Image.fromarray(pixels).save(out_dir / name, quality=92)
        rows.append({"path": name, "age": planned.reader_age, "fish_id": f"F{planned.number:04d}", "length": length,
                     "month": month, "true_age": planned.true_age, "source": DEMO_LABEL, **flipped})
    return rows


def _fish_plan(n_images: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(true age, photos of that fish) for every planned fish, shuffled."""
    weights = np.array(list(AGE_WEIGHTS.values()))
    image_counts = np.maximum(MIN_PER_AGE, np.round(weights / weights.sum() * n_images)).astype(int)
    plan = []
    for age, count in zip(AGE_WEIGHTS, image_counts):
        remaining = int(count)
        while remaining > 0:
            photos = 2 if remaining >= 2 and rng.random() < SECOND_PHOTO_RATE else 1
            plan.append((age, photos))
            remaining -= photos
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def _planned_fish(seed: int, number: int, true_age: int, photos: int) -> DemoFish:
    """Fish ``number`` with its reader's age, drawn from the fish's own rng as ``write_demo_dataset`` draws it."""
    _, reader_age = _read_fish(true_age, np.random.default_rng([seed, number]))
    return DemoFish(number, true_age, photos, reader_age)


def _read_fish(true_age: int, rng: np.random.Generator) -> tuple[dict, int]:
    """A fish's otolith and the age its reader gives it (off by one at ``READER_ERROR_RATE``), from its own rng."""
    fish = _draw_fish(true_age, rng)
    reader_age = true_age
    if rng.random() < READER_ERROR_RATE:
        reader_age = int(np.clip(true_age + rng.choice([-1, 1]), 1, max(AGE_WEIGHTS)))
    return fish, reader_age


def _flipped_age(age: int, rng: np.random.Generator) -> int:
    """A wrong reader age, at least FLIP_MIN_YEARS from ``age``, inside the demo's ages."""
    far = [a for a in AGE_WEIGHTS if abs(a - age) >= FLIP_MIN_YEARS]
    return int(rng.choice(far))


def is_current(manifest: str | Path) -> bool:
    """Whether a demo manifest written earlier has this version's columns (an older one lacks the covariates)."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return tuple(header) == DEMO_COLUMNS


def _covariates(fish: dict, rng: np.random.Generator) -> tuple[float, int]:
    """Total length in cm (growth curve times individual variation) and month of capture of one fish."""
    length = MAX_LENGTH_CM * _growth(fish["age"] + fish["edge_growth"]) * rng.lognormal(0.0, 0.12)
    return round(float(length) * 2) / 2, int(rng.integers(1, 13))


def _growth(t: np.ndarray | float) -> np.ndarray | float:
    return 1.0 - np.exp(-GROWTH_K * (np.asarray(t) + GROWTH_T0))


def _draw_fish(age: int, rng: np.random.Generator) -> dict:
    """The otolith of one fish: its fixed shape, size and zone pattern."""
    edge_growth = rng.uniform(0.25, 0.75)  # part of the current year's zone already laid down
    size = _growth(age + edge_growth) / _growth(12.0)
    length = (70 + 250 * size) * rng.lognormal(0.0, 0.08)
    return {
        "age": age,
        "edge_growth": edge_growth,
        "half_length": length / 2,
        "aspect": rng.uniform(0.42, 0.56),
        "lobes": [(k, rng.uniform(0.005, 0.035), rng.uniform(0, 2 * np.pi)) for k in range(3, 10)],
        "opaque_fraction": rng.uniform(0.55, 0.7),
        "tint": rng.uniform(0.9, 1.0, size=3),
    }


def render_otolith(fish: dict, rng: np.random.Generator) -> np.ndarray:
    """One photo of a fish's otolith, ``(HEIGHT, WIDTH, 3)`` uint8."""
    from scipy import ndimage

    angle = rng.uniform(-0.5, 0.5) + (np.pi if rng.random() < 0.5 else 0.0)
    cy = HEIGHT / 2 + rng.uniform(-0.08, 0.08) * HEIGHT
    cx = WIDTH / 2 + rng.uniform(-0.08, 0.08) * WIDTH
    background = rng.uniform(0.04, 0.12)
    # A column and a row of coordinates, broadcast against each other: each pixel's numbers are those of full
    # (HEIGHT, WIDTH) grids, computed without them. The in-place steps below do the same arithmetic in the same
    # order too: the photos are unchanged to the bit (a quarter less time than before).
    rows = np.arange(HEIGHT, dtype=np.float32)[:, None]
    cols = np.arange(WIDTH, dtype=np.float32)[None, :]
    gradient = rng.uniform(-0.15, 0.15) * (cols / WIDTH - 0.5) + rng.uniform(-0.15, 0.15) * (rows / HEIGHT - 0.5)
    grey = np.full((HEIGHT, WIDTH), background, dtype=np.float32)

    # Only the otolith's bounding box (plus a blur margin) needs the expensive drawing.
    reach = fish["half_length"] * 1.1 + 8
    top, bottom = int(max(cy - reach, 0)), int(min(cy + reach, HEIGHT))
    left, right = int(max(cx - reach, 0)), int(min(cx + reach, WIDTH))
    box = (slice(top, bottom), slice(left, right))
    dy, dx = rows[box[0]] - cy, cols[:, box[1]] - cx
    x = dx * np.cos(angle) + dy * np.sin(angle)
    y = -dx * np.sin(angle) + dy * np.cos(angle)
    a, b = fish["half_length"], fish["half_length"] * fish["aspect"]
    phi = np.arctan2(y / b, x / a)
    lobes = np.zeros_like(phi)
    for k, amp, phase in fish["lobes"]:
        wave = np.multiply(k, phi)
        wave += phase
        np.cos(wave, out=wave)
        wave *= amp
        lobes += wave
    lobes = 1.0 + lobes
    rho = np.hypot(x / a, y / b) / lobes  # 0 at the nucleus, 1 on the outline

    # Age at each radius, by inverting the growth curve; the fractional part picks the zone.
    full = _growth(fish["age"] + fish["edge_growth"])
    t = -np.log(np.clip(1.0 - np.clip(rho, 0, 1) * full, 1e-9, None)) / GROWTH_K - GROWTH_T0
    zone = ndimage.gaussian_filter((np.mod(t, 1.0) < fish["opaque_fraction"]).astype(np.float32), 1.2)
    body = 0.52 + 0.30 * zone
    body += 0.35 * np.exp(-(rho / 0.07) ** 2)  # nucleus
    body *= 1.0 - 0.25 * np.clip(rho, 0, 1) ** 4  # thinner, darker rim
    inside = ndimage.gaussian_filter((rho <= 1.0).astype(np.float32), 1.0)
    grey[box] = ndimage.gaussian_filter(background + inside * (body - background), rng.uniform(0.6, 1.6))
    grey *= 1.0 + gradient  # uneven lighting
    grey += rng.normal(0.0, rng.uniform(0.015, 0.035), grey.shape).astype(np.float32)
    rgb = grey[..., None] * fish["tint"][None, None, :]
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= 255
    np.round(rgb, out=rgb)
    return rgb.astype(np.uint8)


def is_synthetic_demo(records) -> bool:
    """Whether ``records`` (``ImageRecord``) were written by :func:`write_demo_dataset`, wherever they now lie: its
    manifest's ``source`` column names it."""
    return any(r.metadata.get("source") == DEMO_LABEL for r in records[:5])
