"""preset="llm-mri": each piece against an independent reference (pandas, scikit-learn, networkx).

The side-by-side run against the real LLM-MRI 0.2.1 is benchmarks/llm_mri_fidelity.py (it needs
its own venv and graphviz); these tests pin the pieces that make it match.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest

import llmri
from llmri.regions import grid_cells, orient
from llmri.store import scan_from_arrays
from test_regions import FirstColumns, synthetic_scan


@pytest.mark.parametrize("grid", [2, 3, 7, 10])
def test_llm_mri_binning_is_pandas_cut(grid):
    rng = np.random.default_rng(grid)
    Z = np.concatenate([rng.normal(size=(200, 2)), [[-3.0, 4.0], [5.0, -2.0]]])
    Z[:7] = np.round(Z[:7] * 2) / 2          # values on or near bin edges
    cells, _ = grid_cells(Z, grid, binning="llm-mri")
    for j in range(2):
        ref = pd.cut(Z[:, j], grid, labels=False)
        np.testing.assert_array_equal(cells[:, j], ref)


@pytest.mark.parametrize("grid", [2, 5, 10])
def test_a_constant_axis_is_one_cell_as_in_pandas(grid):
    Z = np.column_stack([np.full(9, 3.25), np.linspace(0, 1, 9)])
    for binning in ("floor", "llm-mri"):
        cells, _ = grid_cells(Z, grid, binning=binning)
        assert set(cells[:, 0]) == {int(pd.cut(Z[:, 0], grid, labels=False)[0])}


def test_a_layer_equal_up_to_rounding_is_one_cell(tmp_path):
    """First-token pooling at the embedding layer: every document the same, up to float noise."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=16).astype(np.float32)
    X0 = np.tile(base, (30, 1)) + rng.normal(scale=1e-7, size=(30, 16)).astype(np.float32)
    X1 = rng.normal(size=(30, 16))
    s = scan_from_arrays(tmp_path / "s", {"resid.0": X0, "resid.1": X1}, ["a"] * 15 + ["b"] * 15)
    for preset in (None, "llm-mri"):
        rm = llmri.regions(s, grid=10, preset=preset)
        assert len({tuple(c) for c in rm.cells(0)}) == 1
        g = llmri.nrag(rm, ["a"])
        assert len([v for v in g if v[0] == 0]) == 1   # one node at layer 0, not float-noise nodes


def test_scale_standardises_like_sklearn(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    s = synthetic_scan(tmp_path / "s")
    rm = llmri.regions(s, preset="llm-mri", layers=[2])
    ref = PCA(2).fit_transform(StandardScaler().fit_transform(s.activations(2)))
    # largest-positive orientation: the farthest document on each axis is on the positive side
    ref = ref * np.where(ref[np.abs(ref).argmax(0), [0, 1]] < 0, -1, 1)
    np.testing.assert_allclose(rm.coords(2), ref, atol=1e-5)
    cells = np.column_stack([pd.cut(ref[:, j], 10, labels=False) for j in range(2)])
    np.testing.assert_array_equal(rm.cells(2), cells)
    assert rm.preset == "llm-mri" and rm.scale and rm.binning == "llm-mri"


def test_orient_by_hand():
    Z = np.array([[1.0, -5.0], [-2.0, 1.0], [0.5, 2.0]])
    assert orient(Z, "largest-positive").tolist() == [-1.0, -1.0]
    assert orient(Z, "align", previous=-Z).tolist() == [-1.0, -1.0]
    assert orient(Z, "align", previous=Z).tolist() == [1.0, 1.0]
    assert orient(Z, "reducer").tolist() == [1.0, 1.0]


def test_preset_metrics_are_pandas_and_directed_weighted_networkx(tmp_path):
    s = synthetic_scan(tmp_path / "s", n_per=20)
    rm = llmri.regions(s, preset="llm-mri")
    g = llmri.nrag(rm, ["alpha"])
    m = llmri.graph_metrics(g)                       # the preset travels with the graph
    deg = pd.Series([d for _, d in g.degree()], dtype=float)
    strength = pd.Series([d for _, d in g.degree(weight="weight")], dtype=float)
    assert m["degree_var"] == pytest.approx(deg.var()) and m["degree_skew"] == pytest.approx(deg.skew())
    assert m["degree_kurtosis"] == pytest.approx(deg.kurt())
    assert m["strength_var"] == pytest.approx(strength.var()) and m["strength_kurtosis"] == pytest.approx(strength.kurt())
    assert m["assortativity"] == pytest.approx(nx.degree_assortativity_coefficient(g, weight="weight"))
    plain = llmri.graph_metrics(nx.DiGraph(g, preset=None))   # the graph without the preset
    assert plain["degree_var"] == pytest.approx(deg.var(ddof=0))
    with pytest.raises(llmri.LlmriError, match="preset 'x' is not one of llm-mri"):
        llmri.graph_metrics(g, preset="x")


def test_bad_preset_and_binning(tmp_path):
    s = synthetic_scan(tmp_path / "s", n_per=5)
    with pytest.raises(llmri.LlmriError, match="preset 'llmmri' is not one of llm-mri"):
        llmri.regions(s, preset="llmmri")
    with pytest.raises(llmri.LlmriError, match="binning 'round' is not one of floor, llm-mri"):
        llmri.regions(s, binning="round")
    with pytest.raises(llmri.LlmriError, match="signs 'up' is not one of"):
        llmri.regions(s, signs="up")


def test_evaluate_reduction_names_the_sign(tmp_path):
    s = synthetic_scan(tmp_path / "s", n_per=10)
    df = llmri.evaluate_reduction(s, llmri.regions(s, reducer=FirstColumns()))
    assert "reduced_minus_full" in df.columns and "delta" not in df.columns
    np.testing.assert_allclose(df["reduced_minus_full"], df["reduced"] - df["full"])
