"""The circuit page: ``circuit.html`` and ``graph.json`` (with its ``graph-metadata.json``) of an attribution graph (``llmri.attribute``),
with a feature dashboard per kept feature node when a Scan is given.

>>> build_circuit_page(g, "runs/circuit", pruned=g.prune(), model=dec, saes=saes)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..errors import LlmriError
from ..store import Scan
from ..viz import circuit_figure, circuit_plot, script_json, token_highlight_html
from .features import dashboard_html
from .page import _environment, build_page, output_folder, whole_page


@whole_page
def build_circuit_page(ag, out, pruned=None, model=None, saes=None, n_top: int = 20, scan=None) -> Path:
    """``out/circuit.html`` for an attribution graph (``llmri.attribute``): the layered graph
    (``pruned`` when given), the prompt shaded by each token's attribution, the top features,
    per-layer totals, graph scores and ``ag.validation`` when present; plus ``graph.json``
    (circuit-tracer's viewer format) and its index ``graph-metadata.json``, so that circuit-tracer's
    local server serves ``out`` as it is (slug ``graph``), CSVs and PNG/SVG of the graph.

    Hovering a feature node shows its attribution, activation, density, top output tokens (with
    ``model`` and ``saes``) and explanation; clicking it opens a panel with what is known of it,
    and with ``scan`` (a Scan with token records of the SAE sites) and ``saes`` its dashboard as in
    the feature browser (:func:`dashboard_html`: top activating windows, density, output tokens,
    explanation), one per kept feature, all inside the one HTML file.

    >>> build_circuit_page(g, "runs/circuit", pruned=g.prune(), model=dec, saes=saes, scan="runs/dec-circuit")  # doctest: +SKIP
    """
    shown = pruned if pruned is not None else ag
    intro, tables, blocks = circuit_sections(ag, shown, model, saes, n_top, scan)
    out = output_folder(out)
    path = build_page(out, "circuit", f"llmri circuit: {ag.info['prompt']!r} -> {ag.target!r}", intro,
                      [(circuit_figure(shown), circuit_plot(shown), "circuit")], tables, blocks)
    shown.to_viewer(out, slug="graph")
    return path


def circuit_sections(ag, shown, model=None, saes=None, n_top: int = 20, scan=None, feats: dict | None = None,
                     figure: str | None = None) -> tuple[list[str], list[tuple], list[tuple]]:
    """What the circuit page says of ``ag`` drawn as ``shown`` (it or its pruned copy), for
    :func:`build_page`: (intro lines, tables, HTML blocks: the shaded prompt and the dashboard
    panel). ``feats`` (``{site: FeatureActivations}`` over ``scan``) are reused for the node labels
    and dashboards; ``figure`` is the page element id of the graph's figure whose clicks open the
    panel (default: the page's first figure)."""
    if scan is not None and saes is None:
        raise LlmriError("scan: feature dashboards need the SAEs too (saes=)")
    cards, node_cards = _circuit_dashboards(shown, ag, model, saes, scan, feats)
    scores = ag.scores()
    probs = [d.get("prob") for _, d in ag.graph.nodes(data=True) if d["kind"] == "logit"]
    intro = [f"prompt: {ag.info['prompt']!r} ({len(ag.tokens)} tokens), model {ag.info['model']} "
             f"({ag.info.precision})",
             f"target {ag.target!r}: {ag.info['metric_name']} {ag.metric:.4g}"
             + (f" (p = {probs[0]:.3f})" if probs and probs[0] is not None and ag.info["metric_name"] != "logit difference" else ""),
             (f"transcoders {', '.join(ag.info['transcoders'])} (edges: direct effects)" if ag.info.get("transcoders")
              else f"SAEs at {', '.join(ag.info['sites'])}") + "; attention patterns and norm scales "
             + ("frozen (Ameisen et al. 2025)" if ag.info["freeze"] else "not frozen (gradients of the model itself)"),
             f"graph shown: {shown.graph.number_of_nodes()} nodes, {shown.graph.number_of_edges()} edges"
             + (f" (pruned: node threshold {shown.info['node_threshold']}, edge threshold {shown.info['edge_threshold']})"
                if "node_threshold" in shown.info else ""),
             f"feature share of |attribution| {scores['feature_share']:.3f} (the rest sits on SAE error nodes); "
             f"replacement score {scores['replacement_score']:.3f}, completeness score {scores['completeness_score']:.3f} "
             "(Ameisen et al. 2025)"]
    if ag.info.get("explained"):
        intro.append("explained features (llmri explain --sae): " + ", ".join(
            f"{n} of {site}" for site, n in ag.info["explained"].items()) + "; hover a node for its explanation")
    top = ag.top_features(n_top, model=model, saes=saes)
    if not ag.info.get("explained"):
        top = top.drop(columns=["explanation", "simulation_score"], errors="ignore")
    v = ag.validation
    tables = [("Top features by |attribution|", top, "top_features"),
              ("Per SAE layer: attribution on features and on error nodes", ag.layer_totals(), "layer_totals"),
              ("Per token: attribution of its embedding and of the features active there", ag.token_totals(),
               "token_totals")]
    blocks = [("Prompt, shaded by each token embedding's attribution (hover for the value)",
               token_highlight_html(ag.tokens, ag.info["embedding_attribution"])),
              ("Feature dashboards", _environment().get_template("circuit_panel.html.j2").render(
                  cards=Markup(script_json(cards)), nodes=Markup(script_json(node_cards)), n_cards=len(cards),
                  scan=None if scan is None else str(getattr(scan, "folder", scan)), figure=figure))]
    if v:
        tables.insert(1, (f"Validation: ablating ({v['mode']}) the top-k features vs k random active features "
                          "(drop of the metric)", pd.DataFrame(v["topk"]), "validation_topk"))
        tables.insert(2, ("Validation: single-feature ablations, predicted (attribution) vs actual drop",
                          pd.DataFrame(v["single"]["rows"]), "validation_single"))
        intro.append(f"validation: attribution vs actual single-feature ablation over {v['single']['n']} features: "
                     f"Spearman {v['single']['spearman']:.3f}, Pearson {v['single']['pearson']:.3f}; "
                     + "; ".join(f"top-{r['k']} drop {r['top_drop']:.3g} vs random {r['random_drop_mean']:.3g} "
                                 f"± {r['random_drop_std']:.2g}" for r in v["topk"]))
    return intro, tables, blocks


def _circuit_dashboards(shown, ag, model, saes, scan, feats: dict | None = None) -> tuple[dict, dict]:
    """Feature dashboards of the feature nodes of ``shown`` (``{"site:feature": html}``, with a
    scan) and each node's key into them (``{node_id: "site:feature"}``); without a scan only the
    nodes' top output tokens (model and saes) are added to their hover."""
    from ..circuits import load_saes  # torch
    from ..sae.features import output_tokens

    feats_nodes = [(n, d) for n, d in shown.graph.nodes(data=True) if d["kind"] == "feature"]
    by_site = {s.site: s for s in load_saes(saes)} if saes is not None else {}
    if model is not None and by_site:
        for _, d in feats_nodes:
            if d["site"] in by_site and "top_tokens" not in d:
                t = output_tokens(by_site[d["site"]], int(d["feature"]), model, top=5)
                d["top_tokens"] = ", ".join(t[t["direction"] == "up"]["token"]) if t is not None else ""
    node_cards = {n: f"{d['site']}:{int(d['feature'])}" for n, d in feats_nodes}
    if scan is None:
        return {}, node_cards
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    needed: dict[str, set] = {}
    for _, d in feats_nodes:
        needed.setdefault(d["site"], set()).add(int(d["feature"]))
    stats = shown.label_features(scan, saes, model, feats=feats)
    cards = {}
    for site, features in sorted(needed.items()):
        explained = getattr(ag, "explanations", {}).get(site, {})
        for f in sorted(features):
            cards[f"{site}:{f}"] = dashboard_html(stats[site], f, model, explained.get(f))
    return cards, node_cards
