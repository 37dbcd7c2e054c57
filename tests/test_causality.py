"""Causality is decided from what the model does, so base checkpoints of families without an
adapter (OPT, GPT-Neo, Phi, Gemma) get the decoder pooling under pool="auto", and encoders do not."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import llmri
from llmri.batches import default_pool
from llmri.sites import probe_causal

from conftest import DECODERS, ENCODERS, make_model, make_tokenizer

V = 40
COMMON = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64)

# (family, a base model without an LM head built from a tiny random config, causal?)
UNLISTED = {
    "opt": (lambda: tf.OPTModel(tf.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                             num_attention_heads=4, word_embed_proj_dim=32,
                                             max_position_embeddings=64)), True),
    "gpt_neo": (lambda: tf.GPTNeoModel(tf.GPTNeoConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4,
                                                       intermediate_size=64, attention_types=[[["global", "local"], 1]],
                                                       max_position_embeddings=64)), True),
    "phi": (lambda: tf.PhiModel(tf.PhiConfig(**COMMON)), True),
    "gemma": (lambda: tf.GemmaModel(tf.GemmaConfig(**COMMON, num_key_value_heads=2, head_dim=8)), True),
    "electra": (lambda: tf.ElectraModel(tf.ElectraConfig(embedding_size=32, **COMMON)), False),
}


def earlier_positions_move(module) -> bool:
    """The reference, computed another way: append a token to a 3-token input and see whether the
    first three positions' last hidden states change (a causal model cannot see the new token)."""
    ids = torch.tensor([[5, 9, 13]])
    with torch.no_grad():
        short = module.base_model(input_ids=ids)[0]
        longer = module.base_model(input_ids=torch.cat([ids, torch.tensor([[21]])], 1))[0][:, :3]
    return not torch.allclose(short, longer, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", list(UNLISTED))
def test_unlisted_families_are_decided_by_a_probe_forward(family):
    build, causal = UNLISTED[family]
    torch.manual_seed(0)
    module = build().eval()
    assert earlier_positions_move(module) is not causal       # the premise, seen independently
    assert probe_causal(module) is causal                      # decided by the probe, not the class name
    model = llmri.Model.from_module(module, make_tokenizer("gpt2"), name=family)
    assert model.adapter.family == f"auto:{family}" and model.adapter.causal is causal
    assert default_pool(model) == ("mean-nosink" if causal else "mean")


@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_listed_families_agree_with_what_the_model_does(family):
    model = make_model(family)
    causal = not earlier_positions_move(model.module)
    assert causal is (family in DECODERS) and model.adapter.causal is causal
    assert probe_causal(model.module) is causal
    assert default_pool(model) == ("mean-nosink" if causal else "mean")


def test_an_encoder_family_configured_as_a_decoder_is_causal():
    torch.manual_seed(0)
    module = tf.BertLMHeadModel(tf.BertConfig(**COMMON, is_decoder=True)).eval()
    assert not earlier_positions_move(module)
    model = llmri.Model.from_module(module, make_tokenizer("gpt2"))
    assert model.adapter.family == "bert" and model.adapter.causal and default_pool(model) == "mean-nosink"
