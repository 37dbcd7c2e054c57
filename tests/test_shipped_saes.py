"""Feature sets shipped with llmri, by model name: ``llmri.load_saes(name)`` finds the set, checks
every file against the SHA-256 of its ``index.json`` (computed here with hashlib, apart from the
loader), and returns ``{site: SAE}``; half-precision weights load as their float16 rounding.
A set built in a temporary folder stands in for the shipped one."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import llmri
from llmri.sae import SAE
from llmri.sae import collection


def random_sae(site: str, seed: int) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(16, 48, arch="batchtopk", k=4, site=site)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.normal_()
        sae.threshold.fill_(0.3)
    return sae


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    root = tmp_path / "features"
    folder = root / "tiny-model"
    saes = {s: random_sae(s, i) for i, s in enumerate(["resid.1", "resid.3"])}
    for site, sae in saes.items():
        sae.save(folder / site, weights_dtype="float16")
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / "index.json").write_text(json.dumps({"files": files}))
    monkeypatch.setattr(collection, "SHIPPED_ROOT", root)
    return folder, saes


def test_a_shipped_set_loads_by_name_as_sites_to_saes(shipped):
    folder, made = shipped
    got = llmri.load_saes("tiny-model")
    assert sorted(got) == ["resid.1", "resid.3"]
    x = torch.randn(32, 16)
    for site, sae in got.items():
        assert sae.W_enc.dtype == torch.float32
        ref = made[site]
        np.testing.assert_array_equal(sae.W_dec.detach().numpy(), ref.W_dec.detach().half().float().numpy())
        rounded = SAE(16, 48, arch="batchtopk", k=4, site=site)
        with torch.no_grad():
            for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
                getattr(rounded, n).copy_(getattr(ref, n).half().float())
        torch.testing.assert_close(sae.encode(x), rounded.encode(x), rtol=0, atol=0)
    assert collection.shipped_sets() == ["tiny-model"]
    assert (folder / "resid.1" / "sae_weights.safetensors").stat().st_size < 16 * 48 * 2 * 2 + 2000


def test_a_damaged_or_missing_file_is_refused_in_one_line(shipped):
    folder, _ = shipped
    w = folder / "resid.3" / "sae_weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(llmri.LlmriError, match=r"damaged .*resid.3/sae_weights.safetensors differs") as e:
        llmri.load_saes("tiny-model")
    assert "\n" not in str(e.value)
    w.unlink()
    with pytest.raises(llmri.LlmriError, match="is missing"):
        llmri.load_saes("tiny-model")


def test_a_model_with_no_shipped_set_and_no_folder_is_one_line(shipped, tmp_path):
    with pytest.raises(llmri.LlmriError, match=r"no feature set ships for 'gpt-7'.*shipped sets: tiny-model"):
        llmri.load_saes("gpt-7")
    with pytest.raises(llmri.LlmriError, match="no such folder"):
        llmri.load_saes(str(tmp_path / "missing"))


def test_float16_weights_that_do_not_fit_are_refused(tmp_path):
    sae = random_sae("resid.1", 0)
    with torch.no_grad():
        sae.W_enc[0, 0] = 1e6
    with pytest.raises(llmri.LlmriError, match="does not fit in float16"):
        sae.save(tmp_path / "s", weights_dtype="float16")
    assert not (tmp_path / "s").exists()
    with pytest.raises(llmri.LlmriError, match="weights_dtype 'int8'"):
        sae.save(tmp_path / "s", weights_dtype="int8")
