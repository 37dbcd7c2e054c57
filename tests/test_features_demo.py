"""The features demo (``llmri demo --features``) and what it is made of: every feature's neighbours
at once, category tables, the clamp measured on read-back generations, the page in Chromium.

The default run builds the demo on a tiny Llama with two small SAEs; the run on the shipped set of
``default-decoder`` (a fresh ``llmri demo --features`` process, minutes) is marked ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import llmri
from llmri import LlmriError
from llmri.cli import cli
from llmri.report.features_demo import CLEAN, choose_clamp_feature, demo_site
from llmri.sae.clamp import clamp_effect, feature_readback, resolve_values
from llmri.sae.features import category_features, feature_neighbors, nearest_features

from conftest import LABELS, TEXTS, make_module, make_tokenizer
from test_report import browser, open_page  # noqa: F401  (the headless browser fixture)
from test_sae_features import known  # noqa: F401  (a synthetic scan: feature 0 lights up category a)
from test_sae_eval import identity_sae as split_sae

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama saved as ``tiny/``, a scan with token records of resid.1 and resid.2 and an SAE per site."""
    tmp = tmp_path_factory.mktemp("features-demo")
    make_module("llama").save_pretrained(tmp / "tiny")
    make_tokenizer("llama").save_pretrained(tmp / "tiny")
    model = llmri.load_model(str(tmp / "tiny"))
    corpus = llmri.Corpus(TEXTS * 3, LABELS * 3)
    scan = llmri.scan(model, corpus, tmp / "scan", sites=("resid",), token_sites=("resid.1", "resid.2"), progress=False)
    with pytest.warns(UserWarning, match="few"):
        saes = llmri.train_sae(scan, ["resid.1", "resid.2"], n_latents=16, k=4, epochs=2, batch_size=32, seed=0,
                               progress=False)
    for site, sae in saes.items():
        sae.save(tmp / "saes" / site)
    return tmp, model, corpus, scan, saes


def _hidden_mean(model, sae, feature, texts):
    """The feature's mean over each text's tokens but the first (and those above the SAE's
    ``max_norm``), from transformers' own hidden states (``resid.L`` is ``hidden_states[L]``)."""
    layer = int(sae.site.split(".")[1])
    limit = (sae.metadata or {}).get("max_norm", float("inf"))
    out = []
    for t in texts:
        ids = model.tokenizer(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model.module(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, 1:].float()
            h = h[h.norm(dim=-1) <= limit]
            out.append(float(sae.encode(h)[:, feature].mean()) if len(h) else float("nan"))
    return np.array(out)


# ---------------------------------------------------------------- the parts
def test_nearest_features_are_feature_neighbors_for_every_feature(tiny, known):
    _, _, _, scan, saes = tiny
    sae = saes["resid.2"]
    feats = llmri.feature_activations(sae, scan, n_samples=6, progress=False)
    live = np.flatnonzero(feats.density > 0)
    ids, cos = nearest_features(sae, None, "decoder", top=5)
    cids, jac = nearest_features(sae, live, "coactivation", feats=feats, top=5)
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1).numpy()
    acts = scan.token_activations(2)                                  # every token, corpus order
    with torch.no_grad():
        fires = (sae.encode(torch.from_numpy(acts)) > 0).numpy()
    for f in range(sae.d_sae):
        nb = feature_neighbors(sae, f, by="decoder", top=5)
        assert nb["feature"].tolist() == ids[f].tolist()
        ref = W @ W[f]
        ref[f] = -np.inf
        np.testing.assert_allclose(cos[f], np.sort(ref)[::-1][:5], rtol=1e-5, atol=1e-6)
    for r, f in enumerate(live):
        nb = feature_neighbors(sae, int(f), by="coactivation", feats=feats, top=5)
        assert nb["feature"].tolist() == cids[r].tolist()
        np.testing.assert_allclose(nb["jaccard"].to_numpy(), jac[r])
        rows = [t for t in feats.sample_tokens[:, f] if t >= 0]      # Jaccard from P(j | f) on f's samples
        both = fires[rows].mean(0) * feats.density[f]
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where(both > 0, both / (feats.density[f] + feats.density - both), 0.0)
        ref[f] = -np.inf
        np.testing.assert_allclose(jac[r], np.sort(ref)[::-1][:5], rtol=1e-6)
    with pytest.raises(LlmriError, match="out of range"):
        nearest_features(sae, [99])
    with pytest.raises(LlmriError, match="top must be a positive integer"):
        nearest_features(sae, [0], top=0)
    with pytest.raises(LlmriError, match="needs feats"):
        nearest_features(sae, [0], "coactivation")
    with pytest.raises(LlmriError, match="not one of decoder, coactivation"):
        nearest_features(sae, [0], "cosine")


def test_category_features_purity_and_the_clamp_rule(known):
    scan, X, doc_of, labels = known
    sae = split_sae(4, "resid.1")                                      # features relu(x_j) and relu(-x_j)
    feats = llmri.feature_activations(sae, scan, n_top=10, progress=False)
    df = category_features(feats, "a", n=3)
    assert df["feature"].iloc[0] == 0 and df["effect_size"].is_monotonic_decreasing
    F = np.concatenate([np.maximum(X, 0), np.maximum(-X, 0)], 1)
    for r in df.itertuples():
        top = np.argsort(-F[:, r.feature], kind="stable")[:10]
        assert r.purity == pytest.approx(np.mean(labels[doc_of[top]] == 0))
        assert r.top_docs == len(set(doc_of[top]))
        assert r.density == pytest.approx((F[:, r.feature] > 0).mean())
    feature, clean, cands = choose_clamp_feature(feats, "a")
    assert feature == 0 and len(cands) == 8
    best = cands.iloc[0]
    assert best["purity"] >= CLEAN["purity"] and best["q_value"] < CLEAN["q_value"]
    assert best["density"] > CLEAN["density"] and not clean          # it fires on half the tokens: not clean
    assert choose_clamp_feature(feats, "b")[1] is False
    table = feats.table()
    assert table.loc[0, "prefers"] == "a"
    assert set(table["prefers"]) <= {"a", "b", "c", "none"}
    sig = (table["effect_size"] > 0) & (table["q_value"] < 0.05)
    assert (table.loc[~sig, "prefers"] == "none").all()
    with pytest.raises(LlmriError, match="category 'd' is not one of the scan's labels"):
        category_features(feats, "d")
    assert demo_site(["resid.4", "resid.12", "resid.16", "resid.28"], 30) == "resid.16"
    assert demo_site(["resid.2", "resid.4"], 6) == "resid.2"           # a tie: the lower


def test_feature_readback_is_the_feature_on_the_plain_forward(tiny):
    _, model, _, _, saes = tiny
    sae = saes["resid.1"]
    texts = TEXTS[:5] + [""]
    for f in range(4):
        got = feature_readback(model, sae, f, texts)
        want = _hidden_mean(model, sae, f, texts[:5])
        np.testing.assert_allclose(got[:5], want, rtol=1e-4, atol=1e-6)
        assert np.isnan(got[5])
    with pytest.raises(LlmriError, match="out of range"):
        feature_readback(model, sae, 16, texts)


def test_clamp_effect_reads_each_generation_back_unclamped(tiny):
    _, model, _, scan, saes = tiny
    sae = saes["resid.1"]
    feats = llmri.feature_activations(sae, scan, progress=False)
    f = int(np.argmax(feats.max))
    prompts = ["the star", "a comet runs"]
    df = clamp_effect(model, sae, f, ["0", "10x"], prompts, feats=feats, scan=scan, category="food",
                      max_new_tokens=5)
    assert list(df["clamp"].unique()) == ["none (original)", "0 = 0", f"10x = {10 * feats.max[f]:.4g}"]
    assert df["generation"][:2].tolist() == llmri.generate(model, prompts, max_new_tokens=5)
    assert np.isnan(df["value"][0]) and df["value"][4] == pytest.approx(resolve_values(sae, {f: "10x"}, feats)[1][0])
    with llmri.clamp(model, sae, {f: "10x"}, feats=feats):
        assert df["generation"][4:].tolist() == llmri.generate(model, prompts, max_new_tokens=5)
    np.testing.assert_allclose(df["feature_mean"], feature_readback(model, sae, f, list(df["generation"])))
    assert df["p_category"].between(0, 1).all() and df.attrs["probe_layer"] == 1
    with pytest.raises(LlmriError, match="needs the scan"):
        clamp_effect(model, sae, f, ["0"], prompts, category="food")
    with pytest.raises(LlmriError, match="'drink' is not one of the scan's labels"):
        clamp_effect(model, sae, f, ["0"], prompts, scan=scan, category="drink")
    with pytest.raises(LlmriError, match="prompt 0 is empty"):
        clamp_effect(model, sae, f, ["0"], [""])


# ---------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def tiny_page(tiny):
    tmp, model, corpus, _, _ = tiny
    t0 = time.perf_counter()
    path = llmri.features_demo(tmp / "demo", model=model, saes=tmp / "saes", corpus=corpus, category="food",
                               prompts=["the star", "a comet"], circuit_prompt=TEXTS[1], max_new_tokens=6,
                               progress=False)
    return path, time.perf_counter() - t0


def test_tiny_features_demo_writes_its_page_and_numbers(tiny, tiny_page):
    tmp, model, _, scan, _ = tiny
    path, seconds = tiny_page
    out = path.parent
    assert path == tmp / "demo" / "features.html" and (tmp / "demo-scan" / "manifest.json").is_file()
    for name in ("feature_map.png", "feature_map.svg", "clamp_effect.png", "circuit.png", "graph.json", "clamp.json",
                 "demo.json", "features.csv", "category_food.csv", "validation_topk.csv"):
        assert (out / name).is_file(), name
    clamp = json.loads((out / "clamp.json").read_text())
    s = clamp["settings"]
    assert s["site"] == "resid.1" and s["category"] == "food" and len(clamp["rows"]) == 2 * 4
    sae = llmri.SAE.load(tmp / "saes" / "resid.1")
    gens = [r["generation"] for r in clamp["rows"]]
    np.testing.assert_allclose([r["feature_mean"] for r in clamp["rows"]],
                               _hidden_mean(model, sae, s["feature"], gens), rtol=1e-4, atol=1e-6)
    base = np.mean([r["feature_mean"] for r in clamp["rows"] if r["value"] is None])
    for r in clamp["summary"]:
        assert r["feature_change"] == pytest.approx(r["feature_mean"] - base, abs=1e-9)
    html = path.read_text()
    assert "Feature map (resid.1)" in html and "Top features per category" in html
    assert f"Clamping feature {s['feature']} of resid.1" in html and "Attribution graph" in html
    assert "replacement score" in html and "top-5 drop" in html and "Validation: ablating" in html
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo["timings"]) >= {"scan", "features", "clamp", "attribute", "validate", "page"}
    assert seconds < 120


def test_tiny_features_demo_page_clicks_in_chromium(tiny_page, browser):
    path, _ = tiny_page
    page, errors, requests = open_page(browser, path)
    assert page.locator(".figure").count() == 3                     # map, clamp effect, graph
    assert page.locator("#feature-panel").is_hidden()
    page.locator(".feature-table tbody tr").first.click()          # a row of the first category table
    page.wait_for_selector("#feature-panel", state="visible")
    first = page.get_attribute("#feature-panel-body p.note", "data-feature")
    body = page.inner_html("#feature-panel-body")
    assert "nearest by decoder cosine" in body and "nearest by co-activation" in body
    assert f"<h4>feature {first}</h4>" in body                       # its dashboard
    rings = page.evaluate("document.getElementById('figure-1').data.slice(-1)[0].name")
    assert rings == "neighbourhood"
    link = page.locator("#feature-panel-body a.fp-link").first
    target = link.get_attribute("data-f")
    link.click()
    page.wait_for_function(f"document.querySelector('#feature-panel-body p.note').dataset.feature === '{target}'")
    n_traces = page.evaluate("document.getElementById('figure-1').data.length")
    page.evaluate("window.llmriShowFeature(0)")                     # one ring trace at a time
    assert page.evaluate("document.getElementById('figure-1').data.length") == n_traces
    page.click("#feature-panel-close")
    assert page.locator("#feature-panel").is_hidden()
    assert errors == [] and requests == []


def test_features_demo_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path):
    tmp, model, corpus, _, _ = tiny
    kw = dict(model=model, corpus=corpus, progress=False)
    with pytest.raises(LlmriError, match="category 'drink' is not a label of the corpus"):
        llmri.features_demo(tmp_path / "a", saes=tmp / "saes", category="drink", **kw)
    with pytest.raises(LlmriError, match="site 'resid.7'"):
        llmri.features_demo(tmp_path / "a", saes=tmp / "saes", category="food", site="resid.7", **kw)
    with pytest.raises(LlmriError, match="circuit_prompt"):
        llmri.features_demo(tmp_path / "a", saes=tmp / "saes", category="food", circuit_prompt=" ", **kw)
    with pytest.raises(LlmriError, match="no feature set ships for 'nope'"):
        llmri.features_demo(tmp_path / "a", saes="nope", category="food", **kw)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a-scan").exists()
    runner = CliRunner()
    for args, message in ((["--grid", "4"], "--grid does not apply to the features demo"),
                          (["--token-sites", "resid.3"], "--token-sites does not apply"),
                          (["--saes", str(tmp_path / "none")], "no such folder")):
        res = runner.invoke(cli, ["demo", "--features", "--out", str(tmp_path / "d"), *args])
        assert isinstance(res.exception, LlmriError) and message in str(res.exception) and "\n" not in str(res.exception)
    res = runner.invoke(cli, ["demo", "--saes", "x", "--out", str(tmp_path / "d")])
    assert isinstance(res.exception, LlmriError) and "add --features" in str(res.exception)
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- the shipped set, from a fresh process
@pytest.mark.slow
def test_features_demo_on_the_shipped_set(tmp_path, browser):
    """``llmri demo --features`` as a user runs it, offline: the page renders without errors, and the
    clamp moves its feature up on the generations read back unclamped, as an independent forward
    pass of transformers recomputes it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmri", "demo", "--features", "--out", str(tmp_path / "d")],
                          env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "d" / "features"
    page, errors, requests = open_page(browser, out / "features.html")
    assert page.locator(".figure").count() == 3 and errors == [] and requests == []
    page.screenshot(path=str(out / "screenshot.png"))
    clamp = json.loads((out / "clamp.json").read_text())
    s = clamp["settings"]
    by = {r["clamp"].split(" ")[0]: r for r in clamp["summary"]}
    assert by["5x"]["direction"] == "up" and by["5x"]["feature_change"] > 0, by["5x"]
    assert by["5x"]["p_change"] > 0, by["5x"]                       # the probe reads more of the category too
    # at 10x the model may repeat one token whose norm leaves the SAE's range: nothing to read (None)
    assert by["10x"]["feature_change"] is None or by["10x"]["feature_change"] > 0, by["10x"]
    model = llmri.load_model("default-decoder", dtype="float32")
    sae = llmri.load_saes("default-decoder")[s["site"]]
    rows = [r for r in clamp["rows"] if r["feature_mean"] is not None]
    want = _hidden_mean(model, sae, s["feature"], [r["generation"] for r in rows])
    np.testing.assert_allclose([r["feature_mean"] for r in rows], want, rtol=2e-2, atol=2e-3)
    graph = json.loads((out / "graph.json").read_text())
    assert graph["metadata"]["prompt"].startswith("The capital of the country where the Eiffel Tower stands is")
    assert seconds < 600, f"the features demo took {seconds:.0f} s"
