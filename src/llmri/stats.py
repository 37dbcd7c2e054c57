"""Statistics shared by every analysis that compares a category with the rest: effect sizes,
tests and Benjamini-Hochberg q-values.

>>> cohens_d(np.array([[1.0], [2.0]]), np.array([[0.0], [1.0]]))        # doctest: +SKIP
array([1.41421356])
"""

from __future__ import annotations

import numpy as np

from .errors import LlmriError


def cohens_d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cohen's d of every column, (mean_x - mean_y) / pooled SD; 0 where the SD is 0."""
    nx_, ny = len(x), len(y)
    if nx_ < 1 or ny < 1:
        raise LlmriError("effect size: both groups need documents")
    vx = x.var(0, ddof=1) if nx_ > 1 else np.zeros(x.shape[1])
    vy = y.var(0, ddof=1) if ny > 1 else np.zeros(y.shape[1])
    dof = max(nx_ + ny - 2, 1)
    pooled = np.sqrt(((nx_ - 1) * vx + (ny - 1) * vy) / dof)
    diff = x.mean(0) - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pooled > 0, diff / pooled, 0.0)
