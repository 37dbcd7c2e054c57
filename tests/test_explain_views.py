"""Explanations where users look at units: neuron cards and the report's neuron section, SAE
feature dashboards and the feature map coloured by score; explain runs found beside the scan
or the SAE."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import llmri
from llmri.cli import cli
from conftest import LABELS, TEXTS, make_module, make_tokenizer
from llmri.explain import LocalLM, find_explanations, unit_explanations
from test_explain_local import tiny_chat_model
from test_report import browser  # noqa: F401  (the headless browser fixture)

SRC = Path(llmri.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny Llama scan (pooled resid and mlp, token records of mlp.1 and resid.2), an SAE of
    resid.2, and explain runs of two mlp.1 neurons (beside the scan) and two SAE features
    (beside the SAE), explained and scored by the tiny chat model."""
    tmp = tmp_path_factory.mktemp("views")
    make_module("llama").save_pretrained(tmp / "tiny")
    make_tokenizer("llama").save_pretrained(tmp / "tiny")
    scan = llmri.scan(str(tmp / "tiny"), llmri.Corpus(TEXTS * 3, LABELS * 3), tmp / "s", sites=("resid", "mlp"),
                      token_sites=("mlp.1", "resid.2"), progress=False)
    sae = llmri.train_sae(scan, "resid.2", n_latents=16, k=4, epochs=2, batch_size=32, seed=0, progress=False)
    sae.save(tmp / "sae")
    ex = llmri.Explainer(LocalLM(tiny_chat_model()), window=6, n_explain=3, n_quantiles=2, per_quantile=2,
                         n_non_activating=2, max_new_tokens=4)
    neurons = llmri.explain(scan, "mlp.1", "top:3", ex, scorers=("simulation", "detection"), out=tmp / "explain",
                            progress=False)
    feats = llmri.explain(scan, "resid.2", "top:3", ex, encoder=sae, scorers=("simulation",), out=tmp / "explain-sae",
                          meta={"sae": str(tmp / "sae")}, progress=False)
    return tmp, scan, sae, neurons, feats


def test_explain_runs_are_found_beside_the_scan_and_the_sae(work):
    tmp, scan, sae, neurons, feats = work
    assert find_explanations(tmp / "s", "mlp.1", "neuron") == [tmp / "explain"]
    assert find_explanations(tmp / "s", "resid.2", "neuron") == []        # the feature run is not the neurons'
    assert find_explanations(tmp / "s", "mlp.0", "neuron") == []
    assert find_explanations(tmp / "sae", "resid.2", "feature") == [tmp / "explain-sae"]
    assert find_explanations(tmp / "other", "mlp.1", "neuron") == []
    got = unit_explanations(tmp / "explain", "mlp.1", "neuron")
    assert sorted(got) == sorted(neurons.table["unit"])
    for r in neurons.table.itertuples():
        assert got[r.unit]["explanation"] == r.explanation
        assert got[r.unit]["simulation_score"] == pytest.approx(r.simulation_score)
    with pytest.raises(llmri.LlmriError, match=r"explain-sae: explains the features of resid.2, not the neurons of mlp.1"):
        unit_explanations([tmp / "explain", tmp / "explain-sae"], "mlp.1", "neuron")


def test_neuron_card_carries_its_explanation(work):
    tmp, scan, sae, neurons, feats = work
    row = neurons.table.iloc[0]
    card = llmri.neuron_card(scan, 1, int(row["unit"]), explanations=tmp / "explain", top=3)
    assert card.explanation["explanation"] == row["explanation"]
    page = card.to_html()
    assert html.escape(row["explanation"]) in page
    assert f"simulation {row['simulation_score']:.3f} (random explanation {row['simulation_baseline']:.3f})" in page
    assert f"detection {row['detection_balanced_accuracy']:.3f}" in page
    other = next(u for u in range(64) if u not in set(neurons.table["unit"]))
    assert llmri.neuron_card(scan, 1, other, explanations=tmp / "explain").explanation is None
    assert "explanation</b>" not in llmri.neuron_card(scan, 1, int(row["unit"])).to_html()


def test_report_lists_explained_neurons_found_beside_the_scan(work):
    tmp, scan, _, neurons, _ = work
    r = CliRunner().invoke(cli, ["report", str(tmp / "s"), "--out", str(tmp / "rep"), "--permutations", "5"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = (tmp / "rep" / "report.html").read_text()
    assert "Explained neurons" in page and f"{len(neurons.table)} neurons have an automated explanation" in page
    for r in neurons.table.itertuples():
        assert html.escape(r.explanation) in page
    bad = subprocess.run([sys.executable, "-m", "llmri", "report", "s", "--out", "rep2", "--explanations", "nowhere"],
                         cwd=tmp, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "llmri: error: --explanations nowhere: no explanations.csv there; run llmri explain with --out nowhere"]
    assert not (tmp / "rep2").exists()


def test_feature_browser_shows_explanations_and_the_map_by_score(work):
    tmp, scan, sae, neurons, feats = work
    r = CliRunner().invoke(cli, ["sae", "report", str(tmp / "sae"), "--scan", str(tmp / "s"), "--cards", "2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp / "sae-report"
    page = (out / "features.html").read_text()
    cards = json.loads(page.split("var cards = ", 1)[1].split(";\n", 1)[0])
    for r in feats.table.itertuples():                    # every explained feature has a card with its explanation
        assert html.escape(r.explanation) in cards[str(r.unit)]
        assert f"simulation {r.simulation_score:.3f} (random explanation {r.simulation_baseline:.3f})" in cards[str(r.unit)]
    assert (out / "feature_map_score.png").is_file()
    table = pd.read_csv(out / "features.csv")
    scored = table.dropna(subset=["simulation_score"]).set_index("feature")
    assert sorted(scored.index) == sorted(feats.table["unit"])
    np.testing.assert_allclose(scored.loc[feats.table["unit"], "simulation_score"], feats.table["simulation_score"])
    assert page.count("colorbar") >= 1 and "no simulation_score" in page


def test_explain_page_table_sorts_by_score_on_click(work, browser):
    from test_report import open_page

    tmp, scan, sae, neurons, feats = work
    page, errors, requests = open_page(browser, tmp / "explain" / "explain.html")
    t = neurons.table
    col = list(t.columns).index("simulation_score")
    first_unit = "document.querySelector('table.table tbody tr').cells[0].textContent.trim()"
    page.click(f"table.table thead th:nth-child({col + 1})")
    assert int(page.evaluate(first_unit)) == int(t.loc[t["simulation_score"].idxmin(), "unit"])
    page.click(f"table.table thead th:nth-child({col + 1})")
    assert int(page.evaluate(first_unit)) == int(t.loc[t["simulation_score"].idxmax(), "unit"])
    assert errors == [] and requests == []
