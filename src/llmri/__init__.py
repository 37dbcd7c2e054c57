"""llmri: an MRI scanner for transformer language models.

>>> import llmri                                                   # doctest: +SKIP
>>> corpus = llmri.demo_corpus()
>>> scan = llmri.scan("default", corpus, "runs/demo")
>>> scan.activations(6).shape
(120, 384)

``import llmri`` is instant: each public name is imported from its module on first use
(torch, transformers, scipy, pandas and plotly load only when a function needs them).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

# Public name -> the module (under llmri) that defines it. A new public name is one line here.
_EXPORTS = {
    "Attention": "attention", "attention": "attention", "compare_heads": "attention", "head_stats": "attention",
    "ATTN_STATS": "capture", "POOLS": "capture", "scan": "capture",
    "Corpus": "corpus", "demo_corpus": "corpus",
    "Engine": "engine",
    "LlmriError": "errors",
    "compare_categories": "metrics", "graph_metrics": "metrics", "layer_profile": "metrics",
    "NeuronCard": "neurons", "cohens_d": "stats", "neuron_card": "neurons", "neurons": "neurons",
    "nrag": "nrag",
    "PatchResult": "interventions", "ablate": "interventions", "lesion_map": "interventions",
    "patch": "interventions", "patching": "interventions", "run_with_cache": "interventions",
    "evaluate_reduction": "probe", "probe": "probe", "probe_neurons": "probe", "probe_tokens": "probe",
    "RegionMap": "regions", "regions": "regions",
    "DEFAULT_MODEL": "model", "Model": "model", "load_model": "model",
    "ADAPTERS": "sites", "Adapter": "sites", "expand_sites": "sites", "hooks": "sites", "parse_site": "sites",
    "Scan": "store", "scan_from_arrays": "store",
    # the decoder, generation and steering
    "DEFAULT_DECODER": "model", "convert_gguf": "model", "embed": "capture", "reviews_corpus": "corpus", "english_corpus": "corpus", "glossary_corpus": "corpus",
    "generate": "generate", "steer_sweep": "generate", "steer": "interventions", "steering_vector": "interventions",
    # sparse-autoencoder features
    "SAE": "sae", "train_sae": "sae", "evaluate_sae": "sae", "feature_activations": "sae", "feature_card": "sae",
    "feature_neighbors": "sae", "feature_map": "sae", "clamp": "sae", "FeatureActivations": "sae",
    "FeatureCard": "sae", "load_saes": "sae", "load_sae": "sae",
    "features_demo": "report.features_demo",
    # automated explanations
    "ExplainResult": "explain", "Explainer": "explain", "LocalLM": "explain", "OpenAICompatible": "explain",
    "explain": "report.explain",
    # feature circuits
    "AttributionGraph": "circuits", "attribute": "circuits", "validate_circuit": "circuits", "ablate_nodes": "circuits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: llmri.store, llmri.viz
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'llmri' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``llmri.attention``, ``llmri.probe``, ... the functions when their modules load.

    Importing submodule ``llmri.X`` binds the package attribute ``X`` to the module; for the
    names that are both a module and its main function, the function wins, as it did when
    ``__init__`` imported everything up front (``from llmri.probe import ...`` still works).
    A name defined in another module than its namesake (``llmri.explain``: the analysis and its
    page, in ``report.explain``) is resolved by ``__getattr__`` instead.
    """

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            if _EXPORTS[name] != name:   # the public name is defined elsewhere: left to __getattr__
                self.__dict__.pop(name, None)
                return
            if hasattr(value, name):
                value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
