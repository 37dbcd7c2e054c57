"""Feature circuits: the attribution graph of one answer over per-layer residual-stream SAE features
or per-layer transcoders.

``attribute(model, saes, prompt, target)`` linearises the model around one prompt (attribution
patching: Nanda 2023; Syed et al. 2023) with an SAE spliced in at each chosen ``resid.L`` site,
as in Marks et al. 2024, "Sparse feature circuits" (arXiv:2403.19647):

* At every SAE site the value is rewritten as ``x = decode(f) + err``: feature activations ``f``
  (nodes at (layer, position, feature)) plus the SAE's error term ``err`` (one error node per
  site and position). The rewrite is the identity, so the model computes exactly what it did.
* The metric is the log-probability of the target token at the last position, or the logit
  difference of a pair. Node attribution = d metric / d node x node (for a feature: gradient
  times activation; for an error or a token embedding: the dot product of its vector with the
  gradient). One backward pass gives every node of every layer. For one layer the attributions
  of its features plus its error nodes sum to ``grad . (x - b_dec)``: the first-order change of
  the metric when the layer's features and errors are all removed.
* Edges link the nodes of consecutive SAE layers (and token embeddings to the first one) with
  the same linearisation: ``w(u -> d) = (dm/dd) (dd/du) u`` (Marks et al., eq. 4), where the
  upstream layer's features and errors are cut from everything before them. One backward pass
  per kept downstream node, batched ``batch_size`` at a time; never a forward per feature.
  Error nodes are sources, as in circuit-tracer: they have no incoming edges. Edges into the
  target come from the last SAE layer, weighted by the node attributions.
* Transcoders (``mlp_in.L -> mlp_out.L``, one kind per graph) rewrite the MLP output instead:
  ``mlp_out.L = decode(encode(mlp_in.L)) + err``, ``err`` being the true output minus the
  reconstruction, held fixed; features and one error node per position are the nodes, as for SAEs.
  A transcoder layer does not carry the whole residual stream, so its edges are direct effects as
  in circuit-tracer (Ameisen et al. 2025): each feature, and the target, gets edges from the token
  embeddings and from the features and errors of every earlier transcoder, with every transcoder's
  output cut from its MLP input in that backward pass (paths through an MLP run through its nodes).
* ``freeze=True`` detaches attention patterns and normalisation scales in the backward passes
  (Ameisen et al. 2025, "Circuit tracing", which freezes them so that direct effects are linear).
  By default nothing is frozen: gradients are the model's own (Marks et al.), so attributions are
  the first-order effect of really removing a node, which ``validate_circuit`` checks.

Pruning and the graph scores follow circuit-tracer (Ameisen et al. 2025, "Graph pruning" and the
replacement/completeness scores; ``prune_graph`` / ``compute_graph_scores`` in
github.com/safety-research/circuit-tracer): influence on the target propagated backwards with
each node's incoming |weights| normalised to sum to one. The JSON export writes the nodes/links
format of circuit-tracer's graph viewer (``circuit_tracer/frontend/graph_models.py``).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from .errors import LlmriError
from .sites import parse_site

FEATURE, ERROR, EMBEDDING, LOGIT = "feature", "error", "embedding", "logit"
# circuit-tracer's feature_type strings, which its viewer keys its node styles on
_CT_TYPES = {FEATURE: "cross layer transcoder", ERROR: "mlp reconstruction error", EMBEDDING: "embedding",
             LOGIT: "logit"}


# ---------------------------------------------------------------- inputs
def load_saes(saes, model=None) -> list:
    """The SAEs of ``saes`` (an SAE, a list or dict of them, an SAE folder, or a folder of SAE
    folders) sorted by layer, checked against ``model`` when given: residual-stream SAEs (site
    ``resid.L``) or transcoders (``mlp_in.L -> mlp_out.L``), one kind per graph."""
    from .sae import SAE
    from .sae.model import CFG_FILE

    if isinstance(saes, (str, Path)):
        root = Path(saes)
        if not root.is_dir():
            raise LlmriError(f"saes: {root}: no such folder")
        if (root / CFG_FILE).is_file():
            saes = [SAE.load(root)]
        else:
            subs = sorted(p for p in root.iterdir() if (p / CFG_FILE).is_file())
            if not subs:
                raise LlmriError(f"saes: {root}: no SAE folders in it (folders with {CFG_FILE})")
            saes = [SAE.load(p) for p in subs]
    elif isinstance(saes, SAE):
        saes = [saes]
    elif isinstance(saes, dict):
        saes = list(saes.values())
    elif not isinstance(saes, (list, tuple)):
        raise LlmriError(f"saes: expected an SAE, a list or dict of SAEs, or a folder, got {type(saes).__name__}")
    saes = list(saes)
    if not saes:
        raise LlmriError("saes: no SAEs given")
    from .sites import parse_site

    for i, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise LlmriError(f"saes[{i}]: expected an llmri.SAE (SAE.load(folder)), got {type(sae).__name__}")
        if sae.site is None:
            raise LlmriError(f"saes[{i}]: the SAE does not say which site it reads; set sae.site, e.g. 'resid.6'")
        if sae.is_transcoder:
            (k_in, l_in), (k_out, l_out) = parse_site(sae.site), parse_site(sae.target_site)
            if (k_in, k_out) != ("mlp_in", "mlp_out") or l_in != l_out:
                raise LlmriError(f"saes[{i}]: transcoder {sae.site} -> {sae.target_site}: attribute takes "
                                 "transcoders from mlp_in.L to mlp_out.L of the same block")
        elif parse_site(sae.site)[0] != "resid":
            raise LlmriError(f"saes[{i}]: site {sae.site!r}: attribute takes residual-stream SAEs (site resid.L) "
                             "or transcoders (mlp_in.L -> mlp_out.L)")
    if len({s.is_transcoder for s in saes}) > 1:
        first = next(s for s in saes if s.is_transcoder)
        other = next(s for s in saes if not s.is_transcoder)
        raise LlmriError(f"saes: a mix of residual-stream SAEs ({other.site}) and transcoders ({first.site} -> "
                         f"{first.target_site}); one graph takes one kind")
    sites = [s.site for s in saes]
    dup = sorted({s for s in sites if sites.count(s) > 1})
    if dup:
        raise LlmriError(f"saes: two SAEs for site {dup[0]}")
    saes.sort(key=lambda s: parse_site(s.site)[1])
    if model is not None:
        _check_fit(saes, model)
    return saes


def _check_fit(saes, model) -> None:
    from .sae.evaluate import check_sae_fits

    width = model.module.get_input_embeddings().weight.shape[1]
    for sae in saes:
        check_sae_fits(sae, model)
        if sae.d_in != width or sae.d_out != width:
            raise LlmriError(f"the SAE of {sae.site} reads vectors of width {sae.d_in} (writes {sae.d_out}), but "
                             f"{model.name}'s residual stream has width {width}: it belongs to another model")
        if sae.model_name and model.name and Path(str(sae.model_name)).name != Path(str(model.name)).name:
            raise LlmriError(f"the SAE of {sae.site} was trained on {sae.model_name}, not {model.name}")


def feature_explanations(saes, explanations=None) -> dict[str, dict[int, dict]]:
    """``{site: {feature: explain row}}`` for the features of ``saes`` (from :func:`load_saes`, or
    their site names):
    the rows of ``llmri explain --sae`` runs (explanation, simulation score, baselines).

    ``explanations``: an explain output folder or its ``explain.json``, an
    :class:`llmri.ExplainResult`, or a list of them (one per SAE site, or several; a later run wins
    for a feature both explain). None: the runs found beside each SAE folder, as ``llmri sae
    report`` finds them (:func:`llmri.explain.find_explanations`). A run of neurons, of a site
    without an SAE here, or of another SAE of the same site is a one-line error naming it.

    >>> llmri.circuits.feature_explanations(saes, "runs/explain-resid.8")["resid.8"][123]["explanation"]  # doctest: +SKIP
    """
    from .explain.explainer import ExplainResult, find_explanations, unit_explanations

    folders = {s: None for s in saes if isinstance(s, str)}
    folders.update({s.site: getattr(s, "folder", None) for s in saes if not isinstance(s, str)})
    if explanations is None:
        found = {site: find_explanations(f, site, "feature") for site, f in folders.items() if f is not None}
        return {site: unit_explanations(runs, site, "feature") for site, runs in found.items() if runs}
    groups: dict[str, list] = {}
    for run in explanations if isinstance(explanations, (list, tuple)) else [explanations]:
        if isinstance(run, ExplainResult):
            res, where = run, "an explain run"
        else:
            folder = Path(run).parent if Path(run).name == "explain.json" else Path(run)
            if not (folder / "explanations.csv").is_file() or not (folder / "explain.json").is_file():
                raise LlmriError(f"explanations: {run}: not an explain output folder (no explanations.csv and "
                                 f"explain.json); run llmri explain --sae with --out {folder}")
            res, where = ExplainResult.load(folder), str(run)
        site, kind = res.info.get("site"), res.info.get("unit_kind", "neuron")
        if kind != "feature":
            raise LlmriError(f"explanations: {where}: explains the {kind}s of {site}, not SAE features")
        if site not in folders:
            raise LlmriError(f"explanations: {where}: explains the features of {site}, but the SAEs are at "
                             f"{', '.join(folders)}")
        made_from, ours = res.info.get("sae"), folders[site]
        if made_from and ours is not None and Path(made_from).resolve() != Path(ours).resolve():
            raise LlmriError(f"explanations: {where}: explains the features of the SAE in {made_from}, "
                             f"not of the one in {ours}")
        groups.setdefault(site, []).append(res)
    return {site: unit_explanations(runs, site, "feature") for site, runs in groups.items()}


def _explained(row: dict | None) -> tuple[str, float]:
    """(explanation, simulation score) of an explain row, ("", nan) without one."""
    if not row:
        return "", float("nan")
    score = row.get("simulation_score")
    return str(row.get("explanation") or ""), float("nan") if score is None else float(score)


def _one_token(tok, text, what: str = "target") -> int:
    if not isinstance(text, str) or not text:
        raise LlmriError(f"{what}: give a non-empty string such as ' Paris', got {text!r}")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise LlmriError(f"{what} {text!r} is not one token: the tokenizer splits it into {len(ids)} tokens "
                         f"{pieces}; give a single token, e.g. {pieces[0]!r}" if ids else
                         f"{what} {text!r} is not one token: the tokenizer produces no token for it")
    return int(ids[0])


def _prompt_ids(model, prompt, chat: bool) -> list[int]:
    from .generate import chat_prompt

    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmriError(f"prompt: give a non-empty string, got {prompt!r}")
    text = chat_prompt(model, prompt, True) if chat else prompt
    ids = model.tokenizer(text, add_special_tokens=not chat)["input_ids"]
    if not ids:
        raise LlmriError("prompt: the tokenizer produced no tokens")
    if len(ids) > model.max_length:
        raise LlmriError(f"prompt: {len(ids)} tokens exceed the model's limit of {model.max_length}")
    return list(ids)


# ---------------------------------------------------------------- running the model
@contextlib.contextmanager
def _no_param_grads(*modules):
    """Parameters stop requiring gradients inside the block (backward passes then only reach
    activations); restored on exit."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def frozen(model, freeze: bool = True):
    """Inside the block, backward passes treat attention patterns and normalisation scales as
    constants (Ameisen et al. 2025); forward values are unchanged bit for bit.

    Norms: LayerNorm and ``*RMSNorm`` modules (forward hooks). Attention: eager attention,
    whose softmax output is detached (``torch.nn.functional.softmax`` is wrapped in the block).
    """
    if not freeze:
        yield
        return
    import torch
    import torch.nn.functional as F

    from .sites import eager_attention

    def norm_hook(mod, args, out):
        h = (args[0] if args else None)
        if not isinstance(h, torch.Tensor) or not isinstance(out, torch.Tensor):
            return None
        h32 = h.float()
        eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6)))
        if isinstance(mod, torch.nn.LayerNorm):
            c = h32 - h32.mean(-1, keepdim=True)
            scale = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps).detach()
            y = c * scale * (mod.weight.float() if mod.weight is not None else 1.0)
        else:
            scale = torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps).detach()
            w = getattr(mod, "weight", None)
            w = 1.0 if w is None else (1.0 + w.float() if "Gemma" in type(mod).__name__ else w.float())
            y = h32 * scale * w
        return out.detach() + (y - y.detach()).to(out.dtype)  # the value of out, the frozen gradient

    handles = [m.register_forward_hook(norm_hook) for m in model.module.modules()
               if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    original = F.softmax

    def detached_softmax(*args, **kwargs):
        return original(*args, **kwargs).detach()

    try:
        with eager_attention(model.module):
            F.softmax = detached_softmax
            yield
    finally:
        F.softmax = original
        for h in handles:
            h.remove()


def _metric(logits, tgt):
    """Log-probability of ``tgt[0]`` (one target) or the logit difference ``tgt[0] - tgt[1]``."""
    import torch

    logits = logits.float()
    if len(tgt) == 2:
        return logits[:, tgt[0]] - logits[:, tgt[1]]
    return torch.log_softmax(logits, -1)[:, tgt[0]]


class _Stop(Exception):
    pass


def _encode(sae, x, skip_first: bool):
    f = sae.encode(x)
    if skip_first:  # the attention sink at position 0 is left undecomposed (its error node holds it)
        f = f.clone()
        f[:, 0] = 0
    return f


def _reader(state: dict, site: str):
    """A hook that keeps the value of ``site`` in ``state["in", site]`` (a transcoder's input)."""
    def fn(x):
        state["in", site] = x
    return fn


def _node_pass(model, saes, ids, tgt, skip_first: bool):
    """One forward and one backward pass: every node's value and the metric's gradient at it."""
    import torch

    from .capture import pad_batch
    from .sites import hooks

    state: dict = {}

    def site_fn(sae):
        def fn(x):
            if sae is None:  # resid.0 without an SAE: the embedding node only
                return emb(x)
            if sae.site == "resid.0":
                x = emb(x)
            xf = x.float()
            with torch.no_grad():
                f = _encode(sae, xf, skip_first)
                err = xf - sae.decode(f)
            fl, el = f.requires_grad_(), err.requires_grad_()
            state[sae.site] = (fl, el)
            return (sae.decode(fl) + el + (xf - xf.detach())).to(x.dtype)
        return fn

    def emb(x):
        e = x.detach().float().requires_grad_()
        state["emb"] = e
        return e.to(x.dtype)

    def transcoder_fn(sae):  # mlp_out.L = decode(f) + err, f = encode(mlp_in.L) and err as leaves
        def fn(y):
            yf = y.float()
            with torch.no_grad():
                f = _encode(sae, state["in", sae.site].float(), skip_first)
                err = yf - sae.decode(f)
            fl, el = f.requires_grad_(), err.requires_grad_()
            state[sae.site] = (fl, el)
            return (sae.decode(fl) + el + (yf - yf.detach())).to(y.dtype)
        return fn

    fns = {}
    for s in saes:
        if s.is_transcoder:
            fns[s.site], fns[s.target_site] = _reader(state, s.site), transcoder_fn(s)
        else:
            fns[s.site] = site_fn(s)
    fns.setdefault("resid.0", site_fn(None))
    inputs, _ = pad_batch(model, [ids])
    with hooks(model.module, model.adapter, fns), torch.enable_grad():
        logits = model.module(**inputs).logits[:, -1]
        m = _metric(logits, tgt)
        m.sum().backward()
    probs = torch.softmax(logits.detach().float(), -1)[0]
    out = {"metric": float(m.detach()[0]), "probs": probs, "emb": state["emb"].detach()[0],
           "g_emb": state["emb"].grad[0]}
    for s in saes:
        fl, el = state[s.site]
        out[s.site] = (fl.detach()[0], fl.grad[0], el.detach()[0], el.grad[0])
    return out


def _edge_pass(model, saes, ids, k: int, rows: list[tuple[int, int, float]], skip_first: bool):
    """Gradients of ``sum_b w_b * f_k[b, pos_b, feat_b]`` at the nodes feeding SAE ``k``: the
    features and errors of SAE ``k - 1`` (or the token embeddings when ``k == 0``), one batch row
    per downstream node, each upstream layer cut from everything before it."""
    import torch

    from .capture import pad_batch
    from .sites import hooks

    B = len(rows)
    state: dict = {}
    target = saes[k]

    # The prompt runs as one row up to the upstream layer, which is then copied into B rows:
    # the layers before it are computed once, not B times.
    def rows_of(t):
        return t.detach().expand(B, *t.shape[1:]).clone().requires_grad_()

    def up_fn(sae):
        def fn(x):
            xf = x.float()
            with torch.no_grad():
                f = _encode(sae, xf, skip_first)
                err = xf - sae.decode(f)
            fl, el = rows_of(f), rows_of(err)
            state["up"] = (fl, el)
            return (sae.decode(fl) + el).to(x.dtype)
        return fn

    def emb(x):
        e = rows_of(x.float())
        state["up"] = (e,)
        return e.to(x.dtype)

    def down(x):
        if k == 0 and target.site == "resid.0":
            x = emb(x)
        f = _encode(target, x.float(), skip_first)
        pos = torch.tensor([r[0] for r in rows], device=f.device)
        feat = torch.tensor([r[1] for r in rows], device=f.device)
        w = torch.tensor([r[2] for r in rows], device=f.device, dtype=f.dtype)
        state["scalar"] = (f[torch.arange(B, device=f.device), pos, feat] * w).sum()
        raise _Stop

    fns = {target.site: down}
    if k == 0:
        if target.site != "resid.0":
            fns["resid.0"] = emb
    else:
        fns[saes[k - 1].site] = up_fn(saes[k - 1])
    inputs, _ = pad_batch(model, [ids])
    with hooks(model.module, model.adapter, fns), torch.enable_grad():
        try:
            model.module(**inputs)
        except _Stop:
            pass
        state["scalar"].backward()
    return [t.grad for t in state["up"]], [t.detach() for t in state["up"]]


# ---------------------------------------------------------------- the graph
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
        self.info = info
        self.validation: dict | None = None
        self.explanations: dict = {}  # {site: {feature: explain row}} of the explained features

    def __repr__(self) -> str:
        g = self.graph
        return (f"AttributionGraph({self.info['prompt']!r} -> {self.target!r}, metric {self.metric:.4g}, "
                f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges)")

    # -------------------------------------------------- views
    def nodes(self, kind: str | None = None) -> list:
        return [n for n, d in self.graph.nodes(data=True) if kind is None or d["kind"] == kind]

    def layer_totals(self):
        """Per SAE layer: the summed attribution of its features and of its error nodes, their
        sum (the first-order change of the metric when the layer is removed down to ``b_dec``)
        and the share carried by features, ``|features| / (|features| + |errors|)`` summed per node."""
        import pandas as pd

        return pd.DataFrame(self.info["layer_totals"])

    def token_totals(self):
        """Per prompt position: the attribution of its token embedding and the summed attribution
        of the features active there (over every SAE layer)."""
        import pandas as pd

        df = self.features
        per = df.groupby("position")["attribution"].sum() if len(df) else pd.Series(dtype=float)
        return pd.DataFrame({"position": range(len(self.tokens)), "token": self.tokens,
                             "embedding": self.info["embedding_attribution"],
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
        for n, v in _influence(g).items():
            g.nodes[n]["influence"] = v
        out = AttributionGraph(g, self.features, self.tokens, self.token_ids, self.target, self.metric, dict(self.info))
        out.validation = self.validation
        return out

    def label_features(self, scan, saes, model=None, n: int = 2) -> dict:
        """Give every feature node of this graph ``top_activations``: its ``n`` most frequent tokens
        among its strongest activations over ``scan`` (a Scan with token records of the SAE
        sites), the label the figure prints next to the node when no explanation is known.
        Returns the ``{site: FeatureActivations}`` it computed (one pass over the scan per site).

        >>> p = g.prune(); p.label_features("runs/glosses", saes, model=dec)   # doctest: +SKIP
        """
        from .sae import feature_activations
        from .sae.features import top_activating_tokens
        from .store import Scan

        scan = scan if isinstance(scan, Scan) else Scan.open(scan)
        by_site = {s.site: s for s in load_saes(saes)}
        nodes = [(node, d) for node, d in self.graph.nodes(data=True) if d["kind"] == FEATURE]
        sites = sorted({d["site"] for _, d in nodes})
        missing = [s for s in sites if s not in scan.token_sites]
        if missing:
            raise LlmriError(f"scan {scan.folder}: no token records of {missing[0]}, a site of the SAEs "
                             f"(scan with --token-sites {','.join(sites)})")
        feats = {}
        for site in sites:
            if site not in by_site:
                raise LlmriError(f"saes: no SAE of {site}, a site of the graph")
            feats[site] = feature_activations(by_site[site], scan, progress=False)
            mine = [(node, d) for node, d in nodes if d["site"] == site]
            for (node, d), label in zip(mine, top_activating_tokens(feats[site], [d["feature"] for _, d in mine],
                                                                    n=n, model=model)):
                d["top_activations"] = label
        return feats

    def top_features(self, n: int = 10, model=None, saes=None, explanations=None):
        """The ``n`` features with the largest |attribution|: layer, site, position, token, feature,
        activation, attribution, density, top output tokens (with ``model`` and ``saes``), and the
        ``explanation`` and ``simulation_score`` of explained features ("" and NaN for the others):
        those ``attribute`` found, or those of ``explanations`` (see :func:`feature_explanations`).

        >>> g.top_features(10, model=dec, saes=saes, explanations="runs/explain-resid.8")  # doctest: +SKIP
        """
        import pandas as pd

        if not isinstance(n, (int, np.integer)) or n < 1:
            raise LlmriError(f"n must be a positive integer, got {n!r}")
        df = self.features.reindex(self.features["attribution"].abs().sort_values(ascending=False).index).head(n)
        df = df.reset_index(drop=True)
        if explanations is not None:
            emap = feature_explanations(load_saes(saes) if saes is not None else self.info["sites"], explanations)
            rows = [_explained(emap.get(site, {}).get(int(f))) for site, f in zip(df["site"], df["feature"])]
            df["explanation"] = [r[0] for r in rows]
            df["simulation_score"] = [r[1] for r in rows]
        if model is not None and saes is not None:
            from .sae.features import output_tokens

            by_site = {s.site: s for s in load_saes(saes)}
            tops = []
            for site, feat in zip(df["site"], df["feature"]):
                t = output_tokens(by_site[site], int(feat), model, top=5) if site in by_site else None
                tops.append(", ".join(t[t["direction"] == "up"]["token"]) if t is not None else "")
            df["top_tokens"] = tops
        return pd.DataFrame(df)

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
        lt = self.info["layer_totals"]
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
        path to the target goes (circuit-tracer keeps token and error nodes regardless)."""
        import networkx as nx

        for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise LlmriError(f"{name} must be in (0, 1], got {v!r}")
        g = self.graph.copy()
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
        for n, v in _influence(g).items():
            g.nodes[n]["influence"] = v
        out = AttributionGraph(g, self.features, self.tokens, self.token_ids, self.target, self.metric,
                               dict(self.info, node_threshold=node_threshold, edge_threshold=edge_threshold))
        out.validation, out.explanations = self.validation, self.explanations
        return out

    # -------------------------------------------------- export
    def to_json(self, path, slug: str | None = None) -> Path:
        """Write the graph in circuit-tracer's graph-viewer format (``metadata``, ``qParams``,
        ``nodes``, ``links``; ``circuit_tracer/frontend/graph_models.py``), atomically."""
        from .store import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(slug or path.stem), indent=1))
        return path

    def to_dict(self, slug: str = "graph") -> dict:
        """The circuit-tracer JSON as a dict."""
        n_layers = self.info["n_layers"]
        infl = _influence(self.graph)
        T = len(self.tokens)
        nodes = []
        for n, d in self.graph.nodes(data=True):
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
        links = [{"source": u, "target": v, "weight": float(e["weight"])} for u, v, e in self.graph.edges(data=True)]
        meta = {"slug": slug, "scan": self.info["model"], "transcoder_list": self.info.get("transcoders", []),
                "prompt_tokens": self.tokens,
                "prompt": self.info["prompt"], "node_threshold": self.info.get("node_threshold"),
                "schema_version": 1,
                "info": {"generator": "llmri", "target": self.target, "metric": self.info["metric_name"],
                         "metric_value": self.metric, "sae_sites": self.info["sites"], "freeze": self.info["freeze"],
                         "scores": self.scores(), "validation": _jsonable(self.validation)}}
        return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both",
                                              "clickedId": "", "sg_pos": ""},
                "nodes": nodes, "links": links}


def _jsonable(obj):
    if obj is None:
        return None
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


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


# ---------------------------------------------------------------- attribute
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

    from .model import as_model, is_causal_lm

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
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise LlmriError(f"target: give one token or a pair (' Paris', ' London'), got {len(target)} items")
        tgt = [_one_token(tok, t, "target") for t in target]
        if tgt[0] == tgt[1]:
            raise LlmriError(f"target: the pair {tuple(target)!r} is one token twice")
    elif target is None:
        tgt = None
    else:
        tgt = [_one_token(tok, target, "target")]
    skip_first = model.adapter.causal if skip_first is None else bool(skip_first)
    saes = [s.to(model.device) for s in saes]
    with _no_param_grads(model.module, *saes), frozen(model, freeze):
        if tgt is None:
            from .capture import pad_batch

            with torch.no_grad():
                tgt = [int(model.module(**pad_batch(model, [ids])[0]).logits[0, -1].argmax())]
        target_str = tok.decode([tgt[0]]) if len(tgt) == 1 else (tok.decode([tgt[0]]), tok.decode([tgt[1]]))
        node = _node_pass(model, saes, ids, tgt, skip_first)
        g, features, totals = _nodes(model, saes, ids, tgt, node, target_str, emap)
        _edges(model, saes, ids, tgt, g, features, node, max_feature_nodes, batch_size, skip_first)
    for n, v in _influence(g).items():
        g.nodes[n]["influence"] = v
    tokens = [tok.decode([i]) for i in ids]
    emb_attr = (node["emb"] * node["g_emb"]).sum(-1).cpu().numpy().astype(float).tolist()
    info = {"prompt": prompt, "model": model.name, "n_layers": model.n_layers, "sites": [s.site for s in saes],
            "metric_name": "logit difference" if len(tgt) == 2 else "log-probability", "freeze": bool(freeze),
            "skip_first": skip_first, "target_ids": tgt, "layer_totals": totals,
            "embedding_attribution": emb_attr, "max_feature_nodes": max_feature_nodes,
            "explained": {site: len(rows) for site, rows in emap.items()},
            "transcoders": [f"{s.site}->{s.target_site}" for s in saes if s.is_transcoder]}
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


def _transcoder_edge_pass(model, saes, ids, k: int, rows, tgt, skip_first: bool):
    """Gradients of ``sum_b w_b * f_k[b, pos_b, feat_b]`` (or of the metric when ``k == len(saes)``)
    at the token embeddings and at the features and errors of transcoders ``0..k-1``, whose outputs
    are rewritten as ``decode(f) + err`` with ``f`` and ``err`` cut from the MLP's input; one batch
    row per downstream node. Returns ``(grad, value)`` of the embeddings and, per upstream
    transcoder, ``((feature grad, error grad), (feature value, error value))``."""
    import torch

    from .capture import pad_batch
    from .sites import hooks

    B = max(len(rows), 1)
    state: dict = {}

    def emb(x):
        e = x.detach().float().expand(B, *x.shape[1:]).clone().requires_grad_()
        state["emb"] = e
        return e.to(x.dtype)

    def cut(sae):
        def fn(y):
            with torch.no_grad():
                f = _encode(sae, state["in", sae.site].float(), skip_first)
                err = y.float() - sae.decode(f)
            fl, el = f.requires_grad_(), err.requires_grad_()
            state[sae.site] = (fl, el)
            return (sae.decode(fl) + el).to(y.dtype)
        return fn

    def down(x):
        f = _encode(saes[k], x.float(), skip_first)
        pos = torch.tensor([r[0] for r in rows], device=f.device)
        feat = torch.tensor([r[1] for r in rows], device=f.device)
        w = torch.tensor([r[2] for r in rows], device=f.device, dtype=f.dtype)
        state["scalar"] = (f[torch.arange(B, device=f.device), pos, feat] * w).sum()
        raise _Stop

    fns = {"resid.0": emb}
    for s in saes[:k]:
        fns[s.site], fns[s.target_site] = _reader(state, s.site), cut(s)
    if k < len(saes):
        fns[saes[k].site] = down
    inputs, _ = pad_batch(model, [ids])
    with hooks(model.module, model.adapter, fns), torch.enable_grad():
        try:
            state["scalar"] = _metric(model.module(**inputs).logits[:, -1], tgt).sum()
        except _Stop:
            pass
        state["scalar"].backward()
    e = state["emb"]
    ups = []
    for s in saes[:k]:
        fl, el = state[s.site]
        ups.append(((fl.grad, el.grad), (fl.detach(), el.detach())))
    return (e.grad, e.detach()), ups


# ---------------------------------------------------------------- validation
def _ablated_metrics(model, saes, ids, tgt, sets: list[list[tuple[str, int, int]]], mode: str, skip_first: bool,
                     means: dict | None = None, batch_size: int = 32) -> np.ndarray:
    """The metric with each set of (site, position, feature) ablated (one batch row per set): the
    site's value (a transcoder's: its target site's) becomes ``x + (f' - f) @ W_dec`` as in
    ``llmri.clamp``, ``f'`` being 0 (zero) or the feature's mean over the prompt's positions (mean)."""
    import torch

    from .capture import pad_batch
    from .sites import hooks

    out = []
    for start in range(0, len(sets), batch_size):
        chunk = sets[start:start + batch_size]
        B = len(chunk)

        def fn_for(sae):
            rows, pos, feat = [], [], []
            for b, s in enumerate(chunk):
                for site, p, i in s:
                    if site == sae.site:
                        rows.append(b)
                        pos.append(p)
                        feat.append(i)

            def fn(x):
                if not rows:
                    return None
                xf = x.float()
                f = _encode(sae, state["in", sae.site].float() if sae.is_transcoder else xf, skip_first)
                r, p, i = (torch.tensor(v, device=x.device) for v in (rows, pos, feat))
                cur = f[r, p, i]
                new = torch.zeros_like(cur) if mode == "zero" else means[sae.site][i]
                delta = torch.zeros_like(xf)
                delta.index_put_((r, p), (new - cur)[:, None] * sae.W_dec[i], accumulate=True)
                return (xf + delta).to(x.dtype)
            return fn

        state: dict = {}
        fns = {}
        for s in saes:
            if s.is_transcoder:
                fns[s.site] = _reader(state, s.site)
            fns[s.target_site] = fn_for(s)
        inputs, _ = pad_batch(model, [ids] * B)
        with hooks(model.module, model.adapter, fns), torch.no_grad():
            out.append(_metric(model.module(**inputs).logits[:, -1], tgt).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _graph_saes(model, saes, g: AttributionGraph) -> list:
    """The SAEs of ``g``, loaded and on the model's device; an error if they are not the graph's."""
    saes = load_saes(saes, model)
    if [s.site for s in saes] != g.info["sites"]:
        raise LlmriError(f"saes: the graph was built with SAEs at {g.info['sites']}, got {[s.site for s in saes]}")
    return [s.to(model.device) for s in saes]


def _feature_means(model, saes, g: AttributionGraph) -> dict:
    """Each SAE's mean feature activation over the prompt's positions (the sink left out when
    ``skip_first``): the values of a mean ablation."""
    import torch

    n_pos = max(len(g.token_ids) - (1 if g.info["skip_first"] else 0), 1)
    means = {}
    for s in saes:
        sub = g.features[g.features["site"] == s.site]
        m = torch.zeros(s.d_sae, device=model.device)
        m.index_add_(0, torch.tensor(sub["feature"].to_numpy(), dtype=torch.long, device=model.device),
                     torch.tensor(sub["activation"].to_numpy(), dtype=torch.float32, device=model.device))
        means[s.site] = m / n_pos
    return means


def ablate_nodes(model, saes, g: AttributionGraph, nodes, mode: str = "zero", n_random: int = 10,
                 seed: int = 0) -> dict:
    """What breaks when a chosen set of feature nodes is removed: the drop of the metric when the
    features of ``nodes`` (ids) are ablated together (zero, or their mean over the prompt), next
    to the drops for ``n_random`` matched controls (as many random active features from the same
    SAE sites and positions) and to the first-order prediction of the attributions.

    Returns ``{"baseline", "drop", "predicted_drop", "random_drop_mean", "random_drop_std", "n"}``;
    drops are ``metric - ablated metric``.

    >>> llmri.circuits.ablate_nodes(dec, saes, g, ["5_1493_2", "11_821_2"])   # doctest: +SKIP
    """
    from .model import as_model

    model = as_model(model)
    if not isinstance(g, AttributionGraph):
        raise LlmriError(f"g: expected the AttributionGraph of llmri.attribute, got {type(g).__name__}")
    if mode not in ("zero", "mean"):
        raise LlmriError(f"mode {mode!r} is not one of zero, mean")
    df = g.features.set_index("node_id")
    nodes = list(nodes)
    bad = [n for n in nodes if n not in df.index]
    if bad or not nodes:
        raise LlmriError(f"nodes: {bad[0]!r} is not an active feature of the graph" if bad
                         else "nodes: give at least one feature node id")
    saes = _graph_saes(model, saes, g)
    chosen = df.loc[nodes]
    means = _feature_means(model, saes, g) if mode == "mean" else None
    new = (np.array([float(means[s][i]) for s, i in zip(chosen["site"], chosen["feature"])]) if means
           else np.zeros(len(chosen)))
    key = lambda rows: [(s, int(p), int(f)) for s, p, f in zip(rows["site"], rows["position"], rows["feature"])]  # noqa: E731
    sets = [[], key(chosen)]
    rng = np.random.default_rng(seed)
    cells = chosen.groupby(["site", "position"]).size()
    pool = g.features[~g.features["node_id"].isin(nodes)]
    for _ in range(n_random):
        pick = []
        for (site, pos), k in cells.items():
            cand = pool[(pool["site"] == site) & (pool["position"] == pos)]
            pick += key(cand.iloc[rng.choice(len(cand), size=min(k, len(cand)), replace=False)])
        sets.append(pick)
    with _no_param_grads(model.module, *saes):
        vals = _ablated_metrics(model, saes, g.token_ids, g.info["target_ids"], sets, mode, g.info["skip_first"], means)
    drops = float(vals[0]) - vals
    rnd = drops[2:]
    return {"baseline": float(vals[0]), "drop": float(drops[1]),
            "predicted_drop": float(-(chosen["gradient"].to_numpy() * (new - chosen["activation"].to_numpy())).sum()),
            "random_drop_mean": float(rnd.mean()) if len(rnd) else float("nan"),
            "random_drop_std": float(rnd.std()) if len(rnd) else float("nan"), "n": len(nodes)}


def validate_circuit(model, saes, g: AttributionGraph, k=(5, 10, 20), mode: str = "zero", n_random: int = 5,
                     n_single: int = 30, seed: int = 0) -> dict:
    """Is the graph trustworthy? Ablate the ``k`` features with the largest attribution (those
    pushing toward the target) and ``n_random`` draws of ``k`` random active features, and
    ablate the ``n_single`` features of largest |attribution| one at a time; compare with what
    the attributions predict (first order: ``gradient x (f' - f)``).

    Returns ``{"baseline", "topk": [{k, top_drop, random_drop_mean, random_drop_std, predicted_drop}],
    "single": {"spearman", "pearson", "n", "rows"}}``; drops are ``metric - ablated metric``.
    Also stored as ``g.validation`` (shown on the circuit page).

    >>> v = llmri.validate_circuit(model, saes, g, k=(5, 10, 20))   # doctest: +SKIP
    """
    from scipy.stats import pearsonr, spearmanr

    from .model import as_model

    model = as_model(model)
    if not isinstance(g, AttributionGraph):
        raise LlmriError(f"g: expected the AttributionGraph of llmri.attribute, got {type(g).__name__}")
    if mode not in ("zero", "mean"):
        raise LlmriError(f"mode {mode!r} is not one of zero, mean")
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or any(not isinstance(x, (int, np.integer)) or x < 1 for x in ks):
        raise LlmriError(f"k: give positive integers, got {k!r}")
    saes = _graph_saes(model, saes, g)
    ids, tgt, skip_first = g.token_ids, g.info["target_ids"], g.info["skip_first"]
    df = g.features
    if not len(df):
        raise LlmriError("the graph has no active features to ablate")
    means = _feature_means(model, saes, g) if mode == "mean" else None
    target_val = (np.array([float(means[s][i]) for s, i in zip(df["site"], df["feature"])]) if means
                  else np.zeros(len(df)))
    predicted = -(df["gradient"].to_numpy() * (target_val - df["activation"].to_numpy()))  # predicted drop
    key = list(zip(df["site"], df["position"], df["feature"]))
    rng = np.random.default_rng(seed)
    order = np.argsort(-df["attribution"].to_numpy(), kind="stable")
    sets, labels = [[]], [("baseline", 0, -1)]
    for kk in ks:
        kk = min(kk, len(df))
        sets.append([key[i] for i in order[:kk]])
        labels.append(("top", kk, -1))
        for r in range(n_random):
            pick = rng.choice(len(df), size=kk, replace=False)
            sets.append([key[i] for i in pick])
            labels.append(("random", kk, r))
    single = np.argsort(-np.abs(df["attribution"].to_numpy()), kind="stable")[:n_single]
    for i in single:
        sets.append([key[i]])
        labels.append(("single", 1, int(i)))
    with _no_param_grads(model.module, *saes):
        vals = _ablated_metrics(model, saes, ids, tgt, sets, mode, skip_first, means)
    base = float(vals[0])
    drops = base - vals
    topk = []
    for kk in ks:
        kk = min(kk, len(df))
        top = [d for (kind, n, _), d in zip(labels, drops) if kind == "top" and n == kk][0]
        rnd = np.array([d for (kind, n, _), d in zip(labels, drops) if kind == "random" and n == kk])
        topk.append({"k": kk, "top_drop": float(top), "random_drop_mean": float(rnd.mean()) if len(rnd) else float("nan"),
                     "random_drop_std": float(rnd.std()) if len(rnd) else float("nan"),
                     "predicted_drop": float(predicted[order[:kk]].sum())})
    actual = np.array([d for (kind, *_), d in zip(labels, drops) if kind == "single"])
    pred = predicted[single]
    ok = len(actual) >= 3 and np.ptp(actual) > 0 and np.ptp(pred) > 0
    rows = [{"node_id": df["node_id"].iloc[i], "predicted_drop": float(pred[j]), "actual_drop": float(actual[j])}
            for j, i in enumerate(single)]
    result = {"mode": mode, "baseline": base, "topk": topk,
              "single": {"n": int(len(actual)), "spearman": float(spearmanr(pred, actual)[0]) if ok else float("nan"),
                         "pearson": float(pearsonr(pred, actual)[0]) if ok else float("nan"), "rows": rows}}
    g.validation = result
    return result
