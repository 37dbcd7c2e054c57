"""Figures: matplotlib for static PNG/SVG, plotly for interactive views. One place saves them."""

from .attention import (attention_head_plot, attention_layer_plot, head_stats_figure, head_view_html,
                        rollout_plot, token_highlight_html)
from .causal import (clamp_figure, clamp_plot, lesion_figure, lesion_plot, patch_figure, patch_plot, probe_figure, probe_plot, steer_figure,
                     steer_plot)
from .charts import evaluation_figure, evaluation_plot
from .features import density_histogram, feature_card_html, feature_map_figure, feature_map_plot
from .graphs import circuit_figure, circuit_plot, draw_nrag, layered_layout, nrag_figure
from .explain import explain_score_figure, explain_score_plot, explanation_html, explanation_summary_html
from .heatmaps import difference_figure, difference_plot, heatmap_figure, heatmap_plot
from .neurons import neuron_card_html, neuron_histogram
from .style import category_colors, save_figure, script_json

__all__ = ["circuit_figure", "clamp_figure", "clamp_plot", "circuit_plot", "density_histogram", "feature_card_html", "feature_map_figure", "feature_map_plot",
           "steer_figure", "steer_plot", "lesion_figure", "lesion_plot", "patch_figure", "patch_plot", "probe_figure", "probe_plot",
           "attention_head_plot", "attention_layer_plot", "head_stats_figure", "head_view_html",
           "neuron_card_html", "neuron_histogram", "rollout_plot", "script_json", "token_highlight_html",
           "category_colors", "difference_figure", "difference_plot", "draw_nrag", "evaluation_figure",
           "evaluation_plot", "explain_score_figure", "explain_score_plot", "explanation_html", "explanation_summary_html", "heatmap_figure", "heatmap_plot", "layered_layout", "nrag_figure",
           "save_figure"]
