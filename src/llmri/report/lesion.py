"""The lesion page: ``lesion.html`` of a lesion map (``llmri.lesion_map``), as ``llmri ablate``
writes it.

>>> table = llmri.lesion_map(model, corpus, layers=[0, 1])
>>> lesion_page(table, "runs/lesion", model.name, n_docs=len(corpus))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..viz import lesion_figure, lesion_plot
from .page import build_page


def largest_effects(table):
    """The rows of a lesion map ordered by ``|effect|``, largest first."""
    return table.reindex(table["effect"].abs().sort_values(ascending=False).index)


def lesion_page(table, out, model_name: str, n_docs: int, mode: str | None = None) -> Path:
    """Write ``out/lesion.html``: the lesion map figure (PNG/SVG beside it) and its table ordered by
    ``|effect|`` (also ``lesion.csv``). ``table`` is what :func:`llmri.lesion_map` returns (its
    ``attrs`` name the measure and its baseline); ``n_docs`` and ``mode`` (default: the table's
    ``attrs["mode"]``) are stated on the page. Returns its path.
    """
    mode = table.attrs["mode"] if mode is None else mode
    return build_page(out, "lesion", f"llmri lesion map: {model_name}",
                      [f"{n_docs} documents; {mode} ablation of each head and each layer's MLP in turn; "
                       f"measure: {table.attrs['measure']} (baseline {table.attrs['baseline']:.4g}); "
                       f"precision: {table.attrs.get('precision', 'float32')}."],
                      [(lesion_figure(table), lesion_plot(table), "lesion")],
                      [("Effects, largest first", largest_effects(table), "lesion")])
