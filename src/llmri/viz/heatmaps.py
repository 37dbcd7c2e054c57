"""Heatmaps: documents per grid cell, per layer and category; category difference maps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .style import grid_shape, snippet

if TYPE_CHECKING:  # figures draw what an analysis returns; they never run one
    from ..regions import RegionMap


def _matrices(rm: RegionMap, categories, normalize: bool):
    mats = {}
    n = max(1, int(rm.category_mask(categories).sum()))
    for L in rm.layers:
        m = rm.counts(L, categories).astype(np.float64)
        mats[L] = m / n if normalize else m
    return mats


def heatmap_plot(rm: RegionMap, categories=None, cmap: str = "viridis"):
    """Small multiples (matplotlib): documents per cell at every layer for ``categories``."""
    import matplotlib.pyplot as plt

    mats = _matrices(rm, categories, normalize=False)
    rows, cols = grid_shape(len(mats))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.0 * rows), squeeze=False)
    vmax = max(m.max() for m in mats.values()) or 1
    for ax, (L, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(m, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(f"layer {L}")
        ax.set_xticks([]), ax.set_yticks([])
        _label_axes(ax, rm, L)
    for ax in list(axes.flat)[len(mats):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="documents")
    fig.suptitle(f"{_title(rm, categories)}: documents per region ({rm.reducer}, {rm.grid}x{rm.grid} grid)\n"
                 "each layer has its own map: compare categories within a layer, not positions across layers",
                 fontsize=10)
    return fig


def difference_plot(rm: RegionMap, a, b):
    """Share of category ``a`` minus share of ``b`` in each cell, every layer (matplotlib)."""
    import matplotlib.pyplot as plt

    ma, mb = _matrices(rm, [a], True), _matrices(rm, [b], True)
    rows, cols = grid_shape(len(ma))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.0 * rows), squeeze=False)
    lim = max(np.abs(ma[L] - mb[L]).max() for L in ma) or 1
    for ax, L in zip(axes.flat, ma):
        im = ax.imshow(ma[L] - mb[L], origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"layer {L}")
        ax.set_xticks([]), ax.set_yticks([])
        _label_axes(ax, rm, L)
    for ax in list(axes.flat)[len(ma):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"share {a} - share {b}")
    fig.suptitle(f"{a} vs {b}: where each category's documents sit")
    return fig


def axis_labels(rm: RegionMap, L: int) -> tuple[str, str]:
    """Axis titles of layer ``L``'s map: component and explained variance, e.g. ``"PC1 (31%)"``."""
    var = rm.explained_variance_.get(L)
    name = "PC" if rm.reducer == "pca" else "dim "
    return tuple(f"{name}{k + 1}" + (f" ({100 * var[k]:.0f}%)" if var is not None and len(var) > k else "")
                 for k in (0, 1))


def _label_axes(ax, rm: RegionMap, L: int) -> None:
    x, y = axis_labels(rm, L)
    ax.set_xlabel(x, fontsize=8, labelpad=1)
    ax.set_ylabel(y, fontsize=8, labelpad=1)


def _title(rm: RegionMap, categories) -> str:
    if categories is None:
        return "all categories"
    cats = [categories] if isinstance(categories, (str, int)) else list(categories)
    return ", ".join(rm.label_names[c] for c in rm.category_ids(cats))


def _hover(rm: RegionMap, L: int, categories, max_docs: int = 8) -> np.ndarray:
    """For each cell, the first words of the documents in it (HTML-escaped)."""
    out = np.empty((rm.grid, rm.grid), dtype=object)
    out[:] = ""
    mask = rm.category_mask(categories)
    cells = rm.cells(L)
    for y in range(rm.grid):
        for x in range(rm.grid):
            docs = np.flatnonzero((cells[:, 0] == x) & (cells[:, 1] == y) & mask)
            lines = [f"[{rm.label_names[rm.labels[d]]}] {snippet(rm.texts[d])}" for d in docs[:max_docs]]
            if len(docs) > max_docs:
                lines.append(f"... and {len(docs) - max_docs} more")
            out[y, x] = "<br>".join(lines)
    return out


def _subplots(rm: RegionMap, title: str):
    from plotly.subplots import make_subplots

    rows, cols = grid_shape(len(rm.layers))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"layer {L}" for L in rm.layers],
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    fig.update_layout(title=title, height=280 * rows + 80, margin=dict(l=20, r=20, t=70, b=20),
                      hoverlabel=dict(align="left"))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    for i, L in enumerate(rm.layers):
        x, y = axis_labels(rm, L)
        fig.update_xaxes(title_text=x, title_font_size=10, title_standoff=2, row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(title_text=y, title_font_size=10, title_standoff=2, row=i // cols + 1, col=i % cols + 1)
    return fig, cols


def heatmap_figure(rm: RegionMap, categories=None):
    """Interactive small multiples (plotly); hovering a cell lists the documents in it."""
    import plotly.graph_objects as go

    mats = _matrices(rm, categories, normalize=False)
    vmax = max(m.max() for m in mats.values()) or 1
    fig, cols = _subplots(rm, f"{_title(rm, categories)}: documents per region")
    for i, (L, m) in enumerate(mats.items()):
        fig.add_trace(go.Heatmap(z=m, customdata=_hover(rm, L, categories), zmin=0, zmax=vmax,
                                 colorscale="Viridis", showscale=i == 0,
                                 colorbar=dict(title="docs", len=0.5),
                                 hovertemplate=f"layer {L}, cell (%{{x}}, %{{y}}): %{{z}} documents"
                                               "<br>%{customdata}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    return fig


def difference_figure(rm: RegionMap, a, b):
    """Interactive difference map: share of ``a`` minus share of ``b`` per cell."""
    import plotly.graph_objects as go

    ma, mb = _matrices(rm, [a], True), _matrices(rm, [b], True)
    lim = max(np.abs(ma[L] - mb[L]).max() for L in ma) or 1
    fig, cols = _subplots(rm, f"{a} vs {b}: share of each category's documents per region (red: {a})")
    for i, L in enumerate(ma):
        fig.add_trace(go.Heatmap(z=ma[L] - mb[L], customdata=_hover(rm, L, [a, b]), zmin=-lim, zmax=lim,
                                 colorscale="RdBu", reversescale=True, showscale=i == 0,
                                 colorbar=dict(title="share", len=0.5),
                                 hovertemplate=f"layer {L}, cell (%{{x}}, %{{y}}): %{{z:.2f}}"
                                               "<br>%{customdata}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    return fig
