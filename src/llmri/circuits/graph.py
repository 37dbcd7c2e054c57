"""The attribution graph of one answer (:class:`AttributionGraph`) and what it was built from
(:class:`GraphInfo`): views, scores, subgraphs and pruning by influence (circuit-tracer's
``prune_graph`` and ``compute_graph_scores``). Labels that need a model or a Scan live in
``annotate``, the viewer JSON in ``export``; this file runs no model."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import LlmriError
from .annotate import label_features as _label_features
from .annotate import top_features as _top_features
from .export import to_dict as _to_dict
from .export import to_json as _to_json
from .export import to_viewer as _to_viewer
from .influence import (
    EMBEDDING,
    ERROR,
    FEATURE,
    LOGIT,
    _cumulative_share,
    _influence,
    _normalised_in,
    _set_influence,
)


@dataclass(frozen=True)
class GraphInfo:
    """What an :class:`AttributionGraph` was built from and how (``g.info``). Read as attributes
    (``g.info.sites``) or, like the dict it replaces, by key (``g.info["sites"]``, ``.get``, ``in``);
    ``node_threshold`` and ``edge_threshold`` are set, and ``in`` it, once the graph is pruned."""

    prompt: str
    model: str
    n_layers: int
    sites: list[str]  # the SAE sites, by layer
    metric_name: str  # "log-probability" or "logit difference"
    freeze: bool
    skip_first: bool
    target_ids: list[int]  # one token id, or the pair of a logit difference
    layer_totals: list[dict]  # per SAE layer: {layer, site, features, error, total, abs_features, ...}
    embedding_attribution: list[float]  # per prompt position
    max_feature_nodes: int
    explained: dict[str, int]  # {site: number of explained features}
    transcoders: list[str]  # "mlp_in.L->mlp_out.L" per transcoder; [] for residual-stream SAEs
    node_threshold: float | None = None
    edge_threshold: float | None = None
    precision: str = "float32"  # what the attribution passes ran in (llmri.model.precision_used)

    def __contains__(self, key) -> bool:
        return key in _INFO_KEYS and not (key in _PRUNING and getattr(self, key) is None)

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key) if key in self else default


_INFO_KEYS = frozenset(f.name for f in fields(GraphInfo))
_PRUNING = ("node_threshold", "edge_threshold")


class AttributionGraph:
    """The attribution graph of one answer: ``graph`` (networkx DiGraph), ``features`` (every
    active feature with its attribution), the prompt's ``tokens``, the ``target`` and ``metric``.

    Node ids follow circuit-tracer: ``"{layer}_{feature}_{pos}"`` for features,
    ``"{layer}_-1_{pos}"`` for error nodes, ``"E_{token_id}_{pos}"`` for token embeddings and
    ``"{n_layers + 1}_{token_id}_{pos}"`` for the target logit. Each node carries ``kind``,
    ``layer``, ``pos``, ``feature``, ``activation``, ``attribution`` and (once computed)
    ``influence``; feature nodes also ``density``, ``explanation`` and ``simulation_score`` (""
    and NaN when not explained); each edge ``weight``. ``explanations`` holds the explain rows of
    the explained features, ``{site: {feature: row}}``.
    """

    def __init__(self, graph, features, tokens, token_ids, target, metric, info):
        self.graph = graph
        self.features = features
        self.tokens = tokens
        self.token_ids = token_ids
        self.target = target
        self.metric = metric
        self.info: GraphInfo = info
        self.validation: dict | None = None
        self.explanations: dict = {}  # {site: {feature: explain row}} of the explained features

    def __repr__(self) -> str:
        g = self.graph
        return (f"AttributionGraph({self.info.prompt!r} -> {self.target!r}, metric {self.metric:.4g}, "
                f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges)")

    # -------------------------------------------------- views
    def nodes(self, kind: str | None = None) -> list:
        return [n for n, d in self.graph.nodes(data=True) if kind is None or d["kind"] == kind]

    def layer_totals(self):
        """Per SAE layer: the summed attribution of its features and of its error nodes, their
        sum (the first-order change of the metric when the layer is removed down to ``b_dec``)
        and the share carried by features, ``|features| / (|features| + |errors|)`` summed per node."""
        import pandas as pd

        return pd.DataFrame(self.info.layer_totals)

    def token_totals(self):
        """Per prompt position: the attribution of its token embedding and the summed attribution
        of the features active there (over every SAE layer)."""
        import pandas as pd

        df = self.features
        per = df.groupby("position")["attribution"].sum() if len(df) else pd.Series(dtype=float)
        return pd.DataFrame({"position": range(len(self.tokens)), "token": self.tokens,
                             "embedding": self.info.embedding_attribution,
                             "features": [float(per.get(p, 0.0)) for p in range(len(self.tokens))]})

    def subgraph(self, nodes) -> "AttributionGraph":
        """The graph restricted to ``nodes`` (ids) and the target, with the edges among them: a
        chain picked out of a large graph for a figure. Influence is recomputed on what is left.

        >>> chain = g.subgraph(["5_1493_2", "8_1430_2", "11_821_2"])   # doctest: +SKIP
        """
        nodes = list(nodes)
        unknown = [n for n in nodes if n not in self.graph]
        if unknown or not nodes:
            raise LlmriError(f"nodes: {unknown[0]!r} is not a node of this graph" if unknown
                             else "nodes: give at least one node id")
        g = self.graph.subgraph(set(nodes) | set(self.nodes(LOGIT))).copy()
        _set_influence(g)
        out = AttributionGraph(g, self.features, self.tokens, self.token_ids, self.target, self.metric, self.info)
        out.validation = self.validation
        return out

    def label_features(self, scan, saes, model=None, n: int = 2, feats: dict | None = None) -> dict:
        """Give every feature node of this graph ``top_activations``: its ``n`` most frequent tokens
        among its strongest activations over ``scan`` (a Scan with token records of the SAE
        sites), the label the figure prints next to the node when no explanation is known.
        Returns the ``{site: FeatureActivations}`` it used: those given in ``feats`` (computed over
        the same scan), and one pass over the scan for each other site.

        >>> p = g.prune(); p.label_features("runs/glosses", saes, model=dec)   # doctest: +SKIP
        """
        return _label_features(self, scan, saes, model=model, n=n, feats=feats)

    def top_features(self, n: int = 10, model=None, saes=None, explanations=None):
        """The ``n`` features with the largest |attribution|: layer, site, position, token, feature,
        activation, attribution, density, top output tokens (with ``model`` and ``saes``), and the
        ``explanation`` and ``simulation_score`` of explained features ("" and NaN for the others):
        those ``attribute`` found, or those of ``explanations`` (see :func:`feature_explanations`).

        >>> g.top_features(10, model=dec, saes=saes, explanations="runs/explain-resid.8")  # doctest: +SKIP
        """
        return _top_features(self, n, model=model, saes=saes, explanations=explanations)

    def scores(self) -> dict:
        """Graph scores (Ameisen et al. 2025; circuit-tracer's ``compute_graph_scores``), on this
        graph's edges: ``replacement_score``, the share of the target's influence that starts at
        token embeddings rather than error nodes; ``completeness_score``, the share of each node's
        incoming |weight| coming from non-error nodes, averaged with the nodes' influence as
        weights; and ``feature_share``, the share of |node attribution| on features rather than
        error nodes over every SAE layer."""
        infl = _influence(self.graph)
        tok = sum(infl[n] for n in self.nodes(EMBEDDING))
        err = sum(infl[n] for n in self.nodes(ERROR))
        num = den = 0.0
        for n, d in self.graph.nodes(data=True):
            if d["kind"] in (FEATURE, LOGIT):
                ins = [(u, abs(e["weight"])) for u, _, e in self.graph.in_edges(n, data=True)]
                total = sum(w for _, w in ins)
                if total > 0:
                    good = sum(w for u, w in ins if self.graph.nodes[u]["kind"] != ERROR)
                    num += infl[n] * good / total
                    den += infl[n]
        lt = self.info.layer_totals
        fa = sum(r["abs_features"] for r in lt)
        ea = sum(r["abs_error"] for r in lt)
        return {"replacement_score": tok / (tok + err) if tok + err > 0 else float("nan"),
                "completeness_score": num / den if den > 0 else float("nan"),
                "feature_share": fa / (fa + ea) if fa + ea > 0 else float("nan")}

    # -------------------------------------------------- pruning
    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> "AttributionGraph":
        """A pruned copy: the fewest feature nodes whose influence on the target adds up to
        ``node_threshold`` of the total, then the fewest edges whose influence adds up to
        ``edge_threshold`` (circuit-tracer's ``prune_graph``); then every node left without a
        path to the target goes (circuit-tracer keeps token and error nodes regardless). Each node
        keeps its ``cumulative_influence`` in the unpruned graph, the ``influence`` the viewer JSON
        carries (circuit-tracer's cumulative share, ranked over every node before pruning)."""
        import networkx as nx

        for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise LlmriError(f"{name} must be in (0, 1], got {v!r}")
        g = self.graph.copy()
        for n, share in _cumulative_share(g).items():  # the viewer's ``influence``, ranked over the whole graph
            g.nodes[n].setdefault("cumulative_influence", share)
        infl = _influence(g)
        feats = sorted(self.nodes(FEATURE), key=lambda n: -infl[n])
        keep = set(_cumulative([infl[n] for n in feats], node_threshold, feats))
        g.remove_nodes_from([n for n in feats if n not in keep])
        infl = _influence(g)
        norm = _normalised_in(g)
        edges = list(g.edges())
        score = [norm[(u, v)] * infl[v] for u, v in edges]
        order = sorted(range(len(edges)), key=lambda i: -score[i])
        kept = set(_cumulative([score[i] for i in order], edge_threshold, [edges[i] for i in order]))
        g.remove_edges_from([e for e in edges if e not in kept])
        logit = self.nodes(LOGIT)[0]
        alive = nx.ancestors(g, logit) | {logit}
        g.remove_nodes_from([n for n in list(g.nodes) if n not in alive])
        _set_influence(g)
        out = AttributionGraph(g, self.features, self.tokens, self.token_ids, self.target, self.metric,
                               replace(self.info, node_threshold=node_threshold, edge_threshold=edge_threshold))
        out.validation, out.explanations = self.validation, self.explanations
        return out

    # -------------------------------------------------- export
    def to_json(self, path, slug: str | None = None) -> Path:
        """Write the graph in circuit-tracer's graph-viewer format (``metadata``, ``qParams``,
        ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), atomically."""
        return _to_json(self, path, slug)

    def to_viewer(self, folder, slug: str | None = None) -> Path:
        """Add the graph to ``folder``, a data folder that circuit-tracer's local server serves as it
        is (``circuit_tracer.frontend.local_server.serve(folder)``): ``<slug>.json`` and its entry in
        ``graph-metadata.json``, beside the graphs already there (``slug`` defaults to one made of
        the prompt and the target). Returns the graph file.

        >>> g.prune().to_viewer("runs/viewer")   # doctest: +SKIP
        """
        return _to_viewer(self, folder, slug)

    def to_dict(self, slug: str = "graph") -> dict:
        """The circuit-tracer JSON as a dict."""
        return _to_dict(self, slug)


def _cumulative(values, threshold, items):
    """The leading items whose values add up to ``threshold`` of the total (at least one)."""
    total = float(sum(values))
    if total <= 0:
        return list(items)
    acc, out = 0.0, []
    for v, it in zip(values, items):
        out.append(it)
        acc += v
        if acc >= threshold * total - 1e-12:
            break
    return out
