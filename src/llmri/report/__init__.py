"""Every page llmri writes: one self-contained HTML file each (plotly inlined, no CDN) plus PNG/SVG
figures and CSV tables beside it. A page takes analysis results (DataFrames, result objects) and
renders them, so each page the CLI writes can be built from Python:

==================================  =========================================  ==================
page                                function                                   CLI
==================================  =========================================  ==================
``report.html``                     :func:`build_report` (``report.scan``)     ``llmri report``
``attention.html``                  :func:`build_attention_page`               ``llmri attention``
``probe.html``                      :func:`probe_page`                         ``llmri probe``
``lesion.html``                     :func:`lesion_page`                        ``llmri ablate``
``patch.html``                      :func:`patch_page`                         ``llmri patch``
``steer.html``, ``steer.json``      :func:`steer_page`                         ``llmri steer``
``steer.html`` (clamped feature)    :func:`clamp_page`                         ``llmri sae steer``
``features.html``                   :func:`build_feature_browser`              ``llmri sae report``
``circuit.html``, ``graph.json``    :func:`build_circuit_page`                 ``llmri circuit``
``explain.html``                    :func:`explain_page` (``report.explain``)  ``llmri explain``
``features.html`` (features demo)   :func:`features_demo_page`                 ``llmri demo --features``
==================================  =========================================  ==================

:func:`build_page` (``report.page``) is the one-topic page all but the first two are made of.
"""

from __future__ import annotations

from ..viz import script_json
from .attention import build_attention_page
from .circuit import build_circuit_page
from .explain import explain_page
from .features import SAE_FOLDER, build_feature_browser, dashboard_html, scan_saes
from .features_demo import features_demo, features_demo_page, run_features_demo
from .lesion import largest_effects, lesion_page
from .page import build_page, output_folder
from .patch import patch_page, patch_ranking
from .probe import probe_page
from .scan import MAX_PAIRS, build_report
from .steer import clamp_page, steer_grid, steer_page

__all__ = ["MAX_PAIRS", "SAE_FOLDER", "build_attention_page", "build_circuit_page", "build_feature_browser",
           "build_page", "build_report", "clamp_page", "dashboard_html", "explain_page", "features_demo", "features_demo_page", "largest_effects",
           "lesion_page", "output_folder", "patch_page", "patch_ranking", "probe_page", "run_features_demo", "scan_saes", "script_json",
           "steer_grid", "steer_page"]
