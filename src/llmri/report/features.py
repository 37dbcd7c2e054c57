"""The SAE feature pages: the feature browser (``features.html``: map, searchable table, a dashboard
per feature), one feature's dashboard, and the Features section of the main report.

>>> build_feature_browser(sae, llmri.feature_activations(sae, scan), "runs/sae15-report")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..explain.results import unit_explanations
from ..store import atomic_write_bytes, atomic_write_text
from ..viz import density_histogram, explanation_summary_html, feature_map_figure, feature_map_plot, script_json
from .page import _environment, _Figures, _slug, _table, output_folder, whole_page


def _feature_explanations(sae, explanations, table, figs: _Figures, blocks: list, files: list) -> dict[int, dict]:
    """The explained features ``{feature: explain row}``; their explanation and scores become columns
    of ``table``, and the map coloured by simulation score is added to ``blocks``/``files``."""
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
    from ..sae.collection import sae_folders  # torch

    return sae_folders(Path(scan.folder) / SAE_FOLDER)


def _features_section(scan, sae_dirs, present, figs: _Figures, out: Path, model, top: int, progress) -> dict:
    """Per SAE: its evaluation (``eval.json``), the most category-selective features per category
    with the best one's dashboard, the feature map, and a link to its feature browser if built."""
    from ..sae import SAE, feature_activations  # torch
    from ..sae.features import feature_card, feature_map
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


def dashboard_html(feats, feature: int, model=None, explained: dict | None = None) -> str:
    """One feature's dashboard as the feature browser and the circuit page show it: its explanation
    and scores when ``explained`` (a row of an explain run), then :func:`llmri.feature_card`."""
    from ..sae.features import feature_card  # torch

    return (explanation_summary_html(explained) if explained else "") + feature_card(feats, feature, model=model).to_html()


@whole_page
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

    from ..sae.features import feature_map  # torch

    out = output_folder(out)
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


