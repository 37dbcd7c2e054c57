"""Files and folders written whole (llmri.disk): a folder is the old one or the new one, never a
mix, through errors, kills and a full disk; JSON never holds NaN."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llmri.disk as disk
from llmri.errors import LlmriError
from llmri.store import DiskFull, atomic_write_json, atomic_write_text, json_safe, whole_folder


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_new_folder_appears_only_when_whole(tmp_path):
    out = tmp_path / "run"
    with whole_folder(out) as tmp:
        atomic_write_text(tmp / "a.txt", "A")
        assert not out.exists()
        atomic_write_text(tmp / "sub" / "b.txt", "B")
    assert tree(out) == {"a.txt": "A", "sub/b.txt": "B"} and siblings(out) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_replacing_keeps_the_rest_and_drops_what_is_stale(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(disk, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    for name, text in {"cfg.json": "old cfg", "w.bin": "old w", "eval.json": "old eval",
                       "notes/mine.txt": "the user's", "figures/old.png": "old fig"}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    with whole_folder(out, drop=("eval.json",)) as tmp:
        atomic_write_text(tmp / "cfg.json", "new cfg")
        atomic_write_text(tmp / "w.bin", "new w")
        atomic_write_text(tmp / "figures" / "new.png", "new fig")
        assert tree(out)["cfg.json"] == "old cfg"     # the old folder is untouched until the end
    assert tree(out) == {"cfg.json": "new cfg", "w.bin": "new w", "notes/mine.txt": "the user's",
                         "figures/old.png": "old fig", "figures/new.png": "new fig"}
    assert siblings(out) == []


def test_an_error_leaves_the_old_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "cfg.json").write_text("old")
    with pytest.raises(RuntimeError), whole_folder(out) as tmp:
        atomic_write_text(tmp / "cfg.json", "new")
        raise RuntimeError("killed half-way")
    assert tree(out) == {"cfg.json": "old"} and siblings(out) == []


def test_a_block_inside_another_joins_it(tmp_path):
    out = tmp_path / "page"
    with whole_folder(out) as outer:
        atomic_write_text(outer / "steer.json", "{}")
        with whole_folder(out) as inner, whole_folder(outer) as same:
            assert inner == outer == same
            atomic_write_text(inner / "steer.html", "<p>")
        assert not out.exists()
    assert tree(out) == {"steer.json": "{}", "steer.html": "<p>"}


def test_sigkill_mid_write_leaves_the_old_folder_and_the_next_write_cleans_up(tmp_path):
    out = tmp_path / "sae"
    out.mkdir()
    (out / "cfg.json").write_text("old")
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(disk.__file__).parents[1])!r})
        from llmri.disk import whole_folder, atomic_write_text
        with whole_folder({str(out)!r}) as tmp:
            atomic_write_text(tmp / "cfg.json", "new")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert tree(out) == {"cfg.json": "old"}
    assert len(siblings(out)) == 1 and siblings(out)[0].startswith(".sae.llmri-")   # hidden, never loaded
    with whole_folder(out) as tmp:
        atomic_write_text(tmp / "cfg.json", "new")
    assert tree(out) == {"cfg.json": "new"} and siblings(out) == []


def test_a_file_in_the_way_is_refused_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmriError, match="exists and is not a folder"), whole_folder(tmp_path / "f"):
        pass


class _FullFile:
    """A file whose writes fail as on a full disk."""

    fdopen = os.fdopen

    def __init__(self, fd, mode):
        self.f = _FullFile.fdopen(fd, mode)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_file_and_the_space_needed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "cfg.json").write_text("old")
    monkeypatch.setattr(disk.os, "fdopen", _FullFile)
    with pytest.raises(DiskFull) as e, whole_folder(out) as tmp:
        atomic_write_text(tmp / "weights.bin", "w" * 5000)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out / 'weights.bin'}: no space left on device (4.9 KiB needed, ")
    assert msg.endswith(f"free); {out} is as it was")
    assert tree(out) == {"cfg.json": "old"} and siblings(out) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_tmpfs_keeps_the_old_folder_whole(small_disk):
    out = small_disk / "run"
    with whole_folder(out) as tmp:
        atomic_write_text(tmp / "a.txt", "A" * 300_000)
    with pytest.raises(DiskFull, match=r"small/run/big.bin: no space left on device \(1.1 MiB needed, .* free\)"), \
            whole_folder(out) as tmp:
        disk.atomic_write_bytes(tmp / "big.bin", b"B" * 1_200_000)
    assert tree(out) == {"a.txt": "A" * 300_000} and siblings(out) == []
    assert {p.name for p in small_disk.iterdir()} == {"run"}          # no temporary file left


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(LlmriError, match=r"steer.json: refusing to write NaN or infinity"):
        atomic_write_json(tmp_path / "steer.json", {"p": float("nan")})
    assert not (tmp_path / "steer.json").exists()
    import numpy as np

    safe = json_safe({"a": [1.5, float("inf"), np.float32("nan")], "b": np.int64(3), "c": np.array([-np.inf, 2.0])})
    assert safe == {"a": [1.5, None, None], "b": 3, "c": [None, 2.0]}
    atomic_write_json(tmp_path / "ok.json", safe)
    assert json.loads((tmp_path / "ok.json").read_text()) == safe


def test_a_damaged_scan_shard_is_one_line_naming_it(tmp_path):
    import numpy as np

    from llmri.store import Scan, scan_from_arrays

    scan_from_arrays(tmp_path / "s", {"resid.0": np.ones((4, 3))}, [0, 1, 0, 1])
    shard = tmp_path / "s" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(LlmriError) as e:
        Scan.open(tmp_path / "s").activations(0)
    assert str(e.value).startswith(f"{shard}: not a readable safetensors shard (") and "\n" not in str(e.value)


def test_names_with_glob_characters_are_written_and_cleaned(tmp_path):
    out = tmp_path / "run[1]"
    for text in ("a", "b"):
        with whole_folder(out) as tmp:
            atomic_write_text(tmp / "x.txt", text)
    assert tree(out) == {"x.txt": "b"} and siblings(out) == []


def test_an_explain_run_is_loaded_only_when_its_files_agree(tmp_path):
    import pandas as pd

    from llmri.explain.results import ExplainResult

    table = pd.DataFrame({"unit": [3, 7], "explanation": ["stars", "balls"], "simulation_score": [0.5, float("nan")]})
    records = [{"unit": 3, "explanation": "stars"}, {"unit": 7, "explanation": "balls", "score": float("inf")}]
    ExplainResult(table, records, {"units": [3, 7], "site": "mlp.1"}).save(tmp_path / "run")
    (tmp_path / "run" / "calls").mkdir()
    (tmp_path / "run" / "calls" / "k.json").write_text("{}")        # the call cache stays through a re-save
    ExplainResult(table, records, {"units": [3, 7], "site": "mlp.1"}).save(tmp_path / "run")
    back = ExplainResult.load(tmp_path / "run")
    assert back.records[1]["score"] is None and (tmp_path / "run" / "calls" / "k.json").read_text() == "{}"
    assert "NaN" not in (tmp_path / "run" / "explanations.jsonl").read_text()
    (tmp_path / "run" / "explanations.jsonl").write_text(json.dumps(records[0]) + "\n")   # a unit short
    with pytest.raises(LlmriError, match="disagree on the units"):
        ExplainResult.load(tmp_path / "run")
    (tmp_path / "run" / "explain.json").write_text("{")
    with pytest.raises(LlmriError, match=r"run: not a whole explain run \(JSONDecodeError"):
        ExplainResult.load(tmp_path / "run")


def test_a_page_that_fails_half_way_leaves_the_old_page(tmp_path):
    import pandas as pd

    from llmri.report.page import build_page

    class Broken(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise RuntimeError("killed while writing the second table")

    first = build_page(tmp_path / "page", "probe", "t", ["v1"], [], [("one", pd.DataFrame({"a": [1]}), "one")])
    assert first == tmp_path / "page" / "probe.html"
    before = tree(tmp_path / "page")
    with pytest.raises(RuntimeError):
        build_page(tmp_path / "page", "probe", "t", ["v2"], [],
                   [("one", pd.DataFrame({"a": [2]}), "one"), ("two", Broken({"b": [3]}), "two")])
    assert tree(tmp_path / "page") == before and siblings(tmp_path / "page") == []
    build_page(tmp_path / "page", "probe", "t", ["v3"], [], [("one", pd.DataFrame({"a": [3]}), "one")])
    assert tree(tmp_path / "page")["one.csv"] == "a\n3\n" and "v3" in tree(tmp_path / "page")["probe.html"]
