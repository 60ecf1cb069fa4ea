"""(d) warm `otolith run` against a bare scikit-learn script, and (e) loading a cached matrix.

Makes 8,637 image files (tiny, distinct) and puts embeddings for `otolith-morphometrics` and
`pixels-32` straight into a fresh cache, so nothing needs extracting. Then, each as its own process
(start-up included):
  - ours:  otolith run --data manifest.csv --models otolith-morphometrics,pixels-32 --heads ridge --no-chart
  - bare:  numpy + scikit-learn: load the same two matrices from .npz, StratifiedKFold(10), Ridge(6) with
           L2 scaling and rounding, write predictions.csv.
and, in this process, the time to assemble one encoder's (8,637, 1,024) matrix from the cache.

    python benchmarks/warm_run.py [--n 8637] [--rounds 3] [--keep DIR]
"""

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from otolith_core.cache import EmbeddingStore
from otolith_core.data import load_dataset
from otolith_core.embeddings import extract_embeddings
from otolith_core.encoders import registry

BARE = textwrap.dedent("""
    import sys, numpy as np, pandas as pd
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import normalize
    rows = []
    for path in sys.argv[2:]:
        data = np.load(path)
        X, y, images = normalize(data["features"].astype(float)), data["labels"], data["paths"]
        for k, (train, test) in enumerate(StratifiedKFold(10, shuffle=True, random_state=0).split(X, y)):
            raw = Ridge(alpha=6.0).fit(X[train], y[train]).predict(X[test])
            pred = np.clip(np.rint(raw), y[train].min(), y[train].max()).astype(int)
            rows.append(pd.DataFrame({"encoder": path, "head": "ridge", "repeat": 0, "fold": k, "image": images[test],
                                      "true_age": y[test], "pred_age": pred, "pred_raw": raw}))
    pd.concat(rows).to_csv(sys.argv[1], index=False)
""")


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--rounds", type=int, default=3, help="timings of each, alternating; medians reported")
    parser.add_argument("--keep", help="leave the data and cache in this folder (for profiling)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "img").mkdir()
        ages = np.clip(np.round(rng.normal(6, 2, args.n)), 1, 10).astype(int)
        lines = ["path,age"]
        for i, age in enumerate(ages):
            (tmp / "img" / f"{i:05d}.png").write_bytes(i.to_bytes(4, "little") * 64)
            lines.append(f"img/{i:05d}.png,{age}")
        (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
        dataset = load_dataset(tmp / "manifest.csv")
        cache = tmp / "cache"
        npz = []
        for name in ("otolith-morphometrics", "pixels-32"):
            spec = registry()[name]
            store = EmbeddingStore(cache, spec)
            features = rng.normal(size=(args.n, spec.embed_dim)).astype(np.float32) + ages[:, None] * 0.01
            store.put_many(store.keys_for(dataset.records), features)
            store.close()
            np.savez(tmp / f"{name}.npz", features=features, labels=ages, paths=np.array(dataset.images))
            npz.append(str(tmp / f"{name}.npz"))

        start = time.perf_counter()
        loaded = extract_embeddings(dataset, registry()["pixels-32"], cache_dir=cache)
        load = time.perf_counter() - start
        assert loaded.n_extracted == 0 and loaded.features.shape == (args.n, 1024)

        (tmp / "bare.py").write_text(BARE)
        bares, ours_all = [], []
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both alike
            bares.append(timed([sys.executable, str(tmp / "bare.py"), str(tmp / "bare.csv"), *npz]))
            ours_all.append(timed([sys.executable, "-m", "otolith_core.cli", "run", "--data", str(tmp / "manifest.csv"),
                                   "--models", "otolith-morphometrics,pixels-32", "--heads", "ridge", "--no-chart",
                                   "--cache-dir", str(cache), "--out", str(tmp / "out")]))
        bare, ours = float(np.median(bares)), float(np.median(ours_all))
    print(f"images: {args.n}; cache matrix load (pixels-32, {args.n} x 1024): {load:.2f} s")
    print(f"warm `otolith run`, 2 encoders x ridge, 10-fold, process start included: {ours:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t in ours_all)})")
    print(f"bare scikit-learn script, same CV and predictions.csv:                 {bare:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t in bares)})")
    print(f"ratio ours / bare: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
