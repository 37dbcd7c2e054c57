"""The node kinds of an attribution graph and each node's influence on the target (circuit-tracer's
influence matrix, Ameisen et al. 2025, "Graph pruning"): the graph algebra that pruning, the scores
and the viewer JSON share. Pure networkx; no model."""

from __future__ import annotations

FEATURE, ERROR, EMBEDDING, LOGIT = "feature", "error", "embedding", "logit"


def _normalised_in(g) -> dict:
    """|weight| of each edge over the summed |weight| into its target."""
    out = {}
    for v in g.nodes:
        ins = list(g.in_edges(v, data=True))
        total = sum(abs(e["weight"]) for *_, e in ins)
        for u, _, e in ins:
            out[(u, v)] = abs(e["weight"]) / total if total > 0 else 0.0
    return out


def _influence(g) -> dict:
    """Each node's influence on the target logit: 1 at the logit, then backwards
    ``I(u) = sum_v I(v) * |w(u, v)| / sum_u' |w(u', v)|`` (the influence matrix of circuit-tracer,
    computed layer by layer since the graph is a DAG)."""
    import networkx as nx

    norm = _normalised_in(g)
    infl = dict.fromkeys(g.nodes, 0.0)
    for n, d in g.nodes(data=True):
        if d["kind"] == LOGIT:
            infl[n] = 1.0
    for v in reversed(list(nx.topological_sort(g))):
        if infl[v]:
            for u, _ in g.in_edges(v):
                infl[u] += infl[v] * norm[(u, v)]
    return infl


def _set_influence(g) -> None:
    """Store each node's influence on it as the node attribute ``influence``."""
    for n, v in _influence(g).items():
        g.nodes[n]["influence"] = v


def _cumulative_share(g) -> dict:
    """circuit-tracer's ``influence`` of each non-target node (``prune_graph``'s cumulative scores):
    the nodes ranked by influence, largest first, each given the running sum of influence up to and
    including it over the total. Small means important; the target logits are not ranked."""
    infl = _influence(g)
    ranked = sorted((n for n, d in g.nodes(data=True) if d["kind"] != LOGIT), key=lambda n: -infl[n])
    total = sum(infl[n] for n in ranked)
    out, acc = {}, 0.0
    for n in ranked:
        acc += infl[n]
        out[n] = acc / total if total > 0 else 1.0
    return out
