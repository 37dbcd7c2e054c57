"""Instant start: what `import llmri`, `llmri --help`, argument errors and a cached rescan import.

Not timed (timings live in benchmarks/startup.py): each check runs in a fresh interpreter and
asserts which heavy libraries were imported, which is what the time depends on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmri
from conftest import TEXTS, LABELS, make_module, make_tokenizer
from llmri.model import config_n_layers, files_fingerprint, model_folder

HEAVY = ("torch", "transformers", "scipy", "sklearn", "pandas", "plotly", "matplotlib")
SRC = str(Path(llmri.__file__).resolve().parents[1])

_PROBE = """
import sys
sys.argv = ["llmri"] + {argv!r}
{code}
try:
    from llmri.cli import main
    main() if {argv!r} else None
except SystemExit as e:
    print("EXIT", e.code, file=sys.stderr)
print("HEAVY", ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def fresh(argv=(), code="import llmri", cwd=None) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run ``code`` then ``llmri ARGV`` in a new interpreter; the heavy modules it imported."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(argv=list(argv), code=code, heavy=HEAVY)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY")]
    assert line, proc.stderr
    return [m for m in line[-1][6:].split(",") if m], proc


def test_import_llmri_loads_no_heavy_library():
    assert fresh(code="import llmri; llmri.Corpus; llmri.LlmriError; llmri.parse_site('mlp.3')")[0] == []


def test_lazy_names_resolve_to_the_same_objects():
    from llmri.attention import attention
    from llmri.capture import scan
    from llmri.probe import probe

    import llmri.report  # noqa: F401  (loads the submodules llmri.attention, llmri.probe, ...)
    assert llmri.attention is attention and llmri.probe is probe and llmri.scan is scan
    assert set(llmri.__all__) <= set(dir(llmri))
    for name in llmri.__all__:
        assert getattr(llmri, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmri.nope  # noqa: B018


def test_help_loads_no_heavy_library():
    heavy, proc = fresh(["--help"])
    assert heavy == [] and "scan" in proc.stdout and "EXIT 0" in proc.stderr


def test_argument_errors_come_before_the_model(tmp_path):
    (tmp_path / "docs.csv").write_text("text,label\na b,x\nc d,y\n")
    for argv, msg in ((["scan", "docs.csv", "--out", "o", "--sites", "resid,mpl"], "unknown site 'mpl'"),
                      (["scan", "docs.csv", "--out", "o", "--layers", "0,9"], "layer 9 is out of range"),
                      (["scan", "docs.csv", "--out", "o", "--dtype", "fp8"], "--dtype 'fp8' is not one of")):
        heavy, proc = fresh(argv, cwd=tmp_path)
        assert "torch" not in heavy and "EXIT 1" in proc.stderr and msg in proc.stderr, proc.stderr


def save_tiny(folder: Path, seed: int = 0) -> Path:
    make_module("bert", seed=seed).save_pretrained(folder)
    make_tokenizer("bert").save_pretrained(folder)
    return folder


def test_files_fingerprint_follows_the_files(tmp_path):
    a = save_tiny(tmp_path / "a")
    b = save_tiny(tmp_path / "b")            # the same seed: the same files
    c = save_tiny(tmp_path / "c", seed=1)    # other weights, same shapes and config
    assert files_fingerprint(a) == files_fingerprint(b) != files_fingerprint(c)
    assert model_folder(str(a)) == a and model_folder(str(tmp_path / "nowhere")) is None
    assert config_n_layers(a) == json.loads((a / "config.json").read_text())["num_hidden_layers"]
    cfg = json.loads((b / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-3
    (b / "config.json").write_text(json.dumps(cfg))
    assert files_fingerprint(a) != files_fingerprint(b)


def test_cached_rescan_loads_no_model(tmp_path):
    model_dir = save_tiny(tmp_path / "m")
    rows = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(TEXTS, LABELS))
    (tmp_path / "docs.jsonl").write_text(rows)
    argv = ["scan", "docs.jsonl", "--out", "s", "--model", str(model_dir), "--sites", "resid,mlp"]
    heavy, first = fresh(argv, cwd=tmp_path)
    assert "torch" in heavy and "EXIT 0" in first.stderr, first.stderr
    heavy, again = fresh(argv, cwd=tmp_path)
    assert heavy == [] and "EXIT 0" in again.stderr
    said = again.stdout.split("HEAVY")[0].splitlines()
    assert said == first.stdout.split("HEAVY")[0].splitlines() + [
        "  answered from disk: the same scan was already complete (nothing captured)"]
    # the same request with other weights is not answered from the cache
    save_tiny(model_dir, seed=1)
    heavy, changed = fresh(argv, cwd=tmp_path)
    assert "torch" in heavy and "holds a different scan (model" in changed.stderr


# ---------------------------------------------------------------- messages (issue 12, part 5)
def test_a_semicolon_csv_is_read(tmp_path):
    p = tmp_path / "docs.csv"
    p.write_text("text;label\nthe star shines;space\nbake the flour;food\n")
    c = llmri.Corpus.from_path(p)
    assert c.texts == ["the star shines", "bake the flour"] and c.label_names == ["food", "space"]


def test_download_without_network_says_so(monkeypatch):
    import llmri.model as m

    monkeypatch.setattr(m, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(llmri.LlmriError, match="cannot download it, the network is unreachable"):
        llmri.load_model("someone/not-on-this-disk", download=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(llmri.LlmriError, match="HF_HUB_OFFLINE is set"):
        llmri.load_model("someone/not-on-this-disk", download=True)


def test_neurons_without_mlp_suggests_the_fix(tmp_path):
    import numpy as np

    from llmri.store import scan_from_arrays

    s = scan_from_arrays(tmp_path / "s", {"resid.0": np.random.default_rng(0).normal(size=(6, 4))},
                         ["a", "a", "a", "b", "b", "b"])
    with pytest.raises(llmri.LlmriError, match="use --site resid, or rescan with --sites resid,mlp"):
        llmri.neurons(s, "a")
