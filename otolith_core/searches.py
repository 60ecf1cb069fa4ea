"""Inner searches that share their work across the grid: a head's parameter chosen in one pass, not one fit per value.

``logistic_search``: multinomial logistic regression (scikit-learn's ``LogisticRegression`` objective, L2 penalty,
unpenalised intercept) solved along the grid of C, every inner split and the whole training set in the same matrix
products, each C warm-started from the one before. ``knn_search``: each row's nearest neighbours listed once
(:class:`CosineNeighbours`: found by float32 products, ordered by float64 distances, for a whole data set at once when
the scaling fits nothing), every inner split and every k read from those lists. Both choose as ``GridSearchCV`` does
(the first best mean score over the splits, in grid order) and are checked against it in the tests.

Why the logistic search is fast: the features are centred and rotated onto their principal axes (an exact change
of variables: the penalty is invariant under rotation and the intercept absorbs the centre), and L-BFGS runs on
variables rescaled by the approximate curvature of each axis, so a high C costs tens of iterations, not thousands;
products are in float32 once the logits are large enough for its rounding not to matter, one product serves every
split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SPLITS = list[tuple[np.ndarray, np.ndarray]]
# Each fit stops when its logits' error, as estimated from the preconditioned gradient, is below PRECISION of their
# spread; predictions then agree with a fit to full precision on all but the rare image lying on a class boundary
# (benchmarks/heads.py).
PRECISION = 3e-5
MAX_ITERATIONS = 3000  # per C; scikit-learn's head allowed 5000 plain L-BFGS iterations
HISTORY = 10  # L-BFGS memory
FLOAT32_SPREAD = 1.0  # logits spread at least this much: float32 products
CURVATURE = 0.1  # a softmax's curvature, as the preconditioner assumes it (the exact value changes only the speed)


@dataclass(frozen=True)
class LogisticSearch:
    """The outcome of :func:`logistic_search`."""

    scores: np.ndarray  # (n_splits, n_Cs) validation accuracy (balanced accuracy when weighted) of each split and C
    best: int  # index into Cs: the first highest mean score
    coef: np.ndarray  # (dim, n_classes) the model on the whole training set at the chosen C
    intercept: np.ndarray  # (n_classes,)
    classes: np.ndarray  # (n_classes,) sorted labels, the columns of ``coef``
    iterations: np.ndarray  # (n_Cs,) L-BFGS iterations at each C (the slowest problem of the batch)


def balanced_weights(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """``compute_sample_weight("balanced")``: ``n / (n_present_classes * count(class))`` for each image."""
    counts = np.bincount(codes, minlength=n_classes)
    present = int(np.count_nonzero(counts))
    return codes.size / (present * counts[codes].astype(np.float64))


def split_score(true: np.ndarray, pred: np.ndarray, *, balanced: bool) -> float:
    """Accuracy, or (``balanced``) scikit-learn's ``balanced_accuracy``: the mean recall over the true classes."""
    if not balanced:
        return float(np.mean(pred == true))
    labels = np.unique(true)
    return float(np.mean([np.mean(pred[true == c] == c) for c in labels]))


def first_best(scores: np.ndarray) -> int:
    """The grid index ``GridSearchCV`` chooses: the first highest mean over the splits (rows)."""
    return int(np.argmax(np.mean(scores, axis=0)))


def logistic_search(features: np.ndarray, labels: np.ndarray, splits: SPLITS, Cs: Sequence[float], *,
                    balanced: bool = False) -> LogisticSearch:
    """Choose C of a multinomial logistic regression by its validation score on ``splits``, and fit it on all rows.

    Parameters
    ----------
    features : ``(n, dim)`` training features (scaled as the head scales them).
    labels : ``(n,)`` class of each row; at least two classes.
    splits : the inner (train, validation) positions, from :func:`~otolith_core.heads.inner_splits`.
    Cs : inverse penalties, searched in ascending order (warm starts), reported in the given order.
    balanced : weight each row as ``class_weight="balanced"`` does (on each fit's own rows) and score by balanced
        accuracy, as ``GridSearchCV(LogisticRegression(class_weight="balanced"), scoring="balanced_accuracy")``.

    Returns
    -------
    :class:`LogisticSearch`: scores per split and C, the choice, and the model refitted at it on all rows (the
    whole-set fit rides along each C in the same products, so no refit is needed).
    """
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {classes.size} ({classes.tolist()})")
    X = np.asarray(features, dtype=np.float64)
    n = X.shape[0]
    k = classes.size
    centre = X.mean(axis=0)
    centred = X - centre
    eigenvalues, axes = principal_axes(centred)  # an exact rotation, and the curvature along each axis
    rotated = centred @ axes  # (n, r): r axes, fewer than the features when there are fewer rows
    problems = [train for train, _ in splits] + [np.arange(n)]  # every split's training rows, then all rows
    weights = np.zeros((len(problems), n))  # (P, n): a row's weight in each problem, 0 outside its training rows
    present = np.zeros((len(problems), k), dtype=bool)
    for p, rows in enumerate(problems):
        counts = np.bincount(codes[rows], minlength=k)
        present[p] = counts > 0
        weights[p, rows] = balanced_weights(codes[rows], k) if balanced else 1.0
    # scikit-learn fits two classes as one binomial model, which equals a two-column multinomial one at C / 2
    scale = np.where(present.sum(axis=1) == 2, 0.5, 1.0)
    # float32 products halve the cost, but where the logits are small (a small C, near-uniform probabilities) their
    # rounding decides near ties between ages: those Cs are solved in float64
    solvers = {dtype: _MultinomialL2(rotated.astype(dtype), codes, weights, present, eigenvalues)
               for dtype in (np.float64, np.float32)}
    order = np.argsort(Cs, kind="stable")
    scores = np.zeros((len(splits), len(Cs)))
    iterations = np.zeros(len(Cs), dtype=int)
    solutions = {}
    W = np.zeros((len(problems), axes.shape[1], k))
    b = np.zeros((len(problems), k))
    for i in order:
        spread = _logit_spread(W, b, eigenvalues, weights, present)
        W, b, iterations[i] = solvers[np.float32 if spread >= FLOAT32_SPREAD else np.float64].solve(
            float(Cs[i]) * scale, W, b)
        solutions[int(i)] = (W[-1].copy(), b[-1].copy())
        for s, (_, validation) in enumerate(splits):
            logits = centred[validation] @ (axes @ W[s]) + b[s]  # float64: at a small C the ages are near ties
            logits[:, ~present[s]] = -np.inf
            scores[s, i] = split_score(codes[validation], np.argmax(logits, axis=1), balanced=balanced)
    best = first_best(scores)
    W_best, b_best = solutions[best]
    coef = axes @ W_best  # back from the principal axes
    return LogisticSearch(scores, best, coef, b_best - centre @ coef, classes, iterations)


def principal_axes(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The principal axes of centred rows ``(n, dim)`` that the rows span: ``(eigenvalues (r,), axes (dim, r))``.

    With more features than rows (4,096 pixels of 150 photos) the rows span at most n - 1 axes. An L2-penalised
    model has no weight along the others at its optimum (the data never pull it there, the penalty keeps it at 0),
    so they are left out: the same model with r instead of dim variables per class. They are found from the
    ``(n, n)`` Gram matrix then, and from the ``(dim, dim)`` covariance otherwise.
    """
    n, dim = centred.shape
    if dim <= n:
        return np.linalg.eigh(centred.T @ centred)
    eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
    spanned = eigenvalues > max(eigenvalues.max(), 0.0) * n * np.finfo(np.float64).eps
    if not spanned.any():  # every row the same: one axis, along which nothing varies
        return np.zeros(1), np.eye(dim, 1)
    eigenvalues, vectors = eigenvalues[spanned], vectors[:, spanned]
    axes = centred.T @ vectors / np.sqrt(eigenvalues)  # unit vectors: the rows' directions along each axis
    return eigenvalues, axes


def _logit_spread(W: np.ndarray, b: np.ndarray, eigenvalues: np.ndarray, weights: np.ndarray,
                  present: np.ndarray) -> float:
    """The smallest root-mean-square spread of the logits about their mean among the problems (W on principal axes)."""
    share = weights.sum(axis=1) / weights.shape[1]
    spread = np.einsum("d,pdk->p", np.clip(eigenvalues, 0, None), W * W) * share / weights.sum(axis=1)
    centred_b = np.where(present, b - b.mean(axis=1, keepdims=True), 0.0)
    return float(np.sqrt(np.min(spread + np.sum(centred_b ** 2, axis=1))))


class _MultinomialL2:
    """L-BFGS on ``C * sum_i w_i * logloss_i + ||W||^2 / 2`` for P problems at once, all on the same rows.

    The problems differ in their row weights (0: not a training row of that problem) and the classes they hold; one
    float32 product ``rows @ [W_1 .. W_P]`` serves them all. Each problem's variables are scaled per principal axis
    by ``1 / sqrt(1 + C * CURVATURE * eigenvalue)``, so that L-BFGS starts from a well-scaled problem.
    """

    def __init__(self, rows: np.ndarray, codes: np.ndarray, weights: np.ndarray, present: np.ndarray,
                 eigenvalues: np.ndarray) -> None:
        self.rows, self.codes, self.present = rows, codes, present
        self.weights = weights.T.astype(rows.dtype)  # (n, P)
        self.totals = weights.sum(axis=1)  # (P,)
        self.eigenvalues = np.clip(eigenvalues, 0.0, None)
        self.n, self.dim = rows.shape
        self.k = present.shape[1]
        self.share = self.totals / self.n  # (P,) a problem's weight relative to all rows, for its curvature

    def solve(self, C: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Minimise each problem's objective at its own ``C`` (P,), from ``W`` (P, dim, k) and ``b`` (P, k)."""
        P, dim, k = W.shape
        C = np.asarray(C, dtype=np.float64)
        self._C = C
        self._D = 1.0 / np.sqrt(1.0 + (C * CURVATURE * self.share)[:, None] * self.eigenvalues[None, :])  # (P, dim)
        self._Db = 1.0 / np.sqrt(1.0 + C * CURVATURE * self.totals)  # (P,)
        U = np.where(self.present[:, None, :], W / self._D[:, :, None], 0.0)  # a class a problem lacks keeps 0
        x = np.concatenate([U.reshape(P, -1), np.where(self.present, b, 0.0) / self._Db[:, None]], axis=1)
        f, g = self._evaluate(x, np.arange(P))
        ring_s = np.zeros((HISTORY, P, x.shape[1]))  # the newest pairs, slot ``newest`` last written
        ring_y = np.zeros_like(ring_s)
        rho = np.zeros((HISTORY, P))  # 0: an empty slot, or a pair skipped (no curvature): it then has no effect
        gamma = np.ones(P)  # the initial inverse Hessian's scale, from the newest kept pair
        newest = -1
        active = ~self._converged(x, g, np.arange(P))
        iterations = 0
        while active.any() and iterations < MAX_ITERATIONS:
            idx = np.flatnonzero(active)
            rows = self._rows(idx)  # every problem still active: views, not copies of the ring
            order = [(newest - m) % HISTORY for m in range(min(iterations, HISTORY))]  # newest first
            direction = -_two_loop(g[rows], ring_s[:, rows], ring_y[:, rows], rho[:, rows], gamma[rows], order)
            slope = _dot(g[rows], direction)
            step = np.ones(idx.size) if iterations else np.minimum(1.0, 1.0 / np.sqrt(_dot(g[rows], g[rows])))
            new_f, new_g = np.empty(idx.size), np.empty((idx.size, x.shape[1]))
            searching = np.ones(idx.size, dtype=bool)
            for _ in range(30):  # backtracking (Armijo) line search, each problem its own step
                trial = np.flatnonzero(searching)
                f_t, g_t = self._evaluate(x[idx[trial]] + step[trial, None] * direction[trial], idx[trial])
                new_f[trial], new_g[trial] = f_t, g_t
                searching[trial[f_t <= f[idx[trial]] + 1e-4 * step[trial] * slope[trial]]] = False
                if not searching.any():
                    break
                step[searching] *= 0.5
            s = step[:, None] * direction
            y = new_g - g[rows]
            sy, yy = _dot(s, y), _dot(y, y)
            x[rows] += s
            f[rows], g[rows] = new_f, new_g
            newest = (newest + 1) % HISTORY
            keep = (sy > 1e-12 * yy) & ~searching  # a step with no decrease found in float32: as close as it gets
            ring_s[newest, rows], ring_y[newest, rows] = s, y
            rho[newest, rows] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
            gamma[rows] = np.where(keep, sy / np.where(keep, yy, 1.0), gamma[rows])
            active[rows] = ~self._converged(x[rows], g[rows], idx) & ~searching
            iterations += 1
        W = self._D[:, :, None] * x[:, :dim * k].reshape(P, dim, k)
        return W, self._Db[:, None] * x[:, dim * k:], iterations

    def _rows(self, which: np.ndarray) -> np.ndarray | slice:
        """``which`` (sorted problem numbers) to index the per-problem arrays with: every problem, a slice (views)."""
        return slice(None) if which.size == self.present.shape[0] else which

    def _converged(self, x: np.ndarray, g: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Whether the logits' error, as estimated from the gradient, is below ``PRECISION`` of their spread.

        With the preconditioned Hessian near identity, ``x - x* ~ -g``: the logits of a problem's rows move by
        about ``rows @ (D * g)``, whose squared norm the principal axes give without a product (``eigenvalues``).
        """
        P, dim, k = which.size, self.dim, self.k
        which = self._rows(which)
        D, Db = self._D[which][:, :, None], self._Db[which]
        spread_axes = self.eigenvalues[None, :, None] * self.share[which][:, None, None]
        W, gW = D * x[:, :dim * k].reshape(P, dim, k), D * g[:, :dim * k].reshape(P, dim, k)
        b, gb = Db[:, None] * x[:, dim * k:], Db[:, None] * g[:, dim * k:]
        error = np.einsum("pdk,pdk->p", spread_axes * gW, gW) + self.totals[which] * np.sum(gb * gb, axis=1)
        centred_b = np.where(self.present[which], b - b.mean(axis=1, keepdims=True), 0.0)
        spread = np.einsum("pdk,pdk->p", spread_axes * W, W) + self.totals[which] * np.sum(centred_b ** 2, axis=1)
        return error <= PRECISION ** 2 * spread

    def _evaluate(self, x: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective and gradient (in the preconditioned variables) of the problems ``which`` at ``x``."""
        P, dim, k, n = which.size, self.dim, self.k, self.n
        which = self._rows(which)
        D, Db, C = self._D[which][:, :, None], self._Db[which][:, None], self._C[which]
        W = D * x[:, :dim * k].reshape(P, dim, k)
        b = Db * x[:, dim * k:]
        stacked = np.ascontiguousarray(W.transpose(1, 0, 2).reshape(dim, P * k), dtype=self.rows.dtype)
        logits = (self.rows @ stacked).reshape(n, P, k)
        logits += b.astype(self.rows.dtype)
        absent = ~self.present[which]  # (P, k)
        logits[:, absent] = -np.inf
        top = logits.max(axis=2, keepdims=True)
        exp = np.exp(logits - top)
        total = exp.sum(axis=2)
        weights = self.weights[:, which]  # (n, P)
        true_logit = logits[np.arange(n), :, self.codes]  # (n, P); -inf where the row's class is not the problem's
        margin = np.where(weights > 0, np.log(total) + top[:, :, 0] - true_logit, 0.0)
        f = C * np.einsum("np,np->p", weights, margin, dtype=np.float64) + 0.5 * np.einsum("pdk,pdk->p", W, W)
        residual = exp / total[:, :, None]
        residual[np.arange(n), :, self.codes] -= 1.0
        residual *= (weights * C.astype(self.rows.dtype))[:, :, None]
        grad_W = (self.rows.T @ residual.reshape(n, P * k)).reshape(dim, P, k).transpose(1, 0, 2) + W
        grad_W *= D
        grad_W[np.broadcast_to(absent[:, None, :], grad_W.shape)] = 0.0
        grad_b = Db * residual.sum(axis=0, dtype=np.float64)
        return f, np.concatenate([grad_W.reshape(P, -1), grad_b], axis=1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (P, v) arrays."""
    return np.einsum("pv,pv->p", a, b)


def _two_loop(g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, gamma: np.ndarray,
              order: list[int]) -> np.ndarray:
    """L-BFGS's two-loop recursion for each problem (rows of ``g``): the ring's slots in ``order``, newest first."""
    q = g.copy()
    alphas = {}
    for m in order:
        alphas[m] = rho[m] * _dot(S[m], q)
        q -= alphas[m][:, None] * Y[m]
    q *= gamma[:, None]
    for m in reversed(order):
        q += (alphas[m] - rho[m] * _dot(Y[m], q))[:, None] * S[m]
    return q


def knn_search(neighbours: "CosineNeighbours", labels: np.ndarray, splits: SPLITS, ks: Sequence[int]) -> np.ndarray:
    """Validation accuracy ``(n_splits, n_ks)`` of cosine k-nearest-neighbour majority votes, for every k at once.

    The same votes as ``KNeighborsClassifier(k, metric="cosine", algorithm="brute")``: distances ``1 - cosine``
    (clipped at 0), the k nearest of the split's training rows, the most common class among them (a tie: the
    smallest class). Every split and every k reads the same neighbour lists.

    Parameters
    ----------
    neighbours : the rows' nearest among themselves (queries and candidates: the ``labels``' rows, in order), from
        :func:`cosine_neighbours` or a restriction of a larger table.
    labels : ``(n,)`` class of each row.
    splits : the inner (train, validation) positions.
    ks : the neighbour counts to score.
    """
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    if neighbours.queries.size != codes.size or neighbours.candidates.size != codes.size:
        raise ValueError(f"neighbour lists of {neighbours.queries.size} x {neighbours.candidates.size} rows do not "
                         f"line up with {codes.size} labels")
    scores = np.zeros((len(splits), len(ks)))
    for s, (train, validation) in enumerate(splits):
        allowed = np.zeros(codes.size, dtype=bool)
        allowed[train] = True
        m = min(max(ks), train.size)
        nearest = neighbours.nearest(m, queries=validation, allowed=allowed)  # (n_val, m), nearest first
        votes = majority_votes(codes[nearest], [min(k, m) for k in ks], classes.size)
        scores[s] = np.mean(votes == codes[validation][:, None], axis=0)
    return scores


def majority_votes(neighbour_codes: np.ndarray, ks: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_queries, n_ks)`` the most common class among each query's ``k`` nearest, for each k (a tie: the smallest
    class, as scikit-learn's ``KNeighborsClassifier`` breaks it), from ``(n_queries, >= max(ks))`` class codes of
    the neighbours, nearest first."""
    counts = np.cumsum(np.eye(n_classes, dtype=np.int32)[neighbour_codes], axis=1)  # (n_queries, m, n_classes)
    return np.stack([np.argmax(counts[:, k - 1], axis=1) for k in ks], axis=1)


def neighbour_depth(largest_k: int) -> int:
    """How many neighbours :func:`cosine_neighbours` lists per row for searches up to ``largest_k``: twice as many,
    so that the k nearest allowed ones are still listed when up to about half of a row's nearest are excluded (an
    inner validation split, the outer test fold, the row's own fish), plus a few for the completeness margin."""
    return 2 * int(largest_k) + 8


@dataclass(frozen=True)
class CosineNeighbours:
    """Each query row's nearest candidate rows by cosine distance, nearest first, as scikit-learn's ``"cosine"``
    metric measures it (``1 - cosine``, clipped at 0); :meth:`nearest` reads the k nearest among any subset of the
    candidates from them, exactly.

    The lists are found with float32 products and their distances recomputed in float64; ``complete_below`` bounds
    what the lists leave out, allowing for float32's rounding, so that a list's entries nearer than it are known to be
    the nearest of all candidates. Where a row's allowed entries run short of that, :meth:`nearest` computes the
    row in float64 (exact either way). :meth:`restrict` gives the same lists for a subset of the rows (an outer
    training fold), so one table computed on every image serves each fold and each inner split.
    """

    unit: np.ndarray  # (n_rows, dim) float64 rows scaled to unit length (zero rows stay zero); queries and candidates
    queries: np.ndarray  # (n_queries,) positions in ``unit``
    candidates: np.ndarray  # (n_candidates,) positions in ``unit``
    lists: np.ndarray  # (n_queries, depth) positions in ``candidates``, nearest first; -1: not a candidate (restricted)
    distances: np.ndarray  # (n_queries, depth) their float64 distances
    complete_below: np.ndarray  # (n_queries,) every candidate nearer than this is in the query's list

    def restrict(self, queries: np.ndarray, candidates: np.ndarray) -> "CosineNeighbours":
        """The table for a subset: ``queries`` (positions in this table's queries) among ``candidates`` (positions
        in this table's candidates); entries of other candidates become -1 gaps and the bounds stay."""
        queries, candidates = np.asarray(queries), np.asarray(candidates)
        renumber = np.full(self.candidates.size + 1, -1)  # the last slot maps -1 gaps to -1
        renumber[candidates] = np.arange(candidates.size)
        return CosineNeighbours(self.unit, self.queries[queries], self.candidates[candidates],
                                renumber[self.lists[queries]], self.distances[queries], self.complete_below[queries])

    def nearest(self, k: int, *, queries: np.ndarray | None = None, allowed: np.ndarray | None = None) -> np.ndarray:
        """``(n, k)`` the ``k`` nearest allowed candidates (positions in ``candidates``) of each query, nearest first.

        Parameters
        ----------
        k : how many; at most the number of allowed candidates.
        queries : positions in this table's queries (default: all of them, in order).
        allowed : ``(n_candidates,)`` bool, the candidates a query may take (default: all).
        """
        rows = np.arange(self.queries.size) if queries is None else np.asarray(queries)
        allowed = np.ones(self.candidates.size, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
        if not 1 <= k <= np.count_nonzero(allowed):
            raise ValueError(f"k = {k} neighbours asked of {np.count_nonzero(allowed)} allowed candidates")
        nearest = np.empty((rows.size, k), dtype=np.intp)
        certain = np.zeros(rows.size, dtype=bool)
        if k <= self.lists.shape[1]:
            lists, distances = self.lists[rows], self.distances[rows]
            usable = (lists >= 0) & allowed[lists]  # a gap (-1) reads the last candidate: masked by lists >= 0
            order = np.argsort(~usable, axis=1, kind="stable")[:, :k]  # usable entries first, in list order
            nearest[:] = np.take_along_axis(lists, order, axis=1)
            certain = (np.take_along_axis(usable, order, axis=1).all(axis=1)
                       & (np.take_along_axis(distances, order, axis=1)[:, -1] < self.complete_below[rows]))
        if not certain.all():  # lists too short for this subset: those rows computed in full
            uncertain = np.flatnonzero(~certain)
            nearest[uncertain] = _exact_nearest(self.unit, self.queries[rows[uncertain]],
                                                np.where(allowed, self.candidates, -1), k)
        return nearest


def cosine_neighbours(features: np.ndarray, *, depth: int, queries: np.ndarray | None = None,
                      candidates: np.ndarray | None = None, block: int = 1024) -> CosineNeighbours:
    """The ``depth`` nearest candidates of every query by cosine distance (:class:`CosineNeighbours`).

    Parameters
    ----------
    features : ``(n_rows, dim)``; the queries and candidates are its rows (any scale: cosine ignores it).
    depth : entries listed per query (:func:`neighbour_depth`); a self-table lists each row itself first.
    queries, candidates : positions in ``features`` (default: every row).
    block : query rows per float32 product (its similarities take ``4 * block * n_candidates`` bytes).
    """
    X = np.asarray(features, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))[:, None]
    unit = X / np.where(norms == 0, 1.0, norms)
    queries = np.arange(unit.shape[0]) if queries is None else np.asarray(queries)
    candidates = np.arange(unit.shape[0]) if candidates is None else np.asarray(candidates)
    n_c = candidates.size
    depth = min(int(depth), n_c)
    lists = np.empty((queries.size, depth), dtype=np.intp)
    distances = np.empty((queries.size, depth))
    complete_below = np.full(queries.size, np.inf)  # a list of every candidate leaves nothing out
    pool32 = unit[candidates].astype(np.float32)
    pool = unit[candidates]
    rounding = _similarity_rounding(unit.shape[1])
    for start in range(0, queries.size, block):
        rows = unit[queries[start:start + block]]
        similarity = rows.astype(np.float32) @ pool32.T  # (b, n_c)
        if depth < n_c:  # the top ``depth``, and the largest similarity left out in front of them
            part = np.argpartition(similarity, n_c - depth - 1, axis=1)[:, n_c - depth - 1:]
            left_out = np.take_along_axis(similarity, part[:, :1], axis=1)[:, 0].astype(np.float64)
            top = part[:, 1:]
            complete_below[start:start + block] = np.clip(1.0 - (left_out + rounding), 0.0, 2.0)
        else:
            top = np.broadcast_to(np.arange(n_c), (rows.shape[0], n_c))
        exact = np.empty(top.shape)
        for j in range(top.shape[1]):  # float64 similarity of each listed pair (a column at a time: contiguous rows)
            exact[:, j] = np.einsum("ij,ij->i", rows, pool[top[:, j]])
        distance = np.clip(1.0 - exact, 0.0, 2.0)
        order = np.lexsort((top, distance), axis=1)  # nearest first; equal distances: the earlier candidate
        lists[start:start + block] = np.take_along_axis(top, order, axis=1)
        distances[start:start + block] = np.take_along_axis(distance, order, axis=1)
    return CosineNeighbours(unit, queries, candidates, lists, distances, complete_below)


def _similarity_rounding(dim: int) -> float:
    """A bound on ``|float32 cosine - exact cosine|`` of two unit rows of ``dim`` (and the float64 one's error).

    Rounding the rows to float32 moves a product by at most ``2u`` and a float32 dot product of ``dim`` terms errs
    by at most ``gamma_dim * sum|x_i y_i| <= dim * u / (1 - dim * u)`` in any order of summation (Higham, *Accuracy
    and Stability of Numerical Algorithms*, 3.1), ``sum|x_i y_i| <= 1`` for unit rows; ``u = 2**-24``.
    """
    u32, u64 = 2.0 ** -24, 2.0 ** -53
    return 1.01 * ((dim + 3) * u32 + (dim + 3) * u64)


def _exact_nearest(unit: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int,
                   block: int = 256) -> np.ndarray:
    """``(n_queries, k)`` the ``k`` nearest ``candidates`` (positions in it) of each query by float64 cosine
    distance, nearest first (equal distances: the earlier candidate). ``queries`` and ``candidates`` are positions of
    unit rows in ``unit``; a candidate of -1 is skipped. Each block of queries is multiplied with all of ``unit`` (one
    pass over it, no copy of the candidates' rows), the candidates' columns then read from the product."""
    usable = np.flatnonzero(candidates >= 0)
    nearest = np.empty((queries.size, k), dtype=np.intp)
    for start in range(0, queries.size, block):
        similarity = unit[queries[start:start + block]] @ unit.T
        distance = np.clip(1.0 - similarity[:, candidates[usable]], 0.0, 2.0)
        top = (np.argpartition(distance, k - 1, axis=1)[:, :k] if k < usable.size
               else np.broadcast_to(np.arange(usable.size), distance.shape))
        order = np.lexsort((top, np.take_along_axis(distance, top, axis=1)), axis=1)
        nearest[start:start + block] = usable[np.take_along_axis(top, order, axis=1)]
    return nearest
