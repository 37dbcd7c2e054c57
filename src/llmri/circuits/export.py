"""The viewer JSON: an attribution graph in circuit-tracer's graph-viewer format (``metadata``,
``qParams``, ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), as its frontend
reads it. ``AttributionGraph.to_dict`` and ``to_json`` are these functions."""

from __future__ import annotations

import json
from pathlib import Path

from ..store import atomic_write_text
from .influence import EMBEDDING, ERROR, FEATURE, LOGIT, _influence

# circuit-tracer's feature_type strings, which its viewer keys its node styles on
_CT_TYPES = {FEATURE: "cross layer transcoder", ERROR: "mlp reconstruction error", EMBEDDING: "embedding",
             LOGIT: "logit"}


def to_json(g, path, slug: str | None = None) -> Path:
    """Write the graph in circuit-tracer's graph-viewer format (``metadata``, ``qParams``,
    ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(to_dict(g, slug or path.stem), indent=1))
    return path


def to_dict(g, slug: str = "graph") -> dict:
    """The circuit-tracer JSON as a dict."""
    n_layers = g.info.n_layers
    infl = _influence(g.graph)
    T = len(g.tokens)
    nodes = []
    for n, d in g.graph.nodes(data=True):
        kind, pos = d["kind"], int(d["pos"])
        node = {"node_id": n, "ctx_idx": pos, "feature_type": _CT_TYPES[kind], "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": T - 1 - pos,
                "influence": float(infl.get(n, 0.0)), "activation": None, "clerp": d.get("label", "")}
        if kind == FEATURE:
            node.update(feature=int(d["feature"]), layer=str(d["layer"]), jsNodeId=f"{d['layer']}_{d['feature']}-{pos}",
                        activation=float(d["activation"]))
            if d.get("explanation"):  # the viewer shows clerp as the feature's description
                node["clerp"] = f"{d['explanation']} ({d.get('label', '')})"
        elif kind == ERROR:
            node.update(feature=-1, layer=str(d["layer"]), jsNodeId=f"{d['layer']}_-1-{pos}")
        elif kind == EMBEDDING:
            node.update(feature=pos, layer="E", jsNodeId=f"E_{d['token_id']}-{pos}")
        else:
            node.update(feature=int(d["token_id"]), layer=str(n_layers + 1), jsNodeId=f"L_{d['token_id']}-{pos}",
                        is_target_logit=True, token_prob=float(d["prob"]))
        nodes.append(node)
    links = [{"source": u, "target": v, "weight": float(e["weight"])} for u, v, e in g.graph.edges(data=True)]
    meta = {"slug": slug, "scan": g.info.model, "transcoder_list": g.info.transcoders,
            "prompt_tokens": g.tokens,
            "prompt": g.info.prompt, "node_threshold": g.info.node_threshold,
            "schema_version": 1,
            "info": {"generator": "llmri", "target": g.target, "metric": g.info.metric_name,
                     "metric_value": g.metric, "sae_sites": g.info.sites, "freeze": g.info.freeze,
                     "precision": g.info.precision,
                     "scores": g.scores(), "validation": _jsonable(g.validation)}}
    return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both",
                                          "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def _jsonable(obj):
    if obj is None:
        return None
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
