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


def test_train_on_the_fly_from_a_model_and_a_corpus(work):
    """--model and --corpus: two SAEs from one forward pass per batch, no Scan; the warning about few
    steps is one line; the checkpoint inside --out is gone once the SAEs are saved."""
    proc = run("sae", "train", "--model", "tiny", "--corpus", "c.csv", "--sites", "resid.1,resid.2", "--tokens", "1500",
               "--latents", "32", "--k", "4", "--batch-size", "64", "--buffer-tokens", "256", "--lr", "0.003",
               "--out", "live", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("explained variance") == 2 and "over the last 2 steps" in proc.stdout
    warned = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
    assert any("optimiser steps (1,500 tokens at batch 64) are few for 32 latents" in x for x in warned), proc.stderr
    for s in ("resid.1", "resid.2"):
        cfg = json.loads((work / "live" / s / "cfg.json").read_text())
        assert cfg["d_sae"] == 32 and cfg["metadata"]["llmri_site"] == s
        assert cfg["metadata"]["hook_name"] == f"blocks.{s.split('.')[1]}.hook_resid_pre"   # TransformerLens' name
    assert sorted(p.name for p in (work / "live").iterdir()) == ["resid.1", "resid.2"]


def test_train_prints_the_explained_variance_of_recent_steps_not_of_a_tiny_last_batch(work):
    """A batch size that leaves one token for the last batch of each epoch: that token's explained
    variance around its own mean is meaningless (about -1e10); the printed figure pools recent steps."""
    import re

    from llmri.store import Scan

    scan = Scan.open(work / "s")
    n = int(scan.lengths.sum()) - scan.n_docs           # first tokens are left out (a decoder)
    proc = run("sae", "train", "s", "--site", "resid.2", "--latents", "32", "--k", "4", "--batch-size", str(n - 1),
               "--epochs", "20", "--lr", "0.003", "--out", "tail", cwd=work)
    assert proc.returncode == 0, proc.stderr
    ev = float(re.search(r"explained variance (-?[\d.e+-]+),", proc.stdout).group(1))
    assert 0 < ev <= 1, proc.stdout
    assert "over the last 4 steps" in proc.stdout


@pytest.mark.parametrize("args, pattern", [
    (["sae", "train", "--model", "tiny", "--corpus", "c.csv", "--site", "resid.9", "--out", "o"],
     "layer 9 is out of range for site 'resid'"),
    (["sae", "train", "--model", "tiny", "--corpus", "c.csv", "--site", "resid.1", "--tokens", "0", "--out", "o"],
     "--tokens must be a positive integer, got 0"),
    (["sae", "train", "--model", "tiny", "--corpus", "c.csv", "--site", "resid.1", "--tokens", "10", "--batch-size",
      "32", "--out", "o"], "--tokens 10 is smaller than one batch (--batch-size 32)"),
    (["sae", "train", "s", "--model", "tiny", "--corpus", "c.csv", "--site", "resid.1", "--out", "o"], "not both"),

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
