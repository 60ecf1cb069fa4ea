"""(i) The heads with an inner search at the cod study's size: the whole logistic head (C chosen by a 5-fold inner CV in
every training fold, then refitted) against TEN plain fixed-C scikit-learn fits, and the whole knn head against ten
plain fixed-k fits and predictions, same data, same run.

Synthetic embeddings of the cod study's shape (8,637 x 1,152, ages 1..10, 10 folds), L2-scaled as by default, as in
``svc_gram.py``. Prints both sides' times, their ratio, the C and k chosen per fold, the CPU and the load.

    python benchmarks/heads.py [--n 8637] [--dim 1152] [--plain-folds 10] [--heads logistic,knn]
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize

from otolith_core.cross_validation import cross_validate_head
from otolith_core.folds import make_folds
from otolith_core.heads import HeadSpec


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--plain-folds", type=int, default=10, help="plain fits timed (scaled to ten when fewer)")
    parser.add_argument("--heads", default="logistic,knn")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ages = np.clip(np.round(rng.normal(6, 2, args.n)), 1, 10).astype(int)
    features = (rng.normal(size=(args.n, args.dim)) + 0.08 * ages[:, None] * rng.normal(size=args.dim)).astype(np.float32)
    folds, _ = make_folds(ages, n_folds=10, seed=0)
    X = normalize(features.astype(np.float64))
    print(f"data: {args.n} x {args.dim}, 10 folds, l2 scaling; CPU: {cpu_name()}, {os.cpu_count()} cores; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    for name in [h.strip() for h in args.heads.split(",") if h.strip()]:
        start = time.perf_counter()
        out = cross_validate_head(features, ages, folds, HeadSpec(name), n_jobs=1)
        ours = time.perf_counter() - start
        key = "C" if name == "logistic" else "k"
        chosen = [out.params[k][key] for k in range(10)]
        plain = []
        for k in range(args.plain_folds):
            test = folds == k
            start = time.perf_counter()
            if name == "logistic":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    LogisticRegression(C=1.0, max_iter=5000).fit(X[~test], ages[~test])
            else:
                KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(
                    X[~test], ages[~test]).predict(X[test])
            plain.append(time.perf_counter() - start)
        ten = 10 * float(np.mean(plain))
        reference = ("LogisticRegression(C=1, max_iter=5000).fit" if name == "logistic" else
                     "KNeighborsClassifier(5, cosine, brute).fit + predict of the test fold")
        print(f"\n{name}: ours, whole head, all 10 folds (inner search + refit): {ours:7.1f} s   "
              f"(chosen {key} per fold: {', '.join(f'{c:g}' for c in chosen)}; accuracy {np.mean(out.pred == ages):.3f})")
        print(f"{name}: ten plain fixed-{key} fits ({reference}; {args.plain_folds} timed, "
              f"{np.mean(plain):.1f} s each): {ten:7.1f} s")
        print(f"{name}: ratio ours / ten plain fits: {ours / ten:.2f}   (load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
