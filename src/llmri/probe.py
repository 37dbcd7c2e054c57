"""Probes: cross-validated linear classifiers on activations, and the full-vs-reduced evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .errors import LlmriError


def interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of per-fold scores."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2 or v.std(ddof=1) == 0:
        return m, m, m
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def folds(labels: np.ndarray, cv: int, seed: int):
    """Stratified, shuffled folds; ``cv`` is lowered to the smallest class size when needed."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise LlmriError("a probe needs at least two categories with documents")
    k = min(cv, int(counts.min()))
    if k < 2:
        raise LlmriError(f"every category needs at least 2 documents for cross-validation "
                         f"(smallest has {int(counts.min())})")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels))


def fold_accuracies(X: np.ndarray, y: np.ndarray, splits) -> np.ndarray:
    """Accuracy of a standardised logistic regression on each (train, test) split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs = []
    for train, test in splits:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(X[train], y[train])
        accs.append(float((clf.predict(X[test]) == y[test]).mean()))
    return np.asarray(accs)


def evaluate_reduction(scan, regions, cv: int = 5, seed: int = 0) -> pd.DataFrame:
    """Probe accuracy on full activations vs region-map coordinates, per layer and overall.

    Columns: ``layer``, ``full``, ``reduced``, ``delta`` (= reduced - full; mean accuracy over
    folds) and ``*_low``/``*_high`` 95% confidence bounds over folds. The last row
    (``layer == "all"``) averages the layers fold by fold.
    """
    y = np.asarray(regions.labels)
    splits = folds(y, cv, seed)
    rows, per_fold = [], []
    for L in regions.layers:
        full = fold_accuracies(scan.activations(L, regions.site), y, splits)
        reduced = fold_accuracies(regions.coords(L), y, splits)
        per_fold.append((full, reduced))
        rows.append(_row(L, full, reduced))
    full_all = np.mean([f for f, _ in per_fold], axis=0)
    red_all = np.mean([r for _, r in per_fold], axis=0)
    rows.append(_row("all", full_all, red_all))
    return pd.DataFrame(rows)


def _row(layer, full, reduced) -> dict:
    row = {"layer": layer}
    for name, v, lo, hi in (("full", full, 0, 1), ("reduced", reduced, 0, 1), ("delta", reduced - full, -1, 1)):
        m, low, high = interval(v)
        row[name], row[f"{name}_low"], row[f"{name}_high"] = m, max(lo, low), min(hi, high)
    return row
