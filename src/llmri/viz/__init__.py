"""Figures: matplotlib for static PNG/SVG, plotly for interactive views. One place saves them."""

from .charts import evaluation_figure, evaluation_plot
from .graphs import draw_nrag, layered_layout, nrag_figure
from .heatmaps import difference_figure, difference_plot, heatmap_figure, heatmap_plot
from .style import category_colors, save_figure

__all__ = ["category_colors", "difference_figure", "difference_plot", "draw_nrag", "evaluation_figure",
           "evaluation_plot", "heatmap_figure", "heatmap_plot", "layered_layout", "nrag_figure",
           "save_figure"]
