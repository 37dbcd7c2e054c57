"""The HTML report: one self-contained file (plotly inlined, no CDN) plus PNG/SVG figures."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..errors import LlmriError
from ..metrics import compare_categories, graph_metrics, layer_profile
from ..nrag import nrag
from ..probe import evaluate_reduction
from ..regions import regions as make_regions
from ..store import Scan, atomic_write_bytes, atomic_write_text
from ..viz import (probe_figure, probe_plot, attention_layer_plot, category_colors, difference_figure, difference_plot, draw_nrag,
                   evaluation_figure, evaluation_plot, head_stats_figure, head_view_html, heatmap_figure,
                   heatmap_plot, nrag_figure, rollout_plot, save_figure, script_json, token_highlight_html)

MAX_PAIRS = 3


class _Figures:
    """Collects interactive figures for the page and writes static copies to ``figures/``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def interactive(self, fig) -> Markup:
        import plotly.io as pio

        self.count += 1
        fid = f"figure-{self.count}"
        payload = script_json(pio.to_json(fig, validate=False), serialized=True)
        return Markup(f'<div class="figure" id="{fid}"></div>\n<script>(function(){{var f={payload};'
                      f'Plotly.newPlot("{fid}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')

    def static(self, fig, name: str) -> list[str]:
        import matplotlib.pyplot as plt

        paths = [save_figure(fig, self.folder / f"{name}.{ext}").name for ext in ("png", "svg")]
        plt.close(fig)
        return paths


def _slug(name: str) -> str:
    """A file-name-safe form of a category name: ``"Outer space!"`` -> ``"outer_space"``."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "category"


def _output_folder(out) -> Path:
    """The folder a page goes to (static figures are drawn off-screen)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlmriError(f"{out}: exists and is not a folder")
    return out


def _table(df: pd.DataFrame) -> Markup:
    return Markup(df.to_html(index=False, escape=True, border=0, classes="table",
                             float_format=lambda v: f"{v:.4g}"))


def _named_comparison(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """A compare_categories table for reading: category names as headers, the difference's sign
    in its header, and metrics that are constant under every shuffle marked instead of tested."""
    out = df.drop(columns="constant").rename(columns={"a": a, "b": b, "difference": f"{a} - {b}"})
    out["p_value"] = [("constant" if c else f"{v:.4g}") for v, c in zip(df["p_value"], df["constant"])]
    out["q_value"] = [("" if c else f"{v:.4g}") for v, c in zip(df["q_value"], df["constant"])]
    return out


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("llmri", "report"), autoescape=select_autoescape(["html", "j2"]))


def _attention_parts(att, figs: "_Figures", target=None, prefix: str = "") -> dict:
    """Head view, rollout and flow over the text, and static figures of one text's attention.
    ``target``: what rollout and flow explain (default: what fits the model's pooling)."""
    static = figs.static(rollout_plot(att, target), f"{prefix}rollout")
    for L in range(att.n_layers):
        static += figs.static(attention_layer_plot(att, L), f"{prefix}heads_layer{L}")
    return {"head_view": Markup(head_view_html(att)), "target": att.target_label(target),
            "rollout": Markup(token_highlight_html(att.tokens, att.contributions(target))),
            "flow": Markup(token_highlight_html(att.tokens, att.flow(target), color="31,119,180")),
            "static": static}


def build_attention_page(att, out, target=None, model_name: str = "") -> Path:
    """Write ``out/attention.html`` (head view, rollout, flow) and PNG/SVG figures of one text.
    ``target``: a position or a pooling (``"mean"``, ``"mean-nosink"``, ``"first"``, ``"last"``)
    whose inputs rollout and flow explain; default: the one that fits the model's pooling."""
    out = _output_folder(out)
    figs = _Figures(out)
    parts = _attention_parts(att, figs, target)
    page = _environment().get_template("attention.html.j2").render(
        title=f"llmri attention: {model_name}", text=att.text, n_tokens=len(att.tokens),
        n_layers=att.n_layers, n_heads=att.n_heads, **parts)
    path = out / "attention.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def build_page(out, name: str, title: str, intro: list[str], figures: list[tuple], tables: list[tuple],
               html_blocks: list[tuple[str, str]] = ()) -> Path:
    """A one-topic HTML page in the report's format: ``out/{name}.html``, static figures and CSVs.

    ``figures`` holds (plotly figure, matplotlib figure, file stem); ``tables`` holds
    (heading, DataFrame, CSV file stem); ``html_blocks`` holds (heading, trusted HTML fragment)
    shown after the tables.
    """
    import plotly.offline

    out = _output_folder(out)
    figs = _Figures(out)
    blocks, files = [], []
    for interactive, static, stem in figures:
        blocks.append(figs.interactive(interactive))
        files += figs.static(static, stem)
    for _, df, stem in tables:
        atomic_write_text(out / f"{_safe(stem)}.csv", df.to_csv(index=False))
        files.append(f"{_safe(stem)}.csv")
    page = _environment().get_template("page.html.j2").render(
        plotly_js=Markup(plotly.offline.get_plotlyjs()), title=title, intro=intro, figures=blocks,
        tables=[(h, _table(df)) for h, df, _ in tables], files=files,
        html_blocks=[(h, Markup(b)) for h, b in html_blocks])
    path = out / f"{name}.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


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
    out = _output_folder(out)
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
        from ..probe import probe

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
        from ..attention import attention

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
    from ..attention import compare_heads, head_stats, stat_matrix

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
    from ..explain.results import ExplainResult, find_explanations, unit_explanations

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
    from ..neurons import neuron_card, neurons

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


def _feature_explanations(sae, explanations, table, figs: _Figures, blocks: list, files: list) -> dict[int, dict]:
    """The explained features ``{feature: explain row}``; their explanation and scores become columns
    of ``table``, and the map coloured by simulation score is added to ``blocks``/``files``."""
    from ..explain.results import unit_explanations
    from ..viz import feature_map_figure, feature_map_plot

    explained = unit_explanations(explanations, sae.site, "feature") if explanations else {}
    if not explained:
        return explained
    rows = [explained.get(int(f), {}) for f in table["feature"]]
    table["explanation"] = [r.get("explanation", "") for r in rows]
    table["simulation_score"] = [r.get("simulation_score", float("nan")) for r in rows]
    table["simulation_score"] = table["simulation_score"].astype(float)
    blocks.append(figs.interactive(feature_map_figure(table, "simulation_score")))
    files += figs.static(feature_map_plot(table, "simulation_score"), "feature_map_score")
    return explained


SAE_FOLDER = "saes"


def scan_saes(scan) -> list[Path]:
    """The SAE folders beside a Scan: ``<scan>/saes/<name>/`` holding a ``cfg.json``, sorted by name
    (``llmri sae train SCAN --out SCAN/saes/NAME`` puts one there)."""
    from ..sae.collection import sae_folders

    return sae_folders(Path(scan.folder) / SAE_FOLDER)


def _features_section(scan, sae_dirs, present, figs: _Figures, out: Path, model, top: int, progress) -> dict:
    """Per SAE: its evaluation (``eval.json``), the most category-selective features per category
    with the best one's dashboard, the feature map, and a link to its feature browser if built."""
    import json
    import os

    from ..sae import SAE, feature_activations
    from ..sae.features import feature_card, feature_map
    from ..viz import feature_map_plot

    parts, notes, static = [], [], []
    for folder in sae_dirs:
        sae = SAE.load(folder)
        name = folder.name
        if sae.site not in scan.token_sites:
            notes.append(f"{folder}: the scan has no token records of {sae.site}, the site this SAE reads "
                         f"(scan with --token-sites {sae.site})")
            continue
        feats = feature_activations(sae, scan, progress=progress)
        ev = folder / "eval.json"
        metrics = json.loads(ev.read_text(encoding="utf-8")) if ev.is_file() else {}
        color = "category" if len(feats.effects) else "density"
        fig, table = feature_map(sae, feats, color=color, model=model)
        static += figs.static(feature_map_plot(table, color), f"features_{_slug(name)}_map")
        cats = []
        for c in present:
            eff = feats.effects[(feats.effects["category"] == c)].sort_values("effect_size", ascending=False)
            if not len(eff):
                continue
            best = eff.head(top).merge(table[["feature", "density", "max"]], on="feature", how="left")
            card = feature_card(feats, int(best["feature"].iloc[0]), model=model)
            cats.append({"category": c, "table": _table(best), "card": Markup(card.to_html())})
        browser = next((b for b in (folder.parent / f"{name}-report" / "features.html",
                                    folder / "report" / "features.html") if b.is_file()), None)
        parts.append({"name": name, "sae": repr(sae), "folder": str(folder),
                      "metrics": {k: metrics[k] for k in ("l0", "explained_variance", "ce_loss_score", "dead_fraction")
                                  if isinstance(metrics.get(k), (int, float))},
                      "n_tokens": feats.n_tokens, "dead": int((feats.density == 0).sum()),
                      "map": figs.interactive(fig), "categories": cats,
                      "browser": os.path.relpath(browser, out) if browser else None})
    if not parts and not notes:
        return None
    return {"parts": parts, "notes": notes, "static": static}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def dashboard_html(feats, feature: int, model=None, explained: dict | None = None) -> str:
    """One feature's dashboard as the feature browser and the circuit page show it: its explanation
    and scores when ``explained`` (a row of an explain run), then :func:`llmri.feature_card`."""
    from ..sae.features import feature_card
    from ..viz import explanation_summary_html

    return (explanation_summary_html(explained) if explained else "") + feature_card(feats, feature, model=model).to_html()


def build_feature_browser(sae, feats, out, model=None, metrics: dict | None = None, n_cards: int = 200,
                          color: str = "category", method: str = "pca", seed: int = 0, explanations=None) -> Path:
    """Write ``out/features.html``: the feature map, a searchable feature table and a dashboard per
    feature on click (the ``n_cards`` most category-selective and densest), plus PNG/SVG and CSV.
    ``explanations`` (explain output folders of this SAE's features, see ``llmri explain --sae``)
    put each explained feature's explanation and scores in its dashboard and the table, and add
    the map coloured by simulation score.

    >>> build_feature_browser(sae, llmri.feature_activations(sae, scan), "runs/sae15-report")  # doctest: +SKIP
    """
    import plotly.offline

    from ..sae.features import feature_map
    from ..viz import density_histogram, feature_map_plot

    out = _output_folder(out)
    figs = _Figures(out)
    if color == "category" and not len(feats.effects):
        color = "density"
    fig, table = feature_map(sae, feats, color=color, method=method, seed=seed, model=model)
    blocks = [figs.interactive(fig)]
    files = figs.static(feature_map_plot(table, color), "feature_map")
    files += figs.static(density_histogram(feats.density), "feature_density")
    explained = _feature_explanations(sae, explanations, table, figs, blocks, files)
    live = table[table["density"] > 0]
    chosen = list(dict.fromkeys(
        list(explained) + live.sort_values("effect_size", ascending=False)["feature"].head(n_cards // 2).tolist()
        + live.sort_values("density", ascending=False)["feature"].tolist()))[:max(n_cards, len(explained))]
    cards = {str(int(f)): dashboard_html(feats, int(f), model, explained.get(int(f))) for f in chosen}
    shown = table[[c for c in ("feature", "density", "max", "category", "effect_size", "simulation_score",
                               "explanation", "top_tokens") if c in table.columns]].sort_values("density", ascending=False)
    atomic_write_text(out / "features.csv", table.to_csv(index=False))
    files.append("features.csv")
    metric_rows = pd.DataFrame([(k, v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))],
                               columns=["metric", "value"])
    intro = [f"{sae!r}", f"scan: {feats.scan.folder} ({feats.n_tokens} tokens); "
             f"{int((feats.density == 0).sum())} of {sae.d_sae} features never fire on it."]
    page = _environment().get_template("features.html.j2").render(
        plotly_js=Markup(plotly.offline.get_plotlyjs()), title=f"llmri features: {sae.site}", intro=intro,
        metrics=_table(metric_rows) if len(metric_rows) else Markup("<p class='note'>not evaluated (llmri sae eval)</p>"),
        figures=blocks, table=_table(shown), cards=Markup(script_json(cards)), n_cards=len(cards), files=files)
    path = out / "features.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def build_circuit_page(ag, out, pruned=None, model=None, saes=None, n_top: int = 20, scan=None) -> Path:
    """``out/circuit.html`` for an attribution graph (``llmri.attribute``): the layered graph
    (``pruned`` when given), the prompt shaded by each token's attribution, the top features,
    per-layer totals, graph scores and ``ag.validation`` when present; plus ``graph.json``
    (circuit-tracer's viewer format), CSVs and PNG/SVG of the graph.

    Hovering a feature node shows its attribution, activation, density, top output tokens (with
    ``model`` and ``saes``) and explanation; clicking it opens a panel with what is known of it,
    and with ``scan`` (a Scan with token records of the SAE sites) and ``saes`` its dashboard as in
    the feature browser (:func:`dashboard_html`: top activating windows, density, output tokens,
    explanation), one per kept feature, all inside the one HTML file.

    >>> build_circuit_page(g, "runs/circuit", pruned=g.prune(), model=dec, saes=saes, scan="runs/dec-circuit")  # doctest: +SKIP
    """
    from ..viz import circuit_figure, circuit_plot

    shown = pruned if pruned is not None else ag
    if scan is not None and saes is None:
        raise LlmriError("scan: feature dashboards need the SAEs too (saes=)")
    cards, node_cards = _circuit_dashboards(shown, ag, model, saes, scan)
    scores = ag.scores()
    probs = [d.get("prob") for _, d in ag.graph.nodes(data=True) if d["kind"] == "logit"]
    intro = [f"prompt: {ag.info['prompt']!r} ({len(ag.tokens)} tokens), model {ag.info['model']}",
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
                  scan=None if scan is None else str(getattr(scan, "folder", scan))))]
    if v:
        tables.insert(1, (f"Validation: ablating ({v['mode']}) the top-k features vs k random active features "
                          "(drop of the metric)", pd.DataFrame(v["topk"]), "validation_topk"))
        tables.insert(2, ("Validation: single-feature ablations, predicted (attribution) vs actual drop",
                          pd.DataFrame(v["single"]["rows"]), "validation_single"))
        intro.append(f"validation: attribution vs actual single-feature ablation over {v['single']['n']} features: "
                     f"Spearman {v['single']['spearman']:.3f}, Pearson {v['single']['pearson']:.3f}; "
                     + "; ".join(f"top-{r['k']} drop {r['top_drop']:.3g} vs random {r['random_drop_mean']:.3g} "
                                 f"± {r['random_drop_std']:.2g}" for r in v["topk"]))
    out = _output_folder(out)
    path = build_page(out, "circuit", f"llmri circuit: {ag.info['prompt']!r} -> {ag.target!r}", intro,
                      [(circuit_figure(shown), circuit_plot(shown), "circuit")], tables, blocks)
    shown.to_json(out / "graph.json", slug="circuit")
    return path


def _circuit_dashboards(shown, ag, model, saes, scan) -> tuple[dict, dict]:
    """Feature dashboards of the feature nodes of ``shown`` (``{"site:feature": html}``, with a
    scan) and each node's key into them (``{node_id: "site:feature"}``); without a scan only the
    nodes' top output tokens (model and saes) are added to their hover."""
    from ..circuits import load_saes
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
    stats = shown.label_features(scan, saes, model)
    cards = {}
    for site, features in sorted(needed.items()):
        feats = stats[site]
        explained = getattr(ag, "explanations", {}).get(site, {})
        for f in sorted(features):
            cards[f"{site}:{f}"] = dashboard_html(feats, f, model, explained.get(f))
    return cards, node_cards
