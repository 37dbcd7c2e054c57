"""Is the graph right? Ablate features in the real model (zero, or their mean over the prompt) and
compare the drop of the metric with what the attributions predict: ``ablate_nodes`` for a chosen
set, ``validate_circuit`` for the top-k against random controls and single features."""

from __future__ import annotations

import numpy as np

from ..batches import pad_batch
from ..errors import LlmriError
from ..model import as_model
from ..precision import computing
from ..sites import hooks
from .graph import AttributionGraph
from .inputs import load_saes
from .replacement import _codes, _hooks_for, _metric, _no_param_grads


def _ablated_metrics(model, saes, ids, tgt, sets: list[list[tuple[str, int, int]]], mode: str, skip_first: bool,
                     means: dict | None = None, batch_size: int = 32) -> np.ndarray:
    """The metric with each set of (site, position, feature) ablated (one batch row per set): the
    site's value (a transcoder's: its target site's) becomes ``x + (f' - f) @ W_dec`` as in
    ``llmri.clamp``, ``f'`` being 0 (zero) or the feature's mean over the prompt's positions (mean)."""
    import torch


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
                f = _codes(sae, state, xf, skip_first)
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
            fns.update(_hooks_for(s, state, fn_for(s)))
        inputs, _ = pad_batch(model, [ids] * B)
        with hooks(model.module, model.adapter, fns), torch.no_grad(), computing(model, "attribute"):
            out.append(_metric(model.module(**inputs).logits[:, -1], tgt).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _checked(model, g, mode: str):
    """The model, once ``g`` is a graph and ``mode`` an ablation mode."""
    model = as_model(model)
    if not isinstance(g, AttributionGraph):
        raise LlmriError(f"g: expected the AttributionGraph of llmri.attribute, got {type(g).__name__}")
    if mode not in ("zero", "mean"):
        raise LlmriError(f"mode {mode!r} is not one of zero, mean")
    return model


def _graph_saes(model, saes, g: AttributionGraph) -> list:
    """The SAEs of ``g``, loaded and on the model's device; an error if they are not the graph's."""
    saes = load_saes(saes, model)
    if [s.site for s in saes] != g.info.sites:
        raise LlmriError(f"saes: the graph was built with SAEs at {g.info.sites}, got {[s.site for s in saes]}")
    return [s.to(model.device) for s in saes]


def _feature_means(model, saes, g: AttributionGraph) -> dict:
    """Each SAE's mean feature activation over the prompt's positions (the sink left out when
    ``skip_first``): the values of a mean ablation."""
    import torch

    n_pos = max(len(g.token_ids) - (1 if g.info.skip_first else 0), 1)
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
    model = _checked(model, g, mode)
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
        vals = _ablated_metrics(model, saes, g.token_ids, g.info.target_ids, sets, mode, g.info.skip_first, means)
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

    model = _checked(model, g, mode)
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or any(not isinstance(x, (int, np.integer)) or x < 1 for x in ks):
        raise LlmriError(f"k: give positive integers, got {k!r}")
    saes = _graph_saes(model, saes, g)
    ids, tgt, skip_first = g.token_ids, g.info.target_ids, g.info.skip_first
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
