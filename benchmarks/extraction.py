"""(a) extraction, files on disk -> cached embeddings, against a bare decode + transform + forward loop;
(b) reduced-scale JPEG decoding against full decoding: speed and embedding similarity.

Random-weight image towers of the real architectures (no download): ViT-B-32 and ViT-L-14-336.
Images are >= 20 MP JPEGs written here. Both sides use the same batch size and the model's own
transform; the bare loop decodes every image in full, one after the other, then runs the model.

    python benchmarks/extraction.py [--images 16] [--models ViT-B-32,ViT-L-14-336-quickgelu] [--device cpu]
                                    [--precision fp32]

``--precision`` applies to our pipeline only (the bare loop is fp32), e.g. ``--device cuda --precision
fp16`` for the registry's CLIP choice on a GPU; the cosine line then shows what the precision costs.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from otolith_core.data import load_dataset, load_image
from otolith_core.embeddings import extract_embeddings
from otolith_core.feature_extractor import OpenClipEncoder, build_transform, decode_min_side, default_batch_size
from otolith_core.registry import resolve_encoder

SIZE = (5472, 3648)  # 20 MP, a common camera body


def write_photos(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines = ["path,age"]
    for i in range(n):
        pixels = (rng.random((SIZE[1] // 8, SIZE[0] // 8, 3)) * 50).astype(np.uint8)
        photo = Image.fromarray(pixels).resize(SIZE, Image.Resampling.BILINEAR)
        photo.paste((200, 190, 170), (1500 + 10 * i, 1000, 4000, 2600))
        photo.save(folder / f"p{i:03d}.jpg", quality=92)
        lines.append(f"p{i:03d}.jpg,{1 + i % 10}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def tower(spec, device):
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(spec.model_id)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=bool(cfg.get("quick_gelu"))).eval().to(device)


def bare_loop(dataset, visual, transform, batch: int, device: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = []
    records = list(dataset.records)
    for i in range(0, len(records), batch):
        images = [transform(load_image(r)) for r in records[i: i + batch]]
        with torch.inference_mode():
            out.append(visual(torch.stack(images).to(device)).float().cpu().numpy())
    return time.perf_counter() - start, np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14-336-quickgelu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = load_dataset(write_photos(tmp, args.images))
        record = dataset.records[0]
        start = time.perf_counter()
        full = load_image(record)
        t_full = time.perf_counter() - start
        start = time.perf_counter()
        small = load_image(record, min_side=672)
        t_small = time.perf_counter() - start
        print(f"(b) one {SIZE[0]}x{SIZE[1]} JPEG: full decode {t_full * 1000:.0f} ms -> {full.size}; "
              f"reduced-scale decode {t_small * 1000:.0f} ms -> {small.size}; ratio {t_small / t_full:.2f}")
        for arch in args.models.split(","):
            tag = {"ViT-B-32": "openai", "ViT-L-14-336-quickgelu": "openai"}.get(arch, "openai")
            spec = resolve_encoder(f"{arch}:{tag}")
            visual = tower(spec, args.device)
            batch = default_batch_size(args.device)
            encoder = OpenClipEncoder(spec, visual, args.device, batch, args.precision)
            transform = build_transform(spec.preprocessing)
            bare_s, bare_x = bare_loop(dataset, visual, transform, batch, args.device)
            start = time.perf_counter()
            ours = extract_embeddings(dataset, spec, cache_dir=tmp / f"cache-{arch}", encoder=encoder)
            ours_s = time.perf_counter() - start
            cosine = np.sum(ours.features * bare_x, axis=1) / (
                np.linalg.norm(ours.features, axis=1) * np.linalg.norm(bare_x, axis=1))
            print(f"(a) {arch} ({args.device}, {args.precision}, batch {batch}, {args.images} images, decode >= "
                  f"{decode_min_side(spec)} px): ours {ours_s:.1f} s ({args.images / ours_s:.2f} img/s), "
                  f"bare loop {bare_s:.1f} s ({args.images / bare_s:.2f} img/s), ratio {ours_s / bare_s:.2f}; "
                  f"cosine to the bare loop's embeddings: min {cosine.min():.4f}")


if __name__ == "__main__":
    main()
