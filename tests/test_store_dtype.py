"""``store_dtype="bfloat16"`` keeps a scan's activations as bfloat16 on disk: the files hold real
BF16 tensors (safetensors' torch reader sees them as such), the shards take about half the
bytes, and every reader of the Scan returns float32 equal to the bfloat16 rounding of the
float32 scan's arrays (rounded here with torch, independently of the store)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import llmri
from conftest import LABELS, TEXTS, make_model
from llmri.cli import cli

SETTINGS = dict(sites=("resid", "mlp"), token_sites=("resid.1",), batch_tokens=40, shard_tokens=40)


def bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


def shard_bytes(scan) -> int:
    return sum(p.stat().st_size for p in scan.folder.glob("shard-*.safetensors"))


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    model = make_model("llama")
    corpus = llmri.Corpus(TEXTS, LABELS)
    root = tmp_path_factory.mktemp("sd")
    return (llmri.scan(model, corpus, root / "f32", progress=False, **SETTINGS),
            llmri.scan(model, corpus, root / "bf16", store_dtype="bfloat16", progress=False, **SETTINGS))


def test_readers_return_the_bfloat16_rounding_of_the_float32_scan(scans):
    ref, small = scans
    assert small.n_shards > 1 and small.settings["store_dtype"] == "bfloat16"
    for layer, site in ((0, "resid"), (3, "resid"), (1, "mlp")):
        got = small.activations(layer, site)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, bf16(ref.activations(layer, site)))
    np.testing.assert_array_equal(small.token_activations(1), bf16(ref.token_activations(1)))
    np.testing.assert_array_equal(small.token_activations(1, doc=4), bf16(ref.token_activations(1, doc=4)))
    np.testing.assert_array_equal(small.token_ids(), ref.token_ids())
    for (d1, n1, i1, a1), (d2, n2, i2, a2) in zip(small.iter_token_shards(1), ref.iter_token_shards(1)):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(a1, bf16(a2))
    assert not np.array_equal(small.activations(3), ref.activations(3))   # the rounding is real


def test_the_shards_hold_bf16_tensors_in_about_half_the_bytes(scans):
    ref, small = scans
    with safe_open(str(next(small.folder.glob("shard-*.safetensors"))), framework="pt") as f:
        assert f.get_tensor("tokens.resid.1").dtype == torch.bfloat16
        assert f.get_tensor("doc_index").dtype == torch.int64
    assert shard_bytes(small) < 0.6 * shard_bytes(ref)
    assert "store_dtype" not in ref.settings        # a float32 scan's manifest (and key) is as before


def test_a_scan_with_another_store_dtype_is_a_different_scan(scans):
    ref, _ = scans
    with pytest.raises(llmri.LlmriError, match="store_dtype None -> bfloat16"):
        llmri.scan(make_model("llama"), llmri.Corpus(TEXTS, LABELS), ref.folder, store_dtype="bfloat16",
                   progress=False, **SETTINGS)


def test_bad_store_dtype_is_refused_in_one_line(tmp_path):
    with pytest.raises(llmri.LlmriError, match="store_dtype 'float16' is not one of float32, bfloat16"):
        llmri.scan(make_model("llama"), llmri.Corpus(TEXTS, LABELS), tmp_path / "s", store_dtype="float16")
    assert not (tmp_path / "s").exists()
    r = CliRunner().invoke(cli, ["scan", str(tmp_path), "--out", str(tmp_path / "o"), "--store-dtype", "int8"])
    assert r.exit_code == 2 and "--store-dtype" in r.output and not (tmp_path / "o").exists()
