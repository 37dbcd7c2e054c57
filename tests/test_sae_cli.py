"""llmri sae train|eval|report|steer as a user runs them, on a tiny model saved to a folder."""

from __future__ import annotations

import json

import pytest

from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from conftest import tiny_cli_folder

    tmp = tiny_cli_folder(tmp_path_factory.mktemp("saecli"))
    proc = run("scan", "c.csv", "--model", "tiny", "--token-sites", "resid.2", "--out", "s", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp


def test_train_eval_report_steer(work):
    proc = run("sae", "train", "s", "--site", "resid.2", "--latents", "32", "--k", "4", "--batch-size", "32",
               "--epochs", "3", "--lr", "0.003", "--out", "sae", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "explained variance" in proc.stdout
    cfg = json.loads((work / "sae" / "cfg.json").read_text())
    assert cfg["d_sae"] == 32 and (work / "sae" / "sae_weights.safetensors").is_file()

    proc = run("sae", "eval", "sae", "--model", "tiny", "--corpus", "c.csv", cwd=work)
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((work / "sae" / "eval.json").read_text())
    assert "ce_loss_score" in proc.stdout and 0 < ev["l0"] and ev["explained_variance"] > 0

    proc = run("sae", "report", "sae", "--scan", "s", "--model", "tiny", "--cards", "5", cwd=work)
    assert proc.returncode == 0, proc.stderr
    page = (work / "sae-report" / "features.html").read_text()
    assert "Feature map" in page and "ce_loss_score" in page and "feature " in page
    assert (work / "sae-report" / "feature_map.png").is_file() and (work / "sae-report" / "features.csv").is_file()

    proc = run("sae", "steer", "sae", "the star", "--model", "tiny", "--feature", "0", "--value", "0",
               "--value", "20", "--max-new-tokens", "4", "--out", "st", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "[none (original)]" in proc.stdout and "[20 = 20]" in proc.stdout
    assert (work / "st" / "steer.html").is_file()


def test_main_report_has_a_features_section_for_saes_beside_the_scan(work):
    """An SAE in SCAN/saes/NAME/ gives `llmri report` a Features section: per category the features
    with the largest effect size (as feature_activations ranks them), a dashboard and the map."""
    import re

    from llmri.sae import SAE, feature_activations
    from llmri.store import Scan

    proc = run("sae", "train", "s", "--site", "resid.2", "--latents", "32", "--k", "4", "--batch-size", "32",
               "--epochs", "2", "--lr", "0.003", "--out", "s/saes/main", cwd=work)
    assert proc.returncode == 0, proc.stderr
    SAE(32, 8, arch="relu", site="resid.1").save(work / "s" / "saes" / "other")   # no token records of resid.1
    proc = run("report", "s", "--grid", "3", "--permutations", "10", "--out", "rep", cwd=work)
    assert proc.returncode == 0, proc.stderr
    page = (work / "rep" / "report.html").read_text()
    assert 'href="#features"' in page and "SAE features" in page and "main: SAE(batchtopk" in page
    assert "no token records of resid.1" in page
    assert (work / "rep" / "figures" / "features_main_map.png").is_file()
    scan = Scan.open(work / "s")
    feats = feature_activations(SAE.load(work / "s" / "saes" / "main"), scan, progress=False)
    section = page[page.index('id="features"'):]
    for c in scan.label_names:
        eff = feats.effects[feats.effects["category"] == c].sort_values("effect_size", ascending=False)
        head = section[section.index(f"<h4>{c}</h4>"):]
        first = re.search(r"<td>(\d+)</td>", head).group(1)
        assert int(first) == int(eff["feature"].iloc[0])
    proc = run("report", "s", "--sae", "nowhere", "--out", "rep2", cwd=work)
    assert_one_line_error(proc, "not an SAE folder")
    assert not (work / "rep2").exists()


@pytest.mark.parametrize("args, pattern", [
    (["sae", "train", "s", "--site", "resid.1", "--out", "o"], "was not captured at token level"),
    (["sae", "train", "s", "--site", "resid.2", "--k", "0", "--out", "o"], "k must be"),
    (["sae", "eval", "s", "--model", "tiny", "--corpus", "c.csv"], "not an SAE folder"),
    (["sae", "report", "nowhere", "--scan", "s"], "no such SAE folder"),
    (["sae", "steer", "sae0", "hi", "--model", "nobody/nothing", "--feature", "99"], "out of range"),
    (["sae", "steer", "sae0", "hi", "--model", "nobody/nothing", "--feature", "1", "--value", "lots"], "multiple"),
    (["sae", "train", "s", "--site", "resid.2", "--out", "c.csv"], "not a folder"),
])
def test_errors_are_one_line(work, args, pattern):
    if not (work / "sae0").exists():
        from llmri.sae import SAE

        SAE(32, 8, arch="relu", site="resid.2").save(work / "sae0")
    assert_one_line_error(run(*args, cwd=work), pattern)
    assert not (work / "o").exists()
