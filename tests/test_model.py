"""load_model, site adapters, auto-discovery and their errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import transformers as tf

import llmri
from llmri import LlmriError

from conftest import TEXTS, make_module, make_tokenizer


def test_load_local_folder_and_dtype(tmp_path):
    make_module("gpt2").save_pretrained(tmp_path / "m")
    make_tokenizer("gpt2").save_pretrained(tmp_path / "m")
    m = llmri.load_model(str(tmp_path / "m"), device="cpu")
    assert m.adapter.family == "gpt2" and m.n_layers == 3 and m.dtype == torch.float32
    assert isinstance(m.module, tf.GPT2LMHeadModel)  # the LM head is kept for later analyses
    assert llmri.load_model(str(tmp_path / "m"), dtype="bfloat16").dtype == torch.bfloat16
    assert m.fingerprint == llmri.load_model(str(tmp_path / "m")).fingerprint


def test_missing_model_fails_fast_offline():
    t = time.time()
    with pytest.raises(LlmriError, match=r"not available offline; download it once with `hf download"):
        llmri.load_model("no-such-org/no-such-model-xyz")
    assert time.time() - t < 30


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(name="./not/here"), "no such model folder"),
    (dict(name="default", dtype="int8"), "dtype 'int8' is not one of"),
    (dict(name="default", device="tpu9"), "is not a torch device"),
])
def test_load_argument_errors(kwargs, pattern):
    with pytest.raises(LlmriError, match=pattern):
        llmri.load_model(**kwargs)


def test_folder_without_config(tmp_path):
    with pytest.raises(LlmriError, match="not a model folder"):
        llmri.load_model(str(tmp_path))


class Mystery(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = tf.PretrainedConfig()
        self.config.model_type = "mystery"
        self.proj = torch.nn.Linear(4, 4)


def test_unsupported_family_lists_supported():
    with pytest.raises(LlmriError, match=r"unsupported model family 'mystery': llmri supports GPT-2, BERT"):
        llmri.Model.from_module(Mystery(), make_tokenizer("bert"))


def test_auto_discovery_on_unlisted_family(tmp_path):
    """OPT is not in the table: its blocks, fc2 and out_proj are found by shape."""
    cfg = tf.OPTConfig(vocab_size=len(make_tokenizer("gpt2")), hidden_size=32, num_hidden_layers=2,
                       ffn_dim=64, num_attention_heads=4, max_position_embeddings=64,
                       word_embed_proj_dim=32, pad_token_id=0)
    torch.manual_seed(0)
    module = tf.OPTForCausalLM(cfg).eval()
    model = llmri.Model.from_module(module, make_tokenizer("gpt2"))
    assert model.adapter.family == "auto:opt"
    assert model.adapter.mlp_out.endswith("fc2") and model.adapter.attn_out.endswith("out_proj")
    s = llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "opt", sites=("mlp",), pool="mean")
    layer = module.model.decoder.layers[1]
    for d, text in enumerate(TEXTS[:3]):
        got = {}
        h = layer.fc1.register_forward_hook(lambda m, a, o: got.__setitem__("x", layer.activation_fn(o)))
        with torch.no_grad():
            module(input_ids=torch.tensor([model.tokenizer(text)["input_ids"]]))
        h.remove()
        np.testing.assert_allclose(s.activations(1, "mlp")[d], got["x"].reshape(-1, 64).mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_site_names():
    assert llmri.expand_sites("resid", 2) == ["resid.0", "resid.1", "resid.2"]
    assert llmri.expand_sites(["mlp", "resid.-1"], 2, layers=[-1]) == ["mlp.1", "resid.2"]
    with pytest.raises(LlmriError, match=r"unknown site 'neuron\.2'"):
        llmri.parse_site("neuron.2")
    with pytest.raises(LlmriError, match="must be an integer"):
        llmri.parse_site("mlp.x")


def test_hooks_are_removed_even_after_an_error():
    model = llmri.Model.from_module(make_module("llama"), make_tokenizer("llama"))
    ids = torch.tensor([[4, 7, 9, 11]])
    with torch.no_grad():
        before = model.module(input_ids=ids).logits

    def boom(x):
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        with llmri.hooks(model.module, model.adapter, {"mlp.1": boom}):
            model.module(input_ids=ids)
    with torch.no_grad():
        assert torch.equal(model.module(input_ids=ids).logits, before)
    with llmri.hooks(model.module, model.adapter, {"resid.1": lambda x: x * 0}), torch.no_grad():
        assert not torch.allclose(model.module(input_ids=ids).logits, before)  # writes take effect
