"""Drawing NRAGs: a layered layout (layers as rows, no graphviz), matplotlib and plotly."""

from __future__ import annotations

from html import escape as html_escape

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


def _sizes(g: nx.DiGraph, nodes, attr: str | None) -> np.ndarray:
    """Node sizes before scaling: degree, or |attribute| when ``attr`` is given."""
    if attr:
        return np.array([abs(float(g.nodes[n].get(attr, 0.0))) for n in nodes], dtype=float)
    return np.array([g.degree(n) for n in nodes], dtype=float)


def _row_labels(g: nx.DiGraph, layers) -> list[str]:
    labels = g.graph.get("row_labels") or {}
    return [labels.get(L, f"layer {L}") for L in layers]


def _dominant(weights: dict, colors: dict) -> str:
    return colors[max(weights, key=lambda c: abs(weights[c]))] if weights else "#999999"


def draw_nrag(g: nx.DiGraph, ax=None, fixed: bool = False, colors: dict | None = None, title: str | None = None,
              min_weight: float = 0, node_size: str | None = None):
    """Static NRAG picture: edges coloured by category, nodes by category share, sized by degree
    (or by the absolute value of the node attribute ``node_size``).

    ``min_weight`` hides edges whose |weight| is below it (a busy composed graph stays readable);
    the title says how many are hidden. Rows are labelled ``layer L`` unless
    ``g.graph["row_labels"]`` maps a layer to another label.
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
        deg = _sizes(g, nodes, node_size)
        xy = np.array([pos[n] for n in nodes])
        ax.scatter(xy[:, 0], xy[:, 1], s=20 + 120 * deg / (deg.max() or 1),
                   c=[blend(colors, shares[n]) for n in nodes], edgecolors="black", linewidths=0.4, zorder=2)
    layers = g.graph.get("layers", [])
    ax.set_yticks([-i for i in range(len(layers))], _row_labels(g, layers))
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
                min_weight: float = 0, node_size: str | None = None, hover: str | None = None):
    """Interactive NRAG (plotly): hover a node for its layer, cell and documents per category
    (or its node attribute ``hover``, an HTML snippet); nodes sized by degree or by |``node_size``|.
    The node trace's ``customdata`` holds the node ids (for click handlers: ``plotly_click``).

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
    deg = _sizes(g, nodes, node_size)
    texts = []
    for n in nodes:
        d = g.nodes[n]
        if hover:
            texts.append(str(d.get(hover, n)))
            continue
        where = f"cell ({d['x']}, {d['y']})" if "x" in d else f"component {d.get('component')}"
        parts = [f"{c}: {v:.3g}" for c, v in shares[n].items()]
        texts.append(f"layer {d['layer']}, {where}<br>degree {g.degree(n)}<br>" + "<br>".join(parts))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers", showlegend=False,
        marker=dict(size=6 + 14 * deg / (deg.max() or 1) if len(nodes) else 6,
                    color=[blend(colors, shares[n]) for n in nodes], line=dict(color="black", width=0.5)),
        text=texts, customdata=[str(n) for n in nodes], hovertemplate="%{text}<extra></extra>"))
    for c in names:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=c, line=dict(color=colors[c], width=4)))
    layers = g.graph.get("layers", [])
    fig.update_layout(title=title or f"NRAG: {', '.join(names)}", height=120 + 70 * len(layers),
                      margin=dict(l=60, r=20, t=60, b=20), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    fig.update_xaxes(visible=False, range=[-0.05, 1.05])
    fig.update_yaxes(tickvals=[-i for i in range(len(layers))], ticktext=_row_labels(g, layers),
                     showgrid=False, zeroline=False)
    return fig


# ---------------------------------------------------------------- attribution graphs (llmri.circuits)
CIRCUIT_CATEGORIES = ("promotes", "suppresses")


def _circuit_nrag(ag, max_nodes_per_cell: int = 6) -> nx.DiGraph:
    """An attribution graph in the NRAG drawing's terms: rows = layers (target on top, token
    embeddings at the bottom), columns = prompt positions, colour = sign (promotes / suppresses
    the target), so that ``draw_nrag`` and ``nrag_figure`` draw it."""
    import html

    g = ag.graph
    T = len(ag.tokens)
    layers = sorted({d["layer"] for _, d in g.nodes(data=True)}, reverse=True)
    labels = {}
    transcoders = any(str(d.get("site", "")).startswith("mlp_in.") for _, d in g.nodes(data=True))
    for L in layers:
        kinds = {d["kind"] for _, d in g.nodes(data=True) if d["layer"] == L}
        labels[L] = ("target" if "logit" in kinds else "tokens" if "embedding" in kinds else
                     f"mlp_out.{L}" if transcoders else f"resid.{L}")
    h = nx.DiGraph(layers=layers, n_components=T + 1, categories=list(CIRCUIT_CATEGORIES), row_labels=labels)
    cells: dict = {}
    biggest = max((abs(d.get("attribution", 0.0)) for _, d in g.nodes(data=True) if d["kind"] != "logit"), default=1.0)
    for n, d in g.nodes(data=True):
        cells.setdefault((d["layer"], d["pos"]), []).append(n)
    for (L, p), members in cells.items():
        members.sort(key=lambda n: -abs(g.nodes[n].get("attribution", 0.0)))
        for j, n in enumerate(members):
            d = g.nodes[n]
            a = float(d.get("attribution", 0.0))
            text = [html.escape(str(d.get("label", n))), f"attribution {a:.4g}"]
            if d["kind"] == "feature":
                text.append(f"activation {d['activation']:.4g}")
                if d.get("density") is not None:
                    text.append(f"density {d['density']:.3g}")
                if d.get("top_activations"):
                    text.append(f"top activations: {html.escape(str(d['top_activations']))}")
                if d.get("top_tokens"):
                    text.append(f"top output tokens: {html.escape(str(d['top_tokens']))}")
                if d.get("explanation"):
                    score = d.get("simulation_score")
                    text.append(f"explanation: {html.escape(str(d['explanation']))}"
                                + (f" (simulation score {score:.3f})" if score is not None and score == score else ""))
            if d.get("influence") is not None:
                text.append(f"influence {d['influence']:.3g}")
            offset = 0.8 * (j % max_nodes_per_cell) / max_nodes_per_cell
            if d["kind"] == "logit":  # the target: drawn as large as the largest node, in the promoting colour
                h.add_node(n, layer=L, component=p + offset, size=biggest, hover="<br>".join(text),
                           counts={"promotes": 1.0, "suppresses": 0.0})
                continue
            h.add_node(n, layer=L, component=p + offset, size=a, hover="<br>".join(text),
                       counts={"promotes": max(a, 0.0), "suppresses": max(-a, 0.0)})
    for u, v, e in g.edges(data=True):
        w = float(e["weight"])
        h.add_edge(u, v, weight=w, weights={"promotes": max(w, 0.0), "suppresses": max(-w, 0.0)})
    return h


def _circuit_title(ag, title):
    return title or f"{ag.info['prompt']!r} -> {ag.target!r}: attribution graph"


def node_label(d: dict, width: int = 28) -> str:
    """The short text printed next to a feature node: its explanation, else its top activating
    tokens (``AttributionGraph.label_features``), else its top output tokens; "" if none is known."""
    for key in ("explanation", "top_activations", "top_tokens"):
        text = str(d.get(key) or "").strip()
        if text:
            return text if len(text) <= width else text[:width - 1] + "\u2026"
    return ""


def circuit_plot(ag, ax=None, title: str | None = None, labels: int = 10):
    """Static picture of an attribution graph (``llmri.attribute``), drawn by ``draw_nrag``:
    positions as columns, layers as rows, node size by |attribution|, edge width by |weight|.
    The ``labels`` feature nodes of largest influence on the target (|attribution| when the
    graph carries no influence) are printed with their id and label (:func:`node_label`)."""
    import matplotlib.pyplot as plt

    h = _circuit_nrag(ag)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(ag.tokens)), 1.2 + 0.8 * len(h.graph["layers"])))
    colors = {"promotes": "#1f77b4", "suppresses": "#d62728"}
    fig = draw_nrag(h, ax=ax, fixed=True, colors=colors, title=_circuit_title(ag, title), node_size="size")
    ax.set_xticks([(p + 0.3) / len(ag.tokens) for p in range(len(ag.tokens))], ag.tokens, rotation=45,
                  ha="right", fontsize=8)
    g = ag.graph
    pos = layered_layout(h, fixed=True)
    for n in _labelled_nodes(ag, labels):
        ax.annotate(f"{g.nodes[n]['feature']}: {node_label(g.nodes[n])}", pos[n], xytext=(4, 5),
                    textcoords="offset points", fontsize=6.5, color="#333333", rotation=20,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    return fig


def _labelled_nodes(ag, labels: int) -> list:
    """The ``labels`` feature nodes of largest influence on the target (|attribution| when the
    graph carries no influence) that have a label (:func:`node_label`)."""
    g = ag.graph
    named = [n for n, d in g.nodes(data=True) if d["kind"] == "feature" and node_label(d)]
    named.sort(key=lambda n: -abs(g.nodes[n].get("influence", g.nodes[n].get("attribution", 0.0))))
    return named[:max(0, int(labels))]


def circuit_figure(ag, title: str | None = None, labels: int = 10):
    """Interactive attribution graph (plotly), drawn by ``nrag_figure``: hover a node for its
    attribution, activation, density, top output tokens and explanation when known; the
    ``labels`` feature nodes of largest influence carry their id and label as in :func:`circuit_plot`."""
    h = _circuit_nrag(ag)
    colors = {"promotes": "#1f77b4", "suppresses": "#d62728"}
    fig = nrag_figure(h, fixed=True, colors=colors, title=_circuit_title(ag, title), node_size="size",
                      hover="hover")
    fig.update_xaxes(visible=True, showgrid=False, tickangle=-45,
                     tickvals=[(p + 0.3) / len(ag.tokens) for p in range(len(ag.tokens))], ticktext=ag.tokens)
    pos = layered_layout(h, fixed=True)
    for n in _labelled_nodes(ag, labels):
        d = ag.graph.nodes[n]
        fig.add_annotation(x=pos[n][0], y=pos[n][1], text=html_escape(f"{d['feature']}: {node_label(d)}"),
                           showarrow=False, xanchor="left", yanchor="bottom", xshift=4, yshift=4, textangle=-20,
                           font=dict(size=10, color="#333333"), bgcolor="rgba(255,255,255,0.75)")
    return fig
