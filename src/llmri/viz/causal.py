"""Figures of probes, lesion maps and activation patching."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd


def _lesion_matrix(df: pd.DataFrame):
    heads = df[df["component"] == "head"]
    layers = sorted(set(df["layer"]))
    H = int(heads["head"].max()) + 1 if len(heads) else 0
    m = np.full((len(layers), H + 1), np.nan)
    row = {L: i for i, L in enumerate(layers)}
    for r in df.itertuples():
        m[row[r.layer], H if r.component == "mlp" else r.head] = r.effect
    labels = [f"head {h}" for h in range(H)] + ["MLP"]
    return m, layers, labels


def lesion_plot(df: pd.DataFrame):
    """Lesion map: effect of ablating each head (layers x heads) and each layer's MLP, each with its own
    colour scale (an MLP's effect is often far larger than a head's and would wash the heads out)."""
    import matplotlib.pyplot as plt

    m, layers, labels = _lesion_matrix(df)
    heads, mlp = m[:, :-1], m[:, -1:]
    fig, (ax, ax_mlp) = plt.subplots(1, 2, figsize=(3.2 + 0.55 * len(labels), 1.4 + 0.45 * len(layers)),
                                     gridspec_kw=dict(width_ratios=[max(1, heads.shape[1]), 1.6]), squeeze=True)
    what = f"effect on {df.attrs.get('measure', 'measure')}"
    for a, part, names, title in ((ax, heads, labels[:-1], "heads"), (ax_mlp, mlp, labels[-1:], "MLPs")):
        lim = (np.nanmax(np.abs(part)) if np.isfinite(part).any() else 0) or 1
        im = a.imshow(part, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        a.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        a.set_yticks(range(len(layers)), [f"layer {L}" for L in layers], fontsize=8)
        a.set_title(title, fontsize=9)
        fig.colorbar(im, ax=a, label=what if title == "MLPs" else None, fraction=0.08 if title == "MLPs" else 0.04)
    fig.suptitle(f"Lesion map ({df.attrs.get('mode', 'zero')} ablation): each panel has its own colour scale",
                 fontsize=10)
    fig.tight_layout()
    return fig


def lesion_figure(df: pd.DataFrame):
    """Interactive lesion map: heads and MLPs side by side, each with its own colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    m, layers, labels = _lesion_matrix(df)
    ys = [f"layer {L}" for L in layers]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.82, 0.18], horizontal_spacing=0.12,
                        subplot_titles=["heads", "MLPs"])
    for col, part, names in ((1, m[:, :-1], labels[:-1]), (2, m[:, -1:], labels[-1:])):
        lim = float(np.nanmax(np.abs(part))) if np.isfinite(part).any() else 1.0
        fig.add_trace(go.Heatmap(z=part, x=names, y=ys, zmin=-(lim or 1), zmax=lim or 1, colorscale="RdBu",
                                 reversescale=True, colorbar=dict(title="effect", x=0.74 if col == 1 else 1.02, len=0.9),
                                 hovertemplate="%{y}, %{x}: %{z:.4g}<extra></extra>"), row=1, col=col)
    fig.update_layout(title=f"Lesion map: effect on {html.escape(df.attrs.get('measure', 'measure'))} "
                            f"({df.attrs.get('mode', 'zero')} ablation; baseline {df.attrs.get('baseline', 0):.4g}); "
                            "heads and MLPs on separate colour scales",
                      height=180 + 32 * len(layers), margin=dict(l=80, r=40, t=70, b=60))
    fig.update_yaxes(autorange="reversed")
    return fig


def patch_plot(result, kind: str = "resid"):
    """Causal tracing: share of the clean metric restored by patching each layer and position."""
    import matplotlib.pyplot as plt

    m = result.matrix(kind)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * m.shape[1], 1.2 + 0.4 * m.shape[0]))
    im = ax.imshow(m, cmap="Purples", vmin=min(0.0, np.nanmin(m)), vmax=max(1.0, np.nanmax(m)), aspect="auto")
    ax.set_xticks(range(m.shape[1]), result.tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(m.shape[0]), [f"{kind}.{L}" for L in sorted(set(
        result.scores[result.scores["kind"] == kind]["layer"]))], fontsize=8)
    fig.colorbar(im, ax=ax, label="share of clean metric restored")
    ax.set_title(f"Activation patching of {kind}", fontsize=10)
    fig.tight_layout()
    return fig


def patch_figure(result, kind: str = "resid"):
    import plotly.graph_objects as go

    m = result.matrix(kind)
    layers = sorted(set(result.scores[result.scores["kind"] == kind]["layer"]))
    fig = go.Figure(go.Heatmap(z=m, x=[f"{i}: {t}" for i, t in enumerate(result.tokens)],
                               y=[f"{kind}.{L}" for L in layers], colorscale="Purples",
                               colorbar=dict(title="restored"),
                               hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Activation patching of {kind}: share of the clean metric restored",
                      height=160 + 30 * len(layers), margin=dict(l=90, r=20, t=60, b=90),
                      yaxis=dict(autorange="reversed"))
    return fig


def probe_plot(df: pd.DataFrame):
    """Probe accuracy across layers with 95% intervals, and the control task."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = df["layer"].astype(int)
    ax.plot(x, df["accuracy"], marker="o", color="#1f77b4", label="probe accuracy")
    ax.fill_between(x, df["accuracy_low"], df["accuracy_high"], color="#1f77b4", alpha=0.15)
    if "control_accuracy" in df:
        ax.plot(x, df["control_accuracy"], marker="s", color="#7f7f7f", ls="--", label="control task")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy (cross-validated)")
    ax.legend(loc="lower right")
    ax.set_title("What each layer knows: linear probe across layers")
    return fig


def probe_figure(df: pd.DataFrame):
    import plotly.graph_objects as go

    x = df["layer"].astype(int).tolist()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x + x[::-1], y=df["accuracy_high"].tolist() + df["accuracy_low"].tolist()[::-1],
                             fill="toself", fillcolor="rgba(31,119,180,0.15)", line=dict(width=0),
                             hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=x, y=df["accuracy"], mode="lines+markers", name="probe accuracy",
                             line=dict(color="rgb(31,119,180)")))
    if "control_accuracy" in df:
        fig.add_trace(go.Scatter(x=x, y=df["control_accuracy"], mode="lines+markers", name="control task",
                                 line=dict(color="gray", dash="dash")))
    fig.update_layout(title="Probe accuracy across layers (95% intervals over folds) and the control task",
                      xaxis_title="layer", yaxis_title="accuracy", yaxis_range=[0, 1.02], height=380,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def steer_plot(df: pd.DataFrame):
    """Steering: probe probability of the positive category against the steering strength, per prompt."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for prompt, part in df.groupby("prompt", sort=False):
        ax.plot(part["alpha"], part["p_positive"], marker="o", label=_clip(prompt))
    ax.axhline(0.5, color="#999", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"steering strength alpha ({df.attrs.get('mode', 'add')} at {df.attrs.get('site', '')})")
    ax.set_ylabel(f"P({df.attrs.get('positive', 'positive')})")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Steering toward {df.attrs.get('positive', 'positive')}: probe on the generations", fontsize=10)
    fig.tight_layout()
    return fig


def steer_figure(df: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    for prompt, part in df.groupby("prompt", sort=False):
        fig.add_trace(go.Scatter(x=part["alpha"], y=part["p_positive"], mode="lines+markers",
                                 name=html.escape(_clip(prompt)), text=[html.escape(g[:200]) for g in part["generation"]],
                                 hovertemplate="alpha %{x}: P=%{y:.3f}<br>%{text}<extra></extra>"))
    pos = html.escape(df.attrs.get("positive", "positive"))
    fig.update_layout(title=f"Probe probability of {pos} in the generations, by steering strength",
                      xaxis_title=f"alpha ({df.attrs.get('mode', 'add')} at {df.attrs.get('site', '')})",
                      yaxis_title=f"P({pos})", yaxis_range=[-0.02, 1.02], height=380,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


CLAMP_MEASURES = (("feature_mean", "the feature's mean activation"), ("p_category", "P(category) by the probe"))


def clamp_plot(df: pd.DataFrame):
    """Clamping measured (``llmri.sae.clamp.clamp_effect``): per clamp, each prompt's generation read
    back unclamped (dots) and their mean (bar): the clamped feature's own activation, and the
    category probe's probability when there is one."""
    import matplotlib.pyplot as plt

    measures = [(c, t) for c, t in CLAMP_MEASURES if df[c].notna().any()]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
    clamps = list(dict.fromkeys(df["clamp"]))
    for ax, (col, title) in zip(axes[0], measures):
        means = [df.loc[df["clamp"] == c, col].mean() for c in clamps]
        ax.bar(range(len(clamps)), means, color="#9ecae1")
        for i, c in enumerate(clamps):
            vals = df.loc[df["clamp"] == c, col].to_numpy(dtype=float)
            ax.scatter(np.full(len(vals), i), vals, color="#08519c", s=12, zorder=3)
        ax.set_xticks(range(len(clamps)), [_clip(c, 18) for c in clamps], rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Feature {df.attrs.get('feature', '')} of {df.attrs.get('site', '')} clamped: the generations "
                 "read back unclamped", fontsize=10)
    fig.tight_layout()
    return fig


def clamp_figure(df: pd.DataFrame):
    """Interactive :func:`clamp_plot` (plotly): hover a dot for its prompt and generation."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    measures = [(c, t) for c, t in CLAMP_MEASURES if df[c].notna().any()]
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=[t for _, t in measures])
    clamps = list(dict.fromkeys(df["clamp"]))
    for j, (col, _) in enumerate(measures, start=1):
        fig.add_trace(go.Bar(x=clamps, y=[df.loc[df["clamp"] == c, col].mean() for c in clamps], name="mean",
                             marker_color="#9ecae1", showlegend=j == 1), row=1, col=j)
        fig.add_trace(go.Scatter(x=df["clamp"], y=df[col], mode="markers", name="one prompt", showlegend=j == 1,
                                 marker=dict(color="#08519c", size=7),
                                 text=[html.escape(f"{p}: {g[:160]}") for p, g in zip(df["prompt"], df["generation"])],
                                 hovertemplate="%{y:.3g}<br>%{text}<extra></extra>"), row=1, col=j)
    fig.update_layout(title=f"Feature {df.attrs.get('feature', '')} of {html.escape(str(df.attrs.get('site', '')))} "
                            "clamped: the generations read back unclamped", height=380, template="plotly_white",
                      margin=dict(l=60, r=20, t=70, b=60))
    return fig
