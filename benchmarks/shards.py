"""(k) Extraction in shards: ``otolith extract --shards N --executor ray`` (N Ray workers on a local Ray instance)
against one process extracting the same images, into fresh caches, on this machine.

The images are the synthetic demo (``--images``, default 400) and the encoder a random-weight ViT-S/16 at 224 px
saved as a ``local-dir:`` timm folder. The one process uses every core (torch's threads); each Ray worker one
core's share. Both are timed as a user runs them, from the command line: process start, model loading (once per
worker), the plan (hashing), the merge and, for Ray, starting the local instance. The scaling efficiency is the
speed-up divided by the workers; on a machine whose single process already uses every core it says how much the
sharding machinery costs, not what a cluster gains (there each shard has a node of its own).

    python benchmarks/shards.py [--images 400] [--workers 2] [--model vit_small_patch16_224]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _vit(folder: Path, architecture: str) -> str:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    args = {"num_classes": 0}
    save_for_hf(timm.create_model(architecture, pretrained=False, **args), str(folder), model_args=args,
                safe_serialization=True)
    return f"local-dir:{folder}"


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="vit_small_patch16_224")
    args = parser.parse_args()

    from otolith_core.demo import write_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_demo_dataset(root / "demo", n_images=args.images, seed=0)
        model = _vit(root / "vit", args.model)
        n = len(manifest.read_text().splitlines()) - 1
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        base = [sys.executable, "-m", "otolith_core.cli", "extract", "--data", str(manifest), "--model", model,
                "--device", "cpu"]
        one = _timed([*base, "--cache-dir", str(root / "one")], env)
        sharded = _timed([*base, "--cache-dir", str(root / "ray"), "--shards", str(args.workers), "--executor", "ray"],
                         env)
        local = _timed([*base, "--cache-dir", str(root / "local"), "--shards", str(args.workers)], env)
    cores = os.cpu_count()
    print(f"{n} images, {args.model} (random weights), {cores} cores, {args.workers} workers")
    print(f"one process (all cores):            {one:7.1f} s  ({n / one:5.1f} images/s)")
    for name, seconds in (("ray, local instance", sharded), ("local processes", local)):
        speedup = one / seconds
        print(f"{args.workers} shards, {name + ':':24s}{seconds:7.1f} s  ({n / seconds:5.1f} images/s)  speed-up "
              f"{speedup:4.2f}, scaling efficiency {speedup / args.workers:4.2f}")


if __name__ == "__main__":
    main()
