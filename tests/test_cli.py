"""The llmri command as a user runs it: real subprocesses, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmri


def run(*args, cwd=None):
    src = str(Path(llmri.__file__).resolve().parents[1])  # the llmri under test, whatever cwd is
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "llmri", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_one_line_error(proc, pattern):
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("llmri: error: ") and pattern in lines[-1], proc.stderr


@pytest.mark.parametrize("args, pattern", [
    (["scan", "missing_dir", "--out", "o"], "missing_dir: no such file or folder"),
    (["scan", "docs.csv", "--out", "o", "--text-column", "body"], "no text column 'body'; columns are ['text', 'label']"),
    (["scan", "docs.csv", "--out", "o", "--model", "nobody/nothing"], "not available offline"),
    (["scan", "docs.csv", "--out", "o", "--layers", "1,x"], "--layers '1,x'"),
    (["scan", "docs.csv", "--out", "o", "--pool", "avg"], "'avg' is not one of"),
    (["scan", "docs.csv", "--out", "o", "--sites", "neurons"], "unknown site 'neurons'"),
    (["scan", "latin1.csv", "--out", "o"], "latin1.csv: not UTF-8"),
])
def test_errors_are_one_line(tmp_path, args, pattern):
    (tmp_path / "docs.csv").write_text("text,label\nthe sun,a\nthe ball,b\n", encoding="utf-8")
    (tmp_path / "latin1.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    proc = run(*args, cwd=tmp_path)
    assert_one_line_error(proc, pattern)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command, rest", [(["scan"], ["docs.csv"]), (["demo"], []), (["ablate"], ["docs.csv"]),
                                           (["patch"], []), (["attention"], ["a text"]), (["circuit"], ["a prompt"]),
                                           (["generate"], ["a prompt"]), (["steer"], ["a prompt"]),
                                           (["sae", "train"], ["nowhere", "--site", "resid.1", "--out", "o"]),
                                           (["sae", "eval"], ["nowhere"])])
def test_every_model_command_takes_dtype_and_refuses_a_bad_one_before_loading(tmp_path, command, rest):
    (tmp_path / "docs.csv").write_text("text,label\nthe sun,a\nthe ball,b\n", encoding="utf-8")
    proc = run(*command, "--dtype", "fp8", *rest, cwd=tmp_path)
    assert_one_line_error(proc, "--dtype 'fp8' is not one of auto, float32, ")
    assert "bf16-mixed" in run(*command, "--help").stdout


@pytest.mark.integration
def test_scan_then_open_and_refuse_to_clobber(tmp_path):
    (tmp_path / "docs.csv").write_text("text,label\nthe sun rose,a\nthe ball flew,b\nstars,a\n",
                                       encoding="utf-8")
    proc = run("scan", "docs.csv", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--out", "runs/x",
               "--sites", "resid,mlp", "--layers", "0,-1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 documents" in proc.stdout
    assert proc.stdout.splitlines()[3].endswith("; " + llmri.Scan.open(tmp_path / "runs/x").settings["dtype"])
    s = llmri.Scan.open(tmp_path / "runs/x")
    assert s.activations(6).shape == (3, 384) and s.layers("mlp") == [0, 5]
    proc = run("scan", "docs.csv", "--out", "runs/x", "--sites", "resid,mlp", "--layers", "0,-1",
               "--pool", "max", cwd=tmp_path)
    assert_one_line_error(proc, "holds a different scan (pool mean -> max")
    assert llmri.Scan.open(tmp_path / "runs/x").settings["pool"] == "mean"  # untouched


@pytest.mark.integration
def test_demo(tmp_path):
    proc = run("demo", "--out", "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = llmri.Scan.open(tmp_path / "d" / "scan")
    assert s.n_docs == len(llmri.demo_corpus()) and "120 documents" in proc.stdout
    report = tmp_path / "d" / "report"
    assert "report: d/report/report.html" in proc.stdout
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "scrambled" in html and "Plotly.newPlot" in html and "<script src=" not in html
    for name in ("heatmaps_all", "nrag_all", "evaluation"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (report / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    metrics = (report / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "metric,grammatical,scrambled" and len(metrics) == 19
    assert 'id="attention"' in html and 'id="neurons"' in html and "llmri-headview" in html
    assert s.layers("attn") == list(range(6)) and s.token_sites == ["mlp.5"]
    proc = run("neurons", "d/scan", "--category", "scrambled", "--top", "3", "--csv", "n.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "scrambled: top 3 of 9216 mlp neurons" in proc.stdout
    ranking = (tmp_path / "n.csv").read_text().splitlines()
    assert ranking[0].startswith("category,layer,neuron,effect_size") and len(ranking) == 9217
    assert_one_line_error(run("neurons", "d/scan", "--category", "poetry", cwd=tmp_path), "unknown category 'poetry'")


@pytest.mark.integration
def test_attention_command(tmp_path):
    proc = run("attention", "The comet <script>x</script> passed Jupiter.", "--out", "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 layers x 12 heads" in proc.stdout
    html = (tmp_path / "a" / "attention.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html
    assert (tmp_path / "a" / "heads_layer5.png").is_file() and (tmp_path / "a" / "rollout.svg").is_file()
    assert "largest rollout to the mean of all" in proc.stdout   # mean-pooled encoder: every token
    assert_one_line_error(run("attention", "hi", "--out", "b", "--target", "40", cwd=tmp_path),
                          "position 40 is out of range")
    assert_one_line_error(run("attention", "hi", "--out", "b", "--target", "middle", cwd=tmp_path),
                          "--target 'middle' is not a token position")


@pytest.mark.integration
def test_report_command(tmp_path):
    import numpy as np
    from llmri.store import scan_from_arrays

    rng = np.random.default_rng(0)
    scan_from_arrays(tmp_path / "s", {f"resid.{L}": rng.normal(size=(20, 5)) for L in range(3)}, ["x", "y"] * 10)
    proc = run("report", "s", "--components", "3", "--permutations", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s-report" / "report.html").is_file()
    proc = run("report", "s", "--categories", "x,nope", cwd=tmp_path)
    assert_one_line_error(proc, "unknown category 'nope'")
    proc = run("report", "missing", cwd=tmp_path)
    assert_one_line_error(proc, "missing: no such scan folder")


def test_probe_ablate_patch_commands(tmp_path):
    """The three commands on a synthetic scan and a tiny model saved to a local folder."""
    import numpy as np

    from conftest import make_module, make_tokenizer
    from llmri.store import scan_from_arrays

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    acts = {f"resid.{L}": rng.normal(size=(40, 6)) for L in range(3)}
    acts["resid.1"][:, 0] += 3 * y
    scan_from_arrays(tmp_path / "s", acts, y, ["u", "v"], [f"t{i}" for i in range(40)])
    proc = run("probe", "s", "--top-k", "1,2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "best layer 1" in proc.stdout and (tmp_path / "s-probe" / "probe.html").is_file()
    assert (tmp_path / "s-probe" / "probe.png").stat().st_size > 10_000

    make_module("gpt2").save_pretrained(tmp_path / "tiny")
    make_tokenizer("gpt2").save_pretrained(tmp_path / "tiny")
    (tmp_path / "c.csv").write_text("text,label\nthe star shines,a\nthe ball runs,b\nthe moon was slow,a\n")
    proc = run("ablate", "c.csv", "--model", "tiny", "--out", "les", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "language-model loss: baseline" in proc.stdout
    lines = (tmp_path / "les" / "lesion.csv").read_text().splitlines()
    assert lines[0] == "component,layer,head,value,effect" and len(lines) == 1 + 3 * 4 + 3
    assert_one_line_error(run("ablate", "c.csv", "--model", "tiny", "--out", "x", "--mode", "mean", cwd=tmp_path),
                          "takes its statistics from a Scan")

    proc = run("patch", "--model", "tiny", "--clean", "the star shines over the galaxy",
               "--corrupted", "the ball kicks over the pitch", "--out", "pat", "--sites", "resid,mlp_out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pat" / "patch.html").is_file() and (tmp_path / "pat" / "patch_mlp_out.png").is_file()
    proc = run("patch", "--model", "tiny", "--clean", "the star shines", "--corrupted", "the moon shines",
               "--out", "p1", "--sites", "resid.2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p1" / "patch_resid.png").is_file()
    assert_one_line_error(run("patch", "--model", "tiny", "--clean", "the star", "--corrupted", "the big ball",
                              "--out", "p2", cwd=tmp_path), "same number of tokens")


def test_the_pages_the_cli_writes_are_built_from_python(tmp_path):
    """``llmri ablate`` and ``llmri patch`` write what ``llmri.report.lesion_page`` and
    ``patch_page`` write from Python on the same results: the same tables, the same page text."""
    import re

    from conftest import make_module, make_tokenizer
    from llmri.report import lesion_page, patch_page

    make_module("gpt2").save_pretrained(tmp_path / "tiny")
    make_tokenizer("gpt2").save_pretrained(tmp_path / "tiny")
    (tmp_path / "c.csv").write_text("text,label\nthe star shines,a\nthe ball runs,b\nthe moon was slow,a\n")
    assert run("ablate", "c.csv", "--model", "tiny", "--out", "cli-les", cwd=tmp_path).returncode == 0
    clean, corrupted = "the star shines over the galaxy", "the ball kicks over the pitch"
    assert run("patch", "--model", "tiny", "--clean", clean, "--corrupted", corrupted, "--out", "cli-pat",
               "--sites", "resid,mlp_out", cwd=tmp_path).returncode == 0

    model = llmri.load_model(str(tmp_path / "tiny"))
    corpus = llmri.Corpus.from_path(tmp_path / "c.csv")
    lesion_page(llmri.lesion_map(model, corpus, progress=False), tmp_path / "py-les", "tiny", n_docs=len(corpus))
    res = llmri.patch(model, clean, corrupted, sites=("resid", "mlp_out"))
    patch_page(res, tmp_path / "py-pat", clean, corrupted, model_name="tiny", sites=["resid", "mlp_out"])

    def text(p):  # the page less its timestamp and the figures' embedded bytes (SVG dates, ids)
        s = p.read_text()
        s = re.sub(r"generated [^<]*", "", s)
        return re.sub(r"<svg.*?</svg>|data:image/[^\"']+", "", s, flags=re.S)

    for cli, py, name in (("cli-les", "py-les", "lesion"), ("cli-pat", "py-pat", "patch")):
        cli, py = tmp_path / cli, tmp_path / py
        assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in py.iterdir())
        for f in cli.glob("*.csv"):
            assert f.read_text() == (py / f.name).read_text(), f.name
        assert text(cli / f"{name}.html") == text(py / f"{name}.html")
