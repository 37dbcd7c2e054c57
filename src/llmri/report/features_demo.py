"""The features demo (``llmri demo --features``): what a trained feature set makes visible, on one
page. :func:`run_features_demo` runs the analyses on the bundled labelled corpora (one scan with
token records of every SAE site) and returns a :class:`FeaturesDemo`; :func:`features_demo_page`
writes it as ``features.html`` with its figures, CSVs, ``clamp.json`` and ``graph.json``;
:func:`features_demo` does both.

1. The feature map of one site (2-d PCA of the decoder directions), coloured by the category each
   feature prefers; clicking a feature opens its neighbourhood (nearest features by decoder cosine
   and by co-activation) and its dashboard.
2. Per category, the most selective features and their dashboards.
3. Clamping (Templeton et al. 2024's Golden Gate demo): a feature chosen by :data:`CLAMP_RULE`,
   clamped at 0, 5x and 10x its largest activation while the model answers neutral prompts, and
   the effect measured on the generations read back unclamped.
4. The attribution graph of a two-hop prompt over every SAE, pruned by influence, with its
   scores and the top-k against random-k ablation check.

>>> llmri.features_demo("runs/features")           # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from ..errors import LlmriError
from ..store import atomic_write_json, atomic_write_text, json_safe
from ..viz import circuit_figure, circuit_plot, clamp_figure, clamp_plot, feature_map_plot, script_json
from .circuit import circuit_sections
from .features import dashboard_html
from .page import _environment, _Figures, _slug, _table, build_page, output_folder, whole_page

CLAMP_VALUES = ("0", "5x", "10x")
NEUTRAL_PROMPTS = ("Tell me about yourself.", "What should I do this weekend?", "Describe your morning.")
CIRCUIT_PROMPT = "The capital of the country where the Eiffel Tower stands is"
CLAMP_CATEGORY = "cooking"
CLEAN = {"q_value": 0.05, "purity": 0.8, "top_docs": 3, "density": 0.2}
CLAMP_RULE = ("the feature of largest Cohen's d for {category} (per-document mean activations, {category} "
              "against every other document) among those with q < {q_value} whose 20 strongest activations lie "
              "at least {purity:.0%} in {category} documents and come from at least {top_docs} documents, and "
              "that fire on at most {density:.0%} of tokens (a clean dashboard); the largest d if none qualifies")


def features_demo_corpus(n_places: int = 300, seed: int = 0):
    """The demo's labelled corpus: the bundled topics corpus (astronomy, cooking, football: 32
    paragraphs each) and ``n_places`` WordNet definitions of places (``glossary_corpus(["location"])``,
    labelled ``location``), the world knowledge the two-hop prompt leans on."""
    from ..corpus import Corpus, demo_corpus, glossary_corpus

    topics = demo_corpus("topics")
    places = glossary_corpus(["location"], max_docs=n_places, seed=seed)
    return Corpus(topics.texts + places.texts, [topics.label_names[i] for i in topics.labels]
                  + [places.label_names[i] for i in places.labels])


def demo_site(sites, n_layers: int) -> str:
    """The site the map and the clamp use: the SAE site nearest the middle of the model (the lower on a tie)."""
    from ..sites import parse_site

    return min(sites, key=lambda s: (abs(parse_site(s)[1] - n_layers / 2), parse_site(s)[1]))


def choose_clamp_feature(feats, category: str) -> tuple[int, bool, pd.DataFrame]:
    """:data:`CLAMP_RULE`: ``(feature, whether it met the cleanliness conditions, the candidates)``."""
    from ..sae.features import category_features

    cands = category_features(feats, category, n=None)
    if not len(cands):
        raise LlmriError(f"category {category!r}: no feature has an effect size for it (too few documents)")
    clean = cands[(cands["q_value"] < CLEAN["q_value"]) & (cands["purity"] >= CLEAN["purity"])
                  & (cands["top_docs"] >= CLEAN["top_docs"]) & (cands["density"] <= CLEAN["density"])
                  & (cands["effect_size"] > 0)]
    pick = clean if len(clean) else cands
    return int(pick["feature"].iloc[0]), bool(len(clean)), cands


@dataclass
class FeaturesDemo:
    """What :func:`run_features_demo` found; :func:`features_demo_page` draws it."""

    model: object
    scan: object
    saes: dict                       # {site: SAE}
    site: str                        # the map's and the clamp's site
    feats: dict                      # {site: FeatureActivations} over the scan
    map_table: pd.DataFrame          # one row per feature: x, y, prefers, density, top_tokens, ...
    neighbors: dict                  # {"decoder": (features, ids, cosines), "coactivation": (features, ids, jaccard)}
    categories: dict                 # {category: DataFrame of its most selective features}
    category: str
    clamp_feature: int
    clamp_clean: bool
    clamp: pd.DataFrame              # llmri.sae.clamp.clamp_effect's table
    graph: object                    # the AttributionGraph (validated)
    pruned: object
    settings: dict
    timings: dict = field(default_factory=dict)

    def clamp_summary(self) -> pd.DataFrame:
        """Per clamp: the means over prompts of the read-back measures, their change from the
        unclamped generations, and the direction the clamp pushes (``up`` when its value exceeds
        the feature's mean activation on the unclamped generations)."""
        df = self.clamp
        base = df[df["value"].isna()]
        b_act, b_p = float(base["feature_mean"].mean()), float(base["p_category"].mean())
        rows = []
        for label, part in df.groupby("clamp", sort=False):
            value = part["value"].iloc[0]
            act, p = float(part["feature_mean"].mean()), float(part["p_category"].mean())
            rows.append({"clamp": label, "value": value, "feature_mean": act, "feature_change": act - b_act,
                         "p_category": p, "p_change": p - b_p,
                         "direction": "" if np.isnan(value) else ("up" if value > b_act else "down")})
        return pd.DataFrame(rows)


def run_features_demo(model="default-decoder", saes="default-decoder", scan_dir="llmri-demo/features-scan",
                      corpus=None, site: str | None = None, category: str = CLAMP_CATEGORY, values=CLAMP_VALUES,
                      prompts=NEUTRAL_PROMPTS, circuit_prompt: str = CIRCUIT_PROMPT, target=None,
                      max_new_tokens: int = 32, max_feature_nodes: int = 200, n_top: int = 8, neighbors: int = 8,
                      max_length: int = 128, device: str = "auto", dtype: str = "auto", download: bool = False,
                      seed: int = 0, progress: bool | None = None) -> FeaturesDemo:
    """The analyses of the features demo: scan ``corpus`` (default :func:`features_demo_corpus`)
    into ``scan_dir`` with token records of every SAE site (a repeated run is answered from disk),
    then the map, neighbourhoods and category tables of ``site`` (default :func:`demo_site`), the
    clamp of :data:`CLAMP_RULE`'s feature of ``category`` measured by
    :func:`llmri.sae.clamp.clamp_effect`, and the attribution graph of ``circuit_prompt`` (target:
    the model's own answer unless given) over every SAE, validated and pruned at the default thresholds."""
    from ..capture import scan as run_scan
    from ..circuits import attribute, load_saes, validate_circuit
    from ..generate import check_prompts
    from ..model import as_model, load_model
    from ..sae import feature_activations
    from ..sae.clamp import clamp_effect
    from ..sae.collection import saes_by_site
    from ..sae.features import category_features, feature_map, nearest_features, top_activating_tokens

    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        times[name] = round(now - clock[0], 2)
        clock[0] = now

    check_prompts(prompts)
    if not isinstance(circuit_prompt, str) or not circuit_prompt.strip():
        raise LlmriError(f"circuit_prompt: give a non-empty prompt, got {circuit_prompt!r}")
    by_site = saes_by_site(saes)
    if site is not None and site not in by_site:
        raise LlmriError(f"site {site!r}: the SAEs read {', '.join(sorted(by_site))}")
    corpus = features_demo_corpus(seed=seed) if corpus is None else corpus
    if category not in corpus.label_names:
        raise LlmriError(f"category {category!r} is not a label of the corpus: {', '.join(corpus.label_names)}")
    model = load_model(model, device=device, dtype=dtype, download=download) if isinstance(model, (str, Path)) \
        else as_model(model)
    ordered = load_saes(list(by_site.values()), model)                  # checked against the model, by layer
    sites = [s.site for s in ordered]
    site = site or demo_site(sites, model.n_layers)
    sae = by_site[site]
    lap("load")
    scan = run_scan(model, corpus, scan_dir, sites=("resid",), token_sites=sites, max_length=max_length,
                    progress=progress)
    lap("scan")
    feats = {site: feature_activations(sae, scan, progress=progress)}
    f = feats[site]
    _, table = feature_map(sae, f, color="prefers", model=model)
    live = np.flatnonzero(f.density > 0)
    nbrs = {"decoder": (np.arange(sae.d_sae),) + nearest_features(sae, None, "decoder", top=neighbors),
            "coactivation": (live,) + nearest_features(sae, live, "coactivation", feats=f, top=neighbors)}
    lap("features")
    cats = {}
    for c in scan.label_names:
        top = category_features(f, c, n_top)
        top["top_activations"] = top_activating_tokens(f, top["feature"].tolist(), n=3, model=model)
        top["top_tokens"] = table.set_index("feature").loc[top["feature"], "top_tokens"].to_list()
        cats[c] = top
    feature, clean, _ = choose_clamp_feature(f, category)
    lap("categories")
    clamped = clamp_effect(model, sae, feature, list(values), list(prompts), feats=f, scan=scan, category=category,
                           max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    lap("clamp")
    g = attribute(model, ordered, circuit_prompt, target=target, max_feature_nodes=max_feature_nodes)
    lap("attribute")
    validate_circuit(model, ordered, g)
    lap("validate")
    settings = {"model": model.name, "precision": g.info.precision, "sites": sites, "site": site,
                "scan": str(scan.folder), "n_docs": scan.n_docs, "n_tokens": int(scan.manifest["plan"]["n_tokens"]),
                "labels": dict(zip(scan.label_names, np.bincount(scan.labels, minlength=len(scan.label_names)).tolist())),
                "category": category, "values": list(map(str, values)), "prompts": list(prompts),
                "max_new_tokens": max_new_tokens, "circuit_prompt": circuit_prompt, "max_feature_nodes": max_feature_nodes,
                "node_threshold": 0.8, "edge_threshold": 0.98, "seed": seed,
                "sae": repr(sae), "rule": CLAMP_RULE.format(category=category, **CLEAN)}
    return FeaturesDemo(model, scan, dict(by_site), site, feats, table, nbrs, cats, category, feature, clean, clamped,
                        g, g.prune(), settings, times)


def features_demo(out, model="default-decoder", saes="default-decoder", scan_dir=None, n_cards: int = 120,
                  **kwargs) -> Path:
    """Run the features demo (:func:`run_features_demo`, which takes the other keyword arguments)
    and write its page (:func:`features_demo_page`) into ``out``; the scan goes to ``scan_dir``
    (default: ``out``'s sibling ``<name>-scan``), where a rerun finds it. Returns the page's path.

    >>> llmri.features_demo("runs/features")                       # doctest: +SKIP
    PosixPath('runs/features/features.html')
    """
    out = output_folder(out)
    scan_dir = out.parent / f"{out.name}-scan" if scan_dir is None else Path(scan_dir)
    demo = run_features_demo(model, saes, scan_dir, **kwargs)
    return features_demo_page(demo, out, n_cards=n_cards)


@whole_page
def features_demo_page(demo: FeaturesDemo, out, n_cards: int = 120) -> Path:
    """``out/features.html``: the four sections of the features demo (module docstring), with
    ``n_cards`` dashboards of the map's site (every category's listed features and the clamped
    feature, then the most selective and the densest), PNG/SVG figures, CSV tables, ``clamp.json``
    (settings, every generation with its measures, the summary), ``demo.json`` (settings, timings)
    and ``graph.json`` (the pruned graph in circuit-tracer's viewer format). Returns the page's path."""
    out = output_folder(out)
    t0 = time.perf_counter()
    page = _Parts(out)
    f, table = demo.feats[demo.site], demo.map_table
    listed = [int(x) for c in demo.categories.values() for x in c["feature"]] + [demo.clamp_feature]
    live = table[table["density"] > 0]
    chosen = list(dict.fromkeys(listed + live.sort_values("effect_size", ascending=False)["feature"].tolist()[:n_cards // 2]
                                + live.sort_values("density", ascending=False)["feature"].tolist()))
    page.cards = {int(x): dashboard_html(f, int(x), demo.model) for x in chosen[:max(n_cards, len(listed))]}
    blocks = [_map_section(demo, page), _category_section(demo, page), _clamp_section(demo, page),
              _circuit_section(demo, page)]
    page.csv("features", table.drop(columns=["x", "y"]))
    demo.timings["page"] = round(time.perf_counter() - t0, 2)
    s = demo.settings
    atomic_write_json(out / "demo.json", json_safe({"settings": s, "timings": demo.timings,
                                                    "clamp_feature": demo.clamp_feature, "clamp_clean": demo.clamp_clean}))
    page.files.append("demo.json")
    intro = [f"Model {s['model']} ({s['precision']}); SAEs at {', '.join(s['sites'])}; the map and the clamp use "
             f"{demo.site} ({s['sae']}), the SAE nearest the middle of the model.",
             f"Corpus: {s['n_docs']} labelled documents ("
             + ", ".join(f"{k} {v}" for k, v in s["labels"].items()) + f"), {s['n_tokens']} tokens, scanned into "
             f"{s['scan']} with token records of every SAE site.",
             "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in demo.timings.items())
             + f" (total {sum(demo.timings.values()):.0f} s)."]
    return build_page(out, "features", f"llmri features demo: {s['model']}", intro, [], [], blocks, files=page.files)


class _Parts:
    """What the sections of the page share: its folder, its figures, the files written and the dashboards."""

    def __init__(self, out: Path):
        self.out, self.figs, self.files, self.cards = out, _Figures(out), [], {}

    def figure(self, interactive, static, stem: str) -> tuple[Markup, str]:
        """The interactive figure's markup and its element id; the static one saved as PNG/SVG."""
        markup = self.figs.interactive(interactive)
        self.files += self.figs.static(static, stem)
        return markup, f"figure-{self.figs.count}"

    def csv(self, stem: str, df: pd.DataFrame) -> None:
        atomic_write_text(self.out / f"{stem}.csv", df.to_csv(index=False))
        self.files.append(f"{stem}.csv")

    def card(self, feature: int, summary: str, open_: bool = False) -> str:
        body = self.cards.get(int(feature))
        return "" if body is None else f"<details{' open' if open_ else ''}><summary>{_esc(summary)}</summary>{body}</details>"


def _esc(text) -> str:
    import html

    return html.escape(str(text))


def _feature_info(demo: FeaturesDemo) -> dict:
    """Per feature of the map: [x, y, preferred category, effect size, density, max, top output tokens]."""
    t = demo.map_table
    tops = t["top_tokens"] if "top_tokens" in t else [""] * len(t)
    return {int(r.feature): [round(float(r.x), 4), round(float(r.y), 4), str(r.prefers),
                             round(float(r.effect_size), 3) if np.isfinite(r.effect_size) else None,
                             float(f"{r.density:.3g}"), float(f"{r.max:.3g}"), str(top)]
            for r, top in zip(t.itertuples(), tops)}


def _neighbor_json(demo: FeaturesDemo) -> dict:
    """Per feature: [decoder ids, cosines, co-activation ids, Jaccard indices] (the last two empty
    for a feature that never fires)."""
    out: dict[int, list] = {}
    for slot, by in enumerate(("decoder", "coactivation")):
        feats, ids, score = demo.neighbors[by]
        for i, f in enumerate(feats):
            row = out.setdefault(int(f), [[], [], [], []])
            row[2 * slot] = ids[i].tolist()
            row[2 * slot + 1] = [round(float(v), 3) for v in score[i]]
    return out


def _map_section(demo: FeaturesDemo, page: _Parts) -> tuple[str, Markup]:
    from ..viz import feature_map_figure

    fig = feature_map_figure(demo.map_table, "prefers")
    fig.update_layout(title=f"Feature map of {demo.site}: decoder directions (PCA), coloured by the category each "
                            "feature prefers")
    markup, fid = page.figure(fig, feature_map_plot(demo.map_table, "prefers"), "feature_map")
    panel = _environment().get_template("feature_panel.html.j2").render(
        figure=fid, site=demo.site, info=Markup(script_json(_feature_info(demo))),
        neighbors=Markup(script_json(_neighbor_json(demo))),
        cards=Markup(script_json({str(k): v for k, v in page.cards.items()})))
    n_live = len(demo.neighbors["coactivation"][0])
    note = (f"<p class='note'>Each point is one of the {len(demo.map_table)} features; its colour is the category "
            "whose documents it is significantly more active in (largest Cohen's d, q < 0.05), grey (none) "
            "where no category stands out. Click a feature (on the map, or a row of the tables below) for its "
            "neighbourhood: the nearest features by decoder cosine and by co-activation (Jaccard index of firing "
            f"sets, estimated on each feature's sampled firing tokens; {n_live} features fire in the scan), ringed "
            f"on the map, and its dashboard ({len(page.cards)} features have one here).</p>")
    return f"Feature map ({demo.site})", Markup(note) + markup + Markup(panel)


def _category_section(demo: FeaturesDemo, page: _Parts) -> tuple[str, Markup]:
    parts = ["<p class='note'>Per category, the features with the largest Cohen's d of per-document mean "
             "activation against every other document (Welch's t-test; Benjamini-Hochberg q over every feature "
             "and category). purity: the share of the feature's 20 strongest activations that lie in documents "
             "of the category; top_docs: how many documents they come from; top_activations: the tokens they "
             "fire on most; top_tokens: the output tokens the decoder direction promotes. Click a row for the "
             "feature's neighbourhood and dashboard.</p>"]
    for c, df in demo.categories.items():
        page.csv(f"category_{_slug(c)}", df)
        parts.append(f"<h3>{_esc(c)}</h3><div class='feature-table'>{_table(df)}</div>")
        if len(df):
            parts.append(page.card(int(df["feature"].iloc[0]), f"dashboard of feature {int(df['feature'].iloc[0])}, "
                                                               f"the most {c}-selective (click to open)"))
    return "Top features per category", Markup("\n".join(parts))


def _clamp_section(demo: FeaturesDemo, page: _Parts) -> tuple[str, Markup]:
    df, s = demo.clamp, demo.settings
    f, feat = demo.feats[demo.site], demo.clamp_feature
    row = demo.categories[demo.category].set_index("feature")
    from ..sae.features import category_features

    stats = row.loc[feat] if feat in row.index else category_features(f, demo.category, None).set_index("feature").loc[feat]
    summary = demo.clamp_summary()
    values = ", ".join(f"{lab} = {v:.4g}" for lab, v in zip(summary["clamp"], summary["value"]) if np.isfinite(v))
    atomic_write_json(page.out / "clamp.json", json_safe({
        "settings": {"feature": feat, "site": demo.site, "category": demo.category, "rule": s["rule"],
                     "clean": demo.clamp_clean, "max": float(f.max[feat]), "values": s["values"],
                     "prompts": s["prompts"], "max_new_tokens": s["max_new_tokens"],
                     "probe_layer": df.attrs.get("probe_layer")},
        "rows": df.to_dict(orient="records"), "summary": summary.to_dict(orient="records")}))
    page.files.append("clamp.json")
    page.csv("clamp", df)
    page.csv("clamp_summary", summary)
    grid = df.pivot(index="prompt", columns="clamp", values="generation")
    grid = grid[list(dict.fromkeys(df["clamp"]))].reindex(list(dict.fromkeys(df["prompt"]))).reset_index()
    markup, _ = page.figure(clamp_figure(df), clamp_plot(df), "clamp_effect")
    lines = [f"The feature: {s['rule']}. Here: feature {feat} of {demo.site} (Cohen's d {stats['effect_size']:.3g}, "
             f"q {stats['q_value']:.2g}, purity {stats['purity']:.2f} over {int(stats['top_docs'])} documents, "
             f"density {stats['density']:.3g}, largest activation over the scan {f.max[feat]:.4g})"
             + ("" if demo.clamp_clean else "; no feature met the cleanliness conditions, so this is the largest d") + ".",
             f"It is clamped at every token but the first (the attention sink) to {values}, while the model "
             f"answers {len(s['prompts'])} neutral prompts in its chat template (greedy, {s['max_new_tokens']} new "
             "tokens), beside the unclamped answer.",
             "Measured: each generation is read back by the model alone with the clamp removed, as a scan reads a "
             f"document: (1) the feature's own mean activation over its tokens; (2) P({demo.category}) from a "
             f"logistic probe of {demo.category} against the other categories on the scan's pooled "
             f"resid.{df.attrs.get('probe_layer')} (as llmri steer scores its generations). The change is against "
             "the unclamped generations; the direction is up where the clamp exceeds the feature's mean activation "
             "on them."]
    parts = [f"<p class='note'>{_esc(t)}</p>" for t in lines]
    parts += ["<h3>Generations (prompts by rows, clamps by columns)</h3>", _table(grid),
              "<h3>The effect, measured on the generations read back unclamped</h3>", _table(summary), markup,
              page.card(feat, f"dashboard of feature {feat}", open_=True)]
    return f"Clamping feature {feat} of {demo.site}", Markup("\n".join(parts))


def _circuit_section(demo: FeaturesDemo, page: _Parts) -> tuple[str, Markup]:
    g, shown = demo.graph, demo.pruned
    intro, tables, blocks = circuit_sections(g, shown, demo.model, list(demo.saes.values()), 20, demo.scan,
                                             demo.feats, figure=f"figure-{page.figs.count + 1}")
    markup, _ = page.figure(circuit_figure(shown), circuit_plot(shown), "circuit")
    shown.to_viewer(page.out, slug="graph")
    page.files += ["graph.json", "graph-metadata.json"]
    parts = ["<p class='note'>The attribution graph of the model's answer over the SAE features of every site "
             "(llmri.attribute: gradient x activation, edges between consecutive SAE layers), pruned by influence "
             "at the default thresholds (nodes 0.8, edges 0.98); feature nodes are labelled by the tokens they fire "
             "on most over the scan. Hover a node for its numbers, click a feature node for its dashboard. The "
             "faithfulness check zero-ablates the top-k features by attribution and k random active features "
             "(5 draws) in the real model.</p>"]
    parts += [f"<p class='note'>{_esc(t)}</p>" for t in intro] + [markup]
    for heading, df, stem in tables:
        page.csv(stem, df)
        parts.append(f"<h3>{_esc(heading)}</h3>{_table(df)}")
    parts += [f"<h3>{_esc(heading)}</h3>{block}" for heading, block in blocks]
    title = f"Attribution graph: {g.info['prompt']!r} -> {g.target!r}"
    return title, Markup("\n".join(parts))
