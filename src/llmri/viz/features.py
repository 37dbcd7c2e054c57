"""SAE feature figures: the feature map, activation and density histograms, the feature card."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from .attention import token_highlight_html
from .style import category_colors


NO_PREFERENCE = "none"   # FeatureActivations.table()'s ``prefers`` of a feature no category stands out in


def _drawing_order(names) -> list[str]:
    """Categories sorted, "none" first, so that it lies under the others and takes no palette colour."""
    names = sorted(set(names))
    return ([NO_PREFERENCE] if NO_PREFERENCE in names else []) + [n for n in names if n != NO_PREFERENCE]


def _colors(names: list[str]) -> dict[str, str]:
    colors = category_colors([n for n in names if n != NO_PREFERENCE])
    return {**colors, NO_PREFERENCE: "#c8c8c8"} if NO_PREFERENCE in names else colors


def feature_map_figure(table, color: str = "density"):
    """Interactive scatter of features at ``table.x``/``table.y`` coloured by a column (plotly); each
    point's ``customdata`` is its feature id (what a click handler reads)."""
    import plotly.graph_objects as go

    hover = [f"feature {int(r.feature)}" + "".join(
        f"<br>{c}: {getattr(r, c):.3g}" if isinstance(getattr(r, c), (float, np.floating)) else f"<br>{c}: {html.escape(str(getattr(r, c)))}"
        for c in table.columns if c not in ("feature", "x", "y")) for r in table.itertuples()]
    fig = go.Figure()
    ids = table["feature"].to_numpy(dtype=int)
    if not pd.api.types.is_numeric_dtype(table[color]):
        names = _drawing_order(str(v) for v in table[color].dropna().unique())
        colors = _colors(names)
        for name in names:
            sel = (table[color].astype(str) == name).to_numpy()
            fig.add_trace(go.Scattergl(x=table.x[sel], y=table.y[sel], mode="markers", name=name,
                                       marker=dict(size=5, color=colors[name]), customdata=ids[sel],
                                       text=[h for h, s in zip(hover, sel) if s], hoverinfo="text"))
    else:
        values = table[color].to_numpy(dtype=float)
        if color == "density":
            values = np.log10(np.maximum(values, 1e-7))
        has = np.isfinite(values)           # features without a value (e.g. not explained) in grey
        if not has.all():
            fig.add_trace(go.Scattergl(x=table.x[~has], y=table.y[~has], mode="markers", name=f"no {color}",
                                       text=[h for h, k in zip(hover, has) if not k], hoverinfo="text",
                                       marker=dict(size=4, color="#d0d0d0"), customdata=ids[~has]))
        fig.add_trace(go.Scattergl(x=table.x[has], y=table.y[has], mode="markers", name=color, hoverinfo="text",
                                   text=[h for h, k in zip(hover, has) if k], showlegend=not has.all(), customdata=ids[has],
                                   marker=dict(size=5 if has.all() else 8, color=values[has], colorscale="Viridis",
                                               showscale=True,
                                               colorbar=dict(title="log10 density" if color == "density" else color))))
    fig.update_layout(title="Feature map: decoder directions", xaxis_title="map 1", yaxis_title="map 2",
                      template="plotly_white", height=560)
    return fig


def feature_map_plot(table, color: str = "density"):
    """Static version of the feature map (matplotlib)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    if not pd.api.types.is_numeric_dtype(table[color]):
        names = _drawing_order(str(v) for v in table[color].dropna().unique())
        colors = _colors(names)
        for name in names:
            sel = (table[color].astype(str) == name).to_numpy()
            ax.scatter(table.x[sel], table.y[sel], s=6, color=colors[name], label=name)
        ax.legend(fontsize=7, markerscale=2)
    else:
        values = table[color].to_numpy(dtype=float)
        if color == "density":
            values = np.log10(np.maximum(values, 1e-7))
        has = np.isfinite(values)
        if not has.all():
            ax.scatter(table.x[~has], table.y[~has], s=4, color="#d0d0d0", label=f"no {color}")
            ax.legend(fontsize=7)
        sc = ax.scatter(table.x[has], table.y[has], s=6 if has.all() else 14, c=values[has], cmap="viridis")
        fig.colorbar(sc, ax=ax, label="log10 density" if color == "density" else color)
    ax.set_title("Feature map: decoder directions")
    return fig


def density_histogram(density: np.ndarray, title: str = "Feature density"):
    """Histogram of log10 firing density over features, dead features counted apart (matplotlib)."""
    import matplotlib.pyplot as plt

    density = np.asarray(density)
    dead = int((density == 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(density[density > 0]), bins=40, color="#4c72b0")
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("features")
    ax.set_title(f"{title} ({dead} dead of {len(density)})")
    return fig


def feature_card_html(card) -> str:
    """The feature's dashboard as an HTML fragment."""
    parts = [f"<h4>feature {card.feature}</h4>",
             f"<p class='note'>density {card.density:.3g}, max activation {card.max:.3g} "
             "(token shading: white 0, full colour at the max)</p>"]
    if len(card.histogram):
        counts, edges = np.histogram(card.histogram, bins=20)
        peak = max(int(counts.max()), 1)
        bars = "".join(f"<span title='{edges[j]:.3g}-{edges[j + 1]:.3g}: {c}' style='display:inline-block;"
                       f"width:8px;height:{40 * c // peak}px;background:#4c72b0;margin-right:1px'></span>"
                       for j, c in enumerate(counts))
        parts.append(f"<div class='hist' style='display:flex;align-items:flex-end;height:42px'>{bars}</div>"
                     f"<p class='note'>activations of sampled firing tokens, 0 to {edges[-1]:.3g}</p>")
    for group, rows in card.examples.items():
        parts.append(f"<p><b>{html.escape(group)}</b></p>")
        for doc, pos, toks, acts, value in rows:
            parts.append(f"<p class='tokens'><span class='note'>doc {doc}, {value:.3g}:</span> "
                         f"{token_highlight_html(toks, acts, top=max(card.max, 1e-12))}</p>")
    if card.output_tokens is not None:
        for direction in ("up", "down"):
            sel = card.output_tokens[card.output_tokens.direction == direction]
            toks = ", ".join(f"{html.escape(str(t))} ({v:+.2f})" for t, v in zip(sel.token, sel.logit))
            parts.append(f"<p><b>{'promotes' if direction == 'up' else 'suppresses'}</b>: {toks}</p>")
    if len(card.categories):
        rows = "".join(f"<tr><td>{html.escape(str(r.category))}</td><td>{r.effect_size:.3g}</td>"
                       f"<td>{r.q_value:.3g}</td></tr>" for r in card.categories.itertuples())
        parts.append("<table class='table'><tr><th>category</th><th>effect (d)</th><th>q</th></tr>"
                     f"{rows}</table>")
    near = ", ".join(f"{int(r.feature)} ({r.cosine:.2f})" for r in card.neighbors.itertuples())
    parts.append(f"<p><b>nearest by decoder cosine</b>: {near}</p>")
    return "\n".join(parts)
