"""Automated explanations of neurons and SAE features, scored by simulation, detection and fuzzing.

Bills et al. (2023), "Language models can explain neurons in language models" (explain, then
simulate and correlate); EleutherAI's delphi, Paulo et al. (2024), "Automatically interpreting
millions of features in large language models" (detection and fuzzing).

>>> ex = llmri.Explainer(backend=llmri.LocalLM("default-decoder"))              # doctest: +SKIP
>>> llmri.explain(scan, "mlp.10", "top:20", explainer=ex, out="runs/explain").table
"""

from .backends import Backend, CallCache, LocalLM, OpenAICompatible
from .examples import UnitExamples, Window, unit_activations, unit_examples
from .explainer import Explainer, explain, explain_units, parse_units
from .results import ExplainResult, find_explanations, unit_explanations
from .scoring import (CONVENTIONS, SCORERS, balanced_accuracy, balanced_accuracy_over_units, expected_value,
                      mean_window_correlation, parse_binary, parse_values, pearson, pooled_correlation, score)

__all__ = ["CONVENTIONS", "Backend", "CallCache", "ExplainResult", "Explainer", "LocalLM", "OpenAICompatible",
           "SCORERS", "UnitExamples", "Window", "balanced_accuracy", "balanced_accuracy_over_units", "expected_value",
           "explain", "explain_units", "find_explanations",
           "mean_window_correlation", "parse_binary", "parse_units", "parse_values", "pearson",
           "pooled_correlation", "score", "unit_activations", "unit_examples", "unit_explanations"]
