"""Drawing NRAGs: a layered layout (layers as rows, no graphviz), matplotlib and plotly."""

from __future__ import annotations

import networkx as nx
import numpy as np

from .style import blend, category_colors


def layered_layout(g: nx.DiGraph, fixed: bool = False) -> dict:
    """Node positions: one row per layer (first layer on top).

    With ``fixed=True`` a node's position depends only on its layer and cell (or component),
    never on which other nodes exist, so graphs of different categories line up node for node.
    Otherwise the nodes present in a row are spread evenly across it, ordered by cell.
    """
    layers = g.graph.get("layers") or sorted({d["layer"] for _, d in g.nodes(data=True)})
    row = {L: i for i, L in enumerate(layers)}
    grid = int(g.graph.get("grid") or 1)
    k = int(g.graph.get("n_components") or 1)

    def order(node):
        d = g.nodes[node]
        return d["x"] * grid + d["y"] if "x" in d else d.get("component", 0)

    span = (grid * grid - 1) if g.graph.get("mode") == "grid" else max(k - 1, 1)
    pos = {}
    for L in layers:
        nodes = sorted((n for n, d in g.nodes(data=True) if d["layer"] == L), key=order)
        for i, n in enumerate(nodes):
            x = order(n) / max(span, 1) if fixed else (i + 1) / (len(nodes) + 1)
            pos[n] = (float(x), -float(row[L]))
    return pos


def _node_shares(g: nx.DiGraph, names) -> dict:
    """Category share of each node: its documents (grid) or its incident edge weights (N-d)."""
    shares = {}
    for n, d in g.nodes(data=True):
        if "counts" in d:
            shares[n] = dict(d["counts"])
        else:
            acc = dict.fromkeys(names, 0.0)
            for *_, e in list(g.in_edges(n, data=True)) + list(g.out_edges(n, data=True)):
                for c, w in e["weights"].items():
                    acc[c] += abs(w)
            shares[n] = acc
    return shares


def _dominant(weights: dict, colors: dict) -> str:
    return colors[max(weights, key=lambda c: abs(weights[c]))] if weights else "#999999"


def draw_nrag(g: nx.DiGraph, ax=None, fixed: bool = False, colors: dict | None = None, title: str | None = None,
              min_weight: float = 0):
    """Static NRAG picture: edges coloured by category, nodes by category share, sized by degree.

    ``min_weight`` hides edges whose |weight| is below it (a busy composed graph stays readable);
    the title says how many are hidden.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    names = g.graph.get("categories", [])
    colors = colors or category_colors(names)
    pos = layered_layout(g, fixed=fixed)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.0 + 0.9 * len(g.graph.get("layers", [1]))))
    fig = ax.figure
    edges = [e for e in g.edges(data=True) if abs(e[2]["weight"]) >= min_weight]
    hidden = g.number_of_edges() - len(edges)
    if edges:
        wmax = max(abs(d["weight"]) for *_, d in edges) or 1
        segs = [(pos[u], pos[v]) for u, v, _ in edges]
        ecol = [blend(colors, d["weights"]) for *_, d in edges]
        widths = [0.4 + 3.0 * abs(d["weight"]) / wmax for *_, d in edges]
        ax.add_collection(LineCollection(segs, colors=ecol, linewidths=widths, alpha=0.55, zorder=1))
    nodes = list(g.nodes)
    if nodes:
        shares = _node_shares(g, names)
        deg = np.array([g.degree(n) for n in nodes], dtype=float)
        xy = np.array([pos[n] for n in nodes])
        ax.scatter(xy[:, 0], xy[:, 1], s=20 + 120 * deg / max(deg.max(), 1),
                   c=[blend(colors, shares[n]) for n in nodes], edgecolors="black", linewidths=0.4, zorder=2)
    layers = g.graph.get("layers", [])
    ax.set_yticks([-i for i in range(len(layers))], [f"layer {L}" for L in layers])
    ax.set_xticks([])
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-len(layers) + 0.5, 0.5)
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.legend(handles=[Line2D([0], [0], color=colors[c], lw=3, label=c) for c in names],
              loc="upper right", bbox_to_anchor=(1.0, 1.12), ncol=max(1, len(names)), frameon=False, fontsize=8)
    note = f" ({hidden} edges of weight < {min_weight:g} hidden)" if hidden else ""
    ax.set_title((title or f"NRAG: {', '.join(names)}") + note, loc="left")
    return fig


def nrag_figure(g: nx.DiGraph, fixed: bool = False, colors: dict | None = None, title: str | None = None,
                min_weight: float = 0):
    """Interactive NRAG (plotly): hover a node for its layer, cell and documents per category.

    Edges with |weight| below ``min_weight`` start hidden; one click on their legend entry shows them.
    """
    import plotly.graph_objects as go

    names = g.graph.get("categories", [])
    colors = colors or category_colors(names)
    pos = layered_layout(g, fixed=fixed)
    edges = list(g.edges(data=True))
    wmax = max((abs(d["weight"]) for *_, d in edges), default=1) or 1
    groups: dict[tuple[bool, str, int], list] = {}
    for u, v, d in edges:
        key = (abs(d["weight"]) < min_weight, _dominant(d["weights"], colors), min(2, int(3 * abs(d["weight"]) / wmax)))
        groups.setdefault(key, []).append((u, v))
    fig = go.Figure()
    n_light = sum(len(p) for (light, *_), p in groups.items() if light)
    for (light, color, level), pairs in sorted(groups.items()):
        xs, ys = [], []
        for u, v in pairs:
            xs += [pos[u][0], pos[v][0], None]
            ys += [pos[u][1], pos[v][1], None]
        extra = dict(legendgroup="light", name=f"{n_light} edges of weight < {min_weight:g} (click)",
                     visible="legendonly") if light else {}
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", opacity=0.5,
                                 showlegend=bool(light) and (light, color, level) == min(k for k in groups if k[0]),
                                 line=dict(color=color, width=0.8 + 1.6 * level), **extra))
    shares = _node_shares(g, names)
    nodes = list(g.nodes)
    deg = np.array([g.degree(n) for n in nodes], dtype=float)
    hover = []
    for n in nodes:
        d = g.nodes[n]
        where = f"cell ({d['x']}, {d['y']})" if "x" in d else f"component {d.get('component')}"
        parts = [f"{c}: {v:.3g}" for c, v in shares[n].items()]
        hover.append(f"layer {d['layer']}, {where}<br>degree {g.degree(n)}<br>" + "<br>".join(parts))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers", showlegend=False,
        marker=dict(size=6 + 14 * deg / max(deg.max(), 1) if len(nodes) else 6,
                    color=[blend(colors, shares[n]) for n in nodes], line=dict(color="black", width=0.5)),
        text=hover, hovertemplate="%{text}<extra></extra>"))
    for c in names:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=c, line=dict(color=colors[c], width=4)))
    layers = g.graph.get("layers", [])
    fig.update_layout(title=title or f"NRAG: {', '.join(names)}", height=120 + 70 * len(layers),
                      margin=dict(l=60, r=20, t=60, b=20), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    fig.update_xaxes(visible=False, range=[-0.05, 1.05])
    fig.update_yaxes(tickvals=[-i for i in range(len(layers))], ticktext=[f"layer {L}" for L in layers],
                     showgrid=False, zeroline=False)
    return fig
