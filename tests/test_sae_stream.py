"""Training SAEs from a model and a corpus on the fly (llmri.sae.stream): the same weights as
training from a Scan of the same tokens in the same order, bounded memory, checkpoints that
survive SIGKILL, and one-line errors before the model runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import llmri
from llmri.sae import stream

TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
HERE = Path(__file__).resolve().parent
SRC = str(Path(llmri.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def tiny():
    from conftest import LABELS, TEXTS, make_model

    return make_model("llama"), llmri.Corpus(TEXTS * 4, LABELS * 4)


def quiet(fn, *args, **kwargs):
    """Run ``fn`` with the few-steps and repeated-corpus warnings of tiny runs silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def assert_same_weights(a, b):
    for name in TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("skip_outliers", [None, 10.0])
def test_streaming_equals_training_from_a_scan_of_the_same_tokens(tiny, tmp_path, skip_outliers):
    """Unshuffled, a stream feeds the tokens in the order the Scan stores them (the forward batches
    are the scan's), so both runs take the same steps on the same numbers: equal weight for weight,
    for two SAEs and a transcoder from one forward pass."""
    model, corpus = tiny
    scan = llmri.scan(model, corpus, tmp_path / "s", sites=("resid",), token_sites=("resid.1", "resid.2", "mlp.1",
                                                                                  "mlp_out.1"), progress=False)
    n = int(scan.lengths.sum()) - scan.n_docs           # every document's first token is left out (a decoder)
    kw = dict(n_latents=32, k=4, batch_size=64, lr=3e-3, shuffle=False, skip_outliers=skip_outliers, seed=3,
              progress=False)
    sites, targets = ["resid.1", "resid.2", "mlp.1"], [None, None, "mlp_out.1"]
    ref = quiet(llmri.train_sae, scan, sites, target_site=targets, **kw)
    got = quiet(llmri.train_sae, model, corpus, sites=sites, target_site=targets, tokens=n, **kw)
    assert set(got) == set(sites) and got["mlp.1"].is_transcoder
    for s in sites:
        assert_same_weights(got[s], ref[s])
        assert got[s].metadata["n_tokens"] == n and got[s].metadata["tokens"] == n
    # the reference is not trivially equal to anything: shuffling changes the weights
    shuffled = quiet(llmri.train_sae, model, corpus, sites=sites, target_site=targets, tokens=n,
                     **dict(kw, shuffle=True, buffer_tokens=256))
    assert not torch.equal(shuffled["resid.1"].W_dec, ref["resid.1"].W_dec)


def test_shuffle_buffer_draws_every_row_once_and_is_seeded():
    rows = {"a": torch.arange(1000.0)[:, None], "b": -torch.arange(1000.0)[:, None]}
    draws = []
    for seed in (0, 0, 1):
        buf = stream.ShuffleBuffer(np.random.default_rng(seed), shuffle=True)
        buf.put({k: v[:600] for k, v in rows.items()})
        out = [buf.take(128)]
        buf.put({k: v[600:] for k, v in rows.items()})
        while buf.n:
            out.append(buf.take(128))
        a = torch.cat([o["a"] for o in out])[:, 0]
        assert torch.equal(torch.cat([o["b"] for o in out])[:, 0], -a)   # sites stay aligned
        assert torch.equal(a.sort().values, torch.arange(1000.0))        # each row once
        draws.append(a)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], torch.arange(1000.0))
    fifo = stream.ShuffleBuffer(np.random.default_rng(0), shuffle=False)
    fifo.put(rows)
    assert torch.equal(torch.cat([fifo.take(300)["a"] for _ in range(4)])[:, 0], torch.arange(1000.0))


def test_memory_does_not_grow_with_the_token_budget(tiny, monkeypatch):
    """The buffer never holds more than buffer_tokens plus one forward batch, whatever the budget,
    and the Python-side peak stays flat when the budget (and so the passes over the corpus) grows 8x."""
    model, corpus = tiny
    sizes = []
    put = stream.ShuffleBuffer.put

    def spy(self, rows):
        put(self, rows)
        sizes.append(self.n)

    monkeypatch.setattr(stream.ShuffleBuffer, "put", spy)
    peaks, most = [], []
    for tokens in (1000, 8000):
        sizes.clear()
        tracemalloc.start()
        quiet(llmri.train_sae, model, corpus, sites=["resid.2"], tokens=tokens, n_latents=16, k=2, batch_size=100,
              buffer_tokens=300, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        most.append(max(sizes))
    from llmri.batches import plan_batches, tokenize

    ids, _ = tokenize(model, corpus.texts, model.max_length)
    lengths = np.array([len(x) for x in ids])
    forward = max(int(lengths[b].sum()) for b in plan_batches(lengths, 8192))
    assert max(most) <= 300 + forward and most[1] <= most[0] + forward, most
    assert peaks[1] < 1.5 * peaks[0], peaks


KW = dict(sites=["resid.1", "resid.2"], tokens=3000, n_latents=32, k=4, batch_size=64, lr=3e-3, buffer_tokens=256,
          seed=5, progress=False, checkpoint_every=0)
KILLED = textwrap.dedent("""
    import sys, time, warnings
    sys.path.insert(0, {tests!r})
    import torch
    import llmri
    from llmri.sae import session
    from conftest import LABELS, TEXTS, make_model

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    step = session.Session.step

    def slow(self, batch):
        time.sleep(0.03)             # slow enough for the parent to kill it in the middle
        return step(self, batch)

    session.Session.step = slow
    model, corpus = make_model("llama"), llmri.Corpus(TEXTS * 4, LABELS * 4)
    llmri.train_sae(model, corpus, checkpoint=sys.argv[1], **{kw!r})
""")


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """A run killed with SIGKILL while it checkpoints after every step resumes from its last whole
    checkpoint and ends with the weights of a run never stopped; the resumed run takes only the
    steps that were left, and a finished checkpoint answers at once."""
    from llmri.sae import session

    model, corpus = tiny
    steps = [0]
    step = session.Session.step

    def counted(self, batch):
        steps[0] += 1
        return step(self, batch)

    monkeypatch.setattr(session.Session, "step", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # as the killed process computes
    try:
        plain = quiet(llmri.train_sae, model, corpus, **{**KW, "checkpoint_every": 300})
        total, steps[0] = steps[0], 0
        assert total == -(-3000 // 64)
        ckpt = tmp_path / "ckpt.safetensors"
        script = tmp_path / "killed.py"
        script.write_text(KILLED.format(tests=str(HERE), kw=KW))
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
        killed = subprocess.Popen([sys.executable, str(script), str(ckpt)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        drawn, deadline = 0, time.monotonic() + 240
        while drawn < 10 * 64 and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.02)
            try:
                drawn = stream.read_checkpoint_meta(ckpt)["drawn"]
            except (FileNotFoundError, llmri.LlmriError):
                pass
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
        at_kill = stream.read_checkpoint_meta(ckpt)["drawn"]
        assert 10 * 64 <= at_kill < 3000
        resumed = quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **KW)
        assert steps[0] == total - at_kill // 64
        steps[0] = 0
        again = quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **KW)
        assert steps[0] == 0
    finally:
        torch.set_num_threads(threads)
    for s in plain:
        assert_same_weights(resumed[s], plain[s])
        assert_same_weights(again[s], plain[s])
        assert resumed[s].metadata["window"] == plain[s].metadata["window"]


def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(tiny, tmp_path):
    model, corpus = tiny
    kw = dict(sites=["resid.1"], tokens=640, n_latents=16, k=2, batch_size=64, buffer_tokens=128, progress=False)
    ckpt = tmp_path / "c.safetensors"
    quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **kw)
    whole = ckpt.read_bytes()
    (tmp_path / ".c.safetensors.x1y2.tmp").write_bytes(whole[:100])   # what a kill while writing leaves
    ckpt.write_bytes(whole[: len(whole) // 2])                           # damaged in place (not by llmri)
    with pytest.raises(llmri.LlmriError, match="damaged or not an llmri training checkpoint") as e:
        quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **kw)
    assert "\n" not in str(e.value)
    ckpt.write_bytes(whole)
    with pytest.raises(llmri.LlmriError, match=r"written by another run \(seed 0 -> 1\)"):
        quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **dict(kw, seed=1))
    again = quiet(llmri.train_sae, model, corpus, checkpoint=ckpt, **kw)     # the whole one answers at once
    assert again["resid.1"].metadata["n_tokens"] == 640 and not (tmp_path / ".c.safetensors.x1y2.tmp").exists()
    with pytest.raises(llmri.LlmriError, match="is a folder"):
        quiet(llmri.train_sae, model, corpus, checkpoint=tmp_path, **kw)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(tokens=0), "tokens must be a positive integer, got 0"),
    (dict(tokens=1.5), "tokens must be a positive integer, got 1.5"),
    (dict(tokens="many"), "tokens must be a positive integer, got 'many'"),
    (dict(tokens=True), "tokens must be a positive integer, got True"),
    (dict(tokens=100), "tokens 100 is smaller than one batch (batch_size 4096)"),
    (dict(sites=["resid.9"]), "layer 9 is out of range for site 'resid': it has layers 0..3"),
    (dict(sites=["resid"]), "give a layer"),
    (dict(sites=["attn.1"]), "not a token site"),
    (dict(epochs=2), "sized by tokens=, not epochs"),
    (dict(buffer_tokens=-1), "buffer_tokens must be an integer >= 0"),
    (dict(checkpoint_every=-1), "checkpoint_every must be a number of seconds >= 0"),
])
def test_bad_input_is_one_line_before_the_model_runs(tiny, kwargs, pattern):
    model, corpus = tiny

    def never(*a, **k):
        raise AssertionError("the model ran")

    handle = model.module.register_forward_pre_hook(never)
    try:
        with pytest.raises(llmri.LlmriError) as e:
            llmri.train_sae(model, corpus, **{"sites": ["resid.1"], "tokens": 4096, **kwargs})
    finally:
        handle.remove()
    assert pattern in str(e.value) and "\n" not in str(e.value)


def test_few_steps_for_the_width_warn_in_one_line(tiny):
    model, corpus = tiny
    with pytest.warns(UserWarning) as record:
        llmri.train_sae(model, corpus, sites=["resid.1"], tokens=640, n_latents=2048, k=4, batch_size=64,
                        buffer_tokens=128, progress=False)
    text = [str(w.message) for w in record]
    few = [t for t in text if "optimiser steps" in t]
    assert few == ["10 optimiser steps (640 tokens at batch 64) are few for 2048 latents: an SAE this wide wants "
                   "at least 512 (about 32,768 tokens); expect a poor reconstruction"]
    assert any("reads it" in t for t in text)      # 640 tokens from a corpus of fewer


def test_the_progress_bar_shows_tokens_per_second_l0_explained_variance_and_dead_share(tiny, capsys):
    model, corpus = tiny
    kw = dict(sites=["resid.1", "resid.2"], tokens=640, n_latents=16, k=2, batch_size=64, buffer_tokens=128)
    quiet(llmri.train_sae, model, corpus, progress=True, **kw)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "training batchtopk SAE x2" in bar and "640/640" in bar and "tok/s" in bar, bar
    assert all(f"{name}=" in bar for name in ("l0", "ev", "dead")), bar
    quiet(llmri.train_sae, model, corpus, progress=None, **kw)     # not a terminal: quiet
    assert capsys.readouterr().err == ""
