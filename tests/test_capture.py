"""Capture equals a direct, unbatched computation for every pooling mode and padding side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.sites import base_of

from conftest import DECODERS, FAMILIES, TEXTS, make_model

FINAL_NORM = {"gpt2": "ln_f", "llama": "norm", "mistral": "norm", "qwen2": "norm",
              "gpt_neox": "final_layer_norm"}


def mlp_recompute(kind, block):
    """(module whose input to hook, function computing the MLP hidden activation by hand)."""
    if kind == "gpt2":
        return block.mlp, lambda x: block.mlp.act(block.mlp.c_fc(x))
    if kind in ("llama", "mistral", "qwen2"):
        m = block.mlp
        return m, lambda x: m.act_fn(m.gate_proj(x)) * m.up_proj(x)
    if kind == "gpt_neox":
        return block.mlp, lambda x: block.mlp.act(block.mlp.dense_h_to_4h(x))
    if kind in ("bert", "roberta"):
        inter = block.intermediate
        return inter, lambda x: inter.intermediate_act_fn(inter.dense(x))
    if kind == "distilbert":
        ffn = block.ffn
        return ffn, lambda x: ffn.activation(ffn.lin1(x))
    raise ValueError(kind)


def reference(model: llmri.Model, kind: str, texts):
    """Per document, unbatched: hidden states (final norm removed) and hand-computed MLP activations."""
    base = base_of(model.module)
    if kind in FINAL_NORM:  # so the last hidden state is the raw output of the last block
        setattr(base, FINAL_NORM[kind], torch.nn.Identity())
    blocks = llmri.sites.blocks(model.module, model.adapter)
    resid, mlp = [], []
    for text in texts:
        ids = model.tokenizer(text)["input_ids"]
        got = {}
        handles = []
        for L, block in enumerate(blocks):
            mod, fn = mlp_recompute(kind, block)
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, kwargs, L=L, fn=fn: got.__setitem__(L, fn(args[0] if args else kwargs["hidden_states"])[0]),
                with_kwargs=True))
        with torch.no_grad():
            out = base(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for h in handles:
            h.remove()
        resid.append(np.stack([hs[0].numpy() for hs in out.hidden_states]))   # [L+1, T, D]
        mlp.append(np.stack([got[L].numpy() for L in range(len(blocks))]))    # [L, T, F]
    return resid, mlp


def pool_ref(x: np.ndarray, how: str) -> np.ndarray:  # x [T, D]
    return {"mean": x.mean(0), "mean-nosink": x[1:].mean(0) if len(x) > 1 else x[0], "first": x[0],
            "last": x[-1], "max": x.max(0)}[how]


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pooling_matches_unbatched_forward(kind, padding_side, tmp_path):
    model = make_model(kind, padding_side=padding_side)
    corpus = llmri.Corpus(TEXTS, ["x"] * len(TEXTS))
    scans = {how: llmri.scan(model, corpus, tmp_path / how, sites=("resid", "mlp"), pool=how,
                             batch_tokens=48) for how in llmri.POOLS}
    assert scans["mean"].manifest["plan"]["n_batches"] > 1  # batching and padding really happen
    resid, mlp = reference(model, kind, TEXTS)
    n = model.n_layers
    for how, s in scans.items():
        assert s.layers("resid") == list(range(n + 1)) and s.layers("mlp") == list(range(n))
        for L in range(n + 1):
            want = np.stack([pool_ref(r[L], how) for r in resid])
            np.testing.assert_allclose(s.activations(L), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{kind} {padding_side} {how} resid.{L}")
        for L in range(n):
            want = np.stack([pool_ref(m[L], how) for m in mlp])
            got = s.activations(L, site="mlp")
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{kind} {padding_side} {how} mlp.{L}")


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_sublayer_outputs_sum_to_residual_update(kind, tmp_path):
    """attn_out + mlp_out account for the residual update of a pre-norm block (decoders);
    for every family they equal a direct hook on the projection modules."""
    model = make_model(kind)
    corpus = llmri.Corpus(TEXTS[:4])
    s = llmri.scan(model, corpus, tmp_path / "s", sites=("resid", "attn_out", "mlp_out"), pool="mean")
    if kind in DECODERS:
        for L in range(model.n_layers):
            update = s.activations(L + 1) - s.activations(L)
            np.testing.assert_allclose(s.activations(L, "attn_out") + s.activations(L, "mlp_out"),
                                       update, rtol=1e-4, atol=1e-5)
    assert s.activations(0, "mlp_out").shape == (4, 32)


def test_token_level_records(tmp_path):
    model = make_model("gpt2", padding_side="left")
    corpus = llmri.Corpus(TEXTS)
    s = llmri.scan(model, corpus, tmp_path / "t", token_sites=("resid.2", "mlp.1"), batch_tokens=40)
    resid, mlp = reference(model, "gpt2", TEXTS)
    for d, text in enumerate(TEXTS):
        ids = model.tokenizer(text)["input_ids"]
        assert s.token_ids(d).tolist() == ids
        np.testing.assert_allclose(s.token_activations(2, doc=d), resid[d][2], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.token_activations(1, "mlp", doc=d), mlp[d][1], rtol=1e-4, atol=1e-5)
    everything = s.token_activations(2)
    off = s.token_offsets
    assert everything.shape[0] == off[-1] == sum(len(model.tokenizer(t)["input_ids"]) for t in TEXTS)
    np.testing.assert_allclose(everything[off[3]:off[4]], resid[3][2], rtol=1e-4, atol=1e-5)
    seen = 0
    for docs, ntok, ids, acts in s.iter_token_shards(1, "mlp"):
        assert acts.shape == (int(ntok.sum()), 128)  # GPT-2 MLP width: 4 x 32 and len(ids) == len(acts)
        seen += len(docs)
    assert seen == len(TEXTS)


def test_layers_and_truncation(tmp_path):
    model = make_model("llama")
    corpus = llmri.Corpus(TEXTS)
    s = llmri.scan(model, corpus, tmp_path / "l", sites=("resid", "mlp"), layers=[0, -1], max_length=5,
                   pool="last")
    assert s.layers("resid") == [0, 3] and s.layers("mlp") == [0, 2]
    assert s.manifest["plan"]["truncated"] == sum(len(model.tokenizer(t)["input_ids"]) > 5 for t in TEXTS)
    assert s.lengths.max() == 5
    base = base_of(model.module)
    ids = model.tokenizer(TEXTS[3], truncation=True, max_length=5)["input_ids"]
    with torch.no_grad():
        hs = base(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(s.activations(0)[3], hs[0][0, -1].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(llmri.LlmriError, match="layers available"):
        s.activations(1)
    with pytest.raises(llmri.LlmriError, match="was not captured"):
        s.activations(0, "attn_out")
    with pytest.raises(llmri.LlmriError, match="token-level"):
        s.token_ids(0)


def test_early_stop_skips_unneeded_blocks(tmp_path):
    model = make_model("gpt2")
    calls = []
    last = llmri.sites.blocks(model.module, model.adapter)[-1]
    last.register_forward_hook(lambda *a: calls.append(1))
    llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "e", layers=[1])
    assert calls == []  # resid.1 is the output of block 0: blocks 1.. never ran


def test_bad_arguments(tmp_path):
    model = make_model("bert")
    corpus = llmri.Corpus(TEXTS)
    for kwargs, pattern in [(dict(pool="avg"), "pool 'avg'"), (dict(sites=("foo",)), "unknown site"),
                            (dict(layers=[9]), "layer 9 is out of range"),
                            (dict(batch_tokens=0), "batch_tokens"), (dict(max_length=0), "max_length")]:
        with pytest.raises(llmri.LlmriError, match=pattern):
            llmri.scan(model, corpus, tmp_path / "bad", **kwargs)
        assert not (tmp_path / "bad").exists()  # nothing half-written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(llmri.LlmriError, match="not empty"):
        llmri.scan(model, corpus, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("sites", [("mlp", "mlp_out"), ("attn_z", "attn_out"), ("attn", "attn_z", "attn_out"),
                                   ("mlp_out", "resid")])
def test_stopping_early_never_skips_a_wanted_site(kind, sites, tmp_path):
    """Inside a block, hooks fire in a family-specific order: a scan limited to one layer must
    still see every site of it, and equal the full scan there."""
    model = make_model(kind)
    corpus = llmri.Corpus(TEXTS[:5])
    full = llmri.scan(model, corpus, tmp_path / "full", sites=sites)
    one = llmri.scan(model, corpus, tmp_path / "one", sites=sites, layers=[1])
    for site in one.sites:
        kind_, layer = llmri.parse_site(site)
        np.testing.assert_array_equal(one.activations(layer, kind_), full.activations(layer, kind_))


def test_roberta_length_limit():
    model = make_model("roberta")
    assert model.max_length == 64  # the tokenizer's limit; positions would allow 70 - 2
    model.tokenizer.model_max_length = int(1e30)
    assert model.max_length == 68


# The post-attention norm of each family, found by the test itself: its output is the MLP's input.
_POST_ATTN_NORM = {"gpt2": "ln_2", "bert": "attention.output.LayerNorm", "roberta": "attention.output.LayerNorm",
                   "distilbert": "sa_layer_norm", "llama": "post_attention_layernorm",
                   "mistral": "post_attention_layernorm", "qwen2": "post_attention_layernorm",
                   "gpt_neox": "post_attention_layernorm"}


@pytest.mark.parametrize("kind", FAMILIES)
def test_mlp_in_is_the_post_attention_norm_output(kind, tmp_path):
    """mlp_in.L equals the output of block L's post-attention norm, read by a hook the test puts
    on that module itself, in a scan's token-level records."""
    import torch

    from llmri.sites import base_of

    model = make_model(kind)
    texts = TEXTS[:3]
    s = llmri.scan(model, llmri.Corpus(texts), tmp_path / "s", sites=("mlp_in.1",), token_sites=("mlp_in.1",),
                   pool="mean")
    block = base_of(model.module)
    for part in model.adapter.layers.split("."):
        block = getattr(block, part)
    norm = block[1]
    for part in _POST_ATTN_NORM[kind].split("."):
        norm = getattr(norm, part)
    got = {}
    h = norm.register_forward_hook(lambda mod, args, out: got.__setitem__("x", out.detach()))
    try:
        for d, text in enumerate(texts):
            ids = model.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                model.module(**ids)
            want = got["x"][0].numpy()
            np.testing.assert_allclose(s.token_activations(1, "mlp_in", doc=d), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{kind} doc {d}")
    finally:
        h.remove()


# ---------------------------------------------------------------- scan settings and the request cache
@pytest.mark.parametrize("kwargs, python, flag", [
    (dict(batch_tokens=0), "batch_tokens must be a positive integer, got 0", "--batch-tokens 0: must be a positive integer"),
    (dict(max_length=0), "max_length must be a positive integer, got 0", "--max-length 0: must be a positive integer"),
    (dict(dtype="fp8"), "dtype 'fp8' is not one of auto", "--dtype 'fp8' is not one of auto"),
    (dict(layers="1,x"), "layers '1,x': expected comma-separated integers", "--layers '1,x': expected comma"),
    (dict(sites="resid,mpl"), "unknown site 'mpl'", "unknown site 'mpl'"),
    (dict(token_sites=("attn",)), "token_sites: attention is stored as per-head statistics", "token_sites: attention"),
    (dict(pool="median"), "pool 'median' is not one of auto", "--pool 'median' is not one of auto"),
])
def test_scan_settings_check_themselves_in_either_spelling(kwargs, python, flag):
    from llmri.scan_settings import ScanSettings

    with pytest.raises(llmri.LlmriError, match=python):
        ScanSettings(**kwargs)
    with pytest.raises(llmri.LlmriError, match=flag):
        ScanSettings(**kwargs, flags=True)


def test_a_repeated_request_is_answered_without_the_model(tmp_path, monkeypatch):
    import llmri.model
    from llmri.scan_settings import ScanSettings, cached_scan, scan_request

    model = make_model("bert")
    model.module.save_pretrained(tmp_path / "m")
    model.tokenizer.save_pretrained(tmp_path / "m")
    corpus = llmri.Corpus(TEXTS, ["a", "b"] * 5)
    first = llmri.scan(str(tmp_path / "m"), corpus, tmp_path / "s", sites=("resid",), layers=[0], request=True)
    settings = ScanSettings(sites=("resid",), layers=[0])
    assert first.manifest["request"] == scan_request(str(tmp_path / "m"), corpus, settings)
    assert cached_scan(tmp_path / "s", first.manifest["request"]).folder == first.folder
    monkeypatch.setattr(llmri.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    again = llmri.scan(str(tmp_path / "m"), corpus, tmp_path / "s", settings=settings, request=True)
    assert again.manifest == first.manifest
    with pytest.raises(llmri.LlmriError, match="not both"):
        llmri.scan(str(tmp_path / "m"), corpus, tmp_path / "s", settings=settings, pool="max")


# ---------------------------------------------------------------- where work runs (the local engine)
def test_the_local_engine_maps_in_job_order_and_builds_the_state_once():
    from llmri.engine import Engine, as_engine

    built, done = [], []

    def state():
        built.append(1)
        return 10

    engine = Engine()
    with engine:
        assert engine.map(lambda s, x: s + x, [1, 2, 3], state=state, done=done.append) == [11, 12, 13]
        assert engine.map(lambda s, x: s * x, range(4), state=state, threads=3) == [0, 10, 20, 30]
        assert engine.each(lambda s: s, state=state) == [10]
    assert built == [1] and done == [0, 1, 2]
    assert engine.chunks([4, 5]) == [[4, 5]] and engine.progress(None) == (False, None)
    assert as_engine(engine) is engine and as_engine("ray", workers=2).workers == 2
    with pytest.raises(llmri.LlmriError, match="engine 'spark' is not one of local, ray"):
        llmri.Engine("spark")
    with pytest.raises(llmri.LlmriError, match="retries must be an integer >= 0, got -1"):
        llmri.Engine("ray", retries=-1)
    with pytest.raises(llmri.LlmriError, match="give them to Engine"):
        as_engine(engine, workers=2)
