"""(c) The paper's SVC: our 10-fold run (precomputed Gram) against ONE fold of plain scikit-learn.

Synthetic embeddings of the cod study's size (8,637 x 1,152), L2-scaled as by default; also checks that
the plain SVC and ours predict the same ages on that fold, and times our folds in one process against
folds in worker processes (what ``fold_workers`` picks on this machine).

    python benchmarks/svc_gram.py [--n 8637] [--dim 1152]
"""

import argparse
import time

import numpy as np
from sklearn.preprocessing import normalize
from sklearn.svm import SVC

from otolith_core.cross_validation import cross_validate_head, fold_workers
from otolith_core.folds import make_folds
from otolith_core.heads import HeadSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--dim", type=int, default=1152)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ages = np.clip(np.round(rng.normal(6, 2, args.n)), 1, 10).astype(int)
    features = (rng.normal(size=(args.n, args.dim)) + 0.08 * ages[:, None] * rng.normal(size=args.dim)).astype(np.float32)
    folds, _ = make_folds(ages, n_folds=10, seed=0)

    workers = fold_workers(HeadSpec("svc"), args.n, 10)
    start = time.perf_counter()
    pred = cross_validate_head(features, ages, folds, HeadSpec("svc")).pred
    ours = time.perf_counter() - start
    start = time.perf_counter()
    serial = cross_validate_head(features, ages, folds, HeadSpec("svc"), n_jobs=1).pred
    one_process = time.perf_counter() - start
    assert np.array_equal(serial, pred)

    test = folds == 0
    X = normalize(features.astype(np.float64))
    start = time.perf_counter()
    plain = SVC(kernel="linear", C=0.1).fit(X[~test], ages[~test]).predict(X[test])
    one_fold = time.perf_counter() - start

    same = float(np.mean(plain == pred[test]))
    print(f"data: {args.n} x {args.dim}, 10-fold, SVC(kernel='linear', C=0.1), l2 scaling")
    print(f"ours, all 10 folds (precomputed Gram): {ours:8.1f} s  ({workers} worker processes)")
    print(f"  the same folds in one process:       {one_process:8.1f} s  (ratio {ours / one_process:.2f})")
    print(f"plain scikit-learn, one fold:          {one_fold:8.1f} s")
    print(f"ratio ours(10 folds) / plain(1 fold):  {ours / one_fold:8.2f}")
    print(f"identical predictions on fold 0:       {same:.1%}")


if __name__ == "__main__":
    main()
