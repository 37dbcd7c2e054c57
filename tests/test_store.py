"""The on-disk Scan: atomic shards, resume after a crash, cache reuse and invalidation, workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import llmri
import llmri.capture

from conftest import TEXTS, make_model

CORPUS_TEXTS = [f"{t} {w}" for t in TEXTS for w in ("star", "ball", "oven")]  # 30 documents
SETTINGS = dict(sites=("resid", "mlp"), token_sites=("resid.1",), batch_tokens=40, shard_tokens=40)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def count_forwards(model) -> list:
    calls = []
    model.base.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


@pytest.fixture
def corpus():
    return llmri.Corpus(CORPUS_TEXTS, [i % 3 for i in range(len(CORPUS_TEXTS))], ["a", "b", "c"])


def test_crash_then_resume_equals_uninterrupted(corpus, tmp_path, monkeypatch):
    model = make_model("gpt2")
    ref = llmri.scan(model, corpus, tmp_path / "ref", **SETTINGS)
    n_shards = ref.manifest["plan"]["n_shards"]
    assert n_shards >= 4

    real_write = llmri.capture.write_shard
    written = []

    def crashing_write(path, tensors, metadata=None):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        written.append(path)
        real_write(path, tensors, metadata)

    monkeypatch.setattr(llmri.capture, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        llmri.scan(model, corpus, tmp_path / "run", **SETTINGS)
    with pytest.raises(llmri.LlmriError, match=r"incomplete \(2/"):
        llmri.Scan.open(tmp_path / "run")
    monkeypatch.setattr(llmri.capture, "write_shard", real_write)

    calls = count_forwards(model)
    resumed = llmri.scan(model, corpus, tmp_path / "run", **SETTINGS)
    assert 0 < len(calls) < ref.manifest["plan"]["n_batches"]  # the two written shards did not rerun
    assert files(tmp_path / "run") == files(tmp_path / "ref")  # byte-identical
    np.testing.assert_array_equal(resumed.activations(2), ref.activations(2))
    # and it says so: a resumed scan, then one answered from disk
    from llmri.commands.scan import _summary

    assert (ref.origin, resumed.origin, resumed.resumed_shards) == ("captured", "resumed", 2)
    assert f"resumed an interrupted scan: 2 of {n_shards} shards were already on disk; captured the other " \
           f"{n_shards - 2}" in _summary(resumed) and "resumed" not in _summary(ref)
    again = llmri.scan(model, corpus, tmp_path / "run", **SETTINGS)
    assert again.origin == "cached" and "answered from disk" in _summary(again)


def test_full_disk_mid_scan_names_the_shard_keeps_the_rest_and_resumes(corpus, tmp_path, monkeypatch):
    import errno
    import os

    import llmri.disk

    model = make_model("gpt2")
    ref = llmri.scan(model, corpus, tmp_path / "ref", **SETTINGS)
    n_shards = ref.manifest["plan"]["n_shards"]
    real_fsync, shard_syncs = os.fsync, []

    def fsync(fd):   # the disk fills while the third shard is written
        if ".shard-" in os.readlink(f"/proc/self/fd/{fd}"):
            shard_syncs.append(fd)
            if len(shard_syncs) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(llmri.disk.os, "fsync", fsync)
    with pytest.raises(llmri.store.DiskFull) as e:
        llmri.scan(model, corpus, tmp_path / "run", **SETTINGS)
    need = (tmp_path / "ref" / "shard-00002.safetensors").stat().st_size
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'run' / 'shard-00002.safetensors'}: no space left on device "
                          f"({llmri.disk.size_text(need)} needed, ") and "\n" not in msg
    assert f"2 of {n_shards} shards are complete and kept; free about" in msg
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []   # no temp file
    with pytest.raises(llmri.LlmriError, match=r"incomplete \(2/"):
        llmri.Scan.open(tmp_path / "run")          # nothing a reader would trust
    monkeypatch.setattr(llmri.disk.os, "fsync", real_fsync)
    resumed = llmri.scan(model, corpus, tmp_path / "run", **SETTINGS)
    assert resumed.resumed_shards == 2 and files(tmp_path / "run") == files(tmp_path / "ref")


def test_resume_runs_only_missing_shards(corpus, tmp_path, monkeypatch):
    model = make_model("gpt2")
    ref = llmri.scan(model, corpus, tmp_path / "ref", **SETTINGS)
    out = tmp_path / "run"
    out.mkdir()
    for name, data in files(tmp_path / "ref").items():
        if name != "shard-00001.safetensors":
            (out / name).write_bytes(data)
    calls = count_forwards(model)
    llmri.scan(model, corpus, out, **SETTINGS)
    # the missing shard holds at least one batch, and only its batches ran
    assert 1 <= len(calls) < ref.manifest["plan"]["n_batches"]
    assert files(out) == files(tmp_path / "ref")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import llmri
    from conftest import make_model
    model = make_model("gpt2")
    model.base.register_forward_pre_hook(lambda *a: time.sleep(0.3))
    texts = {texts!r}
    llmri.scan(model, llmri.Corpus(texts, [i % 3 for i in range(len(texts))], ["a", "b", "c"]),
               {out!r}, **{settings!r})
""")


def test_sigkill_then_rerun_is_identical(corpus, tmp_path):
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), texts=CORPUS_TEXTS, out=str(out),
                                settings=SETTINGS)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.safetensors"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("shard-*.safetensors")))
    model = make_model("gpt2")
    ref = llmri.scan(model, corpus, tmp_path / "ref", **SETTINGS)
    assert 2 <= done < ref.manifest["plan"]["n_shards"]
    llmri.scan(model, corpus, out, **SETTINGS)
    assert files(out) == files(tmp_path / "ref")


def test_identical_rerun_is_answered_from_cache(corpus, tmp_path):
    model = make_model("bert")
    first = llmri.scan(model, corpus, tmp_path / "s", **SETTINGS)
    before = files(tmp_path / "s")
    calls = count_forwards(model)
    again = llmri.scan(model, corpus, tmp_path / "s", **SETTINGS)
    assert calls == [] and files(tmp_path / "s") == before
    np.testing.assert_array_equal(again.activations(1), first.activations(1))


@pytest.mark.parametrize("change", ["model", "corpus", "pool", "sites", "max_length"])
def test_changed_inputs_never_reuse_the_cache(change, corpus, tmp_path):
    model = make_model("bert")
    llmri.scan(model, corpus, tmp_path / "s", **SETTINGS)
    settings = dict(SETTINGS)
    if change == "model":
        model = make_model("bert", seed=1)  # same config, other weights
    elif change == "corpus":
        corpus = llmri.Corpus(CORPUS_TEXTS[:-1] + ["the moon"], list(corpus.labels), corpus.label_names)
    elif change == "pool":
        settings["pool"] = "max"
    elif change == "sites":
        settings["sites"] = ("resid",)
    else:
        settings["max_length"] = 4
    with pytest.raises(llmri.LlmriError, match="holds a different scan"):
        llmri.scan(model, corpus, tmp_path / "s", **settings)
    calls = count_forwards(model)
    new = llmri.scan(model, corpus, tmp_path / "s", overwrite=True, **settings)
    assert len(calls) > 0
    fresh = llmri.scan(model, corpus, tmp_path / "fresh", **settings)
    assert files(tmp_path / "s") == files(tmp_path / "fresh")
    np.testing.assert_array_equal(new.activations(2), fresh.activations(2))


def test_independent_workers_write_disjoint_shards(corpus, tmp_path):
    model = make_model("llama")
    ref = llmri.scan(model, corpus, tmp_path / "ref", **SETTINGS)
    out = tmp_path / "shared"
    assert llmri.scan(model, corpus, out, worker=(0, 2), **SETTINGS) is None  # half the shards
    n = ref.manifest["plan"]["n_shards"]
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-{i:05d}.safetensors" for i in range(0, n, 2)]
    done = llmri.scan(model, corpus, out, worker=(1, 2), **SETTINGS)
    assert done is not None and files(out) == files(tmp_path / "ref")


def test_workers_leave_each_others_temp_files_alone(corpus, tmp_path):
    model = make_model("gpt2")
    out = tmp_path / "w"
    llmri.scan(model, corpus, out, worker=(0, 2), **SETTINGS)
    busy = out / ".shard-00001.safetensors.x1y2.tmp"  # as if worker 1 were writing shard 1 right now
    busy.write_bytes(b"partial")
    llmri.scan(model, corpus, out, worker=(0, 2), **SETTINGS)  # worker 0 started again meanwhile
    assert busy.read_bytes() == b"partial"
    llmri.scan(model, corpus, out, **SETTINGS)  # a plain run: no other writer, stale files go
    assert not busy.exists()


def test_foreign_manifest_is_never_touched(corpus, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app"}')
    for overwrite in (False, True):
        with pytest.raises(llmri.LlmriError, match="not an llmri scan manifest"):
            llmri.scan(make_model("gpt2"), corpus, out, overwrite=overwrite, **SETTINGS)
    assert (out / "manifest.json").read_text() == '{"name": "my web app"}'
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_open_errors(tmp_path):
    with pytest.raises(llmri.LlmriError, match="no such scan folder"):
        llmri.Scan.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(llmri.LlmriError, match="not an llmri scan"):
        llmri.Scan.open(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(llmri.LlmriError, match="not valid JSON"):
        llmri.Scan.open(tmp_path / "empty")


def test_no_pickle_on_disk(corpus, tmp_path):
    llmri.scan(make_model("gpt2"), corpus, tmp_path / "s", **SETTINGS)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names[0] == "corpus.jsonl" and names[1] == "manifest.json"
    assert all(n.endswith(".safetensors") for n in names[2:])
