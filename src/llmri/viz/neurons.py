"""Neuron figures: activation histograms per category and the neuron card."""

from __future__ import annotations

import html

import numpy as np

from .attention import token_highlight_html
from .style import category_colors


def neuron_histogram(card, bins: int = 30):
    """Activation of one neuron over the corpus, one histogram per category (matplotlib)."""
    import matplotlib.pyplot as plt

    colors = category_colors(card.label_names)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    edges = np.histogram_bin_edges(card.values, bins=bins)
    for i, name in enumerate(card.label_names):
        v = card.values[card.labels == i]
        if len(v):
            ax.hist(v, bins=edges, alpha=0.55, color=colors[name], label=f"{name} ({len(v)})")
    ax.set_xlabel(f"{card.site}.{card.layer} neuron {card.neuron}: activation (pooled)")
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    return fig


def neuron_card_html(card) -> str:
    """The card as an HTML fragment: top documents, and their tokens shaded by activation."""
    rows = "".join(f"<tr><td>{int(r.doc)}</td><td>{html.escape(str(r.category))}</td>"
                   f"<td>{r.activation:.4g}</td><td class='txt'>{html.escape(str(r.text)[:300])}</td></tr>"
                   for r in card.top.itertuples())
    parts = [f"<h4>{html.escape(card.site)}.{card.layer} neuron {card.neuron}</h4>",
             "<table class='table'><tr><th>doc</th><th>category</th><th>activation</th><th>text</th></tr>",
             rows, "</table>"]
    if getattr(card, "explanation", None):
        from .explain import explanation_summary_html

        parts.insert(1, explanation_summary_html(card.explanation))
    if card.tokens:
        parts.append("<p class='note'>Tokens of the top documents, shaded by this neuron's activation:</p>")
        for doc, toks, acts in card.tokens:
            parts.append(f"<p class='tokens'><b>doc {doc}</b>: {token_highlight_html(toks, acts)}</p>")
    return "\n".join(parts)
