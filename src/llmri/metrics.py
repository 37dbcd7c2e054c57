"""Complex-network metrics of NRAGs, per-layer profiles, and category comparison by permutation.

Every value is defined: a constant distribution has skew and kurtosis 0, a graph with no edges
has assortativity 0, and centres fall back to the mean layer when there is no weight.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pandas as pd
from scipy.stats import kurtosis, skew
from tqdm.auto import tqdm

from .errors import LlmriError
from .nrag import nrag
from .regions import RegionMap

METRICS = ("n_nodes", "n_edges", "density",
           "degree_mean", "degree_var", "degree_skew", "degree_kurtosis",
           "strength_mean", "strength_var", "strength_skew", "strength_kurtosis",
           "assortativity", "center_of_mass", "center_of_strength",
           "even_clustering", "even_path_length", "odd_clustering", "odd_path_length")


def _moments(values: np.ndarray, prefix: str, sample: bool = False) -> dict[str, float]:
    """Mean, variance, skew and excess kurtosis (0 when undefined).

    Population estimators by default (the nodes are the whole graph, not a sample of it);
    ``sample=True`` gives LLM-MRI's pandas estimators: variance with ddof 1, bias-corrected
    skew and kurtosis (scipy's ``bias=False``).
    """
    if len(values) == 0:
        return {f"{prefix}_{k}": 0.0 for k in ("mean", "var", "skew", "kurtosis")}
    var = float(np.var(values, ddof=1)) if sample and len(values) > 1 else float(np.var(values))
    constant = var <= 1e-12 * max(1.0, float(np.mean(values) ** 2))
    small = sample and len(values) < 4  # bias-corrected skew needs 3 values, kurtosis 4
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_var": var,
            f"{prefix}_skew": 0.0 if constant or small else float(skew(values, bias=not sample)),
            f"{prefix}_kurtosis": 0.0 if constant or small else float(kurtosis(values, bias=not sample))}


def _layer_position(g: nx.DiGraph) -> dict[int, int]:
    layers = g.graph.get("layers") or sorted({d["layer"] for _, d in g.nodes(data=True)})
    return {L: i for i, L in enumerate(layers)}


def projection_stats(adjacency: np.ndarray) -> tuple[float, float]:
    """Average clustering (networkx's definition) and mean shortest-path length over all
    reachable pairs of an undirected, unweighted graph given as a boolean adjacency matrix."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    n = len(adjacency)
    if n < 2:
        return 0.0, 0.0
    A = adjacency.astype(np.float64)
    deg = A.sum(1)
    triangles = ((A @ A) * A).sum(1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        local = np.where(deg > 1, 2.0 * triangles / (deg * (deg - 1)), 0.0)
    dist = shortest_path(csr_matrix(A), method="D", unweighted=True, directed=False)
    off = ~np.eye(n, dtype=bool) & np.isfinite(dist)
    path = float(dist[off].mean()) if off.any() else 0.0
    return float(local.mean()), path


def _projections(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Clustering and path length of the projections onto even- and odd-position layers.

    The NRAG is layer-partite (edges join consecutive layers only), so nodes of even and odd
    layers form a bipartite graph; two even nodes are joined in the projection when they share
    an odd neighbour, and vice versa.
    """
    pos = _layer_position(g)
    nodes = list(g.nodes)
    parity = np.array([pos[g.nodes[n]["layer"]] % 2 for n in nodes])
    index = {n: i for i, n in enumerate(nodes)}
    even, odd = np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)
    B = np.zeros((len(nodes), len(nodes)), dtype=bool)
    for u, v in g.edges:
        B[index[u], index[v]] = B[index[v], index[u]] = True
    out = {}
    for name, side, other in (("even", even, odd), ("odd", odd, even)):
        inc = B[np.ix_(side, other)].astype(np.int64)
        proj = (inc @ inc.T) > 0
        np.fill_diagonal(proj, False)
        out[name] = projection_stats(proj)
    return out


def _strength(g: nx.DiGraph, v) -> float:
    """Sum of the absolute weights of a node's in- and out-edges."""
    return float(sum(abs(d["weight"]) for *_, d in g.in_edges(v, data=True)) +
                 sum(abs(d["weight"]) for *_, d in g.out_edges(v, data=True)))


def graph_metrics(g: nx.DiGraph, preset: str | None = None) -> dict[str, float]:
    """The LLM-MRI metrics of an NRAG, every one defined.

    Degrees count in- and out-edges; strength sums absolute edge weights; the centres of mass
    and strength are the degree- and strength-weighted mean layer position (0 = first layer).
    Moments are population estimators and assortativity is that of the undirected, unweighted
    graph; ``preset="llm-mri"`` (the default for an NRAG built from a region map made with that
    preset) uses LLM-MRI's sample estimators (ddof 1, bias-corrected skew and kurtosis) and its
    directed (out-degree to in-degree), weighted degree assortativity.

    >>> g = nx.DiGraph(); g.add_edge((0, 0, 0), (1, 0, 0), weight=2); g.add_edge((0, 1, 0), (1, 0, 0), weight=1)
    >>> nx.set_node_attributes(g, {v: v[0] for v in g}, "layer")
    >>> graph_metrics(g)["degree_mean"], graph_metrics(g)["degree_var"], graph_metrics(g, "llm-mri")["degree_var"]
    (1.3333333333333333, 0.2222222222222222, 0.3333333333333333)
    """
    preset = g.graph.get("preset") if preset is None else preset
    if preset not in (None, "llm-mri"):
        raise LlmriError(f"preset {preset!r} is not one of llm-mri")
    sample = preset == "llm-mri"
    n = g.number_of_nodes()
    if n == 0:
        return {k: 0.0 for k in METRICS}
    nodes = list(g.nodes)
    deg = np.array([g.degree(v) for v in nodes], dtype=np.float64)
    strength = np.array([_strength(g, v) for v in nodes])
    pos = _layer_position(g)
    layer_pos = np.array([pos[g.nodes[v]["layer"]] for v in nodes], dtype=np.float64)
    out = {"n_nodes": float(n), "n_edges": float(g.number_of_edges()), "density": float(nx.density(g))}
    out.update(_moments(deg, "degree", sample))
    out.update(_moments(strength, "strength", sample))
    try:
        with np.errstate(all="ignore"):
            if not g.number_of_edges():
                a = 0.0
            elif sample:
                a = nx.degree_assortativity_coefficient(g, weight="weight")
            else:
                a = nx.degree_assortativity_coefficient(g.to_undirected())
    except (ValueError, ZeroDivisionError):
        a = 0.0
    out["assortativity"] = 0.0 if not np.isfinite(a) else float(a)
    mean_layer = float(layer_pos.mean())
    out["center_of_mass"] = float((layer_pos * deg).sum() / deg.sum()) if deg.sum() > 0 else mean_layer
    out["center_of_strength"] = (float((layer_pos * strength).sum() / strength.sum())
                                 if strength.sum() > 0 else mean_layer)
    proj = _projections(g)
    out["even_clustering"], out["even_path_length"] = proj["even"]
    out["odd_clustering"], out["odd_path_length"] = proj["odd"]
    return {k: out[k] for k in METRICS}


def layer_profile(g: nx.DiGraph) -> pd.DataFrame:
    """One row per layer: nodes, edges and weight to the next layer, mean degree and strength,
    and (grid mode) documents and the entropy in bits of their spread over cells."""
    rows = []
    for L in _layer_position(g):
        nodes = [v for v, d in g.nodes(data=True) if d["layer"] == L]
        out_edges = [d["weight"] for v in nodes for *_, d in g.out_edges(v, data=True)]
        row = {"layer": L, "nodes": len(nodes), "edges_out": len(out_edges),
               "weight_out": float(np.sum(np.abs(out_edges))) if out_edges else 0.0,
               "mean_degree": float(np.mean([g.degree(v) for v in nodes])) if nodes else 0.0,
               "mean_strength": float(np.mean([_strength(g, v) for v in nodes])) if nodes else 0.0}
        if g.graph.get("mode") == "grid":
            counts = np.array([g.nodes[v]["count"] for v in nodes], dtype=np.float64)
            p = counts / counts.sum() if counts.sum() else counts
            row["documents"] = int(counts.sum())
            row["entropy_bits"] = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def compare_categories(regions: RegionMap, a, b, n_permutations: int = 1000, seed: int = 0,
                       threshold: float = 0.3, absolute: bool = False,
                       progress: bool | None = None) -> pd.DataFrame:
    """Compare the NRAG metrics of categories ``a`` and ``b`` with a label-permutation test.

    The documents of both categories are pooled and their labels shuffled (group sizes kept)
    ``n_permutations`` times; a metric's two-sided p-value is the share of shuffles whose
    difference is at least as large in magnitude as the observed one, (k + 1) / (n + 1).
    Returns a DataFrame with columns ``metric``, ``a``, ``b``, ``difference`` (a - b), ``p_value``,
    ``q_value`` (Benjamini-Hochberg over the metrics of this comparison) and ``constant``: True
    where the difference is 0 for the real labels and under every shuffle (such a metric, e.g.
    ``center_of_strength`` in grid mode, is constant by construction and gets NaN p and q values).
    """
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise LlmriError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    ia, ib = regions.category_ids([a])[0], regions.category_ids([b])[0]
    if ia == ib:
        raise LlmriError(f"compare_categories: a and b are the same category ({regions.label_names[ia]!r})")
    kw = dict(threshold=threshold, absolute=absolute)

    def diff(rm):
        ma, mb = graph_metrics(nrag(rm, [ia], **kw)), graph_metrics(nrag(rm, [ib], **kw))
        return ma, mb, np.array([ma[k] - mb[k] for k in METRICS])

    ma, mb, observed = diff(regions)
    rng = np.random.default_rng(seed)
    both = np.flatnonzero(np.isin(regions.labels, [ia, ib]))
    pooled = regions.labels[both]
    exceed = np.zeros(len(METRICS))
    varies = np.abs(observed) > 1e-12
    for _ in tqdm(range(n_permutations), desc=f"permutations ({regions.label_names[ia]} vs {regions.label_names[ib]})", disable=None if progress is None else not progress):
        labels = regions.labels.copy()
        labels[both] = rng.permutation(pooled)
        *_, d = diff(dataclasses.replace(regions, labels=labels))
        exceed += np.abs(d) >= np.abs(observed) - 1e-12
        varies |= np.abs(d) > 1e-12
    from scipy.stats import false_discovery_control

    # A metric whose difference is 0 for the real labels and for every shuffle cannot tell the
    # categories apart (center_of_strength in grid mode is constant by construction): it gets no
    # p-value and does not dilute the Benjamini-Hochberg correction of the others.
    p = np.where(varies, (exceed + 1) / (n_permutations + 1), np.nan)
    q = np.full(len(METRICS), np.nan)
    if varies.any():
        q[varies] = false_discovery_control(p[varies], method="bh")
    return pd.DataFrame({"metric": list(METRICS), "a": [ma[k] for k in METRICS],
                         "b": [mb[k] for k in METRICS], "difference": observed,
                         "p_value": p, "q_value": q, "constant": ~varies})
