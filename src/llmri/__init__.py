"""llmri: an MRI scanner for transformer language models.

>>> import llmri                                                   # doctest: +SKIP
>>> corpus = llmri.demo_corpus()
>>> scan = llmri.scan("default", corpus, "runs/demo")
>>> scan.activations(6).shape
(96, 384)
"""

from .attention import Attention, attention, compare_heads, head_stats
from .capture import ATTN_STATS, POOLS, embed, scan
from .corpus import Corpus, demo_corpus, reviews_corpus
from . import distributed  # Ray is imported only when one of its functions runs
from .errors import LlmriError
from .explain import ExplainResult, Explainer, LocalLM, OpenAICompatible, explain
from .metrics import compare_categories, graph_metrics, layer_profile
from .neurons import NeuronCard, cohens_d, neuron_card, neurons
from .nrag import nrag
from .generate import generate, steer_sweep
from .interventions import (PatchResult, ablate, lesion_map, patch, patching, run_with_cache, steer,
                            steering_vector)
from .probe import evaluate_reduction, probe, probe_neurons, probe_tokens
from .regions import RegionMap, regions
from .model import DEFAULT_DECODER, DEFAULT_MODEL, Model, convert_gguf, load_model
from .sites import ADAPTERS, Adapter, expand_sites, hooks, parse_site
from .store import Scan, scan_from_arrays

# Sparse-autoencoder names load on first use (``llmri.SAE``), so ``import llmri`` stays light.
_LAZY = {"SAE": ".sae", "train_sae": ".sae", "evaluate_sae": ".sae", "feature_activations": ".sae",
         "feature_card": ".sae", "feature_neighbors": ".sae", "feature_map": ".sae", "clamp": ".sae",
         "FeatureActivations": ".sae", "FeatureCard": ".sae"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmri' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["reviews_corpus", "DEFAULT_DECODER", "convert_gguf", "embed", "generate", "steer", "steer_sweep", "steering_vector", "PatchResult", "ablate", "lesion_map", "patch", "patching", "probe", "probe_neurons", "probe_tokens",
           "run_with_cache", "ExplainResult", "Explainer", "LocalLM", "OpenAICompatible", "explain", "ATTN_STATS", "Attention", "NeuronCard", "attention", "cohens_d", "compare_heads", "head_stats",
           "neuron_card", "neurons", "ADAPTERS", "Adapter", "Corpus", "DEFAULT_MODEL", "LlmriError", "Model", "POOLS",
           "RegionMap", "Scan", "compare_categories", "demo_corpus", "evaluate_reduction",
           "expand_sites", "graph_metrics", "hooks", "layer_profile", "load_model", "nrag",
           "parse_site", "regions", "scan", "scan_from_arrays", *_LAZY]
