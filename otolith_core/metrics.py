"""Age-reading metrics: arrays of true and predicted ages in, numbers out."""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "pm1_accuracy", "rmse", "mae", "ape", "cv", "macro_f1")
METRIC_LABELS = {"accuracy": "Accuracy", "pm1_accuracy": "±1 accuracy", "rmse": "RMSE (years)", "mae": "MAE (years)",
                 "ape": "APE (%)", "cv": "CV (%)", "macro_f1": "Macro-F1",
                 "rmse_raw": "RMSE of the unrounded prediction (years)"}
HIGHER_IS_BETTER = {"accuracy": True, "pm1_accuracy": True, "rmse": False, "mae": False, "ape": False, "cv": False,
                    "macro_f1": True}


def _pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"true and predicted ages need equal 1-d shapes, got {true.shape} and {pred.shape}")
    if true.size == 0:
        raise ValueError("no ages to score")
    return true, pred


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of exact age matches."""
    true, pred = _pair(true, pred)
    return float(np.mean(pred == true))


def pm1_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of predictions within one year of the reader's age."""
    true, pred = _pair(true, pred)
    return float(np.mean(np.abs(pred - true) <= 1))


def rmse(true: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error in years."""
    true, pred = _pair(true, pred)
    return float(np.sqrt(np.mean((pred - true) ** 2)))


def mae(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error in years."""
    true, pred = _pair(true, pred)
    return float(np.mean(np.abs(pred - true)))


def average_percent_error(true: np.ndarray, pred: np.ndarray) -> float:
    """Beamish & Fournier's APE between reader and model, two readings per fish, in per cent.

    Per fish ``100 * |a - b| / (a + b)`` (0 when both readings are 0), averaged over fish.
    """
    true, pred = _pair(true, pred)
    total = true + pred
    per_fish = np.divide(100.0 * np.abs(true - pred), total, out=np.zeros_like(total), where=total != 0)
    return float(per_fish.mean())


def coefficient_of_variation(true: np.ndarray, pred: np.ndarray) -> float:
    """Chang's CV between reader and model in per cent; with two readings per fish it is sqrt(2) * APE."""
    return float(np.sqrt(2.0) * average_percent_error(true, pred))


def macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Unweighted mean over ages of each age's F1, over every age that is read or predicted (as scikit-learn's
    ``f1_score(average="macro", zero_division=0)``): rare old fish weigh as much as common young ones."""
    true, pred = _pair(true, pred)
    ages = np.union1d(true, pred)
    hits = np.array([np.sum((true == a) & (pred == a)) for a in ages], dtype=float)
    totals = np.array([np.sum(true == a) + np.sum(pred == a) for a in ages], dtype=float)
    return float(np.mean(2 * hits / totals))  # every age occurs in one of the two, so no total is zero


def score(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All metrics of one fold, keyed as in ``METRICS``."""
    return {"accuracy": accuracy(true, pred), "pm1_accuracy": pm1_accuracy(true, pred),
            "rmse": rmse(true, pred), "mae": mae(true, pred),
            "ape": average_percent_error(true, pred), "cv": coefficient_of_variation(true, pred),
            "macro_f1": macro_f1(true, pred)}


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")
