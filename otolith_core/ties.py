"""Which models cannot be told apart from the best one, metric by metric.

Ten models whose intervals overlap are not a ranking. Per metric (accuracy and ±1 accuracy: highest mean is best;
RMSE: lowest), the best model is compared with every other model by the corrected paired t-test over folds
(Nadeau & Bengio, ``corrected_t`` in ttests.csv); those p-values, one per other model, are Holm-adjusted together,
and a model whose adjusted p-value exceeds the level (0.05 by default) is *tied with the best*: the test cannot tell
it from the best. The best is tied with itself. Everything here is recomputable from summary.csv and ttests.csv.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from .metrics import HIGHER_IS_BETTER
from .stats import holm_adjust

TIE_LEVEL = 0.05
TIE_TEST = "corrected_t"  # the test of ttests.csv the ties are read from
TIED_METRICS = ("accuracy", "pm1_accuracy", "rmse")
TIE_SENTENCE = ("cannot be told apart from the best at level {level:g} (corrected paired t-test against the best "
                "model, Holm-corrected over the comparisons with it); ten models whose intervals overlap are not a "
                "ranking")


def tied_column(metric: str) -> str:
    """The summary column that marks, for ``metric``, the models tied with the best: ``accuracy_tied_with_best``."""
    return f"{metric}_tied_with_best"


def check_level(level: float) -> float:
    """``level`` as a float when it is a usable test level (strictly between 0 and 1); ValueError naming it if not."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"tie level must be a number between 0 and 1, got {level!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"tie level must be between 0 and 1 (exclusive), got {level!r}")
    return value


def best_model(means: Mapping[tuple[str, str], float], metric: str) -> tuple[str, str]:
    """The (encoder, head) with the best mean of ``metric`` (highest, or lowest for RMSE); the first in order on an
    exact tie of means (the other is then tied with it, as their fold scores cannot differ in mean)."""
    if metric not in TIED_METRICS:
        raise ValueError(f"ties are marked for {list(TIED_METRICS)}, not {metric!r}")
    if not means:
        raise ValueError("no models to choose the best from")
    models = list(means)
    values = np.array([means[m] for m in models], dtype=float)
    if np.isnan(values).all():
        raise ValueError(f"no model has a mean {metric}")
    return models[int(np.nanargmax(values) if HIGHER_IS_BETTER[metric] else np.nanargmin(values))]


def tied_with_best(means: Mapping[tuple[str, str], float], tests: pd.DataFrame, metric: str, *,
                   level: float = TIE_LEVEL) -> dict[tuple[str, str], bool]:
    """Per model, whether it cannot be told apart from the best on ``metric``.

    Parameters
    ----------
    means : ``{(encoder, head): mean of metric over folds}`` of every model (never the no-skill baseline), in table
        order.
    tests : ``Comparison.tests_frame()`` (ttests.csv): its ``corrected_t`` rows of ``metric`` between the best and
        each other model are used, their ``p_value`` (not ``p_holm``, which adjusts over every pair).
    level : a model is tied when its Holm-adjusted p-value is above this (not rejected at this level).

    Returns
    -------
    ``{(encoder, head): bool}`` in the order of ``means``; the best is True. A pair whose fold differences are all
    equal has no p-value (zero variance): tied when they are all zero, told apart otherwise (its t is infinite).
    """
    level = check_level(level)
    best = best_model(means, metric)
    rows = tests[(tests["test"] == TIE_TEST) & (tests["metric"] == metric)]
    against: dict[tuple[str, str], tuple[float, float]] = {}  # other model -> (p value, mean difference)
    for row in rows.itertuples(index=False):
        a, b = (row.encoder_a, row.head_a), (row.encoder_b, row.head_b)
        if best in (a, b):
            against[b if a == best else a] = (float(row.p_value), float(row.mean_diff))
    others = [m for m in means if m != best]
    missing = [m for m in others if m not in against]
    if missing:
        raise ValueError(f"no {TIE_TEST} test of {metric} between the best model {best} and {missing}")
    adjusted = holm_adjust(np.array([against[m][0] for m in others], dtype=float))
    tied = {best: True}
    for model, p in zip(others, adjusted):
        tied[model] = bool(against[model][1] == 0.0) if np.isnan(p) else bool(p > level)
    return {m: tied[m] for m in means}
