"""Feature statistics, cards, neighbours, map and clamping, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control, ttest_ind

import llmri
from llmri.stats import cohens_d
from llmri.sae import SAE, clamp, feature_activations, feature_card, feature_map, feature_neighbors
from llmri.store import scan_from_arrays
from conftest import TEXTS, make_model
from test_sae_eval import identity_sae as split_sae  # features relu(x_j) and relu(-x_j)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    rng = np.random.default_rng(0)
    n_docs, d = 60, 4
    lengths = rng.integers(3, 12, n_docs)
    labels = np.arange(n_docs) % 3
    X = rng.normal(size=(int(lengths.sum()), d)).astype(np.float32)
    doc_of = np.repeat(np.arange(n_docs), lengths)
    X[labels[doc_of] == 0, 0] += 1.5          # category 0 lights up feature 0
    scan = scan_from_arrays(tmp_path_factory.mktemp("feat") / "scan", {}, labels=labels,
                            label_names=["a", "b", "c"], token_activations={"resid.1": X},
                            lengths=lengths, shard_tokens=80)
    assert scan.n_shards > 3
    return scan, X, doc_of, labels


def test_feature_statistics_match_direct_computation(known):
    scan, X, doc_of, labels = known
    sae = split_sae(4, "resid.1")
    feats = feature_activations(sae, scan, n_top=5, n_samples=7, chunk=16, progress=False)
    F = np.concatenate([np.maximum(X, 0), np.maximum(-X, 0)], 1)
    np.testing.assert_allclose(feats.density, (F > 0).mean(0), rtol=1e-6)
    np.testing.assert_allclose(feats.max, F.max(0), rtol=1e-6)
    np.testing.assert_allclose(feats.mean, F.mean(0), rtol=1e-5)
    for j in range(8):
        want = set(np.argsort(-F[:, j])[:5].tolist())
        assert set(feats.top_tokens[:, j].tolist()) == want
        np.testing.assert_allclose(feats.top_values[:, j], np.sort(F[:, j])[::-1][:5], rtol=1e-6)
        s = feats.sample_tokens[:, j]
        assert len(set(s.tolist())) == 7 and (F[s, j] > 0).all()
        np.testing.assert_allclose(feats.sample_values[:, j], F[s, j], rtol=1e-6)
    # category effects on per-document mean activations: Cohen's d and Welch's t, BH over all
    doc_mean = np.stack([F[doc_of == k].mean(0) for k in range(len(labels))])
    rows = []
    for c in range(3):
        a, b = doc_mean[labels == c], doc_mean[labels != c]
        rows.append((cohens_d(a, b), ttest_ind(a, b, equal_var=False).pvalue))
    eff = feats.effects.sort_values(["category", "feature"])
    np.testing.assert_allclose(eff.effect_size.to_numpy(), np.concatenate([r[0] for r in rows]), rtol=1e-4, atol=1e-5)
    p = np.concatenate([r[1] for r in rows])
    np.testing.assert_allclose(eff.p_value.to_numpy(), p, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(eff.q_value.to_numpy(), false_discovery_control(p, method="bh"), rtol=1e-3, atol=1e-6)
    best = feats.table().set_index("feature")
    assert best.loc[0, "category"] == "a" and best.loc[0, "q_value"] < 0.01


def test_card_neighbours_and_map(known):
    scan, X, doc_of, labels = known
    sae = split_sae(4, "resid.1")
    feats = feature_activations(sae, scan, n_top=5, n_samples=20, progress=False)
    card = feature_card(feats, 0, window=2)
    top = card.examples["top activations"]
    t0 = int(feats.top_tokens[0, 0])
    d, pos = feats.locate(t0)
    assert top[0][0] == d and top[0][4] == pytest.approx(X[t0, 0], rel=1e-6)
    assert any(k.startswith("interval") for k in card.examples)
    html = card.to_html()
    assert "feature 0" in html and "nearest by decoder cosine" in html
    # decoder neighbours: feature j and d + j point in opposite directions (cosine -1), others 0
    nb = feature_neighbors(sae, 0, by="decoder", top=7)
    assert nb.cosine.iloc[-1] == pytest.approx(-1.0) and nb.feature.iloc[-1] == 4
    co = feature_neighbors(sae, 0, by="coactivation", feats=feats, top=7).set_index("feature")
    assert co.loc[4, "jaccard"] == 0.0    # relu(x) and relu(-x) never fire together
    assert co.loc[1, "jaccard"] > 0.1     # independent coordinates fire together often
    fig, table = feature_map(sae, feats, color="category")
    assert len(table) == 8 and {"x", "y", "density", "category"} <= set(table.columns)
    assert sum(len(tr.x) for tr in fig.data) == 8
    with pytest.raises(llmri.LlmriError, match="color"):
        feature_map(sae, feats, color="nope")
    with pytest.raises(llmri.LlmriError, match="out of range"):
        feature_card(feats, 8)
    with pytest.raises(llmri.LlmriError, match="another model or site"):
        feature_activations(split_sae(5, "resid.1"), scan, progress=False)


# ---------------------------------------------------------------- clamping
@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def orthonormal_sae(d: int, m: int, site: str, bias: float = 100.0) -> SAE:
    """W_enc = W_dec^T with orthonormal rows and a large encoder bias: every feature is active,
    so a clamped value is read back exactly by the encoder."""
    q, _ = torch.linalg.qr(torch.randn(d, m, generator=torch.Generator().manual_seed(0)))
    sae = SAE(d, m, arch="relu", site=site)
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.fill_(bias)
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(1))
    return sae


def _inputs(model):
    from llmri.batches import pad_batch

    ids = [model.tokenizer(t)["input_ids"] for t in TEXTS[:4]]
    return pad_batch(model, ids)[0]


def test_clamp_nothing_changed_is_the_original_model(model):
    sae = orthonormal_sae(32, 8, "resid.2")
    kw = _inputs(model)
    with torch.no_grad():
        ref = model.module(**kw).logits
        with clamp(model, sae, {}) as c:
            got = model.module(**kw).logits
    assert torch.equal(got, ref)
    assert c.features is not None and c.features.shape[-1] == 8


def test_clamp_sets_the_feature(model):
    sae = orthonormal_sae(32, 8, "resid.2")
    kw = _inputs(model)
    seen = {}
    with torch.no_grad():
        ref = model.module(**kw).logits
        with clamp(model, sae, {3: 5.0}, skip_first=False) as c, \
                llmri.hooks(model.module, model.adapter, {"resid.2": lambda x: seen.__setitem__("x", x)}):
            got = model.module(**kw).logits
        f = sae.encode(seen["x"])
    np.testing.assert_allclose(f[..., 3].numpy(), 5.0, atol=1e-3)
    assert (c.features[..., 3] == 5.0).all()
    # the other features are untouched by the clamp
    with torch.no_grad(), llmri.hooks(model.module, model.adapter, {"resid.2": lambda x: seen.__setitem__("y", x)}):
        model.module(**kw)
    f0 = sae.encode(seen["y"]).detach()
    np.testing.assert_allclose(f[..., [0, 1, 2, 4, 5, 6, 7]].numpy(), f0[..., [0, 1, 2, 4, 5, 6, 7]].numpy(), atol=1e-3)
    assert not torch.allclose(got, ref)


def test_clamp_leaves_the_attention_sink_alone(model):
    """Decoders: by default each sequence's first real token (the attention sink) is not clamped,
    with left padding and in generation's cached steps too; skip_first=False clamps it."""
    from llmri.batches import pad_batch

    sae = orthonormal_sae(32, 8, "resid.2")
    kw = pad_batch(model, [model.tokenizer(t)["input_ids"] for t in TEXTS[:4]], side="left")[0]
    first = kw["attention_mask"].int().argmax(1)
    assert len(set(first.tolist())) > 1                     # the rows start at different columns
    rows = torch.arange(4)
    with torch.no_grad():
        ref = model.module(**kw).logits
        with clamp(model, sae, {3: 5.0}) as c:
            got = model.module(**kw).logits
        with clamp(model, sae, {3: 5.0}, skip_first=False):
            every = model.module(**kw).logits
    # causally, the first token's logits see only the first token: untouched unless it is clamped
    assert torch.equal(got[rows, first], ref[rows, first])
    assert not torch.allclose(every[rows, first], ref[rows, first])
    assert (c.features[rows, first, 3] != 5.0).all()
    assert (c.features[rows, first + 1, 3] == 5.0).all() and not torch.allclose(got[rows, first + 1],
                                                                                   ref[rows, first + 1])
    with clamp(model, sae, {3: 5.0}) as c:
        llmri.generate(model, TEXTS[:2], max_new_tokens=2)
    assert c.features.shape[1] == 1 and (c.features[..., 3] == 5.0).all()   # a cached step: clamped


def test_clamp_multiples_generation_and_bad_input(model):
    sae = orthonormal_sae(32, 8, "resid.2")
    sae.feature_max[3] = 2.0
    from llmri.sae.clamp import resolve_values

    assert resolve_values(sae, {3: "10x", 1: -1})[1] == [20.0, -1.0]
    kw = _inputs(model)
    prompts = ["the star shines", "a comet runs near the"]
    plain = llmri.generate(model, prompts, max_new_tokens=6)
    with clamp(model, sae, {}):
        same = llmri.generate(model, prompts, max_new_tokens=6)
    with clamp(model, sae, {3: "30x"}):
        clamped = llmri.generate(model, prompts, max_new_tokens=6)
    assert same == plain and clamped != plain
    with pytest.raises(llmri.LlmriError, match="out of range"):
        with clamp(model, sae, {8: 1.0}):
            pass
    with pytest.raises(llmri.LlmriError, match="multiple"):
        with clamp(model, sae, {3: "ten"}):
            pass
    with pytest.raises(llmri.LlmriError, match="never fired"):
        with clamp(model, sae, {2: "3x"}):
            pass
    with pytest.raises(llmri.LlmriError, match="another model or site"):
        with clamp(model, orthonormal_sae(16, 4, "resid.2"), {}):
            model.module(**kw)


def test_top_activating_tokens_names_a_planted_token_feature(tmp_path):
    """A feature whose encoder row is one token's embedding fires on that token only (the
    residual stream at block 0 is the embedding): its label is that token's text, by the
    tokenizer, not by the scan's records."""
    from llmri.sae.features import top_activating_tokens

    model = make_model("llama")
    scan = llmri.scan(model, llmri.Corpus(TEXTS, [0] * len(TEXTS)), tmp_path / "s", sites=("resid",),
                      token_sites=("resid.0",), pool="mean", progress=False)
    ids = [i for t in TEXTS for i in model.tokenizer(t)["input_ids"][1:]]
    common = max(set(ids), key=ids.count)                 # a token that occurs several times
    E = model.module.get_input_embeddings().weight.detach()
    d = E.shape[1]
    sae = SAE(d, 2, arch="relu", site="resid.0")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = E[common]
        e = E[common] @ E[common]
        sae.b_enc[0] = -0.5 * e                            # fires where x . E[common] > e / 2
        sae.b_dec.zero_()
    X = torch.from_numpy(scan.token_activations(0, "resid"))
    assert ((X @ E[common]) > 0.5 * e).sum() >= 2          # the planted feature fires, and
    torch.testing.assert_close(X[(X @ E[common]) > 0.5 * e], E[common].expand(int(((X @ E[common]) > 0.5 * e).sum()), d))
    feats = feature_activations(sae, scan, n_top=4, skip_first=False, progress=False)
    want = model.tokenizer.decode([common]).strip()
    assert top_activating_tokens(feats, [0, 1], model=model) == [want, ""]
    with pytest.raises(llmri.LlmriError, match="n must be"):
        top_activating_tokens(feats, [0], n=0)
