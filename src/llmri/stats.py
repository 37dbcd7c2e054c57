"""Statistics shared by every analysis that compares a category with the rest: effect sizes,
tests and Benjamini-Hochberg q-values.

:func:`category_vs_rest` builds the columns of the table that ``neurons``, ``compare_heads``
and ``feature_activations`` return (``effect_size``, ``p_value``, ``mean_category``,
``mean_rest``) from the two groups' values, :func:`category_vs_rest_from_stats` from their
means, variances and sizes; :func:`bh_q` then adjusts every p-value of the table at once.

>>> cohens_d(np.array([[1.0], [2.0]]), np.array([[0.0], [1.0]]))        # doctest: +SKIP
array([1.41421356])
>>> bh_q(np.array([0.01, 0.04, 0.03, 0.2]))                             # doctest: +SKIP
array([0.04      , 0.05333333, 0.05333333, 0.2       ])

scipy is imported by the functions that run a test, not by this module.
"""

from __future__ import annotations

import numpy as np

from .errors import LlmriError

TESTS = ("welch", "mannwhitney")


def cohens_d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cohen's d of every column, (mean_x - mean_y) / pooled SD; 0 where the SD is 0."""
    nx_, ny = len(x), len(y)
    if nx_ < 1 or ny < 1:
        raise LlmriError("effect size: both groups need documents")
    vx = x.var(0, ddof=1) if nx_ > 1 else np.zeros(x.shape[1])
    vy = y.var(0, ddof=1) if ny > 1 else np.zeros(y.shape[1])
    return cohens_d_from_stats(x.mean(0), vx, nx_, y.mean(0), vy, ny)


def cohens_d_from_stats(mean_x, var_x, n_x, mean_y, var_y, n_y) -> np.ndarray:
    """Cohen's d from each group's mean, variance (ddof=1) and size; 0 where the pooled SD is 0."""
    dof = max(n_x + n_y - 2, 1)
    pooled = np.sqrt(((n_x - 1) * var_x + (n_y - 1) * var_y) / dof)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pooled > 0, (mean_x - mean_y) / pooled, 0.0)


def mean_var_from_sums(total, total_sq, n):
    """Mean and variance (ddof=1) of a group from its sum, sum of squares and size; a variance
    that rounding makes negative is 0."""
    mean = total / n
    return mean, np.maximum(total_sq - n * mean ** 2, 0) / (n - 1)


def _finite_or_one(p) -> np.ndarray:
    """A test that could not be computed (a constant column: NaN) counts as no evidence, p = 1."""
    return np.where(np.isfinite(p), p, 1.0)


def welch_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Welch's t-test (unequal variances) of every column; 1 where undefined."""
    from scipy.stats import ttest_ind

    with np.errstate(invalid="ignore", divide="ignore"):
        p = ttest_ind(x, y, equal_var=False).pvalue
    return _finite_or_one(p)


def welch_p_from_stats(mean_x, var_x, n_x, mean_y, var_y, n_y) -> np.ndarray:
    """:func:`welch_p` from each group's mean, variance (ddof=1) and size."""
    from scipy.stats import ttest_ind_from_stats

    with np.errstate(invalid="ignore", divide="ignore"):
        p = ttest_ind_from_stats(mean_x, np.sqrt(var_x), n_x, mean_y, np.sqrt(var_y), n_y, equal_var=False).pvalue
    return _finite_or_one(p)


def mannwhitney_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the Mann-Whitney U test of every column; 1 where a column is constant."""
    from scipy.stats import mannwhitneyu

    p = np.ones(x.shape[1])
    for j in range(x.shape[1]):
        a, b = x[:, j], y[:, j]
        if np.ptp(np.concatenate([a, b])) != 0:
            p[j] = mannwhitneyu(a, b, alternative="two-sided").pvalue
    return _finite_or_one(p)


def category_vs_rest(inside: np.ndarray, rest: np.ndarray, test: str = "welch") -> dict[str, np.ndarray]:
    """One row per column of ``inside`` and ``rest`` (``[documents, units]``, the category's
    documents and all the others): ``effect_size`` (Cohen's d, pooled SD), ``p_value`` (``test``:
    ``"welch"``, Welch's t-test, or ``"mannwhitney"``, two-sided Mann-Whitney U), ``mean_category``
    and ``mean_rest``, as a dict of columns for ``pandas.DataFrame``. Add ``q_value`` with
    :func:`bh_q` over every row of the finished table.

    >>> pd.DataFrame({"neuron": np.arange(X.shape[1]), **category_vs_rest(X[inside], X[~inside])})  # doctest: +SKIP
    """
    if test not in TESTS:
        raise LlmriError(f"test {test!r} is not one of {', '.join(TESTS)}")
    d = cohens_d(inside, rest)
    p = welch_p(inside, rest) if test == "welch" else mannwhitney_p(inside, rest)
    return {"effect_size": d, "p_value": p, "mean_category": inside.mean(0), "mean_rest": rest.mean(0)}


def category_vs_rest_from_stats(mean_in, var_in, n_in, mean_rest, var_rest, n_rest) -> dict[str, np.ndarray]:
    """:func:`category_vs_rest` (Welch's t-test) from each group's per-unit mean, variance (ddof=1)
    and size, for statistics accumulated in one pass (see :func:`mean_var_from_sums`)."""
    return {"effect_size": cohens_d_from_stats(mean_in, var_in, n_in, mean_rest, var_rest, n_rest),
            "p_value": welch_p_from_stats(mean_in, var_in, n_in, mean_rest, var_rest, n_rest),
            "mean_category": mean_in, "mean_rest": mean_rest}


def bh_q(p) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values) of every test in ``p`` together.

    A NaN p-value (no test) stays NaN and does not count among the tests the others are
    corrected for, as in R's ``p.adjust``.
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        q[tested] = false_discovery_control(p[tested], method="bh")
    return q
