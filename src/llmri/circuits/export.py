"""The viewer JSON: an attribution graph in circuit-tracer's graph-viewer format (``metadata``,
``qParams``, ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), written so that its
frontend's data step (``formatData`` in ``attribution_graph/util-cg.js``) reads it as meant, and the
data folder its local server serves (``graph-metadata.json``, an index of graphs, beside one
``<slug>.json`` per graph). ``AttributionGraph.to_dict``, ``to_json`` and ``to_viewer`` are these
functions.

What the viewer assumes, and so what is written (circuit-tracer 0.5.0):

* ``metadata.schema_version`` 1: a feature node's ``feature`` is the Cantor pairing of (layer,
  latent index), ``(x + y)(x + y + 1)/2 + y``, which the viewer undoes (``util.cantorUnpair``) to
  print ``L{layer}/{index}``. The node id keeps llmri's ``{layer}_{index}_{pos}``.
* ``influence`` is the cumulative share of ``prune_graph``: nodes ranked by influence on the target,
  each given the running sum over the total (small is important), ranked over the unpruned graph;
  the viewer hides nodes above the index's ``node_threshold``. llmri's own influence (1 at the
  target, propagated backwards) is ``raw_influence``.
* the target logit's ``clerp`` reads ``Output "token" (p=0.773)``: the viewer takes the token
  between the first two quotes and the probability after ``(p=``. A logit difference names its
  contrast token after it, ``Output " Paris" (p=0.512) minus " London" (p=0.201)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import LlmriError
from ..store import atomic_write_json, check_out_folder, json_safe
from .influence import EMBEDDING, ERROR, FEATURE, LOGIT, _cumulative_share, _influence

# circuit-tracer's feature_type strings, which its viewer keys its node styles on
_CT_TYPES = {FEATURE: "cross layer transcoder", ERROR: "mlp reconstruction error", EMBEDDING: "embedding",
             LOGIT: "logit"}
INDEX = "graph-metadata.json"  # the data folder's index of graphs, as circuit-tracer's server serves it
_INDEX_KEYS = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def cantor_pair(layer: int, index: int) -> int:
    """The Cantor pairing of (layer, latent index): the feature id of schema version 1."""
    return (layer + index) * (layer + index + 1) // 2 + index


def to_json(g, path, slug: str | None = None) -> Path:
    """Write the graph in circuit-tracer's graph-viewer format (``metadata``, ``qParams``,
    ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), atomically."""
    return _write(to_dict(g, slug or Path(path).stem), path)


def to_viewer(g, folder, slug: str | None = None) -> Path:
    """Add the graph to ``folder``, a data folder of circuit-tracer's local server
    (``circuit_tracer.frontend.local_server.serve(folder)``): ``<slug>.json`` plus its entry in
    ``graph-metadata.json``, which keeps the entries of other slugs (a graph of the same slug is
    replaced). ``slug`` defaults to one made of the prompt and the target. Returns the graph file."""
    slug = default_slug(g) if slug is None else check_slug(slug)
    folder = Path(folder)
    graphs = read_index(folder)
    data = to_dict(g, slug)
    path = _write(data, folder / f"{slug}.json")
    entry = {k: data["metadata"][k] for k in _INDEX_KEYS}
    atomic_write_json(folder / INDEX, {"graphs": [e for e in graphs if e["slug"] != slug] + [entry]})
    return path


def check_slug(slug) -> str:
    """``slug``, refused in one line unless it is a plain file name."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug) or slug == Path(INDEX).stem:
        raise LlmriError(f"slug: {slug!r} is not a file name of letters, digits, '.', '_' or '-' "
                         f"(at most 100, not {Path(INDEX).stem!r})")
    return slug


def read_index(folder) -> list[dict]:
    """The graph entries of ``folder/graph-metadata.json`` ([] when there is none), checked: a folder
    that is not one, or an index that is not circuit-tracer's, is a one-line error."""
    index = check_out_folder(folder, "give a data folder for the viewer") / INDEX
    if not index.exists():
        return []
    try:
        graphs = json.loads(index.read_text())["graphs"]
        if not isinstance(graphs, list) or not all(isinstance(e, dict) and "slug" in e for e in graphs):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        raise LlmriError(f"{index}: not a graph index (a JSON object with a list 'graphs' of entries "
                         "with a 'slug'); give another viewer folder") from None
    return graphs


def _write(data: dict, path) -> Path:
    """``data`` as strict JSON (a missing score, NaN, becomes null: the viewer's JSON.parse reads no NaN)."""
    atomic_write_json(Path(path), json_safe(data))
    return Path(path)


def default_slug(g) -> str:
    """A file-name slug of the prompt and the target: ``the-capital-of-france-is-paris``."""
    target = " ".join(g.target) if isinstance(g.target, (tuple, list)) else str(g.target)
    words = re.sub(r"[^a-z0-9]+", "-", f"{g.info.prompt} {target}".lower()).strip("-")
    return (words[:80].rstrip("-") or "graph")


def _logit_clerp(g, d) -> str:
    """The viewer's form of a target: ``Output "token" (p=0.773)``, a contrast named after it."""
    if isinstance(g.target, (tuple, list)):
        return (f'Output "{g.target[0]}" (p={float(d["prob"]):.3f}) minus '
                f'"{g.target[1]}" (p={float(d.get("contrast_prob", float("nan"))):.3f})')
    return f'Output "{g.target}" (p={float(d["prob"]):.3f})'


def to_dict(g, slug: str = "graph") -> dict:
    """The circuit-tracer JSON as a dict."""
    n_layers = g.info.n_layers
    infl = _influence(g.graph)
    shares = (dict(g.graph.nodes(data="cumulative_influence"))
              if all("cumulative_influence" in d for _, d in g.graph.nodes(data=True) if d["kind"] != LOGIT)
              else _cumulative_share(g.graph))
    T = len(g.tokens)
    nodes = []
    for n, d in g.graph.nodes(data=True):
        kind, pos = d["kind"], int(d["pos"])
        node = {"node_id": n, "ctx_idx": pos, "feature_type": _CT_TYPES[kind], "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": T - 1 - pos,
                "influence": None if kind == LOGIT else float(shares[n]),
                "raw_influence": float(infl.get(n, 0.0)), "activation": None, "clerp": d.get("label", "")}
        if kind == FEATURE:
            layer, index = int(d["layer"]), int(d["feature"])
            node.update(feature=cantor_pair(layer, index), layer=str(layer), jsNodeId=f"{layer}_{index}-{pos}",
                        activation=float(d["activation"]))
            if d.get("explanation"):  # the viewer shows clerp as the feature's description
                node["clerp"] = f"{d['explanation']} ({d.get('label', '')})"
        elif kind == ERROR:
            node.update(feature=-1, layer=str(d["layer"]), jsNodeId=f"{d['layer']}_-1-{pos}")
        elif kind == EMBEDDING:
            node.update(feature=pos, layer="E", jsNodeId=f"E_{d['token_id']}-{pos}")
        else:
            node.update(feature=int(d["token_id"]), layer=str(n_layers + 1), jsNodeId=f"L_{d['token_id']}-{pos}",
                        is_target_logit=True, token_prob=float(d["prob"]), clerp=_logit_clerp(g, d))
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
