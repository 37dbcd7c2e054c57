"""An SAE folder is whole or untouched, and never loads when cfg.json and the weights disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import llmri.disk as disk
import llmri.sae.model as sae_model
from llmri.errors import LlmriError
from llmri.sae import SAE
from llmri.sae.collection import sae_folders
from llmri.store import DiskFull


def make_sae(d_sae: int, k: int, seed: int, arch: str = "topk") -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in=6, d_sae=d_sae, arch=arch, k=k, site="resid.1")
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            p = getattr(sae, name)
            p.copy_(torch.randn(p.shape, generator=g))
        sae.feature_max.copy_(torch.rand(d_sae, generator=g))
        sae.feature_density.copy_(torch.rand(d_sae, generator=g))
    return sae


def same(a: SAE, b: SAE) -> bool:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(9))
    return (a.d_sae, a.k, a.arch) == (b.d_sae, b.k, b.arch) and torch.equal(a.encode(x), b.encode(x)) \
        and torch.equal(a.feature_max, b.feature_max) and torch.equal(a.feature_density, b.feature_density)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_save_killed_after_the_weights_leaves_the_old_sae(tmp_path, monkeypatch):
    """The issue's case: a 2048-latent k=16 save killed after its weights must not load as
    SAE(d_sae=2048, k=8) with the old statistics gone: the folder is the old SAE, byte for byte."""
    old = make_sae(256, 8, seed=0)
    old.save(tmp_path / "sae")
    before = folder_bytes(tmp_path / "sae")
    new = make_sae(2048, 16, seed=1)

    def killed(path, obj):
        raise KeyboardInterrupt   # as a Ctrl-C or kill would stop it, after both safetensors files
    monkeypatch.setattr(sae_model, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "sae")
    assert folder_bytes(tmp_path / "sae") == before
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]
    assert same(SAE.load(tmp_path / "sae"), old)
    monkeypatch.undo()
    new.save(tmp_path / "sae")
    assert same(SAE.load(tmp_path / "sae"), new)


def test_resave_drops_the_old_eval_and_keeps_other_files(tmp_path):
    make_sae(16, 2, seed=0).save(tmp_path / "sae")
    (tmp_path / "sae" / "eval.json").write_text('{"l0": 2}')
    (tmp_path / "sae" / "notes.txt").write_text("mine")
    make_sae(32, 4, seed=1).save(tmp_path / "sae")
    assert sorted(folder_bytes(tmp_path / "sae")) == ["cfg.json", "feature_stats.safetensors", "notes.txt",
                                                      "sae_weights.safetensors"]
    assert (tmp_path / "sae" / "notes.txt").read_text() == "mine"


def edit_cfg(folder: Path, fn) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    fn(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(d_sae=999), r"cfg.json: says d_sae 999, but sae_weights.safetensors holds latents 256"),
    (lambda c: c.update(d_in=7), r"cfg.json: says d_in 7, but sae_weights.safetensors holds inputs of width 6"),
    (lambda c: c.update(k=300), r"cfg.json: k 300 is not an integer in 1..256"),
    (lambda c: c["llmri"].update(k=0), r"cfg.json: k 0 is not an integer in 1..256"),
    (lambda c: c.update(d_out=5), r"cfg.json: says d_out 5, but sae_weights.safetensors decodes to width 6"),
])
def test_cfg_that_disagrees_with_the_weights_is_one_line(tmp_path, edit, message):
    make_sae(256, 8, seed=0).save(tmp_path / "sae")
    edit_cfg(tmp_path / "sae", edit)
    with pytest.raises(LlmriError, match=message) as e:
        SAE.load(tmp_path / "sae")
    assert "\n" not in str(e.value) and str(tmp_path / "sae" / "cfg.json") in str(e.value)


def test_weights_that_disagree_among_themselves_or_with_the_stats(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "sae"
    make_sae(16, 2, seed=0).save(folder)
    w = load_file(str(folder / "sae_weights.safetensors"))
    save_file(dict(w, W_dec=np.zeros((20, 6), np.float32)), str(folder / "sae_weights.safetensors"))
    with pytest.raises(LlmriError, match=r"sae_weights.safetensors: W_dec has shape \[20, 6\], which does not fit 16"):
        SAE.load(folder)
    save_file(w, str(folder / "sae_weights.safetensors"))
    save_file({"feature_max": np.zeros(8, np.float32)}, str(folder / "feature_stats.safetensors"))
    with pytest.raises(LlmriError, match=r"feature_stats.safetensors: feature_max has shape \[8\], but the SAE has 16"):
        SAE.load(folder)


@pytest.mark.parametrize("name", ["sae_weights.safetensors", "feature_stats.safetensors"])
def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path, name):
    folder = tmp_path / "sae"
    make_sae(16, 2, seed=0).save(folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmriError) as e:
        SAE.load(folder)
    msg = str(e.value)
    assert msg.startswith(f"{folder / name}: not a readable safetensors file") and "\n" not in msg


def test_full_disk_during_save_names_the_file_and_keeps_the_old_sae(tmp_path, monkeypatch):
    old = make_sae(16, 2, seed=0)
    old.save(tmp_path / "sae")
    real = disk.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "feature_stats.safetensors":
            raise disk.DiskFull(path, len(data))
        real(path, data)
    monkeypatch.setattr(disk, "atomic_write_bytes", full)
    with pytest.raises(DiskFull) as e:
        make_sae(64, 2, seed=1).save(tmp_path / "sae")
    from safetensors.numpy import save

    need = len(save({"feature_max": np.zeros(64, np.float32), "feature_density": np.zeros(64, np.float32)}))
    assert str(e.value).startswith(f"{tmp_path / 'sae' / 'feature_stats.safetensors'}: no space left on device "
                                   f"({need} bytes needed, ")
    assert same(SAE.load(tmp_path / "sae"), old) and [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_a_killed_save_is_never_found_as_an_sae(tmp_path):
    make_sae(16, 2, seed=0).save(tmp_path / "saes" / "resid.1")
    make_sae(16, 2, seed=0).save(tmp_path / "saes" / ".resid.2.llmri-1-x.tmp")   # what a kill leaves
    assert [p.name for p in sae_folders(tmp_path / "saes")] == ["resid.1"]
