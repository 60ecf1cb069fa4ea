"""(f) warm `otolith run --embeddings` from .npz files against a bare scikit-learn script.

Writes two .npz files (features (n, 1,152) float32, labels, paths), as `otolith extract --npz` does,
then times, each as its own process (start-up included), alternating:
  - ours:  otolith run --embeddings a=A.npz,b=B.npz --heads ridge --out DIR   (the default chart included)
  - bare:  the script of warm_run.py: load the same two .npz files, StratifiedKFold(10, shuffle, seed 0),
           L2 scaling, Ridge(6) rounded and clipped, write predictions.csv.
Besides wall-clock time it prints each side's CPU time (user + system of the process): on a machine
shared with other work the wall-clock ratio drifts, the CPU time much less.

    python benchmarks/warm_npz.py [--n 8637] [--dim 1152] [--rounds 5] [--keep DIR]
"""

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

import warm_run
from warm_run import BARE


def timed(command: list[str]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one process run, start-up included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = warm_run.timed(command)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=5, help="timings of each, alternating; medians reported")
    parser.add_argument("--keep", help="leave the .npz files and results in this folder (for profiling)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        ages = np.clip(np.round(rng.normal(6, 2, args.n)), 1, 10).astype(int)
        paths = np.array([f"img/{i:05d}.jpg" for i in range(args.n)])
        npz = {}
        for name in ("a", "b"):
            features = rng.normal(size=(args.n, args.dim)).astype(np.float32) + ages[:, None] * 0.01
            np.savez(tmp / f"{name}.npz", features=features, labels=ages, paths=paths)
            npz[name] = str(tmp / f"{name}.npz")
        (tmp / "bare.py").write_text(BARE)
        (tmp / "length.csv").write_text("length\n" + "0\n" * args.n)  # the bare script's covariate (unused here)
        bares, ours_all = [], []
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both alike
            bares.append(timed([sys.executable, str(tmp / "bare.py"), str(tmp / "bare.csv"), "plain",
                                str(tmp / "length.csv"), *npz.values()]))
            ours_all.append(timed([sys.executable, "-m", "otolith_core.cli", "run", "--embeddings",
                                   ",".join(f"{k}={v}" for k, v in npz.items()), "--heads", "ridge",
                                   "--out", str(tmp / "out")]))
        bare, ours = np.median(bares, axis=0), np.median(ours_all, axis=0)
    print(f"images: {args.n} x {args.dim}, 2 encoders from .npz")
    print(f"warm `otolith run --embeddings`, ridge, 10-fold, chart, process start included: {ours[0]:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t, _ in ours_all)}), CPU {ours[1]:.2f} s")
    print(f"bare scikit-learn script, same CV and predictions.csv:                         {bare[0]:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t, _ in bares)}), CPU {bare[1]:.2f} s")
    print(f"ratio ours / bare: {ours[0] / bare[0]:.2f} (CPU time: {ours[1] / bare[1]:.2f})")


if __name__ == "__main__":
    main()
