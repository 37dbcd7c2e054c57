"""llmri: an MRI scanner for transformer language models.

>>> import llmri                                                   # doctest: +SKIP
>>> corpus = llmri.demo_corpus()
>>> scan = llmri.scan("default", corpus, "runs/demo")
>>> scan.activations(6).shape
(96, 384)
"""

from .capture import POOLS, scan
from .corpus import Corpus, demo_corpus
from .errors import LlmriError
from .model import DEFAULT_MODEL, Model, load_model
from .sites import ADAPTERS, Adapter, expand_sites, hooks, parse_site
from .store import Scan

__version__ = "0.1.0"
__all__ = ["ADAPTERS", "Adapter", "Corpus", "DEFAULT_MODEL", "LlmriError", "Model", "POOLS",
           "Scan", "demo_corpus", "expand_sites", "hooks", "load_model", "parse_site", "scan"]
