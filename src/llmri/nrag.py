"""Neural Region Activation Graphs (NRAG), after LLM-MRI (Costa et al., SBBD 2024).

Grid mode (2 components): nodes are ``(layer, x, y)`` grid cells; an edge joins cells of
consecutive layers, weighted by the number of chosen documents that pass through both.
N-d mode (more components): nodes are ``(layer, component)``; an edge's weight is the
Spearman correlation of the two components over the chosen documents, kept above a threshold.

Every edge carries ``weight`` (all chosen categories) and ``weights`` (one entry per category),
so composing categories loses nothing.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from scipy.stats import rankdata

from .errors import LlmriError
from .regions import RegionMap


def nrag(regions: RegionMap, categories=None, threshold: float = 0.3, absolute: bool = False,
         mask: np.ndarray | None = None) -> nx.DiGraph:
    """Build the NRAG of ``categories`` (names or indices; None = every category).

    ``threshold`` and ``absolute`` apply to the N-d (Spearman) mode only. ``mask`` further
    restricts the documents (a boolean array over the corpus).

    >>> g = llmri.nrag(rm, categories=["astronomy"])                 # doctest: +SKIP
    >>> g.edges[(0, 3, 4), (1, 5, 4)]["weights"]                     # doctest: +SKIP
    {'astronomy': 12}
    """
    if categories is None:
        cat_ids = list(range(len(regions.label_names)))
    else:
        cats = [categories] if isinstance(categories, (str, int, np.integer)) else list(categories)
        if not cats:
            raise LlmriError("categories: the list is empty")
        cat_ids = regions.category_ids(cats)
    chosen = np.isin(regions.labels, cat_ids)
    if mask is not None:
        chosen &= np.asarray(mask, dtype=bool)
    if not chosen.any():
        raise LlmriError("no documents in the chosen categories")
    if regions.n_components == 2:
        g = _grid_graph(regions, cat_ids, chosen)
    else:
        g = _spearman_graph(regions, cat_ids, chosen, threshold, absolute)
    g.graph.update(layers=list(regions.layers), categories=[regions.label_names[c] for c in cat_ids],
                   reducer=regions.reducer, n_components=regions.n_components, grid=regions.grid,
                   n_docs=int(chosen.sum()), preset=getattr(regions, "preset", None))
    return g


def _grid_graph(rm: RegionMap, cat_ids: list[int], chosen: np.ndarray) -> nx.DiGraph:
    g = nx.DiGraph(mode="grid")
    names = [rm.label_names[c] for c in cat_ids]
    labels = rm.labels[chosen]
    codes = {L: (rm.cells(L)[chosen] * np.array([rm.grid, 1])).sum(1) for L in rm.layers}
    for L in rm.layers:
        for code, cat_counts in _count_by(codes[L], labels, cat_ids).items():
            x, y = divmod(int(code), rm.grid)
            counts = dict(zip(names, cat_counts))
            g.add_node((L, x, y), layer=L, x=x, y=y, count=int(sum(cat_counts)), counts=counts)
    for a, b in zip(rm.layers[:-1], rm.layers[1:]):
        pair = codes[a] * (rm.grid * rm.grid) + codes[b]
        for code, cat_counts in _count_by(pair, labels, cat_ids).items():
            ca, cb = divmod(int(code), rm.grid * rm.grid)
            u, v = (a, *divmod(ca, rm.grid)), (b, *divmod(cb, rm.grid))
            g.add_edge(u, v, weight=int(sum(cat_counts)), weights=dict(zip(names, cat_counts)))
    return g


def _count_by(codes: np.ndarray, labels: np.ndarray, cat_ids: list[int]) -> dict[int, list[int]]:
    """For each distinct code: the number of documents of each category carrying it."""
    uniq, inv = np.unique(codes, return_inverse=True)
    table = np.zeros((len(uniq), len(cat_ids)), dtype=np.int64)
    for j, c in enumerate(cat_ids):
        sel = labels == c
        np.add.at(table[:, j], inv[sel], 1)
    return {int(u): [int(x) for x in row] for u, row in zip(uniq, table)}


def spearman_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of every column of ``a`` with every column of ``b``.

    A constant column correlates 0 with everything (never NaN).
    """
    if len(a) < 2:
        return np.zeros((a.shape[1], b.shape[1]))
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(0)
    rb = rb - rb.mean(0)
    na, nb = np.sqrt((ra ** 2).sum(0)), np.sqrt((rb ** 2).sum(0))
    denom = np.outer(na, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra.T @ rb) / denom
    return np.where(denom > 0, np.clip(r, -1.0, 1.0), 0.0)


def _spearman_graph(rm: RegionMap, cat_ids, chosen, threshold: float, absolute: bool) -> nx.DiGraph:
    g = nx.DiGraph(mode="spearman", threshold=threshold, absolute=absolute)
    names = [rm.label_names[c] for c in cat_ids]
    k = rm.n_components
    for L in rm.layers:
        for c in range(k):
            g.add_node((L, c), layer=L, component=c)
    for a, b in zip(rm.layers[:-1], rm.layers[1:]):
        za, zb = rm.coords(a), rm.coords(b)
        total = spearman_matrix(za[chosen], zb[chosen])
        per_cat = {n: spearman_matrix(za[chosen & (rm.labels == c)], zb[chosen & (rm.labels == c)])
                   for n, c in zip(names, cat_ids)}
        for i in range(k):
            for j in range(k):
                w = float(total[i, j])
                if (abs(w) if absolute else w) > threshold:
                    g.add_edge((a, i), (b, j), weight=w,
                               weights={n: float(m[i, j]) for n, m in per_cat.items()})
    return g
