"""Reduced precision per encoder: speed and embedding similarity of bf16/fp16 autocast against fp32.

Every torch entry of the registry (OpenCLIP and timm) is built at full size with random weights (no
download) and embeds the same images in fp32 and in each reduced precision the device offers (CPU: bf16;
CUDA: fp16 and bf16), each through the implementation the encoder picks for it (a plain CLIP ViT runs as
timm's twin under bf16; ``--both`` adds open_clip's own tower under bf16 for comparison). The registry's choice (config.yaml ``precision``) should be
the fastest precision whose minimum cosine to fp32 stays above the stated floor.

With ``--weights`` the encoders are loaded with their real weights instead (downloaded on first use,
or from the Hugging Face cache), the check that matters before trusting a reduced precision; any
encoder name the CLI takes works then (``local-dir:/path``, ``hf-hub:org/name``, ``ARCH:TAG``), and
``--images-from`` takes real photos (a folder or manifest, as ``--data``).

    python benchmarks/precision.py [--images 4] [--device cpu] [--models clip-vit-l-14-336,...]
                                   [--weights] [--images-from DATA]
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image

from otolith_core.data import load_dataset, load_image
from otolith_core.encoders import REDUCED_PRECISION_COSINE_FLOOR, TorchEncoder, load_encoder, registry, resolve_encoder
from otolith_core.encoders.loading import untrained_encoder


def timed(encoder, images) -> tuple[float, np.ndarray]:
    encoder.embed(images[:1])  # warm-up: kernels chosen, memory allocated
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    features = encoder.embed(images)
    return time.perf_counter() - start, features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", help="encoder names (default: every OpenCLIP entry of the registry)")
    parser.add_argument("--weights", action="store_true", help="load the real weights instead of random ones")
    parser.add_argument("--images-from", help="take the first --images photos of this folder or manifest")
    parser.add_argument("--both", action="store_true", help="also open_clip's own tower under bf16 (random weights)")
    args = parser.parse_args()
    if args.models:
        specs = [resolve_encoder(name) for name in args.models.split(",")]
    else:
        specs = [s for s in registry().values() if s.family != "builtin"]
    reduced = ["bf16"] if args.device == "cpu" else ["fp16", "bf16"]
    if args.images_from:
        images = [load_image(r) for r in load_dataset(args.images_from).records[: args.images]]
    else:
        rng = np.random.default_rng(0)
        images = [Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8)) for _ in range(args.images)]
    torch.manual_seed(0)
    print(f"device {args.device}, {len(images)} images per timing, {'real' if args.weights else 'random'} weights, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; cosine floor {REDUCED_PRECISION_COSINE_FLOOR}")
    for spec in specs:
        build = load_encoder if args.weights else untrained_encoder
        plain_encoder = build(spec, device=args.device, precision="fp32", batch_size=len(images))
        plain_s, plain = timed(plain_encoder, images)
        line = [f"{spec.name}: fp32 {len(images) / plain_s:.2f} img/s"]
        runs = [(p, build(spec, device=args.device, precision=p, batch_size=len(images))) for p in reduced]
        if args.both and spec.bf16_via_timm and not args.weights:
            runs.append(("bf16 open_clip tower", TorchEncoder(spec, plain_encoder.module, plain_encoder.transform,
                                                              device=args.device, batch_size=len(images),
                                                              precision="bf16", implementation="open_clip")))
        for label, encoder in runs:
            s, x = timed(encoder, images)
            cosine = np.sum(plain * x, 1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(x, axis=1)
            line.append(f"{label} [{encoder.implementation}] {len(images) / s:.2f} img/s (ratio to fp32 time "
                        f"{s / plain_s:.2f}, min cosine {cosine.min():.5f})")
        chosen = spec.precision.for_device(args.device)
        print("; ".join(line) + f"; registry chooses {chosen}", flush=True)


if __name__ == "__main__":
    main()
