"""circuit-tracer's transcoder sets (config.yaml + one safetensors file per layer) loaded as llmri
transcoders: built and run by circuit-tracer 0.5.0's own code (the wheel ``setup.sh --test``
unpacks into ``.peers/``), then compared, encode and decode, with llmri's reading of the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmri import LlmriError
from llmri.circuits import attribute
from llmri.sae.transcoders import load_transcoders

from conftest import make_model
from test_circuit import PROMPT

WHEEL = Path(__file__).resolve().parents[1] / ".peers" / "circuit-tracer"

_BUILD = """
import sys, torch, yaml
from safetensors.torch import save_file
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet, load_transcoder_set
out, d, n = sys.argv[1], 32, 48
g = torch.Generator().manual_seed(0)
tcs = {}
for layer in range(3):
    act = JumpReLU(torch.rand(n, generator=g) * 0.05, 0.1) if layer == 1 else torch.nn.functional.relu
    tc = SingleLayerTranscoder(d, n, act, layer)
    with torch.no_grad():
        for p in (tc.W_enc, tc.W_dec, tc.b_enc, tc.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    tcs[layer] = tc
TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out", scan="test").to_safetensors(out)
cfg = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out",
       "scan": "test-scan", "transcoders": [f"{out}/layer_{i}.safetensors" for i in range(3)]}
yaml.safe_dump(cfg, open(f"{out}/config.yaml", "w"))
# circuit-tracer's own reading of the set (what its hf_utils.load_transcoders does for a transcoder_set)
ts = load_transcoder_set(dict(enumerate(cfg["transcoders"])), scan=cfg["scan"], feature_input_hook=cfg["feature_input_hook"],
                         feature_output_hook=cfg["feature_output_hook"], device=torch.device("cpu"),
                         lazy_encoder=False, lazy_decoder=False)
x = torch.randn(3, 20, d, generator=g) * 0.3
acts = ts.encode(x)
save_file({"x": x, "acts": acts, "recon": torch.stack([ts[i].decode(acts[i]) for i in range(3)])}, f"{out}/expected.safetensors")
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    assert (WHEEL / "circuit_tracer").is_dir(), "run bash setup.sh --test: .peers/circuit-tracer missing"
    out = tmp_path_factory.mktemp("tcs")
    proc = subprocess.run([sys.executable, "-c", _BUILD, str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(WHEEL)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_circuit_tracer_transcoders_encode_and_decode_identically(built):
    from safetensors.torch import load_file

    want = load_file(str(built / "expected.safetensors"))
    tcs = load_transcoders(built)
    assert [(t.site, t.target_site, t.arch) for t in tcs] == [
        ("mlp_in.0", "mlp_out.0", "relu"), ("mlp_in.1", "mlp_out.1", "jumprelu"), ("mlp_in.2", "mlp_out.2", "relu")]
    with torch.no_grad():
        for i, tc in enumerate(tcs):
            f = tc.encode(want["x"][i])
            assert (f > 0).any() and (f == 0).any()
            torch.testing.assert_close(f, want["acts"][i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(tc.decode(f), want["recon"][i], rtol=1e-5, atol=1e-6)
    assert tcs[0].metadata["scan"] == "test-scan"


def test_attribute_runs_over_transcoders_trained_elsewhere(built, tmp_path):
    # the same files without the transcoders list: the layer_L.safetensors beside config.yaml
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                          "feature_output_hook: hook_mlp_out\nscan: test\n")
    for i in range(3):
        (tmp_path / f"layer_{i}.safetensors").write_bytes((built / f"layer_{i}.safetensors").read_bytes())
    g = attribute(make_model("llama"), tmp_path, PROMPT, target="moon", skip_first=False, max_feature_nodes=20)
    assert g.info.transcoders == ["mlp_in.0->mlp_out.0", "mlp_in.1->mlp_out.1", "mlp_in.2->mlp_out.2"]
    assert len(g.nodes("feature")) > 0


def test_bad_transcoder_sets(built, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    def config(folder, text):
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
        return folder

    head = "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
    with pytest.raises(LlmriError, match="model_kind 'cross_layer_transcoder'"):
        load_transcoders(config(tmp_path / "clt", "model_kind: cross_layer_transcoder\n" + head))
    with pytest.raises(LlmriError, match="feature_input_hook 'hook_resid_pre'"):
        load_transcoders(config(tmp_path / "resid", head.replace("mlp.hook_in", "hook_resid_pre")))
    with pytest.raises(LlmriError, match="no layer_1.safetensors"):
        folder = config(tmp_path / "gap", head)
        for i in (0, 2):
            (folder / f"layer_{i}.safetensors").write_bytes((built / f"layer_{i}.safetensors").read_bytes())
        load_transcoders(folder)
    skip = config(tmp_path / "skip", head)
    w = load_file(str(built / "layer_0.safetensors"))
    save_file(dict(w, W_skip=torch.zeros(32, 32)), str(skip / "layer_0.safetensors"))
    with pytest.raises(LlmriError, match="W_skip: a skip transcoder"):
        load_transcoders(skip)
    # hf:// files come from the local Hugging Face cache only, laid out as the hub client lays it out
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    hf = config(tmp_path / "hf", head + "transcoders:\n  - hf://someone/tcs/layer_0.safetensors\n")
    with pytest.raises(LlmriError, match="layer_0.safetensors of someone/tcs is not in the local Hugging Face cache"):
        load_transcoders(hf)
    commit = "0" * 40
    snap = cache / "models--someone--tcs" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "layer_0.safetensors").write_bytes((built / "layer_0.safetensors").read_bytes())
    (cache / "models--someone--tcs" / "refs").mkdir()
    (cache / "models--someone--tcs" / "refs" / "main").write_text(commit)
    (tc,) = load_transcoders(hf / "config.yaml")
    assert tc.site == "mlp_in.0" and tc.metadata["file"].startswith(str(snap))
