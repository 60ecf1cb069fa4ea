"""(a) extraction, files on disk -> cached embeddings, against a bare decode + transform + forward loop;
(b) reduced-scale JPEG decoding against full decoding: speed and embedding similarity;
(c) with ``--precision bf16``: the same extraction in bf16 against fp32, both through the real loading path
    (a ``local-dir:`` OpenCLIP folder written here), so a plain CLIP ViT runs as timm's twin under bf16;
    ``--old-bf16`` adds the path before that change (open_clip's own tower under bf16 autocast; slow).

Random-weight image towers of the real architectures (no download): ViT-B-32 and ViT-L-14-336.
Images are >= 20 MP JPEGs written here. Both sides use the same batch size and the model's own
transform; the bare loop decodes every image in full, one after the other, then runs the model.

    python benchmarks/extraction.py [--images 16] [--models ViT-B-32,ViT-L-14-336-quickgelu] [--device cpu]
                                    [--precision fp32] [--old-bf16]

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
from otolith_core.encoders import TorchEncoder, decode_min_side, default_batch_size, load_encoder, resolve_encoder
from otolith_core.encoders.open_clip_models import build_transform, open_clip_tower

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

    return open_clip_tower(open_clip.get_model_config(spec.model_id)).eval().to(device)


def save_local_dir(spec, visual, folder: Path) -> str:
    """The random tower as an OpenCLIP ``local-dir:`` folder (config + the ``visual.*`` tensors)."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    pre = spec.preprocessing
    config = {"model_cfg": open_clip.get_model_config(spec.model_id),
              "preprocess_cfg": {"mean": pre.mean, "std": pre.std, "interpolation": pre.interpolation,
                                 "resize_mode": pre.resize_mode}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({f"visual.{k}": v.detach().cpu().contiguous() for k, v in visual.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def timed_extraction(dataset, spec, encoder, cache: Path):
    start = time.perf_counter()
    result = extract_embeddings(dataset, spec, cache_dir=cache, encoder=encoder)
    return time.perf_counter() - start, result.features


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


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
    parser.add_argument("--old-bf16", action="store_true", help="(c): also open_clip's own tower under bf16")
    parser.add_argument("--skip-bare", action="store_true", help="(c) only: no bare loop, no (a) row")
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
            local = resolve_encoder(save_local_dir(spec, visual, tmp / f"model-{arch}"))
            run = dict(device=args.device, batch_size=batch)
            if not args.skip_bare:
                encoder = TorchEncoder(spec, visual, build_transform(spec.preprocessing), precision=args.precision,
                                       implementation="open_clip", **run)
                bare_s, bare_x = bare_loop(dataset, visual, build_transform(spec.preprocessing), batch, args.device)
                ours_s, ours_x = timed_extraction(dataset, spec, encoder, tmp / f"cache-{arch}")
                print(f"(a) {arch} ({args.device}, {args.precision}, batch {batch}, {args.images} images, decode >= "
                      f"{decode_min_side(spec)} px): ours {ours_s:.1f} s ({args.images / ours_s:.2f} img/s), "
                      f"bare loop {bare_s:.1f} s ({args.images / bare_s:.2f} img/s), ratio {ours_s / bare_s:.2f}; "
                      f"cosine to the bare loop's embeddings: min {cosines(ours_x, bare_x).min():.4f}")
            if args.precision != "bf16":
                continue
            fp32 = load_encoder(local, precision="fp32", **run)
            fp32_s, fp32_x = timed_extraction(dataset, local, fp32, tmp / f"c32-{arch}")
            new = load_encoder(local, precision="bf16", **run)
            new_s, new_x = timed_extraction(dataset, local, new, tmp / f"c16-{arch}")
            line = (f"(c) {arch} local-dir ({args.device}, batch {batch}, {args.images} images, torch threads "
                    f"{torch.get_num_threads()}): fp32 ({fp32.implementation}) {args.images / fp32_s:.2f} img/s; "
                    f"bf16 ({new.implementation}) {args.images / new_s:.2f} img/s = {fp32_s / new_s:.2f}x fp32, "
                    f"cosine to fp32 min {cosines(new_x, fp32_x).min():.5f}")
            if args.old_bf16:
                old = TorchEncoder(local, fp32.module, fp32.transform, precision="bf16", implementation="open_clip", **run)
                old_s, old_x = timed_extraction(dataset, local, old, tmp / f"cold-{arch}")
                line += (f"; before (bf16, open_clip's tower) {args.images / old_s:.2f} img/s = {fp32_s / old_s:.2f}x "
                         f"fp32, new/before {old_s / new_s:.1f}x, cosine min {cosines(old_x, fp32_x).min():.5f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
