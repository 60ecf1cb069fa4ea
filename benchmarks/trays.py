"""(h) Trays: photos holding many otoliths, one crop box per manifest row, files on disk -> cached embeddings,
against a bare loop that decodes each photo once, cuts its boxes and runs the same extractor.

Trays are built here like a lab's: 8256 x 5504 (45 MP) JPEGs, 22 boxes of 560 x 387 on a 6 x 4 grid, each
holding a synthetic demo otolith, on a dark grainy field; the manifest lists a tray's boxes one row each, in
tray order (as a lab exports it). Two extractors: the built-in ``pixels-32`` (decoded at 1/4 scale: its boxes
allow it) and a random-weight ViT-Tiny/16 at 224 px saved as a ``local-dir:`` timm folder (decoded at full
scale: 387 px boxes are below its 448 px floor).

Ours is ``extract_embeddings`` into a fresh cache (file hashes, cache writes and decoding threads included).
The bare loop: for each photo, ``Image.open`` + ``draft`` at the same DCT scale + EXIF transpose + RGB, the
boxes cut, then ``encoder.embed`` on them in batches of the encoder's size, one thread. Both sides are timed
alternately, ``--repeats`` times, with the files already in the OS page cache; medians are printed.
``--before`` adds the path before trays were grouped (``load_image`` per row: a full decode for every box).

    python benchmarks/trays.py [--trays 8] [--repeats 3] [--models pixels-32,vit] [--device cpu] [--before]
    python benchmarks/trays.py --small     # 2 trays of 2064 x 1376, boxes 140 x 97: checks the script runs
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from otolith_core.data import load_dataset, load_image
from otolith_core.demo import _draw_fish, render_otolith
from otolith_core.embeddings import extract_embeddings
from otolith_core.encoders import decode_min_side, load_encoder, registry, resolve_encoder

FULL = {"size": (8256, 5504), "box": (560, 387)}
SMALL = {"size": (2064, 1376), "box": (140, 97)}
BOXES_PER_TRAY = 22


def write_trays(folder: Path, n_trays: int, size: tuple[int, int], box: tuple[int, int]) -> Path:
    """``n_trays`` tray JPEGs and their manifest (one row per box, a tray's rows together)."""
    rng = np.random.default_rng(0)
    width, height = size
    columns, rows = 6, 4
    cell_w, cell_h = width // columns, height // rows
    lines = ["path,age,fish_id,x0,y0,x1,y1"]
    for t in range(n_trays):
        coarse = (rng.random((height // 16, width // 16, 3)) * 40 + 10).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)).copy()
        field += rng.integers(0, 6, field.shape, dtype=np.uint8)  # grain: a real photo's JPEG is not tiny
        tray = Image.fromarray(field)
        for b in range(BOXES_PER_TRAY):
            age = int(rng.integers(1, 11))
            otolith = Image.fromarray(render_otolith(_draw_fish(age, rng), rng)).resize(box, Image.Resampling.BILINEAR)
            x0 = (b % columns) * cell_w + (cell_w - box[0]) // 2
            y0 = (b // columns) * cell_h + (cell_h - box[1]) // 2
            tray.paste(otolith, (x0, y0))
            lines.append(f"tray_{t:02d}.jpg,{age},T{t:02d}F{b:02d},{x0},{y0},{x0 + box[0]},{y0 + box[1]}")
        tray.save(folder / f"tray_{t:02d}.jpg", quality=92)
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def tiny_vit(folder: Path, device: str) -> str:
    """A random-weight ViT-Tiny/16 at 224 px as a ``local-dir:`` timm folder (as tests/conftest.py saves one)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    args = {"num_classes": 0}
    save_for_hf(timm.create_model("vit_tiny_patch16_224", pretrained=False, **args), str(folder), model_args=args,
                safe_serialization=True)
    return f"local-dir:{folder}"


def dct_scale(crops: list, min_side: int) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) keeping every box's shorter side >= ``min_side``."""
    smallest = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in crops)
    scale = 1
    while scale < 8 and smallest // (scale * 2) >= min_side:
        scale *= 2
    return scale


def bare_loop(dataset, encoder, min_side: int) -> tuple[float, np.ndarray]:
    """Each photo decoded once (same DCT scale as ours), its boxes cut, ``encoder.embed`` in batches."""
    start = time.perf_counter()
    by_photo: dict[Path, list] = {}
    for record in dataset.records:
        by_photo.setdefault(record.path, []).append(record.crop)
    out = []
    for path, crops in by_photo.items():
        with Image.open(path) as photo:
            scale = dct_scale(crops, min_side)
            if scale > 1:
                photo.draft("RGB", (-(-photo.width // scale), -(-photo.height // scale)))
            rgb = ImageOps.exif_transpose(photo).convert("RGB")
        boxes = [rgb.crop(tuple(round(c / scale) for c in crop)) for crop in crops]
        del rgb
        for i in range(0, len(boxes), encoder.batch_size):
            out.append(encoder.embed(boxes[i: i + encoder.batch_size]))
    return time.perf_counter() - start, np.concatenate(out)


def per_row_loop(dataset, encoder, min_side: int) -> float:
    """The path before: ``load_image`` for every row (a decode of the whole photo per box), then embed."""
    start = time.perf_counter()
    records = list(dataset.records)
    for i in range(0, len(records), encoder.batch_size):
        encoder.embed([load_image(r, min_side=min_side) for r in records[i: i + encoder.batch_size]])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trays", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="pixels-32,vit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--small", action="store_true", help="2 trays of 2064 x 1376: a quick check that it runs")
    parser.add_argument("--before", action="store_true", help="also time load_image per row (the path before)")
    args = parser.parse_args()
    shape = SMALL if args.small else FULL
    n_trays = 2 if args.small else args.trays
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        dataset = load_dataset(write_trays(tmp, n_trays, **shape))
        mb = sum(p.stat().st_size for p in tmp.glob("*.jpg")) / n_trays / 1e6
        print(f"{n_trays} trays of {shape['size'][0]} x {shape['size'][1]} ({mb:.1f} MB JPEG each), "
              f"{BOXES_PER_TRAY} boxes of {shape['box'][0]} x {shape['box'][1]} each: {len(dataset)} rows "
              f"(built in {time.perf_counter() - start:.0f} s)", flush=True)
        for path in tmp.glob("*.jpg"):
            path.read_bytes()  # into the page cache: both sides read warm files
        for name in args.models.split(","):
            spec = resolve_encoder(tiny_vit(tmp / "vit", args.device)) if name == "vit" else registry()[name]
            encoder = load_encoder(spec, device=args.device)
            min_side = decode_min_side(spec)
            ours_s, bare_s = [], []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                result = extract_embeddings(dataset, spec, cache_dir=tmp / f"cache-{name}-{repeat}", encoder=encoder)
                ours_s.append(time.perf_counter() - start)
                seconds, bare_x = bare_loop(dataset, encoder, min_side)
                bare_s.append(seconds)
            assert len(result.rows) == len(dataset), result.failures[:3]
            ours, bare = statistics.median(ours_s), statistics.median(bare_s)
            scale = dct_scale([r.crop for r in dataset.records], min_side)
            line = (f"(h) {name if name != 'vit' else 'ViT-Tiny/16 224 px (random weights)'} ({args.device}, batch "
                    f"{encoder.batch_size}, decoded at 1/{scale}): ours {ours:.2f} s ({len(dataset) / ours:.1f} boxes/s), "
                    f"bare loop {bare:.2f} s ({len(dataset) / bare:.1f} boxes/s), ratio {ours / bare:.2f} (goal <= 1.3); "
                    f"medians of {args.repeats}; largest difference to the bare loop's embeddings "
                    f"{np.abs(result.features - bare_x).max():.2g}")
            if args.before:
                before = per_row_loop(dataset, encoder, min_side)
                line += f"; before (load_image per row) {before:.2f} s = {before / ours:.1f}x ours"
            print(line, flush=True)


if __name__ == "__main__":
    main()
