"""The shared statistics (llmri.stats) against independent references: scipy's tests on the raw
values, and Benjamini-Hochberg worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, ttest_ind

from llmri.errors import LlmriError
from llmri.stats import (bh_q, category_vs_rest, category_vs_rest_from_stats, cohens_d, cohens_d_from_stats,
                         mannwhitney_p, mean_var_from_sums, welch_p, welch_p_from_stats)

# scipy's t-test warns about the constant column before it answers NaN (which welch_p makes 1)
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")


@pytest.fixture
def groups():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, size=(17, 5))
    y = rng.normal(0.0, 2.0, size=(40, 5))
    x[:, 4] = y[:, 4] = 3.0          # a constant column: no test, no effect
    return x, y


def test_bh_by_hand():
    # sorted p 0.01, 0.03, 0.04, 0.2 (m = 4): p * m / rank = 0.04, 0.06, 0.0533, 0.2; the running
    # minimum from the largest rank down gives 0.04, 0.0533, 0.0533, 0.2
    q = bh_q([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.2], rtol=1e-12)
    np.testing.assert_allclose(bh_q([0.5]), [0.5])
    np.testing.assert_allclose(bh_q([0.02, 0.03]), [0.03, 0.03])


def test_bh_leaves_untested_out():
    # the NaN is no test: the other two are corrected for m = 2 (0.01 * 2 / 1, 0.04 * 2 / 2)
    q = bh_q(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04], rtol=1e-12)
    assert np.isnan(bh_q([np.nan, np.nan])).all()


def test_welch_from_raw_values(groups):
    x, y = groups
    p = welch_p(x, y)
    for j in range(4):
        assert p[j] == pytest.approx(ttest_ind(x[:, j], y[:, j], equal_var=False).pvalue, rel=1e-12)
    assert p[4] == 1.0                 # scipy gives NaN for a constant column


def test_welch_from_summary_statistics_matches_raw_welch(groups):
    x, y = groups
    mx, vx = mean_var_from_sums(x.sum(0), (x ** 2).sum(0), len(x))
    my, vy = mean_var_from_sums(y.sum(0), (y ** 2).sum(0), len(y))
    np.testing.assert_allclose(mx, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(vx, x.var(0, ddof=1), rtol=1e-9, atol=1e-12)
    assert (vx >= 0).all() and (vy >= 0).all()     # rounding never makes a variance negative
    p = welch_p_from_stats(mx, vx, len(x), my, vy, len(y))
    want = ttest_ind(x[:, :4], y[:, :4], equal_var=False).pvalue
    np.testing.assert_allclose(p[:4], want, rtol=1e-8)
    assert p[4] == 1.0


def test_cohens_d_by_definition(groups):
    x, y = groups
    a, b = x[:, :4], y[:, :4]
    pooled = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1)) / (len(a) + len(b) - 2))
    d = cohens_d(x, y)
    np.testing.assert_allclose(d[:4], (a.mean(0) - b.mean(0)) / pooled, rtol=1e-12)
    assert d[4] == 0.0
    same = cohens_d_from_stats(x.mean(0), x.var(0, ddof=1), len(x), y.mean(0), y.var(0, ddof=1), len(y))
    np.testing.assert_array_equal(same, d)
    with pytest.raises(LlmriError, match="both groups"):
        cohens_d(x[:0], y)


def test_mann_whitney(groups):
    x, y = groups
    p = mannwhitney_p(x, y)
    for j in range(4):
        assert p[j] == mannwhitneyu(x[:, j], y[:, j], alternative="two-sided").pvalue
    assert p[4] == 1.0


def test_category_vs_rest_tables(groups):
    x, y = groups
    for test, p in (("welch", welch_p(x, y)), ("mannwhitney", mannwhitney_p(x, y))):
        t = category_vs_rest(x, y, test=test)
        assert list(t) == ["effect_size", "p_value", "mean_category", "mean_rest"]
        np.testing.assert_array_equal(t["effect_size"], cohens_d(x, y))
        np.testing.assert_array_equal(t["p_value"], p)
        np.testing.assert_array_equal(t["mean_category"], x.mean(0))
        np.testing.assert_array_equal(t["mean_rest"], y.mean(0))
    s = category_vs_rest_from_stats(x.mean(0), x.var(0, ddof=1), len(x), y.mean(0), y.var(0, ddof=1), len(y))
    assert list(s) == ["effect_size", "p_value", "mean_category", "mean_rest"]
    np.testing.assert_allclose(s["p_value"], category_vs_rest(x, y)["p_value"], rtol=1e-9)
    with pytest.raises(LlmriError, match="test 't' is not one of welch, mannwhitney"):
        category_vs_rest(x, y, test="t")
