"""The explain page: ``explain.html`` for an explain run, and ``llmri.explain``, which runs the
analysis and writes its page.

>>> res = llmri.explain(scan, "mlp.10", "top:20", explainer=ex, out="runs/explain")    # doctest: +SKIP
>>> explain_page(res, "runs/explain")
"""

from __future__ import annotations

from pathlib import Path

from ..explain import explainer as _analysis
from ..viz import explain_score_figure, explain_score_plot, explanation_html
from .page import build_page


def explain_page(result, out, top: int = 50) -> Path:
    """``out/explain.html``: the table sorted by simulation score, the score distributions
    against the random-explanation baseline, and the ``top`` best units' held-out windows
    with true and simulated activations side by side."""
    key = "simulation_score" if "simulation_score" in result.table else "unit"
    view = result.table.sort_values(key, ascending=key == "unit", na_position="last", kind="stable")
    order = {int(u): i for i, u in enumerate(view["unit"])}
    recs = sorted((r for r in result.records if "held_out_windows" in r), key=lambda r: order[int(r["unit"])])[:top]
    info = result.info
    intro = [f"{len(result.table)} {info.get('unit_kind', 'unit')}s of {info.get('site', '?')}"
             f"{' in ' + info['scan'] if info.get('scan') else ''}; explainer and simulator: "
             f"{info.get('backend')} {info.get('model')}; prompt style {info.get('style')}; scorers "
             f"{', '.join(info.get('scorers', []))}. Baselines score each unit with another unit's explanation.",
             "Simulation: Pearson r of simulated and true activations pooled over held-out tokens (Bills et al. "
             "2023). Detection and fuzzing: balanced accuracy, chance 0.5 (delphi)."]
    return build_page(out, "explain", "llmri explanations", intro,
                      [(explain_score_plot(result.table), explain_score_figure(result.table), "explain_scores")],
                      [("Explanations", view, "explanations_by_score")],
                      [(f"Held-out windows, true (red) and simulated (blue), best {len(recs)} units",
                        "\n".join(explanation_html(r) for r in recs))])


def explain(scan, site: str, units, explainer, *args, out=None, page: bool = True, **kwargs):
    result = _analysis.explain(scan, site, units, explainer, *args, out=out, **kwargs)
    if out is not None and page:
        explain_page(result, out)
    return result


explain.__doc__ = (_analysis.explain.__doc__ or "") + """
    ``page`` (default True) also writes ``out/explain.html`` (:func:`explain_page`).
    """
