"""Charts of tables: the full-vs-reduced probe evaluation."""

from __future__ import annotations

import pandas as pd


def evaluation_plot(df: pd.DataFrame):
    """Probe accuracy per layer on full activations and on the region map, with 95% intervals."""
    import matplotlib.pyplot as plt

    rows = df[df["layer"] != "all"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, color in (("full", "#1f77b4"), ("reduced", "#d62728")):
        x = rows["layer"].astype(int)
        ax.plot(x, rows[name], marker="o", color=color, label=f"{name} activations" if name == "full"
                else "region map coordinates")
        ax.fill_between(x, rows[f"{name}_low"], rows[f"{name}_high"], color=color, alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("probe accuracy (cross-validated)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title("What the reduction keeps: full activations vs region map")
    return fig


def evaluation_figure(df: pd.DataFrame):
    """Interactive version of :func:`evaluation_plot`."""
    import plotly.graph_objects as go

    rows = df[df["layer"] != "all"]
    x = rows["layer"].astype(int).tolist()
    fig = go.Figure()
    for name, color, label in (("full", "31,119,180", "full activations"),
                               ("reduced", "214,39,40", "region map coordinates")):
        fig.add_trace(go.Scatter(x=x + x[::-1], y=rows[f"{name}_high"].tolist() + rows[f"{name}_low"].tolist()[::-1],
                                 fill="toself", fillcolor=f"rgba({color},0.15)", line=dict(width=0),
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=rows[name], mode="lines+markers", name=label,
                                 line=dict(color=f"rgb({color})"),
                                 hovertemplate="layer %{x}: %{y:.3f}<extra>" + label + "</extra>"))
    fig.update_layout(title="Probe accuracy: full activations vs region map (95% intervals over folds)",
                      xaxis_title="layer", yaxis_title="accuracy", yaxis_range=[0, 1.02], height=380,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig
