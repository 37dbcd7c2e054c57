"""Figures of automated explanations: score distributions against the random-explanation
baseline, and each unit's held-out windows with true and simulated activations side by side."""

from __future__ import annotations

import html

import numpy as np

from .attention import token_highlight_html

_SCORES = (("simulation_score", "simulation_baseline", "simulation (Pearson r)"),
           ("detection_balanced_accuracy", "detection_baseline", "detection (balanced accuracy)"),
           ("fuzzing_balanced_accuracy", "fuzzing_baseline", "fuzzing (balanced accuracy)"))


def _present(table):
    return [(s, b, name) for s, b, name in _SCORES if s in table and table[s].notna().any()]


def explain_score_figure(table, bins: int = 20):
    """Histograms of each score and its random-explanation baseline (matplotlib)."""
    import matplotlib.pyplot as plt

    cols = _present(table)
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.2 * max(1, len(cols)), 3.2), squeeze=False)
    for ax, (s, b, name) in zip(axes[0], cols):
        lo = -1.0 if s == "simulation_score" else 0.0
        edges = np.linspace(lo, 1.0, bins + 1)
        ax.hist(table[s].dropna(), bins=edges, alpha=0.6, color="#1f77b4", label="explanation")
        if b in table and table[b].notna().any():
            ax.hist(table[b].dropna(), bins=edges, alpha=0.5, color="#7f7f7f", label="random explanation")
        ax.set_xlabel(name)
        ax.set_ylabel("units")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def explain_score_plot(table):
    """The same histograms as an interactive plotly figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = _present(table)
    fig = make_subplots(rows=1, cols=max(1, len(cols)), subplot_titles=[n for _, _, n in cols])
    for i, (s, b, name) in enumerate(cols, 1):
        fig.add_trace(go.Histogram(x=table[s].dropna(), name="explanation", marker_color="#1f77b4", opacity=0.6,
                                   showlegend=i == 1, legendgroup="e"), 1, i)
        if b in table and table[b].notna().any():
            fig.add_trace(go.Histogram(x=table[b].dropna(), name="random explanation", marker_color="#7f7f7f",
                                       opacity=0.5, showlegend=i == 1, legendgroup="b"), 1, i)
    fig.update_layout(barmode="overlay", height=320, margin=dict(t=40, b=30, l=40, r=10))
    return fig


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def explanation_summary_html(row: dict) -> str:
    """A unit's explanation with its scores, each next to its random-explanation baseline, for
    neuron cards and feature dashboards (``row``: a row of an explain table)."""
    scores = [f"{name.split(' ')[0]} {_fmt(row.get(s))} (random explanation {_fmt(row.get(b))})"
              for s, b, name in _SCORES if row.get(s) is not None]
    return (f"<p class='explanation'><b>explanation</b>: {html.escape(str(row.get('explanation', '')))}<br>"
            f"<span class='note'>{'; '.join(scores)}</span></p>")


def explanation_html(record: dict) -> str:
    """One unit: its explanation and scores; the top windows the explainer saw, shaded by the
    activation (red, 0-10 scale); then every held-out window in a row, shaded by the true
    activation (red) in one cell and the simulated one (blue) in the cell beside it."""
    fmt = _fmt
    parts = [f"<h3 id='unit-{int(record['unit'])}'>unit {int(record['unit'])}: {html.escape(str(record['explanation']))}</h3>",
             f"<p class='note'>simulation {fmt(record.get('simulation_score'))} (baseline "
             f"{fmt(record.get('simulation_baseline'))}); detection {fmt(record.get('detection_balanced_accuracy'))}; "
             f"fuzzing {fmt(record.get('fuzzing_balanced_accuracy'))}</p>"]
    top = record.get("explain_windows", [])
    if top:
        parts.append("<p class='note'>Top windows shown to the explainer:</p>")
        parts += [f"<p class='tokens'><b>doc {int(w['doc'])}</b> {token_highlight_html(w['tokens'], np.asarray(w['scaled'], dtype=float), top=10.0)}</p>"
                  for w in top]
    held = record.get("held_out_windows", [])
    if held:
        rows = []
        for w in held:
            sim = (token_highlight_html(w["tokens"], w["simulated"], color="31,119,180", top=10.0)
                   if w.get("simulated") is not None else "<span class='note'>not simulated</span>")
            rows.append(f"<tr><td>{int(w['doc'])}</td><td class='tokens' style='text-align:left'>"
                        f"{token_highlight_html(w['tokens'], np.asarray(w['scaled'], dtype=float), top=10.0)}</td>"
                        f"<td class='tokens' style='text-align:left'>{sim}</td></tr>")
        parts.append("<table class='table windows'><tr><th>doc</th><th>held out: true</th><th>simulated</th></tr>"
                     + "".join(rows) + "</table>")
    return "\n".join(parts)
