"""The replacement model: the forward and backward passes with SAEs spliced in.

At each SAE site the value is rewritten as ``decode(f) + err`` (:func:`_splice`, the one hook that
does it): ``f`` the SAE's feature activations (of the site itself, or of a transcoder's MLP input)
and ``err`` what the SAE misses, both made gradient leaves, so one backward pass gives the metric's
gradient at every node. ``frozen`` detaches attention patterns and norm scales (Ameisen et al.
2025); the passes run with parameters not requiring gradients (``_no_param_grads``).
"""

from __future__ import annotations

import contextlib

from ..batches import pad_batch
from ..precision import computing
from ..sites import eager_attention, hooks


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


def _codes(sae, state: dict, xf, skip_first: bool):
    """The feature activations of ``sae`` where its output ``xf`` is written: of ``xf`` itself for a
    residual-stream SAE, of the MLP input kept by :func:`_reader` for a transcoder."""
    return _encode(sae, state["in", sae.site].float() if sae.is_transcoder else xf, skip_first)


def _leaf(t):
    return t.requires_grad_()


def _splice(sae, state: dict, skip_first: bool, leaf=_leaf, cut: bool = False):
    """The hook that rewrites the value ``x`` where ``sae`` writes as ``decode(f) + err``, ``err =
    x - decode(f)``, the two made gradient leaves by ``leaf`` and kept in ``state[sae.site]``. The
    value is unchanged; with ``cut`` it no longer depends on what came before (the gradient stops at
    ``f`` and ``err``), else the gradient also flows on upstream, so one backward reaches every layer."""
    import torch

    def fn(x):
        xf = x.float()
        with torch.no_grad():
            f = _codes(sae, state, xf, skip_first)
            err = xf - sae.decode(f)
        fl, el = leaf(f), leaf(err)
        state[sae.site] = (fl, el)
        out = sae.decode(fl) + el
        return (out if cut else out + (xf - xf.detach())).to(x.dtype)
    return fn


def _hooks_for(sae, state: dict, fn) -> dict:
    """``{site: hook}`` putting ``fn`` where ``sae`` writes (a transcoder's target site, its input
    site then read into ``state``)."""
    if sae.is_transcoder:
        return {sae.site: _reader(state, sae.site), sae.target_site: fn}
    return {sae.site: fn}


def _stop_at(sae, rows, state: dict, skip_first: bool, first=None):
    """The hook at the downstream SAE's site (``first`` applied to the value before): keeps
    ``sum_b w_b * f[b, pos_b, feat_b]`` for ``rows`` (pos, feat, w), one batch row each, in
    ``state["scalar"]`` and stops the forward pass."""
    import torch

    def fn(x):
        if first is not None:
            x = first(x)
        f = _encode(sae, x.float(), skip_first)
        pos = torch.tensor([r[0] for r in rows], device=f.device)
        feat = torch.tensor([r[1] for r in rows], device=f.device)
        w = torch.tensor([r[2] for r in rows], device=f.device, dtype=f.dtype)
        state["scalar"] = (f[torch.arange(len(rows), device=f.device), pos, feat] * w).sum()
        raise _Stop
    return fn


def _backward(model, ids, fns: dict, state: dict, tgt=None) -> None:
    """Run the prompt with the hooks ``fns`` and backpropagate ``state["scalar"]``, set by a
    :func:`_stop_at` hook, or (the forward pass reaching the end) the metric of ``tgt``."""
    import torch


    inputs, _ = pad_batch(model, [ids])
    with hooks(model.module, model.adapter, fns), torch.enable_grad(), computing(model, "attribute"):
        try:
            state["scalar"] = _metric(model.module(**inputs).logits[:, -1], tgt).sum()
        except _Stop:
            pass
        state["scalar"].backward()


def _node_pass(model, saes, ids, tgt, skip_first: bool):
    """One forward and one backward pass: every node's value and the metric's gradient at it."""
    import torch


    state: dict = {}

    def emb(x):
        e = x.detach().float().requires_grad_()
        state["emb"] = e
        return e.to(x.dtype)

    fns = {}
    for s in saes:
        fn = _splice(s, state, skip_first)
        fns.update(_hooks_for(s, state, (lambda x, fn=fn: fn(emb(x))) if s.site == "resid.0" else fn))
    fns.setdefault("resid.0", emb)  # resid.0 without an SAE: the embedding node only
    inputs, _ = pad_batch(model, [ids])
    with hooks(model.module, model.adapter, fns), torch.enable_grad(), computing(model, "attribute"):
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
    B = len(rows)
    state: dict = {}
    target = saes[k]

    # The prompt runs as one row up to the upstream layer, which is then copied into B rows:
    # the layers before it are computed once, not B times.
    def rows_of(t):
        return t.detach().expand(B, *t.shape[1:]).clone().requires_grad_()

    def emb(x):
        e = rows_of(x.float())
        state["emb"] = e
        return e.to(x.dtype)

    fns = {target.site: _stop_at(target, rows, state, skip_first,
                                 first=emb if k == 0 and target.site == "resid.0" else None)}
    if k == 0:
        if target.site != "resid.0":
            fns["resid.0"] = emb
    else:
        fns[saes[k - 1].site] = _splice(saes[k - 1], state, skip_first, leaf=rows_of, cut=True)
    _backward(model, ids, fns, state)
    up = (state["emb"],) if k == 0 else state[saes[k - 1].site]
    return [t.grad for t in up], [t.detach() for t in up]


def _transcoder_edge_pass(model, saes, ids, k: int, rows, tgt, skip_first: bool):
    """Gradients of ``sum_b w_b * f_k[b, pos_b, feat_b]`` (or of the metric when ``k == len(saes)``)
    at the token embeddings and at the features and errors of transcoders ``0..k-1``, whose outputs
    are rewritten as ``decode(f) + err`` with ``f`` and ``err`` cut from the MLP's input; one batch
    row per downstream node. Returns ``(grad, value)`` of the embeddings and, per upstream
    transcoder, ``((feature grad, error grad), (feature value, error value))``."""
    B = max(len(rows), 1)
    state: dict = {}

    def emb(x):
        e = x.detach().float().expand(B, *x.shape[1:]).clone().requires_grad_()
        state["emb"] = e
        return e.to(x.dtype)

    fns = {"resid.0": emb}
    for s in saes[:k]:
        fns.update(_hooks_for(s, state, _splice(s, state, skip_first, cut=True)))
    if k < len(saes):
        fns[saes[k].site] = _stop_at(saes[k], rows, state, skip_first)
    _backward(model, ids, fns, state, tgt)
    e = state["emb"]
    ups = []
    for s in saes[:k]:
        fl, el = state[s.site]
        ups.append(((fl.grad, el.grad), (fl.detach(), el.detach())))
    return (e.grad, e.detach()), ups
