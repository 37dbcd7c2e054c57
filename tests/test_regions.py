"""Regions, NRAGs, metrics, the permutation test and the full-vs-reduced evaluation."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np
import pytest
from scipy.stats import spearmanr

import llmri
from llmri.metrics import projection_stats
from llmri.store import scan_from_arrays


def synthetic_scan(path, n_per=30, n_layers=3, dim=12, seed=0, constant_dim=False):
    """Three categories with different means, growing apart with depth."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n_per)
    centers = rng.normal(size=(3, dim)) * 3
    acts = {}
    for L in range(n_layers + 1):
        X = rng.normal(size=(len(labels), dim)) + centers[labels] * (L + 1) / (n_layers + 1)
        if constant_dim:
            X[:, 0] = 1.0
        acts[f"resid.{L}"] = X
    texts = [f"doc {i} of {['alpha', 'beta', 'gamma'][lab]}" for i, lab in enumerate(labels)]
    return scan_from_arrays(path, acts, labels, ["alpha", "beta", "gamma"], texts)


class FirstColumns:
    """A 'reducer' that keeps the first k columns: makes coordinates known in advance."""

    def __init__(self, k=2):
        self.k = k

    def fit_transform(self, X):
        return np.asarray(X)[:, :self.k]


def test_pca_once_per_layer_on_all_documents(tmp_path):
    from sklearn.decomposition import PCA

    s = synthetic_scan(tmp_path / "s")
    rm = llmri.regions(s, reducer="pca", n_components=2, grid=5)
    assert rm.layers == [0, 1, 2, 3]
    for L in rm.layers:
        ref = PCA(2, random_state=0).fit_transform(s.activations(L))
        sign = np.sign((rm.coords(L) * ref).sum(0))  # components are oriented layer to layer
        np.testing.assert_allclose(rm.coords(L), ref * sign, atol=1e-6)
        if L != rm.layers[0]:
            prev = rm.coords(rm.layers[rm.layers.index(L) - 1])
            assert ((rm.coords(L) - rm.coords(L).mean(0)) * (prev - prev.mean(0))).sum(0).min() >= 0
        assert rm.cells(L).shape == (90, 2) and rm.cells(L).dtype == np.int64
        assert rm.counts(L).sum() == 90
        assert rm.counts(L, ["alpha"]).sum() == 30
    assert llmri.regions(s, reducer="svd", layers=[-1]).coords(3).shape == (90, 2)


def test_umap_reducer(tmp_path):
    pytest.importorskip("umap")
    s = synthetic_scan(tmp_path / "s", n_per=15)
    rm = llmri.regions(s, reducer="umap", layers=[3], seed=1)
    assert rm.coords(3).shape == (45, 2) and np.isfinite(rm.coords(3)).all()


def test_grid_cells_by_hand(tmp_path):
    X = np.array([[0.0, 10.0], [0.5, 10.0], [1.0, 12.0], [0.24, 11.0]])
    s = scan_from_arrays(tmp_path / "s", {"resid.0": X, "resid.1": X[::-1].copy()}, ["a", "a", "b", "b"])
    rm = llmri.regions(s, reducer=FirstColumns(), grid=4)
    # x: range 0..1 in 4 bins -> 0, 2, 3 (the maximum is clipped into the last bin), 0
    # y: range 10..12 -> 0, 0, 3, 2
    assert rm.cells(0).tolist() == [[0, 0], [2, 0], [3, 3], [0, 2]]
    assert rm.documents_in(0, 0, 2).tolist() == [3]
    assert rm.counts(0)[3, 3] == 1 and rm.counts(0)[0, 0] == 1  # rows are y, columns are x


def test_grid_nrag_equals_cooccurrence_counts(tmp_path):
    s = synthetic_scan(tmp_path / "s")
    rm = llmri.regions(s, grid=4)
    g = llmri.nrag(rm)
    expected = Counter()
    per_cat = Counter()
    for a, b in zip(rm.layers[:-1], rm.layers[1:]):
        for d in range(rm.n_docs):
            u = (a, *map(int, rm.cells(a)[d]))
            v = (b, *map(int, rm.cells(b)[d]))
            expected[u, v] += 1
            per_cat[u, v, rm.label_names[rm.labels[d]]] += 1
    assert {(u, v): d["weight"] for u, v, d in g.edges(data=True)} == dict(expected)
    for u, v, d in g.edges(data=True):
        assert d["weights"] == {c: per_cat[u, v, c] for c in rm.label_names}
        assert g.nodes[u]["layer"] == u[0] and (g.nodes[u]["x"], g.nodes[u]["y"]) == u[1:]
    # composing categories keeps each one's weight, exactly as its own graph has it
    ab = llmri.nrag(rm, categories=["alpha", "beta"])
    for cat in ("alpha", "beta"):
        alone = llmri.nrag(rm, categories=[cat])
        for u, v, d in alone.edges(data=True):
            assert ab.edges[u, v]["weights"][cat] == d["weight"]
        assert sum(d["weights"][cat] for *_, d in ab.edges(data=True)) == 30 * (len(rm.layers) - 1)
    assert all(d["weight"] == sum(d["weights"].values()) for *_, d in ab.edges(data=True))


def test_spearman_nrag(tmp_path):
    s = synthetic_scan(tmp_path / "s", constant_dim=True)
    rm = llmri.regions(s, reducer=FirstColumns(3), n_components=3)
    for absolute in (False, True):
        g = llmri.nrag(rm, categories=["alpha", "gamma"], threshold=0.2, absolute=absolute)
        chosen = np.isin(rm.labels, [0, 2])
        for a, b in zip(rm.layers[:-1], rm.layers[1:]):
            for i in range(3):
                for j in range(3):
                    za, zb = rm.coords(a)[chosen, i], rm.coords(b)[chosen, j]
                    want = 0.0 if (za.std() == 0 or zb.std() == 0) else spearmanr(za, zb).statistic
                    kept = (abs(want) if absolute else want) > 0.2
                    assert g.has_edge((a, i), (b, j)) == kept
                    if kept:
                        assert g.edges[(a, i), (b, j)]["weight"] == pytest.approx(want, abs=1e-9)
                        sel = rm.labels == 0
                        w_alpha = spearmanr(rm.coords(a)[sel, i], rm.coords(b)[sel, j]).statistic
                        assert g.edges[(a, i), (b, j)]["weights"]["alpha"] == pytest.approx(w_alpha, abs=1e-9)
        assert all(np.isfinite(d["weight"]) for *_, d in g.edges(data=True))
        assert not any(0 in (u[1], v[1]) for u, v in g.edges)  # the constant component has no edge
        assert g.nodes[(1, 2)] == {"layer": 1, "component": 2}


def hand_graph():
    g = nx.DiGraph(layers=[0, 1, 2])
    for name, layer in [("a", 0), ("b", 0), ("c", 1), ("d", 2), ("e", 2)]:
        g.add_node(name, layer=layer)
    for u, v, w in [("a", "c", 2), ("b", "c", 1), ("c", "d", 3), ("c", "e", 1)]:
        g.add_edge(u, v, weight=w)
    return g


def test_metrics_on_a_hand_built_graph():
    m = llmri.graph_metrics(hand_graph())
    # degrees 1, 1, 4, 1, 1
    assert m["degree_mean"] == pytest.approx(1.6) and m["degree_var"] == pytest.approx(1.44)
    assert m["degree_skew"] == pytest.approx(1.5) and m["degree_kurtosis"] == pytest.approx(0.25)
    # strengths 2, 1, 7, 3, 1
    assert m["strength_mean"] == pytest.approx(2.8) and m["strength_var"] == pytest.approx(12.8 - 2.8 ** 2)
    assert m["density"] == pytest.approx(4 / 20)
    assert m["assortativity"] == pytest.approx(-1.0)   # every edge joins degree 1 to degree 4
    assert m["center_of_mass"] == pytest.approx(8 / 8)
    assert m["center_of_strength"] == pytest.approx(15 / 14)
    # even layers {a, b, d, e} all meet through c: a complete graph; odd layer: c alone
    assert m["even_clustering"] == 1.0 and m["even_path_length"] == 1.0
    assert m["odd_clustering"] == 0.0 and m["odd_path_length"] == 0.0


def test_projection_stats_by_hand():
    path = np.zeros((4, 4), bool)
    for i in range(3):
        path[i, i + 1] = path[i + 1, i] = True
    assert projection_stats(path) == (0.0, pytest.approx(10 / 6))
    tri = np.zeros((4, 4), bool)
    for i, j in [(0, 1), (1, 2), (0, 2), (0, 3)]:
        tri[i, j] = tri[j, i] = True
    clustering, length = projection_stats(tri)
    assert clustering == pytest.approx(7 / 12)
    assert clustering == pytest.approx(nx.average_clustering(nx.from_numpy_array(tri.astype(int))))
    assert length == pytest.approx(nx.average_shortest_path_length(nx.from_numpy_array(tri.astype(int))))


def test_metrics_are_always_defined():
    g = nx.DiGraph(layers=[0, 1])
    for i in range(3):
        g.add_node(("x", i), layer=0)
    g.add_node("y", layer=1)
    m = llmri.graph_metrics(g)  # no edges at all
    assert all(np.isfinite(v) for v in m.values()) and m["center_of_strength"] == pytest.approx(0.25)
    ring = nx.DiGraph(layers=[0, 1])
    ring.add_node("p", layer=0), ring.add_node("q", layer=1)
    ring.add_edge("p", "q", weight=2.0)
    m = llmri.graph_metrics(ring)  # constant degrees: skew and kurtosis are 0, not NaN
    assert m["degree_skew"] == 0 and m["degree_kurtosis"] == 0 and np.isfinite(m["assortativity"])


def test_layer_profile_strength_uses_absolute_weights():
    g = hand_graph()
    g.edges["c", "d"]["weight"] = -3  # a negative (Spearman) weight
    prof = llmri.layer_profile(g).set_index("layer")
    assert prof.loc[1, "mean_strength"] == pytest.approx(7.0)
    assert prof["mean_strength"].mul(prof["nodes"]).sum() / 5 == pytest.approx(llmri.graph_metrics(g)["strength_mean"])


def test_layer_profile(tmp_path):
    s = synthetic_scan(tmp_path / "s")
    rm = llmri.regions(s, grid=3)
    g = llmri.nrag(rm)
    prof = llmri.layer_profile(g)
    assert prof["layer"].tolist() == rm.layers and (prof["documents"] == 90).all()
    for L in rm.layers:
        counts = rm.counts(L).ravel()
        p = counts[counts > 0] / 90
        assert prof.set_index("layer").loc[L, "entropy_bits"] == pytest.approx(-(p * np.log2(p)).sum())
    assert prof["weight_out"].iloc[-1] == 0 and prof["weight_out"].iloc[0] == 90


def two_category_scan(path, different: bool, n=40, seed=0):
    rng = np.random.default_rng(seed)
    acts = {}
    for L in range(4):
        X = rng.uniform(-1, 1, size=(2 * n, 2))
        if different:
            X[:n] = rng.normal(0.0, 0.05, size=(n, 2)) + 0.9  # category a sits in a corner
        acts[f"resid.{L}"] = X
    return scan_from_arrays(path, acts, ["a"] * n + ["b"] * n)


def test_permutation_test(tmp_path):
    rm = llmri.regions(two_category_scan(tmp_path / "d", True), reducer=FirstColumns(), grid=6)
    df = llmri.compare_categories(rm, "a", "b", n_permutations=199)
    assert list(df.columns) == ["metric", "a", "b", "difference", "p_value", "q_value", "constant"]
    # Grid mode: every document passes every layer, so each layer transition carries the same total
    # weight and the centre of strength is the middle layer (1.5 of 0..3) for any labels: untested.
    cos = df.set_index("metric").loc["center_of_strength"]
    assert cos["a"] == pytest.approx(1.5) and cos["b"] == pytest.approx(1.5)
    assert cos["constant"] and np.isnan(cos["p_value"]) and np.isnan(cos["q_value"])
    # here center_of_mass (the mean edge midpoint) is also the same under every shuffle: with 40
    # documents spread over 36 cells, each layer transition has one edge per document
    assert set(df.loc[df["constant"], "metric"]) == {"center_of_strength", "center_of_mass"}
    assert (df.loc[df["constant"], "difference"] == 0).all()
    tested = df[~df["constant"]]
    # Benjamini-Hochberg by hand over the tested metrics: q_(i) = min over j >= i of p_(j) * m / j
    p = tested["p_value"].to_numpy()
    order = np.argsort(p)
    m = len(p)
    q_sorted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1)
    np.testing.assert_allclose(tested["q_value"], q)
    row = df.set_index("metric").loc["n_nodes"]
    assert row["a"] < row["b"] and row["difference"] == row["a"] - row["b"]
    assert row["p_value"] == pytest.approx(1 / 200)
    same = llmri.regions(two_category_scan(tmp_path / "s", False), reducer=FirstColumns(), grid=6)
    df2 = llmri.compare_categories(same, "a", "b", n_permutations=199)
    assert df2.set_index("metric").loc["n_nodes", "p_value"] > 0.05
    p2 = df2.loc[~df2["constant"], "p_value"]
    assert (p2 > 0.05).mean() >= 0.75 and p2.median() > 0.2
    with pytest.raises(llmri.LlmriError, match="unknown category 'c'"):
        llmri.compare_categories(same, "a", "c")


def test_evaluate_reduction_matches_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = synthetic_scan(tmp_path / "s")
    rm = llmri.regions(s, grid=5)
    df = llmri.evaluate_reduction(s, rm, cv=5, seed=0)
    assert df["layer"].tolist() == [0, 1, 2, 3, "all"]
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    for L in rm.layers:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        full = cross_val_score(clf, s.activations(L), s.labels, cv=cv).mean()
        red = cross_val_score(clf, rm.coords(L), s.labels, cv=cv).mean()
        row = df[df["layer"] == L].iloc[0]
        assert row["full"] == pytest.approx(full) and row["reduced"] == pytest.approx(red)
        assert row["reduced_minus_full"] == pytest.approx(red - full)
        assert row["full_low"] <= row["full"] <= row["full_high"]
    assert df.iloc[-1]["full"] == pytest.approx(df.iloc[:-1]["full"].mean())


def test_region_errors(tmp_path):
    s = synthetic_scan(tmp_path / "s")
    with pytest.raises(llmri.LlmriError, match="reducer 'tsne' is not one of pca, svd, umap"):
        llmri.regions(s, reducer="tsne")
    with pytest.raises(llmri.LlmriError, match="layer 7 of site 'resid' was not captured"):
        llmri.regions(s, layers=[7])
    with pytest.raises(llmri.LlmriError, match="cells need a 2-component map"):
        llmri.regions(s, n_components=3).cells(0)
    with pytest.raises(llmri.LlmriError, match="unknown category 'delta'"):
        llmri.nrag(llmri.regions(s), categories=["delta"])
