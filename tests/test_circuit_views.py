"""The circuit view with what the SAE and explain issues know about a feature: explanations of
``llmri explain --sae`` runs in the table and the hover, and each node's feature dashboard on click."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
from click.testing import CliRunner

import llmri
from llmri import LlmriError
from llmri.circuits import attribute, feature_explanations
from llmri.cli import cli
from llmri.explain import LocalLM, unit_explanations

from conftest import LABELS, TEXTS, make_module, make_tokenizer
from test_explain_local import tiny_chat_model
from test_report import browser  # noqa: F401  (the headless browser fixture)

PROMPT = TEXTS[1]       # "a comet runs near the sun and the moon"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny Llama saved as ``tiny/``, a scan with token records of resid.1 and resid.2, one SAE per
    site in ``saes/<site>/``, and an explain run of six resid.2 features beside them
    (``saes/explain-resid.2``), explained and scored by the tiny chat model."""
    tmp = tmp_path_factory.mktemp("circuit-views")
    make_module("llama").save_pretrained(tmp / "tiny")
    make_tokenizer("llama").save_pretrained(tmp / "tiny")
    scan = llmri.scan(str(tmp / "tiny"), llmri.Corpus(TEXTS * 3, LABELS * 3), tmp / "s", sites=("resid",),
                      token_sites=("resid.1", "resid.2"), progress=False)
    saes = llmri.train_sae(scan, ["resid.1", "resid.2"], n_latents=16, k=4, epochs=2, batch_size=32, seed=0,
                           progress=False)
    for site, sae in saes.items():
        sae.save(tmp / "saes" / site)
    ex = llmri.Explainer(LocalLM(tiny_chat_model()), window=6, n_explain=3, n_quantiles=2, per_quantile=2,
                         n_non_activating=2, max_new_tokens=4)
    run = llmri.explain(scan, "resid.2", "top:6", ex, encoder=saes["resid.2"], scorers=("simulation",),
                        out=tmp / "saes" / "explain-resid.2", meta={"sae": str(tmp / "saes" / "resid.2")},
                        progress=False)
    model = llmri.load_model(str(tmp / "tiny"))
    return tmp, scan, model, run


def _check_explained(g, run):
    """Every active resid.2 feature the run explains carries its explanation and score; the others none."""
    want = run.table.set_index("unit")
    df = g.features
    on2 = df[df["site"] == "resid.2"]
    explained = on2[on2["feature"].isin(want.index)]
    assert len(explained) >= 3                                  # the prompt holds explained features
    for r in explained.itertuples():
        assert r.explanation == want.loc[r.feature, "explanation"]
        assert r.simulation_score == pytest.approx(want.loc[r.feature, "simulation_score"])
    rest = df[~df.index.isin(explained.index)]
    assert (rest["explanation"] == "").all() and rest["simulation_score"].isna().all()
    return explained


def test_explanations_found_beside_the_saes_reach_table_nodes_and_hover(work):
    tmp, scan, model, run = work
    g = attribute(model, tmp / "saes", PROMPT, target="moon", max_feature_nodes=500)
    assert g.info["explained"] == {"resid.2": len(run.table)}
    explained = _check_explained(g, run)
    top = g.top_features(len(g.features))
    assert {"explanation", "simulation_score"} <= set(top.columns)
    r = explained.iloc[0]
    node = g.graph.nodes[r["node_id"]]
    assert node["explanation"] == r["explanation"] and node["simulation_score"] == pytest.approx(r["simulation_score"])
    texts = [t for trace in json.loads(llmri.viz.circuit_figure(g).to_json())["data"] for t in trace.get("text") or []]
    hover = [t for t in texts if t.startswith(html.escape(node["label"]) + "<br>")]
    assert len(hover) == 1
    assert f"explanation: {html.escape(r['explanation'])} (simulation score {r['simulation_score']:.3f})" in hover[0]
    clerp = {n["node_id"]: n["clerp"] for n in g.to_dict()["nodes"]}
    assert clerp[r["node_id"]].startswith(r["explanation"] + " (")


def test_explanations_given_as_folder_or_explain_json(work):
    tmp, scan, model, run = work
    folder = tmp / "saes" / "explain-resid.2"
    bare = attribute(model, tmp / "saes", PROMPT, target="moon", explanations=[])
    assert bare.info["explained"] == {} and (bare.features["explanation"] == "").all()
    given = attribute(model, tmp / "saes", PROMPT, target="moon", explanations=folder / "explain.json")
    _check_explained(given, run)
    # top_features fills them in for a graph built without
    top = bare.top_features(len(bare.features), explanations=folder)
    ref = given.top_features(len(given.features))
    assert list(top["explanation"]) == list(ref["explanation"])
    np.testing.assert_allclose(top["simulation_score"], ref["simulation_score"])
    saes = llmri.circuits.load_saes(tmp / "saes")
    with pytest.raises(LlmriError, match=r"explain-resid.2: explains the features of resid.2, but the SAEs are at resid.1"):
        feature_explanations(saes[:1], folder)
    with pytest.raises(LlmriError, match="nowhere: not an explain output folder"):
        feature_explanations(saes, tmp / "nowhere")
    other = llmri.SAE.load(tmp / "saes" / "resid.2")
    other.folder = tmp / "s"
    with pytest.raises(LlmriError, match="explains the features of the SAE in .*resid.2, not of the one in"):
        feature_explanations([saes[0], other], folder)


def test_cli_circuit_with_explanations(work):
    tmp, scan, model, run = work
    r = CliRunner().invoke(cli, ["circuit", PROMPT, "--model", str(tmp / "tiny"), "--saes", str(tmp / "saes"),
                                 "--target", "moon", "--k", "2", "--max-nodes", "500", "--out", str(tmp / "circ")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "explanation" in r.output
    page = (tmp / "circ" / "circuit.html").read_text()
    assert f"explained features (llmri explain --sae): {len(run.table)} of resid.2" in page
    assert html.escape(run.table["explanation"].iloc[0]) in page
    bad = CliRunner().invoke(cli, ["circuit", PROMPT, "--model", "no-such-model", "--saes", str(tmp / "saes"),
                                   "--explanations", str(tmp / "s"), "--out", str(tmp / "bad")])
    assert bad.exit_code != 0 and "not an explain output folder" in str(bad.exception)
    assert not (tmp / "bad").exists()


def _json_var(page: str, name: str):
    return json.loads(page.split(f"var {name} = ", 1)[1].split(";\n", 1)[0])


def _click_node(page, node_id: str) -> None:
    """Move the mouse onto the node's marker in the plotly figure and click it, as a user would."""
    xy = page.evaluate("""(id) => {
        const gd = document.querySelector('.figure');
        for (const tr of gd._fullData) {
            const j = (tr.customdata || []).indexOf(id);
            if (j < 0) continue;
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
            return [r.left + xa._offset + xa.l2p(tr.x[j]), r.top + ya._offset + ya.l2p(tr.y[j])];
        }
        return null; }""", node_id)
    assert xy is not None, node_id
    page.mouse.move(xy[0] - 3, xy[1])
    page.mouse.move(xy[0], xy[1])
    page.mouse.click(xy[0], xy[1])


def test_circuit_page_carries_a_dashboard_per_kept_feature(work):
    from llmri.report import dashboard_html

    tmp, scan, model, run = work
    r = CliRunner().invoke(cli, ["circuit", PROMPT, "--model", str(tmp / "tiny"), "--saes", str(tmp / "saes"),
                                 "--target", "moon", "--k", "2", "--max-nodes", "500", "--scan", str(tmp / "s"),
                                 "--out", str(tmp / "circ-scan")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = (tmp / "circ-scan" / "circuit.html").read_text()
    cards, nodes = _json_var(page, "cards"), _json_var(page, "nodes")
    shown = json.loads((tmp / "circ-scan" / "graph.json").read_text())["nodes"]
    kept = {n["node_id"]: n for n in shown if n["feature_type"] == "cross layer transcoder"}
    assert kept and set(nodes) == set(kept)
    assert set(cards) == set(nodes.values())
    for nid, key in nodes.items():
        site, f = key.split(":")
        layer, latent, _ = nid.split("_")  # the node id keeps the latent; "feature" is Cantor-paired
        assert int(f) == int(latent) and site == f"resid.{kept[nid]['layer']}" == f"resid.{layer}"
    # each card is the feature browser's dashboard of that feature over the scan, explanation first
    want = run.table.set_index("unit")
    sae = llmri.SAE.load(tmp / "saes" / "resid.2")
    feats = llmri.feature_activations(sae, scan, progress=False)
    on2 = [int(k.split(":")[1]) for k in cards if k.startswith("resid.2:")]
    assert on2
    for f in on2:
        row = unit_explanations(tmp / "saes" / "explain-resid.2", "resid.2", "feature").get(f)
        assert cards[f"resid.2:{f}"] == dashboard_html(feats, f, model, row)
        assert "top activations" in cards[f"resid.2:{f}"]
        if f in want.index:
            assert html.escape(want.loc[f, "explanation"]) in cards[f"resid.2:{f}"]
    bad = CliRunner().invoke(cli, ["circuit", PROMPT, "--model", "no-such-model", "--saes", str(tmp / "saes"),
                                   "--scan", str(tmp / "s2"), "--out", str(tmp / "bad")])
    assert bad.exit_code != 0 and not (tmp / "bad").exists()


def test_clicking_a_node_opens_its_dashboard_in_chromium(work, browser):
    from test_report import open_page

    tmp, scan, model, run = work
    path = tmp / "circ-scan" / "circuit.html"
    if not path.is_file():
        pytest.skip("needs the page of test_circuit_page_carries_a_dashboard_per_kept_feature")
    text = path.read_text()
    cards, nodes = _json_var(text, "cards"), _json_var(text, "nodes")
    page, errors, requests = open_page(browser, path)
    assert page.locator("#circuit-card").is_hidden()
    clicked = 0
    for nid in sorted(nodes, key=lambda n: nodes[n])[:3]:
        _click_node(page, nid)
        page.wait_for_selector("#circuit-card-body h4", state="attached")
        assert page.locator("#circuit-card").is_visible()
        got = page.get_attribute("#circuit-card-body p.note", "data-node")
        key = nodes[got]
        site, f = key.split(":")
        body = page.inner_html("#circuit-card-body")
        assert f"<h4>feature {f}</h4>" in body and "top activations" in body
        assert f"{site} #{f} @" in body                      # the node's hover text heads the panel
        clicked += got == nid
        page.click("#circuit-card-close")
        assert page.locator("#circuit-card").is_hidden()
    assert clicked >= 2            # nodes drawn on top of each other may catch a neighbour's click
    assert not errors and not requests


def test_without_a_scan_a_click_shows_what_the_graph_knows(work, browser, tmp_path):
    from test_report import open_page

    tmp, scan, model, run = work
    saes = llmri.circuits.load_saes(tmp / "saes")
    g = attribute(model, saes, PROMPT, target="moon", max_feature_nodes=30)
    path = llmri.report.build_circuit_page(g, tmp_path / "c", pruned=g.prune(0.9, 0.99), model=model, saes=saes)
    nodes = _json_var(path.read_text(), "nodes")
    assert _json_var(path.read_text(), "cards") == {}
    page, errors, _ = open_page(browser, path)
    nid = next(iter(nodes))
    _click_node(page, nid)
    page.wait_for_selector("#circuit-card", state="visible")
    body = page.inner_html("#circuit-card-body")
    assert "no dashboard in this page" in body and "llmri circuit --scan" in body
    assert "attribution" in body and "top output tokens:" in body
    with pytest.raises(LlmriError, match="scan: feature dashboards need the SAEs too"):
        llmri.report.build_circuit_page(g, tmp_path / "d", scan=scan)
    with pytest.raises(LlmriError, match="no token records of resid.1"):
        llmri.report.build_circuit_page(g, tmp_path / "e", saes=saes, scan=llmri.scan(
            model, llmri.Corpus(TEXTS[:2], LABELS[:2]), tmp_path / "s2", sites=("resid",), token_sites=("resid.2",),
            progress=False))
    assert not errors


def test_label_features_names_nodes_by_their_top_activations_and_the_figure_prints_them(work):
    from llmri.sae.features import top_activating_tokens
    from llmri.viz.graphs import node_label

    tmp, scan, model, run = work
    saes = llmri.circuits.load_saes(tmp / "saes")
    p = attribute(model, saes, PROMPT, target="moon", max_feature_nodes=30).prune(0.9, 0.99)
    feats = p.label_features(scan, saes, model=model)
    assert set(feats) == {d["site"] for _, d in p.graph.nodes(data=True) if d["kind"] == "feature"}
    direct = {s.site: llmri.feature_activations(s, scan, progress=False) for s in saes}
    nodes = [d for _, d in p.graph.nodes(data=True) if d["kind"] == "feature"]
    for d in nodes:
        assert d["top_activations"] == top_activating_tokens(direct[d["site"]], [d["feature"]], model=model)[0]
    fig = llmri.viz.circuit_plot(p, labels=3)
    texts = [t.get_text() for t in fig.axes[0].texts]
    named = sorted((d for d in nodes if node_label(d)), key=lambda d: -abs(d["influence"]))[:3]
    assert texts and all(f"{d['feature']}: {node_label(d)}" in texts for d in named)
    assert len(llmri.viz.circuit_plot(p, labels=0).axes[0].texts) == 0
    with pytest.raises(LlmriError, match="no token records of resid.1"):
        p.label_features(llmri.scan(model, llmri.Corpus(TEXTS[:2], LABELS[:2]), tmp / "s3", sites=("resid",),
                                    token_sites=("resid.2",), progress=False), saes)
