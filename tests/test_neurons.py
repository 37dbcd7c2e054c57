"""Neuron selectivity: a planted neuron, effect sizes against a direct computation, neuron cards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri

from conftest import WORDS, make_model

PLANTED = 7


def planted_llama():
    """A tiny Llama whose MLP neuron PLANTED in block 0 fires only on the token 'comet'.

    Attention writes nothing (o_proj = 0), so block 0's MLP sees the normalised embedding; only
    'comet' has a non-zero embedding coordinate 0, and the neuron's gate and up rows read it.
    """
    model = make_model("llama")
    comet = model.tokenizer.convert_tokens_to_ids("comet")
    with torch.no_grad():
        block = model.module.model.layers[0]
        block.self_attn.o_proj.weight.zero_()
        emb = model.module.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[comet, 0] = 3.0
        block.mlp.gate_proj.weight[PLANTED] = 0.0
        block.mlp.up_proj.weight[PLANTED] = 0.0
        block.mlp.gate_proj.weight[PLANTED, 0] = 4.0
        block.mlp.up_proj.weight[PLANTED, 0] = 4.0
    return model


def test_planted_neuron_ranks_first(tmp_path):
    rng = np.random.default_rng(0)
    plain = [w for w in WORDS if w != "comet"]
    texts, labels = [], []
    for i in range(40):
        words = list(rng.choice(plain, size=rng.integers(4, 9)))
        if i % 2 == 0:
            words.insert(int(rng.integers(len(words))), "comet")
        texts.append(" ".join(words))
        labels.append("space" if i % 2 == 0 else "other")
    model = planted_llama()
    s = llmri.scan(model, llmri.Corpus(texts, labels), tmp_path / "s", sites=("mlp",),
                   token_sites=("mlp.0",))
    df = llmri.neurons(s, "space")
    assert list(df.columns)[:5] == ["layer", "neuron", "effect_size", "p_value", "q_value"]
    assert (df.iloc[0]["layer"], df.iloc[0]["neuron"]) == (0, PLANTED)
    assert df.iloc[0]["q_value"] < 1e-6
    # effect sizes equal a direct computation of Cohen's d from scan.activations
    for L in range(model.n_layers):
        X = s.activations(L, site="mlp").astype(np.float64)
        a, b = X[s.labels == s.label_names.index("space")], X[s.labels != s.label_names.index("space")]
        sp = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1)) / (len(a) + len(b) - 2))
        want = (a.mean(0) - b.mean(0)) / sp
        got = df[df["layer"] == L].sort_values("neuron")["effect_size"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert df["effect_size"].is_monotonic_decreasing
    # the neuron card: the top documents contain the token, which carries the activation
    card = llmri.neuron_card(s, 0, PLANTED, tokenizer=model.tokenizer, top=5)
    assert all("comet" in t for t in card.top["text"])
    for doc, toks, acts in card.tokens:
        assert toks[int(np.argmax(acts))] == "comet"
        assert np.allclose(np.delete(acts, toks.index("comet")), 0, atol=1e-6)
    html = card.to_html()
    assert "comet" in html and "<script" not in html
    fig = card.histogram()
    assert len(fig.axes[0].patches) > 0


def test_neuron_errors(tmp_path):
    rng = np.random.default_rng(0)
    s = llmri.scan_from_arrays(tmp_path / "s", {"mlp.0": rng.normal(size=(6, 4)), "resid.0": rng.normal(size=(6, 2))},
                               ["a", "b", "b", "b", "a", "b"])
    with pytest.raises(llmri.LlmriError, match="unknown category 'c'"):
        llmri.neurons(s, "c")
    with pytest.raises(llmri.LlmriError, match="neuron 9 is out of range"):
        llmri.neuron_card(s, 0, 9)
    with pytest.raises(llmri.LlmriError, match="site 'attn_out' was not captured"):
        llmri.neurons(s, "a", site="attn_out")
    assert llmri.neurons(s, "a", site="resid").shape[0] == 2  # residual dimensions rank too
