"""Attention: probabilities vs transformers, rollout and flow vs hand computations, head statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.attention import Attention
from llmri.sites import base_of

from conftest import TEXTS, make_model


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama", "gpt_neox", "distilbert"])
def test_probs_equal_transformers_output_attentions(kind):
    model = make_model(kind)
    assert model.module.config._attn_implementation == "sdpa"  # a fused kernel: must be switched
    text = TEXTS[3]
    att = llmri.attention(model, text)
    ids = model.tokenizer(text)["input_ids"]
    ref = make_model(kind)  # same seed, same weights, run the way transformers documents it
    ref.module.set_attn_implementation("eager")
    with torch.no_grad():
        out = base_of(ref.module)(input_ids=torch.tensor([ids]), output_attentions=True)
    want = np.stack([a[0].numpy() for a in out.attentions])
    assert att.probs.shape == (3, 4, len(ids), len(ids))
    np.testing.assert_allclose(att.probs, want, atol=1e-6)
    np.testing.assert_allclose(att.probs.sum(-1), 1.0, atol=1e-5)
    assert att.tokens == model.tokenizer.convert_ids_to_tokens(ids)
    assert model.module.config._attn_implementation == "sdpa"  # restored after the call
    if kind in ("gpt2", "llama", "gpt_neox"):
        assert np.allclose(np.triu(att.probs, k=1), 0)  # causal


def hand_example():
    """Two layers, one head, three tokens, with known numbers."""
    a1 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    a2 = np.array([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    return Attention(np.stack([a1[None], a2[None]]), ["a", "b", "c"], [1, 2, 3], causal=False)


def test_rollout_by_hand():
    att = hand_example()
    layers = []
    for a in att.probs[:, 0]:
        r = 0.5 * a + 0.5 * np.eye(3)
        layers.append(r / r.sum(1, keepdims=True))
    want = np.eye(3)
    for r in layers:  # R_l = A'_l R_{l-1}, written out element by element
        want = np.array([[sum(r[i, m] * want[m, j] for m in range(3)) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(att.rollout(), want)
    np.testing.assert_allclose(att.rollout().sum(1), 1.0)


def test_flow_by_hand():
    """With two layers, paths k -> j -> p are disjoint through distinct middle tokens j, so the
    max flow is the sum over j of min(A'_1[j, k], A'_2[p, j])."""
    att = hand_example()
    a1, a2 = att.residual_attention()
    for p in range(3):
        want = [sum(min(a1[j, k], a2[p, j]) for j in range(3)) for k in range(3)]
        np.testing.assert_allclose(att.flow(p), want, atol=1e-9)
    assert att.default_position == 0
    with pytest.raises(llmri.LlmriError, match="position 5 is out of range"):
        att.flow(5)


def _max_flow_lp(att, k, w):
    """Max flow from input token k to a sink fed by top-layer positions with capacities w,
    solved as a linear programme (an independent reference for networkx's max flow)."""
    from scipy.optimize import linprog

    A = att.residual_attention()
    L, T = A.shape[0], A.shape[-1]
    edges = [((l - 1, j), (l, i), A[l - 1][i, j]) for l in range(1, L + 1) for i in range(T) for j in range(T)]
    edges += [((L, p), "sink", w[p]) for p in range(T)]
    nodes = sorted({u for u, _, _ in edges} | {v for _, v, _ in edges} - {"sink", (0, k)}, key=str)
    nodes = [n for n in nodes if n != (0, k)]
    A_eq = np.zeros((len(nodes), len(edges)))
    for e, (u, v, _) in enumerate(edges):
        if u in nodes:
            A_eq[nodes.index(u), e] -= 1
        if v in nodes:
            A_eq[nodes.index(v), e] += 1
    # nodes at layer 0 other than k are sources that must not send flow: force their out-flow to 0
    bounds = [(0, 0 if (u[0] == 0 and u != (0, k)) else c) for u, _, c in edges]
    c = np.array([-1.0 if v == "sink" else 0.0 for _, v, _ in edges])
    res = linprog(c, A_eq=A_eq, b_eq=np.zeros(len(nodes)), bounds=bounds, method="highs")
    return -res.fun


def test_targets_by_hand():
    att = hand_example()
    R = att.rollout()
    np.testing.assert_allclose(att.contributions(2), R[2])
    np.testing.assert_allclose(att.contributions("mean"), R.mean(0))
    np.testing.assert_allclose(att.contributions("mean-nosink"), R[1:].mean(0))
    np.testing.assert_allclose(att.contributions([0, 2]), (R[0] + R[2]) / 2)
    np.testing.assert_allclose(att.contributions("last"), R[-1])
    for target, w in (("mean", np.full(3, 1 / 3)), ([1, 2], np.array([0, 0.5, 0.5])), (1, np.eye(3)[1])):
        want = [_max_flow_lp(att, k, w) for k in range(3)]
        np.testing.assert_allclose(att.flow(target), want, atol=1e-7)
    assert att.target_label("mean") == "the mean of all 3 tokens"
    assert att.target_label(-1) == "token 2 ('c')"
    with pytest.raises(llmri.LlmriError, match="target 'middle' is not a position"):
        att.contributions("middle")
    with pytest.raises(llmri.LlmriError, match="at least one position"):
        att.flow([])


@pytest.mark.parametrize("kind, pool", [("bert", "mean"), ("llama", "mean-nosink")])
def test_default_target_fits_pooling(kind, pool):
    """A mean-pooled encoder's embedding reads every position, so rollout explains all of them;
    a decoder's default pooling skips the attention sink."""
    att = llmri.attention(make_model(kind), TEXTS[3])
    assert att.pool == pool and att.default_target == pool
    np.testing.assert_allclose(att.contributions(), att.contributions(pool))
    np.testing.assert_allclose(att.flow(), att.flow(pool))


def stats_from_matrices(probs, ids, special_ids):
    """Head statistics computed from the full matrices of one document, with plain loops."""
    L, H, T, _ = probs.shape
    out = np.zeros((L, 5, H))
    special = [i in special_ids for i in ids]
    for l in range(L):
        for h in range(H):
            a = probs[l, h]
            ent = [-sum(x * np.log(x) for x in a[q] if x > 0) for q in range(T)]
            out[l, 0, h] = np.mean(ent)
            out[l, 1, h] = np.mean(a[:, 0])
            out[l, 2, h] = np.mean([sum(a[q, k] for k in range(T) if special[k]) for q in range(T)])
            out[l, 3, h] = np.mean([a[q, q - 1] for q in range(1, T)]) if T > 1 else 0.0
            out[l, 4, h] = np.mean([sum(a[q, k] * abs(q - k) for k in range(T)) for q in range(T)])
    return out


@pytest.mark.parametrize("kind, side", [("gpt2", "left"), ("bert", "right"), ("llama", "left")])
def test_head_stats_equal_full_matrices_and_ignore_padding(kind, side, tmp_path):
    model = make_model(kind, padding_side=side)
    corpus = llmri.Corpus(TEXTS, ["a", "b"] * 5)
    s = llmri.scan(model, corpus, tmp_path / "s", sites=("attn", "resid"), batch_tokens=48)
    assert s.manifest["plan"]["n_batches"] > 1
    df = llmri.head_stats(s)
    assert len(df) == len(TEXTS) * 3 * 4
    special = set(model.tokenizer.all_special_ids)
    for d in (0, 3, 8):
        att = llmri.attention(model, TEXTS[d])
        want = stats_from_matrices(att.probs, att.token_ids, special)
        got = df[df["doc"] == d].sort_values(["layer", "head"])
        for i, stat in enumerate(llmri.ATTN_STATS):
            np.testing.assert_allclose(got[stat].to_numpy().reshape(3, 4), want[:, i, :], atol=2e-5,
                                       err_msg=f"{kind} doc {d} {stat}")
    assert model.module.config._attn_implementation == "sdpa"


def test_compare_heads_finds_a_planted_difference(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    stats = rng.normal(1.0, 0.1, size=(60, 5, 4))
    stats[labels == 0, 3, 2] += 0.5  # head 2 of layer 1 looks at the previous token more for "x"
    acts = {"attn.0": rng.normal(1.0, 0.1, size=(60, 20)), "attn.1": stats.reshape(60, 20)}
    acts["resid.0"] = rng.normal(size=(60, 3))
    s = llmri.scan_from_arrays(tmp_path / "s", acts, labels, ["x", "y"])
    df = llmri.compare_heads(s, "x")
    top = df.iloc[0]
    assert (top["layer"], top["head"], top["stat"]) == (1, 2, "previous")
    assert top["q_value"] < 1e-6 and top["effect_size"] > 2
    assert (df["q_value"] >= df["p_value"] - 1e-12).all()
    assert df.iloc[5:]["q_value"].min() > 0.01
    with pytest.raises(llmri.LlmriError, match="unknown category 'z'"):
        llmri.compare_heads(s, "z")


def test_attention_errors(tmp_path):
    model = make_model("gpt2")
    with pytest.raises(llmri.LlmriError, match="non-empty string"):
        llmri.attention(model, "   ")
    with pytest.raises(llmri.LlmriError, match="token_sites: attention is stored as per-head statistics"):
        llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "x", token_sites=("attn.0",))
    s = llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "y")
    with pytest.raises(llmri.LlmriError, match="no attention statistics"):
        llmri.head_stats(s)
