"""The patching page: ``patch.html`` of activation patching (``llmri.patch``), as ``llmri patch``
writes it.

>>> res = llmri.patch(model, clean, corrupted, sites=["resid", "attn_out", "mlp_out"])
>>> patch_page(res, "runs/patch", clean, corrupted, model_name=model.name)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..sites import parse_site
from ..viz import patch_figure, patch_plot
from .page import build_page


def patch_ranking(result) -> tuple:
    """``(ranked, why)``: the patching scores, most restored first, without the last ``resid``
    layer (the metric is read from it, so patching it restores everything by construction), and
    the sentence that says so (``""`` when the scores hold no ``resid`` site)."""
    sc = result.scores
    last = sc.loc[sc["kind"] == "resid", "layer"].max()
    trivial = (sc["kind"] == "resid") & (sc["layer"] == last)
    why = (f"resid.{last} is left out of the ranking: the metric is read from it, so patching it restores 1 at the "
           "read-out position and 0 elsewhere by construction") if trivial.any() else ""
    return sc[~trivial].sort_values("restored", ascending=False), why


def patch_page(result, out, clean: str, corrupted: str, model_name: str = "", sites=None) -> Path:
    """Write ``out/patch.html``: one figure per site kind (PNG/SVG beside it), the scores ranked
    by :func:`patch_ranking` and all scores (also CSVs). ``result`` is a
    :class:`llmri.PatchResult`; ``clean`` and ``corrupted`` are its two inputs, stated on the page;
    ``sites`` the patched sites (default: the kinds in the scores, in their order). Returns its path.
    """
    specs = list(dict.fromkeys(result.scores["kind"])) if sites is None else list(sites)
    kinds = list(dict.fromkeys(parse_site(k)[0] for k in specs))
    ranked, why = patch_ranking(result)
    return build_page(out, "patch", f"llmri activation patching: {model_name}",
                      [f"clean: {clean}", f"corrupted: {corrupted}",
                       f"metric: clean {result.clean_metric:.4g}, corrupted {result.corrupted_metric:.4g}; each cell "
                       "restores one site at one position from the clean run; "
                       f"precision: {result.precision}."],
                      [(patch_figure(result, k), patch_plot(result, k), f"patch_{k}") for k in kinds],
                      [("Scores, most restored first" + (f" ({why})" if why else ""), ranked, "patch_ranked"),
                       ("All scores", result.scores, "patch")])
