"""Neuron activation analysis: which neurons (or residual dimensions) respond selectively to a
category, their top-activating documents and tokens, and activation histograms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import LlmriError
from .explain.results import unit_explanations
from .model import offline_tokenizer
from .stats import bh_q, category_vs_rest


def _category_index(scan, category) -> int:
    if isinstance(category, (int, np.integer)) and 0 <= category < len(scan.label_names):
        return int(category)
    if category in scan.label_names:
        return scan.label_names.index(category)
    raise LlmriError(f"unknown category {category!r}; categories: {scan.label_names}")


def neurons(scan, category, site: str = "mlp", layers=None) -> pd.DataFrame:
    """Rank neurons by how selectively they respond to ``category`` against all other documents.

    Columns: ``layer``, ``neuron``, ``effect_size`` (Cohen's d, pooled SD), ``p_value`` (Welch's
    t-test), ``q_value`` (Benjamini-Hochberg over every neuron tested), ``rank_in_layer``,
    ``mean_category``, ``mean_rest``; sorted by effect size, largest first.

    >>> llmri.neurons(scan, "astronomy").head()                # doctest: +SKIP
    """
    c = _category_index(scan, category)
    inside = scan.labels == c
    if inside.sum() < 2 or (~inside).sum() < 2:
        raise LlmriError(f"category {scan.label_names[c]!r} and the rest each need at least 2 documents")
    available = scan.layers(site)
    if not available:
        raise LlmriError(f"site {site!r} was not captured; this scan has {scan.site_kinds}: use "
                         f"{' or '.join('--site ' + k for k in scan.site_kinds if k in ('resid', 'mlp'))}, "
                         f"or rescan with --sites {','.join(dict.fromkeys(scan.site_kinds + [site]))}")
    chosen = available if layers is None else list(layers)
    frames = []
    for L in chosen:
        X = scan.activations(L, site).astype(np.float64)
        df = pd.DataFrame({"layer": L, "neuron": np.arange(X.shape[1]), **category_vs_rest(X[inside], X[~inside])})
        df["rank_in_layer"] = df["effect_size"].rank(ascending=False, method="first").astype(int)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["q_value"] = bh_q(out["p_value"].to_numpy())
    cols = ["layer", "neuron", "effect_size", "p_value", "q_value", "rank_in_layer", "mean_category", "mean_rest"]
    return out[cols].sort_values(["effect_size", "layer", "neuron"], ascending=[False, True, True],
                                 ignore_index=True)


@dataclass
class NeuronCard:
    """One neuron: its top-activating documents and, where captured, its tokens by activation."""

    layer: int
    neuron: int
    site: str
    top: pd.DataFrame                  # doc, category, activation, text
    tokens: list[tuple[int, list[str], np.ndarray]]   # (doc, token strings, activations)
    values: np.ndarray                 # pooled activation of every document
    labels: np.ndarray
    label_names: list[str]
    explanation: dict | None = None    # a row of an explain run of this neuron (llmri.explain), if any

    def histogram(self, bins: int = 30):
        """Activation histogram per category (matplotlib)."""
        from .viz.neurons import neuron_histogram

        return neuron_histogram(self, bins=bins)

    def to_html(self) -> str:
        from .viz.neurons import neuron_card_html

        return neuron_card_html(self)


def neuron_card(scan, layer: int, neuron: int, site: str = "mlp", top: int = 10, tokenizer=None,
                explanations=None) -> NeuronCard:
    """Top-activating documents of one neuron, with token-level activations where the scan kept them.

    Token strings come from ``tokenizer`` (or the scanned model's own tokenizer when it can be
    loaded offline); otherwise token ids are shown. ``explanations`` (an explain output folder,
    an ``ExplainResult`` or a list of them, for this site) adds the neuron's explanation and scores.
    """
    X = scan.activations(layer, site)
    if not 0 <= neuron < X.shape[1]:
        raise LlmriError(f"neuron {neuron} is out of range: {site}.{layer} has {X.shape[1]} neurons")
    values = X[:, neuron]
    order = np.argsort(-values, kind="stable")[:top]
    table = pd.DataFrame({"doc": order, "category": [scan.label_names[scan.labels[d]] for d in order],
                          "activation": values[order], "text": [scan.texts[d] for d in order]})
    tokens = []
    if f"{site}.{layer}" in scan.token_sites:
        tok = tokenizer or offline_tokenizer(scan.model_name)
        for d in order:
            ids = scan.token_ids(int(d))
            acts = scan.token_activations(layer, site, doc=int(d))[:, neuron]
            strs = tok.convert_ids_to_tokens(ids.tolist()) if tok is not None else [str(i) for i in ids]
            tokens.append((int(d), list(strs), acts))
    explanation = None
    if explanations is not None:
        explanation = unit_explanations(explanations, f"{site}.{layer}", "neuron").get(int(neuron))
    return NeuronCard(layer, neuron, site, table, tokens, values, scan.labels, scan.label_names, explanation)
