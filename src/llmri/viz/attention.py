"""Attention figures: token x token heatmaps, a grid of heads, rollout/flow over the text,
an interactive head view (plain HTML + JS, works offline), and head-statistic heatmaps."""

from __future__ import annotations

import html
import itertools

import numpy as np

from .style import grid_shape, script_json

_ids = itertools.count(1)


def _short(tokens, width=12):
    return [t if len(t) <= width else t[:width - 1] + "~" for t in tokens]


def attention_head_plot(att, layer: int, head: int, ax=None):
    """Token x token heatmap of one head (rows: queries, columns: keys)."""
    import matplotlib.pyplot as plt

    if ax is None:
        n = len(att.tokens)
        _, ax = plt.subplots(figsize=(2 + 0.28 * n, 1.6 + 0.28 * n))
    toks = _short(att.tokens)
    ax.imshow(att.probs[layer, head], cmap="Reds", vmin=0, vmax=1)
    ax.set_xticks(range(len(toks)), toks, rotation=90, fontsize=7)
    ax.set_yticks(range(len(toks)), toks, fontsize=7)
    ax.set_title(f"layer {layer}, head {head}", fontsize=9)
    return ax.figure


def attention_layer_plot(att, layer: int):
    """All heads of one layer as a grid of token x token heatmaps."""
    import matplotlib.pyplot as plt

    H = att.n_heads
    rows, cols = grid_shape(H)
    toks = _short(att.tokens, 10)
    n = len(toks)
    size = max(3.2, 1.2 + 0.16 * n)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1, size * rows + 0.6), squeeze=False)
    im = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        im = ax.imshow(att.probs[layer, h], cmap="Reds", vmin=0, vmax=1)
        ax.set_title(f"head {h}", fontsize=9)
        # token labels on both axes: keys along the bottom row, queries down the first column
        ax.set_xticks(range(n), toks if h // cols == rows - 1 or h + cols >= H else [""] * n,
                      rotation=90, fontsize=6)
        ax.set_yticks(range(n), toks if h % cols == 0 else [""] * n, fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention probability")
    fig.suptitle(f"layer {layer}: attention of every head (rows: queries, columns: keys)")
    return fig


def rollout_plot(att, target=None):
    """How much each input token contributes to ``target`` (a position, or a pooling such as
    ``"mean"``; default: the one that fits the model's pooling): rollout and flow, over the text."""
    import matplotlib.pyplot as plt

    roll = att.contributions(target)
    flow = att.flow(target)
    toks = _short(att.tokens)
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.32 * len(toks) + 2), 5), sharex=True)
    for ax, values, name in ((axes[0], roll, "rollout"), (axes[1], flow, "flow")):
        ax.bar(range(len(toks)), values, color="#d62728" if name == "rollout" else "#1f77b4")
        ax.set_ylabel(name)
    axes[1].set_xticks(range(len(toks)), toks, rotation=90, fontsize=8)
    axes[0].set_title(f"contribution of each input token to {att.target_label(target)} "
                      "through all layers (Abnar and Zuidema, 2020)", fontsize=9)
    fig.tight_layout()
    return fig


def token_highlight_html(tokens, values, color="214,39,40", top: float | None = None) -> str:
    """Tokens as HTML spans shaded by value (escaped; the value is in each span's title), full
    colour at ``top`` (default: the largest absolute value)."""
    values = np.asarray(values, dtype=float)
    top = top or np.abs(values).max() or 1.0
    spans = []
    for t, v in zip(tokens, values):
        alpha = min(abs(v) / top, 1.0)
        spans.append(f'<span class="llmri-tok" title="{v:.4f}" style="background: rgba({color},{alpha:.3f})">'
                     f"{html.escape(str(t))}</span>")
    return " ".join(spans)


_HEAD_VIEW_JS = """
(function () {
  var d = %(data)s, root = document.getElementById(%(id)s);
  var selL = root.querySelector(".hv-layer"), selH = root.querySelector(".hv-head");
  var box = root.querySelector(".hv-tokens"), info = root.querySelector(".hv-info");
  d.probs.forEach(function (_, i) { selL.add(new Option("layer " + i, i)); });
  selH.add(new Option("mean of heads", -1));
  d.probs[0].forEach(function (_, i) { selH.add(new Option("head " + i, i)); });
  var spans = d.tokens.map(function (t, i) {
    var s = document.createElement("span");
    s.className = "hv-tok"; s.textContent = t; s.dataset.i = i; box.appendChild(s);
    box.appendChild(document.createTextNode(" "));
    return s;
  });
  function row(q) {
    var L = +selL.value, h = +selH.value, heads = d.probs[L];
    if (h >= 0) return heads[h][q];
    return heads[0][q].map(function (_, k) {
      var s = 0; heads.forEach(function (m) { s += m[q][k]; }); return s / heads.length; });
  }
  function show(q) {
    var r = row(q), mx = Math.max.apply(null, r) || 1;
    spans.forEach(function (s, k) {
      s.style.background = "rgba(214,39,40," + (r[k] / mx).toFixed(3) + ")";
      s.style.outline = k === q ? "2px solid #16324f" : "none";
      s.title = r[k].toFixed(3);
    });
    var best = r.indexOf(mx);
    info.textContent = "token " + q + " (" + d.tokens[q] + ") attends most to token " + best +
      " (" + d.tokens[best] + "): " + mx.toFixed(3);
  }
  spans.forEach(function (s, q) { s.addEventListener("mouseenter", function () { show(q); }); });
  [selL, selH].forEach(function (el) { el.addEventListener("change", function () { show(+root.dataset.q || 0); }); });
  box.addEventListener("mouseover", function (e) { if (e.target.dataset.i) root.dataset.q = e.target.dataset.i; });
  show(0);
})();
"""


def head_view_html(att, max_tokens: int = 256) -> str:
    """An interactive head view: pick a layer and head, hover a token to see what it attends to.

    Self-contained HTML (no external script); token text is inserted as text, never as markup.
    """
    n = min(len(att.tokens), max_tokens)
    probs = np.round(att.probs[:, :, :n, :n].astype(np.float64), 4).tolist()
    hid = f"llmri-headview-{next(_ids)}"
    data = script_json({"tokens": [str(t) for t in att.tokens[:n]], "probs": probs})
    note = f" (first {n} of {len(att.tokens)} tokens)" if n < len(att.tokens) else ""
    return (f'<div class="llmri-headview" id="{hid}">'
            f'<div class="hv-controls"><label>Layer <select class="hv-layer"></select></label> '
            f'<label>Head <select class="hv-head"></select></label>'
            f'<span class="hv-note">hover a token to see what it attends to{html.escape(note)}</span></div>'
            f'<div class="hv-tokens" style="line-height: 2; margin: 8px 0"></div>'
            f'<div class="hv-info" style="font-size: 13px; color: #444"></div></div>'
            f"<script>{_HEAD_VIEW_JS % {'data': data, 'id': script_json(hid)}}</script>")


def head_stats_figure(matrices: dict, title: str):
    """Interactive heatmaps of a head statistic, layers x heads, one panel per entry of ``matrices``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    zmax = max(float(np.nanmax(np.abs(m))) for m in matrices.values()) or 1
    diverging = any(np.nanmin(m) < 0 for m in matrices.values())
    for i, (name, m) in enumerate(matrices.items()):
        fig.add_trace(go.Heatmap(z=m, zmin=-zmax if diverging else 0, zmax=zmax,
                                 colorscale="RdBu" if diverging else "Viridis", reversescale=diverging,
                                 showscale=i == len(names) - 1,
                                 hovertemplate=f"{html.escape(name)}<br>layer %{{y}}, head %{{x}}: %{{z:.3f}}<extra></extra>"),
                      row=1, col=i + 1)
        fig.update_xaxes(title_text="head", row=1, col=i + 1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=title, height=360, margin=dict(l=60, r=20, t=70, b=50))
    return fig
