"""Feature analysis from a Scan: density, top and quantile-sampled examples, category effects,
feature cards (Neuronpedia-style dashboards offline), neighbours and the feature map.

One pass over the Scan's token records of the SAE's site, one shard at a time, keeps per
feature: firing density, mean and maximum activation, the ``n_top`` highest-activating tokens,
a uniform random sample of ``n_samples`` firing tokens (reservoir by random keys, for examples by
activation quantile and the histogram), and per category the sums over documents of each
document's mean activation, from which Cohen's d and Welch's t-test against the other documents
follow, with Benjamini-Hochberg q-values over every (feature, category) pair, like ``neurons``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import LlmriError
from ..model import offline_tokenizer
from ..sites import parse_site
from ..stats import bh_q, category_vs_rest_from_stats, mean_var_from_sums
from ..store import Scan
from .model import SAE
from .train import first_token_rows, scan_is_causal


@dataclass
class FeatureActivations:
    """Per-feature statistics of an SAE over a Scan (arrays indexed by feature)."""

    sae: SAE
    scan: object
    density: np.ndarray              # share of tokens where the feature fires
    mean: np.ndarray                 # mean activation over all tokens
    max: np.ndarray                  # largest activation
    top_values: np.ndarray           # [n_top, d_sae], descending; 0 where fewer fired
    top_tokens: np.ndarray           # [n_top, d_sae] corpus-order token index, -1 where none
    sample_values: np.ndarray        # [n_samples, d_sae] random firing tokens' activations
    sample_tokens: np.ndarray        # [n_samples, d_sae] their token index, -1 where none
    effects: pd.DataFrame            # feature, category, effect_size, p_value, q_value, mean_category, mean_rest
    n_tokens: int
    _tok: object = field(default=None, repr=False)

    @property
    def d_sae(self) -> int:
        return len(self.density)

    def table(self, q: float = 0.05) -> pd.DataFrame:
        """One row per feature: density, mean, max, the category it is most selective for (largest
        effect size) with that effect and its q-value, and ``prefers``: that category where the
        feature is significantly more active in it (effect > 0, q-value below ``q``), else "none"."""
        best = (self.effects.sort_values("effect_size", ascending=False)
                .drop_duplicates("feature").set_index("feature"))
        df = pd.DataFrame({"feature": np.arange(self.d_sae), "density": self.density, "mean": self.mean,
                           "max": self.max})
        df["category"] = best["category"].reindex(df["feature"]).to_numpy()
        df["effect_size"] = best["effect_size"].reindex(df["feature"]).to_numpy()
        df["q_value"] = best["q_value"].reindex(df["feature"]).to_numpy()
        significant = (df["effect_size"] > 0) & (df["q_value"] < q)
        df["prefers"] = np.where(significant, df["category"].astype(object), "none")
        return df

    def locate(self, token: int) -> tuple[int, int]:
        """(document, position) of a corpus-order token index."""
        offsets = self.scan.token_offsets
        d = int(np.searchsorted(offsets, token, side="right") - 1)
        return d, int(token - offsets[d])


def feature_activations(sae: SAE, scan, n_top: int = 20, n_samples: int = 50, chunk: int = 1024,
                        skip_first: bool | None = None, seed: int = 0, device: str = "auto",
                        progress: bool | None = None) -> FeatureActivations:
    """One pass over ``scan``'s token records of the SAE's site: see the module docstring.
    ``skip_first`` (default: on for scans of decoders) counts no activation on each document's
    first token, the attention sink, and leaves it out of the densities; tokens above the SAE's
    ``metadata["max_norm"]`` (see ``train_sae(skip_outliers=)``) are left out the same way.

    >>> feats = llmri.feature_activations(sae, scan)            # doctest: +SKIP
    >>> feats.table().sort_values("effect_size").tail()         # doctest: +SKIP
    """
    if isinstance(scan, str) or hasattr(scan, "__fspath__"):
        scan = Scan.open(scan)
    if not isinstance(sae, SAE):
        raise LlmriError(f"sae: expected an llmri.SAE, got {type(sae).__name__}")
    if sae.site is None:
        raise LlmriError("the SAE does not say which site it reads; set sae.site, e.g. 'resid.6'")
    for name, v in (("n_top", n_top), ("n_samples", n_samples), ("chunk", chunk)):
        if not isinstance(v, int) or v < 1:
            raise LlmriError(f"{name} must be a positive integer, got {v!r}")
    kind, layer = parse_site(sae.site)
    if skip_first is None:
        skip_first = scan_is_causal(scan)
    max_norm = (sae.metadata or {}).get("max_norm")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    sae = sae.to(dev).eval()
    gen = torch.Generator(device=dev).manual_seed(seed)
    m = sae.d_sae
    offsets = torch.from_numpy(scan.token_offsets)
    n_cat = len(scan.label_names)
    labels = torch.from_numpy(scan.labels)
    fired = torch.zeros(m, dtype=torch.float64, device=dev)
    total = torch.zeros(m, dtype=torch.float64, device=dev)
    fmax = torch.zeros(m, device=dev)
    top_v = torch.zeros(n_top, m, device=dev)
    top_i = torch.full((n_top, m), -1, dtype=torch.long, device=dev)
    key_v = torch.full((n_samples, m), -1.0, device=dev)
    smp_v = torch.zeros(n_samples, m, device=dev)
    smp_i = torch.full((n_samples, m), -1, dtype=torch.long, device=dev)
    cat_n = torch.zeros(n_cat, dtype=torch.float64)
    cat_s = torch.zeros(n_cat, m, dtype=torch.float64, device=dev)
    cat_q = torch.zeros(n_cat, m, dtype=torch.float64, device=dev)
    n_tokens = 0
    bar = tqdm(total=int(scan.manifest["plan"]["n_tokens"]), unit="tok", unit_scale=True, desc="feature activations",
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, torch.no_grad():
        for docs, ntok, _, acts in scan.iter_token_shards(layer, kind):
            docs_t, ntok_t = torch.from_numpy(docs), torch.from_numpy(ntok)
            if acts.shape[1] != sae.d_in:
                raise LlmriError(f"the SAE reads width {sae.d_in}, but {sae.site} in {scan.folder} has width "
                                 f"{acts.shape[1]}: the SAE belongs to another model or site")
            local = torch.repeat_interleave(torch.arange(len(docs)), ntok_t)
            within = torch.arange(len(local)) - torch.repeat_interleave(torch.cumsum(ntok_t, 0) - ntok_t, ntok_t)
            gidx = (offsets[docs_t][local] + within).to(dev)
            doc_sum = torch.zeros(len(docs), m, dtype=torch.float64, device=dev)
            local = local.to(dev)
            x_all = torch.from_numpy(np.asarray(acts, dtype=np.float32))
            keep = torch.ones(len(local), dtype=torch.bool, device=dev)
            if skip_first:
                keep[torch.from_numpy(first_token_rows(ntok)).to(dev)] = False
            if max_norm is not None:   # the massive-activation tokens the SAE was not trained on
                keep &= (x_all.norm(dim=1) <= max_norm).to(dev)
            for a in range(0, len(local), chunk):
                f = sae.encode(x_all[a:a + chunk].to(dev)) * keep[a:a + chunk, None]
                g = gidx[a:a + chunk]
                c = f.shape[0]
                active = f > 0
                fired += active.sum(0).double()
                total += f.sum(0).double()
                fmax = torch.maximum(fmax, f.amax(0))
                vals, where = torch.cat([top_v, f]).topk(n_top, dim=0)
                top_i = torch.cat([top_i, g[:, None].expand(c, m)]).gather(0, where)
                top_v = vals
                keys = torch.where(active, torch.rand(f.shape, generator=gen, device=dev), torch.full_like(f, -1.0))
                key_v, where = torch.cat([key_v, keys]).topk(n_samples, dim=0)
                smp_v = torch.cat([smp_v, f]).gather(0, where)
                smp_i = torch.cat([smp_i, g[:, None].expand(c, m)]).gather(0, where)
                doc_sum.index_add_(0, local[a:a + c], f.double())
            counted = torch.zeros(len(docs), dtype=torch.float64, device=dev).index_add_(0, local, keep.double())
            counted = counted.clamp(min=1)
            doc_mean = doc_sum / counted[:, None]
            lab = labels[docs_t].to(dev)
            cat_s.index_add_(0, lab, doc_mean)
            cat_q.index_add_(0, lab, doc_mean.pow(2))
            cat_n += torch.bincount(labels[docs_t], minlength=n_cat).double()
            n_tokens += int(keep.sum())
            bar.update(len(local))
    smp_i = torch.where(key_v >= 0, smp_i, torch.full_like(smp_i, -1))
    top_i = torch.where(top_v > 0, top_i, torch.full_like(top_i, -1))
    # category effects on per-document mean activations: category c against every other document
    S, Q, N = cat_s.cpu().numpy(), cat_q.cpu().numpy(), cat_n.numpy()
    frames = []
    for c, name in enumerate(scan.label_names):
        n1, n2 = N[c], N.sum() - N[c]
        if n1 < 2 or n2 < 2:
            continue
        m1, v1 = mean_var_from_sums(S[c], Q[c], n1)
        m2, v2 = mean_var_from_sums(S.sum(0) - S[c], Q.sum(0) - Q[c], n2)
        frames.append(pd.DataFrame({"feature": np.arange(m), "category": name,
                                    **category_vs_rest_from_stats(m1, v1, n1, m2, v2, n2)}))
    cols = ["feature", "category", "effect_size", "p_value", "q_value", "mean_category", "mean_rest"]
    if frames:
        effects = pd.concat(frames, ignore_index=True)
        effects["q_value"] = bh_q(effects["p_value"].to_numpy())
        effects = effects[cols]
    else:
        effects = pd.DataFrame(columns=cols)
    n = max(n_tokens, 1)
    return FeatureActivations(sae.cpu(), scan, (fired / n).float().cpu().numpy(), (total / n).float().cpu().numpy(),
                              fmax.cpu().numpy(), top_v.cpu().numpy(), top_i.cpu().numpy(), smp_v.cpu().numpy(),
                              smp_i.cpu().numpy(), effects, n_tokens)


def category_features(feats: FeatureActivations, category: str, n: int | None = 10) -> pd.DataFrame:
    """The features most selective for ``category``, largest Cohen's d first: ``feature``,
    ``effect_size``, ``q_value``, ``density``, ``max``, ``purity`` (the share of its top
    activations that lie in documents of ``category``) and ``top_docs`` (how many documents they
    come from). A high purity and several documents make a clean dashboard: the feature's
    strongest contexts all belong to the category, and not to one document's quirk.

    >>> category_features(feats, "cooking", 5)              # doctest: +SKIP
    """
    names = list(feats.scan.label_names)
    if category not in names:
        raise LlmriError(f"category {category!r} is not one of the scan's labels: {', '.join(map(str, names))}")
    eff = feats.effects[feats.effects["category"] == category].sort_values("effect_size", ascending=False,
                                                                          kind="stable")
    eff = eff[np.isfinite(eff["effect_size"].to_numpy(dtype=float))]
    if n is not None:
        eff = eff.head(n)
    c = names.index(category)
    purity, docs = [], []
    for f in eff["feature"].astype(int):
        where = [feats.locate(int(t))[0] for t in feats.top_tokens[:, f] if t >= 0]
        purity.append(float(np.mean(feats.scan.labels[where] == c)) if where else float("nan"))
        docs.append(len(set(where)))
    f = eff["feature"].astype(int).to_numpy()
    return pd.DataFrame({"feature": f, "effect_size": eff["effect_size"].to_numpy(), "q_value": eff["q_value"].to_numpy(),
                         "density": feats.density[f], "max": feats.max[f], "purity": purity, "top_docs": docs})


# ---------------------------------------------------------------- cards
@dataclass
class FeatureCard:
    """One feature's dashboard: examples with token shading, histogram, output tokens, neighbours."""

    feature: int
    density: float
    max: float
    examples: dict            # group name -> list of (doc, position, tokens, activations, value)
    histogram: np.ndarray     # sampled activations of firing tokens
    categories: pd.DataFrame  # category, effect_size, p_value, q_value, mean_category, mean_rest
    output_tokens: pd.DataFrame | None   # token, logit (top positive and negative), decoders only
    neighbors: pd.DataFrame   # feature, cosine

    def to_html(self) -> str:
        from ..viz.features import feature_card_html

        return feature_card_html(self)


def _check_feature(feats_or_sae, feature) -> int:
    d = feats_or_sae.d_sae
    try:
        i = int(feature)
    except (TypeError, ValueError):
        raise LlmriError(f"feature {feature!r} is not an integer id") from None
    if not 0 <= i < d:
        raise LlmriError(f"feature {i} is out of range: the SAE has features 0..{d - 1}")
    return i


def _tokenizer(feats: FeatureActivations, model=None):
    if model is not None:
        return getattr(model, "tokenizer", model)
    if feats._tok is None:
        feats._tok = offline_tokenizer(feats.scan.model_name) or False
    return feats._tok or None


def feature_card(feats: FeatureActivations, feature: int, model=None, window: int = 8, n_examples: int = 5,
                 quantiles: int = 4) -> FeatureCard:
    """The dashboard of one feature: top contexts and contexts sampled from ``quantiles`` activation
    intervals (tokens within ``window`` of the example, shaded by the feature), category effects,
    nearest features by decoder cosine and, with a decoder ``model``, its top output tokens
    (``W_dec[feature] @ W_U``, Bricken et al. 2023's logit weights).

    >>> llmri.feature_card(feats, 1234).to_html()           # doctest: +SKIP
    """
    i = _check_feature(feats, feature)
    sae, scan = feats.sae, feats.scan
    kind, layer = parse_site(sae.site)
    tok = _tokenizer(feats, model)
    cache: dict[int, tuple] = {}

    def example(t: int):
        d, pos = feats.locate(t)
        if d not in cache:
            with torch.no_grad():
                f = sae.encode(torch.from_numpy(scan.token_activations(layer, kind, doc=d)))[:, i].numpy()
            ids = scan.token_ids(d)
            strs = token_strings(tok, ids.tolist())
            cache[d] = (list(strs), f)
        strs, f = cache[d]
        a, b = max(0, pos - window), min(len(strs), pos + window + 1)
        return d, pos - a, strs[a:b], f[a:b], float(f[pos])

    groups = {}
    top = [int(t) for t in feats.top_tokens[:, i] if t >= 0][:n_examples]
    groups["top activations"] = [example(t) for t in top]
    sv, si = feats.sample_values[:, i], feats.sample_tokens[:, i]
    ok = si >= 0
    sv, si = sv[ok], si[ok]
    if len(sv) and feats.max[i] > 0:
        edges = np.linspace(0, feats.max[i], quantiles + 1)
        for q in range(quantiles - 1, -1, -1):
            sel = si[(sv > edges[q]) & (sv <= edges[q + 1])][:n_examples]
            if len(sel):
                groups[f"interval {edges[q]:.3g}-{edges[q + 1]:.3g}"] = [example(int(t)) for t in sel]
    cats = feats.effects[feats.effects["feature"] == i].drop(columns="feature").reset_index(drop=True)
    return FeatureCard(i, float(feats.density[i]), float(feats.max[i]), groups, sv, cats,
                       output_tokens(sae, i, model) if model is not None else None,
                       feature_neighbors(sae, i, by="decoder"))


def token_strings(tok, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for (byte-level markers decoded), or the id itself."""
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]


def output_tokens(sae: SAE, feature: int, model, top: int = 10) -> pd.DataFrame | None:
    """The tokens a feature's decoder direction promotes and suppresses through the unembedding."""
    module = getattr(model, "module", None)
    head = module.get_output_embeddings() if module is not None and hasattr(module, "get_output_embeddings") else None
    if head is None or head.weight.shape[1] != sae.d_out:
        return None
    with torch.no_grad():
        logits = head.weight.float().cpu() @ sae.W_dec[feature].float().cpu()
    order = torch.argsort(logits, descending=True)
    ids = torch.cat([order[:top], order[-top:].flip(0)]).tolist()
    names = token_strings(model.tokenizer, ids)
    return pd.DataFrame({"token": names, "logit": logits[ids].numpy(), "direction": ["up"] * top + ["down"] * top})


def feature_neighbors(sae: SAE, feature: int, by: str = "decoder", feats: FeatureActivations | None = None,
                      top: int = 10) -> pd.DataFrame:
    """Nearest features: ``by="decoder"`` (cosine of decoder directions) or ``"coactivation"``
    (Jaccard index of firing sets, estimated on the feature's sampled firing tokens from ``feats``).

    >>> llmri.feature_neighbors(sae, 1234, by="decoder")       # doctest: +SKIP
    """
    i = _check_feature(sae, feature)
    ids, sims = nearest_features(sae, [i], by=by, feats=feats, top=top)
    return pd.DataFrame({"feature": ids[0], "cosine" if by == "decoder" else "jaccard": sims[0]})


def nearest_features(sae: SAE, features=None, by: str = "decoder", feats: FeatureActivations | None = None,
                     top: int = 10, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """:func:`feature_neighbors` of many features at once (default: every one): ``(ids, scores)``,
    both ``[len(features), top]``, each row best first. The co-activation estimate reads each
    sampled token once, however many features sampled it, so the whole map's neighbourhoods cost
    about one pass over the sampled tokens.

    >>> ids, cos = nearest_features(sae, by="decoder", top=5)   # doctest: +SKIP
    """
    idx = np.arange(sae.d_sae) if features is None else np.array([_check_feature(sae, f) for f in features], dtype=np.int64)
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise LlmriError(f"top must be a positive integer, got {top!r}")
    if by == "decoder":
        W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
        with torch.no_grad():
            sim = np.concatenate([(W[torch.from_numpy(idx[a:a + chunk])] @ W.T).numpy()
                                  for a in range(0, len(idx), chunk)]) if len(idx) else np.zeros((0, sae.d_sae))
    elif by == "coactivation":
        sim = _jaccard_rows(sae, idx, feats, chunk)
    else:
        raise LlmriError(f"by {by!r} is not one of decoder, coactivation")
    sim = np.asarray(sim, dtype=np.float64)
    sim[np.arange(len(idx)), idx] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")[:, :top]
    return order, np.take_along_axis(sim, order, axis=1)


def _jaccard_rows(sae: SAE, idx: np.ndarray, feats: FeatureActivations | None, chunk: int) -> np.ndarray:
    """Per feature of ``idx``: the Jaccard index of its firing set with every feature's, from
    P(j fires | i fires) on i's sampled firing tokens and the densities."""
    if feats is None:
        raise LlmriError("feature_neighbors by='coactivation' needs feats= (from feature_activations)")
    samples = [[int(t) for t in feats.sample_tokens[:, i] if t >= 0] for i in idx]
    for i, tokens in zip(idx, samples):
        if not tokens:
            raise LlmriError(f"feature {i} never fired in the scan; it has no co-activating features")
    kind, layer = parse_site(sae.site)
    wanted = np.unique(np.concatenate([np.asarray(t, dtype=np.int64) for t in samples])) if samples else np.zeros(0, int)
    row_of = {int(t): r for r, t in enumerate(wanted)}
    by_doc: dict[int, list[tuple[int, int]]] = {}
    for t in wanted:
        d, pos = feats.locate(int(t))
        by_doc.setdefault(d, []).append((row_of[int(t)], pos))
    x = np.zeros((len(wanted), sae.d_in), dtype=np.float32)
    for d, rows in by_doc.items():
        acts = feats.scan.token_activations(layer, kind, doc=d)
        x[[r for r, _ in rows]] = acts[[p for _, p in rows]]
    fires = np.zeros((len(wanted), sae.d_sae), dtype=bool)
    with torch.no_grad():
        for a in range(0, len(wanted), chunk):
            fires[a:a + chunk] = (sae.encode(torch.from_numpy(x[a:a + chunk])) > 0).numpy()
    sim = np.zeros((len(idx), sae.d_sae))
    for r, (i, tokens) in enumerate(zip(idx, samples)):
        p_j_given_i = fires[[row_of[t] for t in tokens]].mean(0)       # P(j fires | i fires)
        both = p_j_given_i * feats.density[i]                           # P(i and j)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim[r] = np.where(both > 0, both / (feats.density[i] + feats.density - both), 0.0)
    return sim


def feature_map(sae: SAE, feats: FeatureActivations | None = None, color: str = "density", method: str = "pca",
                seed: int = 0, model=None):
    """A 2-d map of the decoder directions (PCA, or UMAP when installed and asked for), as an
    interactive plotly figure coloured by ``color`` (``density``, ``category``, ``effect_size``,
    ``max``); hovering a point shows the feature's top output tokens when a decoder ``model`` is given.
    Returns ``(figure, table)``; the table holds the coordinates and every column.

    >>> fig, table = llmri.feature_map(sae, feats, color="category")   # doctest: +SKIP
    """
    from ..viz.features import feature_map_figure

    coords = map_coordinates(sae, method, seed)
    table = feats.table() if feats is not None else pd.DataFrame({"feature": np.arange(sae.d_sae)})
    if color not in table.columns:
        raise LlmriError(f"color {color!r} is not one of {', '.join(c for c in table.columns if c != 'feature')}"
                         + ("" if feats is not None else " (pass feats= for density and categories)"))
    table["x"], table["y"] = coords[:, 0], coords[:, 1]
    if model is not None:
        table["top_tokens"] = top_output_tokens(sae, model)
    return feature_map_figure(table, color), table


def top_output_tokens(sae: SAE, model, top: int = 5, chunk: int = 256) -> list[str]:
    """For every feature, its ``top`` promoted output tokens joined by commas ("" without an LM head)."""
    module = getattr(model, "module", None)
    head = module.get_output_embeddings() if module is not None and hasattr(module, "get_output_embeddings") else None
    if head is None or head.weight.shape[1] != sae.d_out:
        return [""] * sae.d_sae
    W_U = head.weight.detach().float().cpu()
    out = []
    with torch.no_grad():
        for a in range(0, sae.d_sae, chunk):
            idx = (sae.W_dec[a:a + chunk].float().cpu() @ W_U.T).topk(top, dim=1).indices
            out += [", ".join(token_strings(model.tokenizer, row)) for row in idx.tolist()]
    return out


def top_activating_tokens(feats: FeatureActivations, features=None, n: int = 2, model=None) -> list[str]:
    """A short label per feature: its ``n`` most frequent token strings among the tokens where it
    fires most strongly (``feats.top_tokens``), joined by " / " ("" for a feature that never fires).
    Reading a feature off its top activations is how Bricken et al. 2023 label features by hand;
    this is the mechanical shorthand for node labels (``AttributionGraph.label_features``).

    >>> top_activating_tokens(feats, [12, 40])     # doctest: +SKIP
    [' France / French', ' language']
    """
    from collections import Counter

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LlmriError(f"n must be a positive integer, got {n!r}")
    idx = range(feats.d_sae) if features is None else [_check_feature(feats, f) for f in features]
    tok = _tokenizer(feats, model)
    ids = {}
    out = []
    for i in idx:
        rows = [int(t) for t in feats.top_tokens[:, i] if t >= 0]
        strs = []
        for t in rows:
            if t not in ids:
                d, pos = feats.locate(t)
                ids[t] = int(feats.scan.token_ids(d)[pos])
            strs.append(token_strings(tok, [ids[t]])[0])
        counts = Counter(s.strip() or s for s in strs)
        out.append(" / ".join(s for s, _ in counts.most_common(n)))
    return out


def map_coordinates(sae: SAE, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-d coordinates of the unit decoder directions."""
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1).numpy()
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(W)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise LlmriError("method 'umap' needs umap-learn: pip install 'llmri[umap]'") from None
        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(W)
    raise LlmriError(f"method {method!r} is not one of pca, umap")
