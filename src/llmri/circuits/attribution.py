"""``attribute``: the attribution graph of one answer. One node pass gives every node's value and
attribution (:func:`_node_pass`), then edges into the kept features and the target, one batched
backward row per downstream node: between consecutive residual-stream SAE layers (:func:`_edge_pass`),
or, for transcoders, direct effects from every earlier layer (:func:`_transcoder_edge_pass`)."""

from __future__ import annotations

import numpy as np

from ..batches import pad_batch
from ..errors import LlmriError
from ..model import as_model, is_causal_lm
from ..precision import computing, precision_used
from ..sites import parse_site
from .graph import AttributionGraph, GraphInfo
from .influence import EMBEDDING, ERROR, FEATURE, LOGIT, _set_influence
from .inputs import (
    _explained,
    _prompt_ids,
    _target_ids,
    feature_explanations,
    load_saes,
)
from .replacement import (
    _edge_pass,
    _no_param_grads,
    _node_pass,
    _transcoder_edge_pass,
    frozen,
)


def attribute(model, saes, prompt: str, target=None, chat: bool = False, max_feature_nodes: int = 200,
              batch_size: int = 32, freeze: bool = False, skip_first: bool | None = None,
              explanations=None) -> AttributionGraph:
    """The attribution graph of ``model``'s answer to ``prompt`` over the features of ``saes``
    (residual-stream SAEs, one per ``resid.L`` site, or transcoders ``mlp_in.L -> mlp_out.L``, one
    per layer; a folder of SAE folders works too).

    ``target`` is one token (``" Paris"``: the metric is its log-probability at the last
    position), a pair (``(" Paris", " London")``: the logit difference), or None (the model's
    top token). ``chat=True`` wraps the prompt in the chat template. Edges are computed for the
    ``max_feature_nodes`` features with the largest |attribution| (one batched backward row
    each, ``batch_size`` rows at a time). ``freeze=True`` freezes attention patterns and norm
    scales in the backward passes (Ameisen et al. 2025). ``skip_first`` (default: on for
    decoders, as in SAE training) leaves position 0, the attention sink, undecomposed: its whole
    value is its error node. ``explanations`` (``llmri explain --sae`` runs, see
    :func:`feature_explanations`; default: the runs found beside each SAE folder) put each explained
    feature's explanation and simulation score in ``g.features``, the nodes and the page's hover.

    >>> g = llmri.attribute(model, "runs/saes-dec", "The capital of France is", target=" Paris")  # doctest: +SKIP
    >>> g.prune(0.8, 0.98).top_features(10)                                                   # doctest: +SKIP
    """
    import pandas as pd
    import torch


    model = as_model(model)
    if not is_causal_lm(model):
        raise LlmriError(f"attribute: {model.name} is not a decoder with a language-model head")
    for name, v in (("max_feature_nodes", max_feature_nodes), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise LlmriError(f"{name} must be a positive integer, got {v!r}")
    saes = load_saes(saes, model)
    emap = feature_explanations(saes, explanations)
    tok = model.tokenizer
    ids = _prompt_ids(model, prompt, chat)
    tgt = _target_ids(tok, target)
    skip_first = model.adapter.causal if skip_first is None else bool(skip_first)
    saes = [s.to(model.device) for s in saes]
    with _no_param_grads(model.module, *saes), frozen(model, freeze):
        if tgt is None:
            with torch.no_grad(), computing(model, "attribute"):
                tgt = [int(model.module(**pad_batch(model, [ids])[0]).logits[0, -1].argmax())]
        target_str = tok.decode([tgt[0]]) if len(tgt) == 1 else (tok.decode([tgt[0]]), tok.decode([tgt[1]]))
        node = _node_pass(model, saes, ids, tgt, skip_first)
        g, features, totals = _nodes(model, saes, ids, tgt, node, target_str, emap)
        _edges(model, saes, ids, tgt, g, features, node, max_feature_nodes, batch_size, skip_first)
    _set_influence(g)
    tokens = [tok.decode([i]) for i in ids]
    emb_attr = (node["emb"] * node["g_emb"]).sum(-1).cpu().numpy().astype(float).tolist()
    info = GraphInfo(prompt=prompt, model=model.name, n_layers=model.n_layers, sites=[s.site for s in saes],
                     metric_name="logit difference" if len(tgt) == 2 else "log-probability", freeze=bool(freeze),
                     skip_first=skip_first, target_ids=tgt, layer_totals=totals,
                     embedding_attribution=emb_attr, max_feature_nodes=max_feature_nodes,
                     explained={site: len(rows) for site, rows in emap.items()},
                     transcoders=[f"{s.site}->{s.target_site}" for s in saes if s.is_transcoder],
                     precision=precision_used(model, "attribute"))
    out = AttributionGraph(g, pd.DataFrame(features), tokens, ids, target_str, node["metric"], info)
    out.explanations = emap
    return out


def _nodes(model, saes, ids, tgt, node, target_str, emap):
    """Token, feature (every active one is listed; graph nodes for errors and tokens), logit."""
    import networkx as nx

    tok = model.tokenizer
    T = len(ids)
    g = nx.DiGraph(kind="attribution")
    tokens = [tok.decode([i]) for i in ids]
    emb_attr = (node["emb"] * node["g_emb"]).sum(-1).cpu()
    for p in range(T):
        g.add_node(f"E_{ids[p]}_{p}", kind=EMBEDDING, layer=-1, pos=p, feature=-1, token_id=int(ids[p]),
                   activation=float(node["emb"][p].norm()), attribution=float(emb_attr[p]),
                   label=f"token {tokens[p]!r}")
    features, totals = [], []
    for s in saes:
        L = parse_site(s.site)[1]
        f, gf, err, gerr = node[s.site]
        attr = (f * gf).cpu()
        err_attr = (err * gerr).sum(-1).cpu()
        for p in range(T):
            g.add_node(f"{L}_-1_{p}", kind=ERROR, layer=L, pos=p, feature=-1, site=s.site,
                       activation=float(err[p].norm()), attribution=float(err_attr[p]),
                       label=f"error {s.site} @ {p}")
        pos, feat = _nonzero(f)
        a = attr[pos, feat].numpy()
        acts = f.cpu()[pos, feat].numpy()
        grads = gf.cpu()[pos, feat].numpy()
        density = s.feature_density.detach().cpu().numpy()
        explained = emap.get(s.site, {})
        for p, i, ai, ac, gr in zip(pos.tolist(), feat.tolist(), a.tolist(), acts.tolist(), grads.tolist()):
            text, score = _explained(explained.get(i))
            features.append({"layer": L, "site": s.site, "position": p, "token": tokens[p], "feature": i,
                             "activation": ac, "attribution": ai, "gradient": gr, "density": float(density[i]),
                             "node_id": f"{L}_{i}_{p}", "explanation": text, "simulation_score": score})
        totals.append({"layer": L, "site": s.site, "features": float(a.sum()), "error": float(err_attr.sum()),
                       "total": float(a.sum() + err_attr.sum()), "abs_features": float(np.abs(a).sum()),
                       "abs_error": float(err_attr.abs().sum()),
                       "feature_share": float(np.abs(a).sum() / max(np.abs(a).sum() + float(err_attr.abs().sum()), 1e-30)),
                       "active_features": int(len(a))})
    logit_id = f"{model.n_layers + 1}_{tgt[0]}_{T - 1}"
    g.add_node(logit_id, kind=LOGIT, layer=model.n_layers + 1, pos=T - 1, feature=-1, token_id=int(tgt[0]),
               prob=float(node["probs"][tgt[0]]), activation=node["metric"], attribution=node["metric"],
               label=(f"output {target_str!r} (p={float(node['probs'][tgt[0]]):.3f})" if len(tgt) == 1 else
                      f"logit {target_str[0]!r} - {target_str[1]!r}"))
    if len(tgt) == 2:
        g.nodes[logit_id].update(contrast_id=int(tgt[1]), contrast_prob=float(node["probs"][tgt[1]]))
    return g, features, totals


def _nonzero(f):
    """(positions, features) of the nonzero entries of ``f [T, d_sae]``."""
    nz = f.nonzero(as_tuple=True)
    return nz[0].cpu(), nz[1].cpu()


def _edges(model, saes, ids, tgt, g, features, node, max_feature_nodes, batch_size, skip_first):
    """Add kept feature nodes and the edges into them and into the logit."""
    T = len(ids)
    ranked = sorted(features, key=lambda r: -abs(r["attribution"]))[:max_feature_nodes]
    kept_by_layer: dict[int, list] = {}
    site_index = {s.site: k for k, s in enumerate(saes)}
    for r in ranked:
        g.add_node(r["node_id"], kind=FEATURE, layer=r["layer"], pos=r["position"], feature=r["feature"],
                   site=r["site"], activation=r["activation"], attribution=r["attribution"],
                   density=r["density"], label=f"{r['site']} #{r['feature']} @ {r['position']} {r['token']!r}",
                   explanation=r["explanation"], simulation_score=r["simulation_score"])
        kept_by_layer.setdefault(site_index[r["site"]], []).append(r)
    logit = [n for n, d in g.nodes(data=True) if d["kind"] == LOGIT][0]
    if saes[0].is_transcoder:
        _transcoder_edges(model, saes, ids, tgt, g, kept_by_layer, logit, batch_size, skip_first)
        return
    last = len(saes) - 1
    L_last = parse_site(saes[last].site)[1]
    for r in kept_by_layer.get(last, []):
        g.add_edge(r["node_id"], logit, weight=r["attribution"])
    for p in range(T):
        g.add_edge(f"{L_last}_-1_{p}", logit, weight=g.nodes[f"{L_last}_-1_{p}"]["attribution"])
    for k, rows in sorted(kept_by_layer.items()):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            spec = [(r["position"], r["feature"], r["gradient"]) for r in chunk]
            grads, values = _edge_pass(model, saes, ids, k, spec, skip_first)
            heads = [(r["node_id"], r["position"]) for r in chunk]
            if k == 0:
                _link(g, ids, heads, emb=(grads[0], values[0]))
            else:
                _link(g, ids, heads, ups=[(parse_site(saes[k - 1].site)[1], grads, values, kept_by_layer.get(k - 1, []))])


def _link(g, ids, heads, emb=None, ups=()):
    """Edges into ``heads`` (node id, position), one batch row each: from the token embeddings
    (``emb`` = (gradient, value) ``[B, T, d]``) and from the error nodes and kept features of each
    upstream layer in ``ups`` (layer, (feature grads, error grads), (feature values, error values),
    kept feature rows); weight = gradient x value, zero weights (later positions) left out."""
    if emb is not None:
        w_emb = (emb[0] * emb[1][0]).sum(-1).cpu().numpy()  # [B, T]
        for b, (head, pos) in enumerate(heads):
            for p in range(pos + 1):
                if w_emb[b, p] != 0:
                    g.add_edge(f"E_{ids[p]}_{p}", head, weight=float(w_emb[b, p]))
    for Lu, (gf, ge), (f_up, e_up), up_kept in ups:
        w_err = (ge * e_up[0]).sum(-1).cpu().numpy()
        if up_kept:
            up_pos = [u["position"] for u in up_kept]
            up_feat = [u["feature"] for u in up_kept]
            w_feat = (gf[:, up_pos, up_feat] * f_up[0][up_pos, up_feat]).cpu().numpy()  # [B, n_up]
        for b, (head, pos) in enumerate(heads):
            for p in range(pos + 1):
                if w_err[b, p] != 0:
                    g.add_edge(f"{Lu}_-1_{p}", head, weight=float(w_err[b, p]))
            for j, u in enumerate(up_kept):
                if w_feat[b, j] != 0:
                    g.add_edge(u["node_id"], head, weight=float(w_feat[b, j]))


def _transcoder_edges(model, saes, ids, tgt, g, kept_by_layer, logit, batch_size, skip_first):
    """Transcoders: edges into each kept feature, and into the logit, from the token embeddings and
    from the features and errors of every transcoder before it (direct effects, as in circuit-tracer:
    each transcoder's output is cut from its input, so paths through it run through its nodes)."""
    n = len(saes)
    for k in range(n + 1):
        rows = kept_by_layer.get(k, []) if k < n else [None]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            spec = [(r["position"], r["feature"], r["gradient"]) for r in chunk] if k < n else []
            emb, ups = _transcoder_edge_pass(model, saes, ids, k, spec, tgt, skip_first)
            heads = [(r["node_id"], r["position"]) for r in chunk] if k < n else [(logit, len(ids) - 1)]
            _link(g, ids, heads, emb=emb, ups=[(parse_site(saes[j].site)[1], *ups[j], kept_by_layer.get(j, []))
                                               for j in range(k)])
