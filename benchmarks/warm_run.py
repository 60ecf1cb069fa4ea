"""(d) warm `otolith run` against a bare scikit-learn script, and (e) loading a cached matrix.

Makes 8,637 image files (tiny, distinct) and puts embeddings for `otolith-morphometrics` and
`pixels-32` straight into a fresh cache, so nothing needs extracting. Then, each as its own process
(start-up included):
  - ours:  otolith run --data manifest.csv --models otolith-morphometrics,pixels-32 --heads ridge --no-chart
  - bare:  numpy + scikit-learn: load the same two matrices from .npz, StratifiedKFold(10), Ridge(6) with
           the encoders' own scaling (none for these built-ins) and rounding, write predictions.csv.
and, in this process, the time to assemble one encoder's (8,637, 1,024) matrix from the cache.
With --full, both sides also evaluate the two encoders concatenated and a `length` covariate (alone and
appended to each of the three, standardised in each training fold): 7 ridge rows each; ours adds, as it
always does, the no-skill baseline, 1,000 bootstrap draws, per-age tables and the paired tests.

    python benchmarks/warm_run.py [--n 8637] [--rounds 3] [--full] [--keep DIR]
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
    full = sys.argv[2] == "full"
    data = [np.load(path) for path in sys.argv[4:]]
    y, images = data[0]["labels"], data[0]["paths"]
    length = pd.read_csv(sys.argv[3])["length"].to_numpy(float)[:, None]
    blocks = {path: d["features"].astype(float) for path, d in zip(sys.argv[4:], data)}
    if full:
        blocks["both"] = np.hstack(list(blocks.values()))
        blocks = {**blocks, "length": np.empty((len(y), 0)), **{f"{k} + length": v for k, v in blocks.items()}}
    rows = []
    for name, X in blocks.items():
        with_length = name.endswith("length")
        for k, (train, test) in enumerate(StratifiedKFold(10, shuffle=True, random_state=0).split(X, y)):
            def features(index):
                if not with_length:
                    return X[index]
                mean, sd = length[train].mean(), length[train].std()
                return np.hstack([X[index], (length[index] - mean) / sd])
            raw = Ridge(alpha=6.0).fit(features(train), y[train]).predict(features(test))
            pred = np.clip(np.rint(raw), y[train].min(), y[train].max()).astype(int)
            rows.append(pd.DataFrame({"encoder": name, "head": "ridge", "repeat": 0, "fold": k, "image": images[test],
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
    parser.add_argument("--full", action="store_true", help="also --combine the two and --covariates length")
    parser.add_argument("--keep", help="leave the data and cache in this folder (for profiling)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "img").mkdir()
        ages = np.clip(np.round(rng.normal(6, 2, args.n)), 1, 10).astype(int)
        lengths = 20 + 7 * ages + rng.normal(0, 5, args.n)
        lines = ["path,age,length"]
        for i, (age, length) in enumerate(zip(ages, lengths)):
            (tmp / "img" / f"{i:05d}.png").write_bytes(i.to_bytes(4, "little") * 64)
            lines.append(f"img/{i:05d}.png,{age},{length:.1f}")
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
            np.savez(tmp / f"{name}.npz", features=features, labels=ages, paths=np.array(dataset.ids))
            npz.append(str(tmp / f"{name}.npz"))

        start = time.perf_counter()
        loaded = extract_embeddings(dataset, registry()["pixels-32"], cache_dir=cache)
        load = time.perf_counter() - start
        assert loaded.n_extracted == 0 and loaded.features.shape == (args.n, 1024)

        (tmp / "bare.py").write_text(BARE)
        bares, ours_all = [], []
        full = ["--combine", "otolith-morphometrics,pixels-32", "--covariates", "length"] if args.full else []
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both alike
            bares.append(timed([sys.executable, str(tmp / "bare.py"), str(tmp / "bare.csv"),
                                "full" if args.full else "plain", str(tmp / "manifest.csv"), *npz]))
            ours_all.append(timed([sys.executable, "-m", "otolith_core.cli", "run", "--data", str(tmp / "manifest.csv"),
                                   "--models", "otolith-morphometrics,pixels-32", "--heads", "ridge", "--no-chart",
                                   *full, "--cache-dir", str(cache), "--out", str(tmp / "out")]))
        bare, ours = float(np.median(bares)), float(np.median(ours_all))
    print(f"images: {args.n}; cache matrix load (pixels-32, {args.n} x 1024): {load:.2f} s")
    rows = "7 rows (2 encoders, both, length alone and with each)" if args.full else "2 encoders"
    print(f"warm `otolith run`, {rows} x ridge, 10-fold, process start included: {ours:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t in ours_all)})")
    print(f"bare scikit-learn script, same CV and predictions.csv:                 {bare:6.2f} s "
          f"(median of {' '.join(f'{t:.2f}' for t in bares)})")
    print(f"ratio ours / bare: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
