"""The main report: ``report.html`` of a Scan (regions, NRAGs, metrics, evaluation, probe, and the
sections for attention heads, neurons and SAE features that the scan's sites allow).

>>> build_report("runs/news", "runs/news-report", reducer="pca", n_components=2, grid=10)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..errors import LlmriError
from ..explain.results import ExplainResult, find_explanations, unit_explanations
from ..metrics import compare_categories, graph_metrics, layer_profile
from ..neurons import neuron_card, neurons
from ..nrag import nrag
from ..probe import evaluate_reduction, probe
from ..regions import regions as make_regions
from ..store import Scan, atomic_write_bytes, atomic_write_text
from ..viz import (category_colors, difference_figure, difference_plot, draw_nrag, evaluation_figure, evaluation_plot,
                   head_stats_figure, heatmap_figure, heatmap_plot, nrag_figure, probe_figure, probe_plot)
from .attention import _attention_parts
from .features import _features_section, scan_saes
from .page import _environment, _Figures, _safe, _slug, _table, whole_page

MAX_PAIRS = 3


def _named_comparison(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """A compare_categories table for reading: category names as headers, the difference's sign
    in its header, and metrics that are constant under every shuffle marked instead of tested."""
    out = df.drop(columns="constant").rename(columns={"a": a, "b": b, "difference": f"{a} - {b}"})
    out["p_value"] = [("constant" if c else f"{v:.4g}") for v, c in zip(df["p_value"], df["constant"])]
    out["q_value"] = [("" if c else f"{v:.4g}") for v, c in zip(df["q_value"], df["constant"])]
    return out


def check_report_settings(label_names, categories=None, n_components: int = 2, grid: int = 10,
                          n_permutations: int = 200, flags: bool = False) -> None:
    """The settings of :func:`build_report` that need no reduction, checked against the scan's
    ``label_names`` (the CLI calls it before it scans or builds anything). ``flags`` names them as
    the command's options."""
    names = {"n_components": "--components", "grid": "--grid", "n_permutations": "--permutations",
             "categories": "--categories"} if flags else {}
    for name, v in (("n_components", n_components), ("grid", grid), ("n_permutations", n_permutations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LlmriError(f"{names.get(name, name)} must be a positive integer, got {v!r}")
    if categories is not None:
        if not list(categories):
            raise LlmriError(f"{names.get('categories', 'categories')}: none given")
        for c in categories:
            ok = (0 <= c < len(label_names)) if isinstance(c, int) and not isinstance(c, bool) else str(c) in label_names
            if not ok:
                raise LlmriError(f"{names.get('categories', 'categories')}: unknown category {c!r}; "
                                 f"categories: {list(label_names)}")


@whole_page
def build_report(scan, out, reducer="pca", n_components: int = 2, grid: int = 10, categories=None,
                 n_permutations: int = 200, seed: int = 0, site: str = "resid", progress: bool | None = None,
                 model=None, attention_text: str | None = None, top_neurons: int = 10,
                 preset: str | None = None, explanations=None, saes=None, top_features: int = 10) -> Path:
    """Analyse a Scan and write ``out/report.html`` plus ``out/figures/`` and CSV tables.

    Sections for attention heads and neurons appear when the scan captured ``attn`` and ``mlp``;
    a Features section when SAEs are given (``saes``: SAE folders) or, by default, found beside the
    scan in ``<scan>/saes/<name>/`` (see :func:`scan_saes`), for those whose site has token records;
    with ``model`` and ``attention_text`` the report also holds a head view of that text.
    ``preset="llm-mri"`` builds the regions and metrics as LLM-MRI 0.2.1 does (see ``llmri.regions``).
    ``explanations`` (explain output folders of ``mlp.L`` neurons; default: the runs found beside
    the scan, :func:`llmri.explain.find_explanations`) add explanations and scores to the neurons.
    Static figures are named by content: ``nrag_<category>.png``, ``difference_<a>_vs_<b>.png``.
    Returns the path of the HTML file.
    """
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    check_report_settings(scan.label_names, categories, n_components, grid, n_permutations)
    rm = make_regions(scan, reducer=reducer, n_components=n_components, grid=grid, seed=seed, site=site,
                      progress=progress, preset=preset)
    cats = rm.label_names if not categories else [rm.label_names[i] for i in rm.category_ids(list(categories))]
    present = [c for c in cats if rm.category_mask([c]).any()]
    if not present:
        raise LlmriError("categories: none of the chosen categories has documents")
    colors = category_colors(rm.label_names)
    figs = _Figures(out / "figures")
    sections: dict = {"heatmaps": [], "differences": [], "graphs": [], "static": []}

    if n_components == 2:
        sections["heatmaps"].append(figs.interactive(heatmap_figure(rm, present)))
        sections["static"] += figs.static(heatmap_plot(rm, present), "heatmaps_all")
        for c in present:
            sections["heatmaps"].append(figs.interactive(heatmap_figure(rm, [c])))
        for i, (a, b) in enumerate(itertools.combinations(present, 2)):
            if i >= MAX_PAIRS:
                break
            sections["differences"].append(figs.interactive(difference_figure(rm, a, b)))
            sections["static"] += figs.static(difference_plot(rm, a, b), f"difference_{_slug(a)}_vs_{_slug(b)}")

    g_all = nrag(rm, present)
    # the composed graph of a grid map is a hairball: edges of a single document start hidden
    light = 2 if n_components == 2 and g_all.number_of_edges() > 100 else 0
    sections["graphs"].append(figs.interactive(nrag_figure(g_all, fixed=True, colors=colors, min_weight=light,
                                                           title=f"NRAG of {', '.join(present)} (composed)")))
    sections["static"] += figs.static(draw_nrag(g_all, fixed=True, colors=colors, min_weight=light), "nrag_all")
    per_cat = {}
    for i, c in enumerate(present):
        g = nrag(rm, [c])
        per_cat[c] = g
        sections["graphs"].append(figs.interactive(nrag_figure(g, fixed=True, colors=colors,
                                                               title=f"NRAG of {c}")))
        sections["static"] += figs.static(draw_nrag(g, fixed=True, colors=colors, title=f"NRAG of {c}"),
                                          f"nrag_{_slug(c)}")

    metrics = pd.DataFrame({c: graph_metrics(g) for c, g in per_cat.items()})
    metrics.insert(0, "metric", metrics.index)
    comparisons = []
    for i, (a, b) in enumerate(itertools.combinations(present, 2)):
        if i >= MAX_PAIRS:
            break
        df = compare_categories(rm, a, b, n_permutations=n_permutations, seed=seed, progress=progress)
        comparisons.append((a, b, df))
    profile = layer_profile(g_all)

    evaluation = None
    if len(present) >= 2 and min(rm.category_mask([c]).sum() for c in present) >= 2:
        evaluation = evaluate_reduction(scan, rm, seed=seed)
        sections["static"] += figs.static(evaluation_plot(evaluation), "evaluation")

    probe_sec = None
    if len(present) >= 2 and min(rm.category_mask([c]).sum() for c in present) >= 2:
        probes = probe(scan, site=site, seed=seed)
        sections["static"] += figs.static(probe_plot(probes), "probe")
        atomic_write_text(out / "probe.csv", probes.to_csv(index=False))
        probe_sec = {"figure": figs.interactive(probe_figure(probes)), "table": _table(probes)}
    heads = _heads_section(scan, present, figs) if "attn" in scan.site_kinds else None
    neuron_sec = _neurons_section(scan, present, figs, top_neurons, explanations) if "mlp" in scan.site_kinds else None
    sae_dirs = scan_saes(scan) if saes is None else [Path(p) for p in saes]
    feature_sec = _features_section(scan, sae_dirs, present, figs, out, model, top_features, progress) \
        if sae_dirs else None
    if feature_sec:
        sections["static"] += feature_sec.pop("static")
    attn_view = None
    if model is not None and attention_text:
        from ..attention import attention  # torch: only for a report with an example text

        attn_view = _attention_parts(attention(model, attention_text), figs, prefix="example_")
        sections["static"] += attn_view.pop("static")

    import plotly.offline

    env = _environment()
    counts = rm.category_mask
    samples = {c: [scan.texts[d] for d in list(counts([c]).nonzero()[0])[:10]] for c in present}
    page = env.get_template("template.html.j2").render(
        plotly_js=Markup(plotly.offline.get_plotlyjs()),
        title=f"llmri report: {scan.model_name}",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        model=scan.manifest["model"], n_docs=scan.n_docs,
        counts={c: int(counts([c]).sum()) for c in present}, colors=colors,
        settings={**scan.settings, "reducer": rm.reducer, "components": n_components, "grid": grid, "preset": preset or "none",
                  "seed": seed, "site": site, "permutations": n_permutations},
        samples=samples, sections=sections,
        metrics=_table(metrics),
        comparisons=[(a, b, _table(_named_comparison(df, a, b))) for a, b, df in comparisons],
        profile=_table(profile),
        evaluation=None if evaluation is None else figs.interactive(evaluation_figure(evaluation)),
        evaluation_table=None if evaluation is None else _table(evaluation),
        n_components=n_components, probe=probe_sec, heads=heads, neurons=neuron_sec, attention=attn_view,
        features=feature_sec,
        attention_text=attention_text,
        absent=None if evaluation is not None else (
            f"No evaluation and probe sections: they compare categories and need at least two with two or more "
            f"documents each; this report has {', '.join(f'{c} ({int(counts([c]).sum())})' for c in present)}."))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, df in [("metrics", metrics), ("layer_profile", profile)] + \
            [(f"compare_{a}_vs_{b}", df) for a, b, df in comparisons] + \
            ([("evaluation", evaluation)] if evaluation is not None else []):
        atomic_write_text(out / f"{_safe(name)}.csv", df.to_csv(index=False))
    path = out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _heads_section(scan, present, figs: _Figures) -> dict:
    from ..attention import compare_heads, head_stats, stat_matrix  # torch: only for scans with attn

    table = head_stats(scan)
    figures = []
    for stat, what in (("entropy", "entropy of attention (nats)"), ("previous", "attention to the previous token"),
                       ("first", "attention to the first token")):
        mats = {c: stat_matrix(table, stat, c) for c in present}
        figures.append(figs.interactive(head_stats_figure(mats, f"Mean {what}, per layer and head")))
    tables = []
    for c in present:
        if len(present) < 2 and len(scan.label_names) < 2:
            break
        df = compare_heads(scan, c, table=table).head(12)
        tables.append((c, _table(df)))
    return {"figures": figures, "tables": tables}


def _neuron_explanations(scan, explanations) -> dict[tuple[int, int], dict]:
    """``{(layer, neuron): explain row}`` from explain runs of ``mlp.L`` neurons (given, or found
    beside the scan)."""
    if explanations is None:
        explanations = [f for s in scan.token_sites if s.startswith("mlp.")
                        for f in find_explanations(scan.folder, s, "neuron")]
    out = {}
    for run in explanations if isinstance(explanations, (list, tuple)) else [explanations]:
        res = run if isinstance(run, ExplainResult) else ExplainResult.load(run)
        site = str(res.info.get("site", ""))
        if not site.startswith("mlp."):
            raise LlmriError(f"{run}: explains {site or 'units'} {res.info.get('unit_kind', '')}s, not mlp neurons")
        for u, row in unit_explanations(res, site, res.info.get("unit_kind", "neuron")).items():
            out[(int(site.split(".")[1]), u)] = row
    return out


def _neurons_section(scan, present, figs: _Figures, top: int, explanations=None) -> dict:
    explained = _neuron_explanations(scan, explanations)
    parts = []
    token_layers = [int(s.split(".")[1]) for s in scan.token_sites if s.startswith("mlp.")]
    for i, c in enumerate(present):
        if len(scan.label_names) < 2 or not scan.layers("mlp"):    # rankings need pooled mlp sites
            break
        df = neurons(scan, c)
        best = df[df["layer"].isin(token_layers)].iloc[0] if token_layers else df.iloc[0]
        card = neuron_card(scan, int(best["layer"]), int(best["neuron"]), top=5)
        card.explanation = explained.get((int(best["layer"]), int(best["neuron"])))
        static = figs.static(card.histogram(), f"neuron_{i + 1}_histogram")
        head = df.head(top)
        if explained:
            rows = [explained.get((int(r.layer), int(r.neuron)), {}) for r in head.itertuples()]
            head = head.assign(explanation=[r.get("explanation", "") for r in rows],
                               simulation_score=[r.get("simulation_score") for r in rows])
        parts.append({"category": c, "table": _table(head), "card": Markup(card.to_html()),
                      "histogram": static[0]})
    score = lambda kv: -kv[1]["simulation_score"] if kv[1].get("simulation_score") is not None else 2.0
    best = sorted(explained.items(), key=score)[:top]
    table = pd.DataFrame([{"layer": k[0], "neuron": k[1], "explanation": r.get("explanation"),
                           "simulation_score": r.get("simulation_score"),
                           "simulation_baseline": r.get("simulation_baseline")} for k, r in best])
    return {"parts": parts, "explained": _table(table) if len(table) else None, "n_explained": len(explained)}


