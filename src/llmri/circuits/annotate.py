"""What a graph's features are, from outside the graph: labels from a Scan (the tokens they fire
on), explanations from explain runs, top output tokens from the model. ``AttributionGraph``'s
``label_features`` and ``top_features`` are these functions."""

from __future__ import annotations

import numpy as np

from ..errors import LlmriError
from ..sae import feature_activations
from ..sae.features import output_tokens, top_activating_tokens
from ..store import Scan
from .influence import FEATURE
from .inputs import _explained, feature_explanations, load_saes


def label_features(g, scan, saes, model=None, n: int = 2, feats: dict | None = None) -> dict:
    """``g.label_features``: each feature node's ``top_activations`` over ``scan``, and the
    ``{site: FeatureActivations}`` they came from (those of ``feats`` reused, the others computed)."""
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    by_site = {s.site: s for s in load_saes(saes)}
    nodes = [(node, d) for node, d in g.graph.nodes(data=True) if d["kind"] == FEATURE]
    sites = sorted({d["site"] for _, d in nodes})
    missing = [s for s in sites if s not in scan.token_sites]
    if missing:
        raise LlmriError(f"scan {scan.folder}: no token records of {missing[0]}, a site of the SAEs "
                         f"(scan with --token-sites {','.join(sites)})")
    given, feats = dict(feats or {}), {}
    for site in sites:
        if site not in by_site:
            raise LlmriError(f"saes: no SAE of {site}, a site of the graph")
        feats[site] = given[site] if site in given else feature_activations(by_site[site], scan, progress=False)
        mine = [(node, d) for node, d in nodes if d["site"] == site]
        for (node, d), label in zip(mine, top_activating_tokens(feats[site], [d["feature"] for _, d in mine],
                                                                n=n, model=model)):
            d["top_activations"] = label
    return feats


def top_features(g, n: int = 10, model=None, saes=None, explanations=None):
    """``g.top_features``: the ``n`` features of largest |attribution|, with their explanations and
    (given ``model`` and ``saes``) top output tokens."""
    import pandas as pd

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LlmriError(f"n must be a positive integer, got {n!r}")
    df = g.features.reindex(g.features["attribution"].abs().sort_values(ascending=False).index).head(n)
    df = df.reset_index(drop=True)
    if explanations is not None:
        emap = feature_explanations(load_saes(saes) if saes is not None else g.info.sites, explanations)
        rows = [_explained(emap.get(site, {}).get(int(f))) for site, f in zip(df["site"], df["feature"])]
        df["explanation"] = [r[0] for r in rows]
        df["simulation_score"] = [r[1] for r in rows]
    if model is not None and saes is not None:
        by_site = {s.site: s for s in load_saes(saes)}
        tops = []
        for site, feat in zip(df["site"], df["feature"]):
            t = output_tokens(by_site[site], int(feat), model, top=5) if site in by_site else None
            tops.append(", ".join(t[t["direction"] == "up"]["token"]) if t is not None else "")
        df["top_tokens"] = tops
    return pd.DataFrame(df)
