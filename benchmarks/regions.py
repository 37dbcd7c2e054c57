"""Regions + NRAG + metrics on a synthetic Scan (10,000 documents x 13 layers x 768 dims),
and the end-to-end `llmri demo` (wall time, peak memory).

Baselines measured in the same run: reading the activations alone, and building the same NRAG
with a per-document Python loop (how a hand-written version usually does it).

Run: python benchmarks/regions.py [--docs 10000] [--layers 13] [--dim 768] [--skip-demo]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import networkx as nx
import numpy as np

import llmri
from llmri.store import scan_from_arrays


def synthetic(folder: Path, n: int, layers: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    centers = rng.normal(size=(4, dim)).astype(np.float32)
    acts = {}
    for L in range(layers):
        acts[f"resid.{L}"] = rng.standard_normal((n, dim), dtype=np.float32) + centers[labels] * (L / layers)
    return scan_from_arrays(folder, acts, labels, ["a", "b", "c", "d"])


def naive_nrag(rm) -> nx.DiGraph:
    g = nx.DiGraph()
    for a, b in zip(rm.layers[:-1], rm.layers[1:]):
        ca, cb = rm.cells(a), rm.cells(b)
        for d in range(rm.n_docs):
            u, v = (a, int(ca[d, 0]), int(ca[d, 1])), (b, int(cb[d, 0]), int(cb[d, 1]))
            if g.has_edge(u, v):
                g.edges[u, v]["weight"] += 1
            else:
                g.add_edge(u, v, weight=1)
    return g


def clock(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--permutations", type=int, default=20)
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        scan, t_write = clock(lambda: synthetic(Path(d) / "s", args.docs, args.layers, args.dim))
        _, t_read = clock(lambda: [scan.activations(L) for L in scan.layers("resid")])
        rm, t_regions = clock(lambda: llmri.regions(scan, reducer="pca", grid=10, progress=False))
        g, t_nrag = clock(lambda: llmri.nrag(rm))
        _, t_metrics = clock(lambda: (llmri.graph_metrics(g), llmri.layer_profile(g)))
        per_cat, t_cats = clock(lambda: [llmri.graph_metrics(llmri.nrag(rm, [c])) for c in rm.label_names])
        _, t_perm = clock(lambda: llmri.compare_categories(rm, "a", "b", n_permutations=args.permutations,
                                                           progress=False))
        naive, t_naive = clock(lambda: naive_nrag(rm))
        assert {(u, v): w for u, v, w in naive.edges(data="weight")} == \
               {(u, v): w for u, v, w in g.edges(data="weight")}
        rmn, t_nd = clock(lambda: llmri.regions(scan, reducer="pca", n_components=8, progress=False))
        _, t_nd_graph = clock(lambda: llmri.graph_metrics(llmri.nrag(rmn, threshold=0.3)))
    total = t_regions + t_nrag + t_metrics
    print(f"synthetic scan: {args.docs} docs x {args.layers} layers x {args.dim} dims "
          f"(written in {t_write:.1f} s)")
    print(f"read all activations        {t_read:6.2f} s  (baseline)")
    print(f"regions (PCA, 10x10 grid)   {t_regions:6.2f} s")
    print(f"NRAG ({g.number_of_nodes()} nodes, {g.number_of_edges()} edges) {t_nrag:6.2f} s")
    print(f"metrics + layer profile     {t_metrics:6.2f} s")
    print(f"regions + NRAG + metrics    {total:6.2f} s   = {total / t_read:.1f}x reading the activations")
    print(f"per-category NRAG+metrics   {t_cats / len(rm.label_names):6.2f} s per category")
    print(f"permutation test            {t_perm / args.permutations:6.3f} s per permutation "
          f"({args.permutations} permutations, {t_perm:.1f} s)")
    print(f"naive per-document NRAG     {t_naive:6.2f} s   -> llmri.nrag is {t_naive / t_nrag:.1f}x faster")
    print(f"N-d mode (8 components): regions {t_nd:.2f} s, Spearman NRAG + metrics {t_nd_graph:.2f} s")
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "llmri", "demo", "--out", str(Path(d) / "demo")], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"llmri demo end to end       {wall:6.1f} s wall, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
