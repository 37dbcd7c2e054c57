"""The probe page: ``probe.html`` of the probes of every layer (``llmri.probe``) and the top-k
neuron probe at one layer (``llmri.probe_neurons``), as ``llmri probe`` writes it.

>>> df = llmri.probe(scan)
>>> best = int(df.loc[df["accuracy"].idxmax(), "layer"])
>>> ranking, curve = llmri.probe_neurons(scan, best)
>>> probe_page(scan, df, "runs/news-probe", best, ranking, curve)       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..viz import probe_figure, probe_plot
from .page import build_page


def probe_page(scan, probes, out, layer: int, ranking, curve, site: str = "resid", cv: int = 5,
               classifier: str = "logistic") -> Path:
    """Write ``out/probe.html`` with the probe-per-layer figure (PNG/SVG beside it) and three tables
    (also CSVs): ``probes`` (:func:`llmri.probe`), and at ``layer`` the top-k ``curve`` and the
    first 50 rows of the neuron ``ranking`` (:func:`llmri.probe_neurons`). ``site``, ``cv`` and
    ``classifier`` are the settings the probes were run with, stated on the page. Returns its path.
    """
    return build_page(out, "probe", f"llmri probe: {scan.model_name}",
                      [f"{scan.n_docs} documents, categories {', '.join(scan.label_names)}; site {site}, "
                       f"{cv}-fold cross-validation, {classifier} probe."],
                      [(probe_figure(probes), probe_plot(probes), "probe")],
                      [("Probe per layer", probes, "probe"), (f"Top-k neurons at layer {layer}", curve, "probe_top_k"),
                       (f"Neuron ranking at layer {layer} (first 50)", ranking.head(50), "probe_neurons")])
