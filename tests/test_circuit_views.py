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
from llmri.explain import LocalLM

from conftest import LABELS, TEXTS, make_module, make_tokenizer
from test_explain_local import tiny_chat_model

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
