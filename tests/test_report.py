"""The HTML report, opened in real headless Chromium (Debian's /usr/bin/chromium via Playwright)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import llmri
from llmri.report import build_attention_page, build_report, script_json
from llmri.store import scan_from_arrays

from conftest import TEXTS, make_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
INJECTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> evil </div>'


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: setup.sh --test installs it")
        pytest.skip("chromium is not installed (bash setup.sh --test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="llmri-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS,
                                                   headless=True, viewport={"width": 1280, "height": 900})
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 12)
    acts = {f"resid.{L}": rng.normal(size=(36, 8)) + labels[:, None] * (L + 1) for L in range(4)}
    acts.update({f"mlp.{L}": rng.normal(size=(36, 16)) for L in range(3)})
    acts.update({f"attn.{L}": rng.uniform(size=(36, 5 * 4)) for L in range(3)})
    texts = [f"document number {i} about topic {lab}" for i, lab in enumerate(labels)]
    texts[0] = INJECTED
    root = tmp_path_factory.mktemp("rep")
    scan = scan_from_arrays(root / "scan", acts, labels, ["red", "green", "blue"], texts)
    return build_report(scan, root / "report", grid=4, n_permutations=20, progress=False,
                        model=make_model("gpt2"), attention_text=TEXTS[1])


def open_page(browser, path):
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(Path(path).as_uri())
    page.wait_for_function("document.querySelectorAll('.figure').length === "
                           "document.querySelectorAll('.figure .main-svg').length / 1 || "
                           "Array.from(document.querySelectorAll('.figure')).every(f => f.querySelector('.main-svg'))")
    return page, errors, requests


def test_report_renders_offline_without_errors(browser, report):
    page, errors, requests = open_page(browser, report)
    figures = page.locator(".figure")
    n = figures.count()
    assert n >= 3 + 3 + 4 + 1  # heatmaps (all + 3 categories), 3 differences, 4 NRAGs, evaluation
    for i in range(n):
        assert figures.nth(i).locator(".main-svg").count() >= 1, f"figure {i} did not render"
    # heatmaps draw their cells, graphs draw their nodes
    assert page.locator(".figure .heatmaplayer image, .figure .hm image").count() >= 1
    assert page.locator(".figure .scatterlayer .point").count() > 10
    assert errors == [] and requests == []
    page.screenshot(path=str(Path(report).parent / "screenshot.png"), full_page=False)
    page.close()


def test_injected_document_shows_as_text(browser, report):
    page, errors, _ = open_page(browser, report)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert INJECTED in page.inner_text("#overview")
    html = Path(report).read_text(encoding="utf-8")
    assert "<script>window.__pwned" not in html  # escaped everywhere, hover data included
    assert errors == []
    page.close()


def test_hover_lists_documents_in_a_cell(browser, report):
    page, _, _ = open_page(browser, report)
    first = page.locator("#heatmaps .figure").first
    first.scroll_into_view_if_needed()
    box = first.locator(".nsewdrag").first.bounding_box()
    texts = set()
    for fx in np.linspace(0.1, 0.9, 5):
        for fy in np.linspace(0.1, 0.9, 5):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.wait_for_timeout(30)
            texts.add(first.locator(".hoverlayer").text_content() or "")
    assert any("document number" in t for t in texts), texts
    page.close()


def test_report_has_attention_and_neuron_sections(browser, report):
    page, errors, _ = open_page(browser, report)
    assert page.locator("#attention .llmri-headview").count() == 1
    assert page.locator("#attention .hv-layer option").count() == 3
    assert page.locator("#neurons h3").count() == 3 and page.locator("#neurons img").count() == 3
    assert page.locator("#probe .figure .main-svg").count() >= 1 and page.locator("#probe table tr").count() == 5
    assert page.evaluate("Array.from(document.querySelectorAll('#neurons img')).every(i => i.naturalWidth > 100)")
    assert errors == []
    page.close()


def test_comparison_tables_name_categories_and_mark_constants(browser, report):
    page, errors, _ = open_page(browser, report)
    table = page.locator("#metrics table").nth(1)          # the first comparison: red vs green
    heads = table.locator("th").all_inner_texts()
    assert heads[:4] == ["metric", "red", "green", "red - green"]
    rows = {r.locator("td").first.inner_text(): r.locator("td").all_inner_texts()
            for r in table.locator("tbody tr").all()}
    assert rows["center_of_strength"][4] == "constant" and rows["center_of_strength"][5] == ""
    assert float(rows["n_nodes"][4]) > 0                  # a tested metric keeps its p-value
    assert errors == []
    page.close()


def test_head_view_shows_what_a_token_attends_to(browser, tmp_path):
    model = make_model("llama")
    text = "the comet runs near the sun and the moon"
    att = llmri.attention(model, text)
    path = build_attention_page(att, tmp_path / "att", model_name="tiny")
    page, errors, requests = open_page(browser, path)
    assert page.locator(".hv-layer option").count() == att.n_layers
    assert page.locator(".hv-head option").count() == att.n_heads + 1  # plus the mean of heads
    page.select_option(".hv-layer", "2")
    page.select_option(".hv-head", "1")
    for q in (3, 7):
        page.locator(".hv-tok").nth(q).hover()
        titles = [float(t) for t in page.locator(".hv-tok").evaluate_all("els => els.map(e => e.title)")]
        np.testing.assert_allclose(titles, att.probs[2, 1, q], atol=6e-4)
        assert "attends most to token" in page.inner_text(".hv-info")
    assert page.locator(".hv-tok").nth(5).inner_text() == att.tokens[5]
    assert errors == [] and requests == []
    for name in ("rollout.png", "heads_layer0.png", "heads_layer2.svg"):
        assert (tmp_path / "att" / name).stat().st_size > 5000
    page.close()


def test_script_json_cannot_close_the_script():
    s = script_json({"t": "</script><script>alert(1)</script>&"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert script_json("llmri-x") == '"llmri-x"'


def test_report_errors(tmp_path):
    rng = np.random.default_rng(0)
    scan = scan_from_arrays(tmp_path / "s", {"resid.0": rng.normal(size=(6, 3)), "resid.1": rng.normal(size=(6, 3))},
                            ["a", "b"] * 3)
    with pytest.raises(llmri.LlmriError, match="unknown category 'zzz'"):
        build_report(scan, tmp_path / "r", categories=["zzz"], progress=False)
    assert not (tmp_path / "r" / "report.html").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(llmri.LlmriError, match="exists and is not a folder"):
        build_report(scan, tmp_path / "file", progress=False)
