"""SAE training, formats and encode/decode, against references with known answers."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

import llmri
from llmri.sae import SAE, train_sae
from llmri.store import scan_from_arrays


def synthetic(n_tok=20000, d=32, m=48, k=3, seed=0):
    """Tokens made of k atoms of a known unit-norm dictionary D [m, d], plus a constant offset."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    codes = np.zeros((n_tok, m))
    rows = np.repeat(np.arange(n_tok), k)
    cols = np.argsort(rng.random((n_tok, m)), axis=1)[:, :k].reshape(-1)
    codes[rows, cols] = rng.uniform(0.5, 2.0, n_tok * k)
    X = codes @ D + 0.3 * rng.normal(size=d)
    return X.astype(np.float32), D


def synthetic_scan(folder, n_tok=20000, shard_tokens=5000, seed=0):
    X, D = synthetic(n_tok=n_tok, seed=seed)
    n_docs = n_tok // 100
    scan = scan_from_arrays(folder, {}, labels=np.arange(n_docs) % 2,
                            token_activations={"resid.1": X}, lengths=np.full(n_docs, 100),
                            shard_tokens=shard_tokens)
    return scan, X, D


def max_cosines(D, sae):
    W = sae.W_dec.detach().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return (D @ W.T).max(1)


def explained_variance(sae, X):
    x = torch.from_numpy(X)
    with torch.no_grad():
        xh = sae(x)
    return float(1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_scan(tmp_path_factory.mktemp("syn") / "scan")


@pytest.mark.parametrize("arch,extra", [("topk", {}), ("batchtopk", {}), ("relu", {"l1_coefficient": 1.0})])
def test_recovers_known_dictionary(syn, arch, extra):
    scan, X, D = syn
    sae = train_sae(scan, "resid.1", n_latents=96, k=3, arch=arch, epochs=2, batch_size=256, lr=3e-3,
                    progress=False, **extra)
    assert max_cosines(D, sae).mean() >= 0.9        # mean max cosine of true to learned atoms
    assert explained_variance(sae, X) > 0.8


def test_jumprelu_recovers_known_dictionary(syn):
    scan, X, D = syn
    sae = train_sae(scan, "resid.1", n_latents=96, arch="jumprelu", epochs=4, batch_size=256, lr=3e-3,
                    l0_coefficient=0.5, progress=False)
    with torch.no_grad():
        l0 = float((sae.encode(torch.from_numpy(X)) > 0).sum(-1).float().mean())
    assert max_cosines(D, sae).mean() >= 0.9        # mean max cosine of true to learned atoms
    assert explained_variance(sae, X) > 0.9
    assert l0 < 5           # the data uses 3 atoms per token; about half of the 96 latents fire at the start
    assert (sae.threshold > 0.1).any()  # the thresholds moved


def test_deterministic_and_unit_norm_decoder(syn):
    scan, X, _ = syn
    kw = dict(n_latents=32, k=3, epochs=1, batch_size=1000, progress=False)
    a = train_sae(scan, "resid.1", seed=1, **kw)
    b = train_sae(scan, "resid.1", seed=1, **kw)
    c = train_sae(scan, "resid.1", seed=2, **kw)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.W_enc, b.W_enc) and torch.equal(a.threshold, b.threshold)
    assert not torch.equal(a.W_dec, c.W_dec)
    # rows have unit norm in the normalised space: norm 1/scale once the scale is folded in
    scale = a.metadata["normalization"]["target_scale"]
    expected = np.sqrt(X.shape[1]) / np.linalg.norm(X[:5000], axis=1).mean()
    assert scale == pytest.approx(expected, rel=0.2)
    np.testing.assert_allclose(a.W_dec.norm(dim=1).numpy(), 1 / scale, rtol=1e-5)


def test_topk_encode_matches_numpy():
    rng = np.random.default_rng(0)
    sae = SAE(8, 20, arch="topk", k=4)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.from_numpy(rng.normal(size=p.shape).astype(np.float32)))
    x = rng.normal(size=(5, 8)).astype(np.float32)
    pre = (x - sae.b_dec.detach().numpy()) @ sae.W_enc.detach().numpy() + sae.b_enc.detach().numpy()
    want = np.zeros_like(pre)
    for r in range(5):
        top = np.argsort(-pre[r])[:4]
        want[r, top] = np.maximum(pre[r, top], 0)
    got = sae.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae.decode(torch.from_numpy(got)).detach().numpy(),
                               got @ sae.W_dec.detach().numpy() + sae.b_dec.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_batchtopk_trains_per_batch_and_infers_with_threshold():
    from llmri.sae.model import batch_topk_relu

    pre = torch.tensor([[5.0, 1.0, 0.5], [4.0, 3.0, -1.0]])
    # k per row on average: the k * rows largest of the whole batch, whichever rows they are in
    np.testing.assert_array_equal(batch_topk_relu(pre, 1).numpy(), [[5, 0, 0], [4, 0, 0]])
    np.testing.assert_array_equal(batch_topk_relu(pre, 2).numpy(), [[5, 1, 0], [4, 3, 0]])
    assert torch.equal(batch_topk_relu(pre[[1, 0]], 1), batch_topk_relu(pre, 1)[[1, 0]])
    sae = SAE(2, 3, arch="batchtopk", k=1)
    with torch.no_grad():
        sae.threshold.fill_(2.0)
    np.testing.assert_array_equal(sae.activate(pre).numpy(), [[5, 0, 0], [4, 3, 0]])


def test_batch_topk_select_equals_the_dense_reference():
    from llmri.sae.model import batch_topk_relu
    from llmri.sae.trainer import batch_topk_select

    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 50, generator=g)
    pre[3] += 4.0    # one row holds far more than 2k winners: it must be searched in full
    pre[7] = -1.0    # a row with nothing positive
    wide = torch.randn(64, 96, generator=g)   # 96 = 12 blocks of 8: the block-maxima search for k <= 12
    wide[5] += 4.0
    wide[9] = -1.0
    wide[11, 40:48] += 6.0                    # one block holding 8 winners
    decoy = torch.randn(64, 96, generator=g)   # the sampled block maxima (every 17th block, 12 a row)
    sampled = torch.arange(0, 64 * 12, 17)     # tower over the rest: the sample's threshold is too high
    decoy[sampled // 12, sampled % 12] += 10.0
    for p, ks in ((pre, (1, 3, 20, 50)), (wide, (1, 3, 12, 13, 40)), (decoy, (1, 2))):
        for k in ks:
            rows, cols = batch_topk_select(p, k)
            dense = torch.zeros_like(p)
            dense[rows, cols] = torch.relu(p[rows, cols])
            assert torch.equal(dense, batch_topk_relu(p, k)), k
            assert torch.all(rows[1:] >= rows[:-1])     # sorted by row, as embedding_bag's offsets need
            flat = rows * p.shape[1] + cols
            assert torch.all(flat[1:] > flat[:-1])       # and by column within a row, each entry once


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_training_step_has_the_dense_gradients(arch):
    """The TopK/BatchTopK step decodes only the selected latents (embedding_bag); its loss and
    gradients equal autograd through the dense formulation, AuxK over dead latents included."""
    from llmri.sae.model import batch_topk_relu, topk_relu
    from llmri.sae.trainer import _Trainer

    g = torch.Generator().manual_seed(1)
    sae = SAE(12, 40, arch=arch, k=4)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(16, 12, generator=g)
    tr = _Trainer(sae, 1e-3, 10, 5.0, 0.05, 0.05, aux_k=6, aux_coefficient=0.5, dead_tokens=100)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    tr.since_fired[dead] = 1000
    got = {}

    def capture(loss):
        loss.backward()
        got.update(loss=float(loss.detach()), **{n: getattr(sae, n).grad.clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")})

    tr._update = capture
    tr.step(x, x)
    sae.zero_grad()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = topk_relu(pre, 4) if arch == "topk" else batch_topk_relu(pre, 4)
    err = x - (f @ sae.W_dec + sae.b_dec)
    masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
    aux = (err.detach() - topk_relu(masked, 6) @ sae.W_dec).pow(2).sum(-1).mean()
    loss = err.pow(2).sum(-1).mean() + 0.5 * aux
    loss.backward()
    assert got["loss"] == pytest.approx(float(loss), rel=1e-5)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(got[n], getattr(sae, n).grad, rtol=1e-4, atol=1e-5)
    assert tr.last["l0"] == pytest.approx(float((f > 0).sum()) / 16)


def test_save_load_roundtrip(tmp_path, syn):
    scan, X, _ = syn
    sae = train_sae(scan, "resid.1", n_latents=32, k=3, epochs=1, batch_size=1000, progress=False)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 32 and cfg["d_sae"] == 32
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre" and cfg["normalize_activations"] == "none"
    from safetensors.numpy import load_file

    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (32, 32) and w["W_dec"].shape == (32, 32) and "threshold" in w
    back = SAE.load(tmp_path / "sae")
    assert back.arch == "batchtopk" and back.k == 3 and back.site == "resid.1"
    x = torch.from_numpy(X[:100])
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back.feature_max, sae.feature_max) and back.feature_max.max() > 0


def test_load_sparsify_folder(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, m, k = 6, 10, 3
    enc_w, enc_b = rng.normal(size=(m, d)).astype(np.float32), rng.normal(size=m).astype(np.float32)
    W_dec, b_dec = rng.normal(size=(m, d)).astype(np.float32), rng.normal(size=d).astype(np.float32)
    folder = tmp_path / "layers.3"
    folder.mkdir()
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
              str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 2, "normalize_decoder": True,
                                                 "num_latents": m, "k": k, "d_in": d}))
    sae = SAE.load(folder)
    x = rng.normal(size=(4, d)).astype(np.float32)
    pre = np.maximum((x - b_dec) @ enc_w.T + enc_b, 0)   # sparsify: relu(encoder(x - b_dec)), top k
    want = np.zeros_like(pre)
    for r in range(4):
        top = np.argsort(-pre[r])[:k]
        want[r, top] = pre[r, top]
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_bad_folders_and_widths(tmp_path):
    with pytest.raises(llmri.LlmriError, match="no such SAE folder"):
        SAE.load(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(llmri.LlmriError, match="not an SAE folder"):
        SAE.load(tmp_path / "x")
    (tmp_path / "x" / "cfg.json").write_text("{}")
    with pytest.raises(llmri.LlmriError, match="not an SAE folder"):
        SAE.load(tmp_path / "x")
    sae = SAE(8, 16, arch="topk", k=2, site="resid.1")
    with pytest.raises(llmri.LlmriError, match="width 8"):
        sae.encode(torch.zeros(3, 9))
    with pytest.raises(llmri.LlmriError, match="arch"):
        SAE(8, 16, arch="gated")
    with pytest.raises(llmri.LlmriError, match="k must be"):
        SAE(8, 16, arch="topk", k=17)


def test_bad_training_input(syn):
    scan, _, _ = syn
    with pytest.raises(llmri.LlmriError, match="was not captured at token level"):
        train_sae(scan, "resid.2", progress=False)
    with pytest.raises(llmri.LlmriError, match="arch"):
        train_sae(scan, "resid.1", arch="gated", progress=False)
    with pytest.raises(llmri.LlmriError, match="k must be"):
        train_sae(scan, "resid.1", n_latents=8, k=9, progress=False)
    with pytest.raises(llmri.LlmriError, match="n_latents"):
        train_sae(scan, "resid.1", n_latents=0, progress=False)


@pytest.mark.parametrize("arch,extra", [("batchtopk", {}), ("topk", {}), ("relu", {"l1_coefficient": 1.0}),
                                        ("jumprelu", {"l0_coefficient": 0.5})])
def test_bf16_mixed_training_reaches_the_float32_runs_explained_variance(syn, arch, extra):
    """Same data, seed and steps; the reference is the float32 run. The products really ran in
    bfloat16 (the weights differ), and what comes out is a float32 SAE that says how it was trained."""
    scan, X, _ = syn
    kw = dict(n_latents=96, k=3, arch=arch, epochs=2, batch_size=256, lr=3e-3, seed=0, progress=False, **extra)
    f32 = train_sae(scan, "resid.1", dtype="float32", **kw)
    b16 = train_sae(scan, "resid.1", dtype="bf16-mixed", **kw)
    ev32, ev16 = explained_variance(f32, X), explained_variance(b16, X)
    assert ev32 > 0.8
    assert abs(ev16 - ev32) < 0.01, (ev32, ev16)
    assert not torch.equal(f32.W_enc, b16.W_enc)
    assert (f32.metadata["precision"], b16.metadata["precision"]) == ("float32", "bf16-mixed")
    assert all(t.dtype == torch.float32 for t in b16.state_dict().values())


@pytest.mark.parametrize("arch", ["batchtopk", "relu", "jumprelu"])
def test_bf16_mixed_step_keeps_float32_weights_and_optimiser_state(arch):
    """Under bf16-mixed the loss is that of bfloat16 products (close to, not equal to, float32's),
    and the weights, their gradients and Adam's moments all stay float32."""
    from llmri.sae.trainer import _Trainer

    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 24, generator=g)
    losses = {}
    for ac in (None, torch.bfloat16):
        torch.manual_seed(0)
        sae = SAE(24, 80, arch=arch, k=4 if arch == "batchtopk" else None)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
            sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_enc.T.clone(), dim=1))
            sae.threshold.fill_(0.1 if arch == "jumprelu" else 0.0)
        tr = _Trainer(sae, 1e-3, 10, 1.0, 0.05, 0.05, aux_k=6, aux_coefficient=1 / 32, dead_tokens=10**9, autocast=ac)
        tr.step(x, x)
        losses[ac] = tr.last["loss"]
        tr.step(x, x)
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in tr.params)
        moments = [v for st in tr.opt.state.values() for v in st.values() if v.numel() > 1]
        assert len(moments) == 2 * len(tr.params) and all(v.dtype == torch.float32 for v in moments)
        assert sae.threshold.dtype == torch.float32 and tr.fmax.dtype == torch.float32
    assert losses[None] != losses[torch.bfloat16]
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.02)


def test_training_precision_and_the_saved_folder(syn, tmp_path, monkeypatch):
    """auto follows AUTO_BF16["sae-train"] on native-bf16 hardware; the folder records the precision
    in llmri's own cfg.json section and keeps float32 weights, so SAELens still reads it."""
    from safetensors import safe_open

    import llmri.sae.trainer as tr

    cpu = torch.device("cpu")
    monkeypatch.setattr(tr, "native_bf16", lambda device: True)
    monkeypatch.setitem(tr.AUTO_BF16, "sae-train", True)
    assert tr.training_precision("auto", cpu) == "bf16-mixed"
    monkeypatch.setitem(tr.AUTO_BF16, "sae-train", False)
    assert tr.training_precision("auto", cpu) == "float32"
    monkeypatch.setitem(tr.AUTO_BF16, "sae-train", True)
    monkeypatch.setattr(tr, "native_bf16", lambda device: False)
    assert tr.training_precision("auto", cpu) == "float32"
    assert tr.training_precision("bfloat16", cpu) == tr.training_precision("bf16-mixed", cpu) == "bf16-mixed"
    assert tr.training_precision("fp32", cpu) == "float32"
    for bad in ("float16", "int8", torch.bfloat16):
        with pytest.raises(llmri.LlmriError, match="dtype .* is not one of auto, float32, bf16-mixed"):
            train_sae(syn[0], "resid.1", dtype=bad, progress=False)
    sae = train_sae(syn[0], "resid.1", n_latents=16, k=2, batch_size=2000, dtype="bf16-mixed", progress=False)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["llmri"]["precision"] == "bf16-mixed" and cfg["dtype"] == "float32"
    with safe_open(str(tmp_path / "sae" / "sae_weights.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert SAE.load(tmp_path / "sae").metadata["precision"] == "bf16-mixed"


@pytest.mark.parametrize("args", [["train", "nowhere", "--site", "resid.1", "--out", "o"],
                                  ["eval", "nowhere", "--model", "tiny", "--corpus", "c.csv"]])
def test_bad_dtype_on_the_command_line_is_one_line(tmp_path, args):
    from test_cli import assert_one_line_error, run

    assert_one_line_error(run("sae", *args, "--dtype", "half", cwd=tmp_path), "--dtype 'half' is not one of")
    assert not (tmp_path / "o").exists()


def test_streaming_memory_is_bounded(tmp_path):
    """Peak traced memory of training stays flat when the token count grows 4x (same shard size)."""
    peaks = []
    for n in (10000, 40000):
        scan, _, _ = synthetic_scan(tmp_path / f"s{n}", n_tok=n, shard_tokens=2500)
        tracemalloc.start()
        train_sae(scan, "resid.1", n_latents=32, k=3, epochs=1, batch_size=2500, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    from conftest import LABELS, TEXTS, make_model

    model = make_model("llama")
    corpus = llmri.Corpus(TEXTS * 4, LABELS * 4)
    scan = llmri.scan(model, corpus, tmp_path_factory.mktemp("tiny") / "scan", sites=("resid",),
                      token_sites=("resid.1", "resid.2", "mlp.1", "mlp_in.1", "mlp_out.1"), progress=False)
    return model, scan


def test_multi_site_and_transcoder_on_tiny_model(tiny_scan):
    _, scan = tiny_scan
    saes = train_sae(scan, ["resid.1", "resid.2"], n_latents=64, k=4, epochs=2, batch_size=64, lr=3e-3,
                     progress=False)
    assert set(saes) == {"resid.1", "resid.2"} and saes["resid.2"].site == "resid.2"
    X = scan.token_activations(2)
    assert explained_variance(saes["resid.2"], X) > 0.3
    # transcoder: MLP neurons (width 64) -> MLP output (width 32): the target is linear in the input
    tc = train_sae(scan, "mlp.1", target_site="mlp_out.1", n_latents=64, k=8, arch="topk", epochs=20,
                   batch_size=64, lr=3e-3, progress=False)
    assert tc.is_transcoder and tc.d_in == 64 and tc.d_out == 32 and not tc.apply_b_dec_to_input
    x, y = torch.from_numpy(scan.token_activations(1, "mlp")), torch.from_numpy(scan.token_activations(1, "mlp_out"))
    with torch.no_grad():
        yh = tc(x)
    ev = float(1 - ((y - yh) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    assert ev > 0.5
    # a transcoder is not an SAE of its input: reconstructing x itself would be meaningless
    assert yh.shape == y.shape
    # the usual transcoder: the MLP's input (after the post-attention norm) -> its output, through
    # the nonlinear MLP; it must explain much of the output that the input's mean cannot
    tc = train_sae(scan, "mlp_in.1", target_site="mlp_out.1", n_latents=128, k=8, arch="topk", epochs=30,
                   batch_size=64, lr=3e-3, progress=False)
    assert tc.site == "mlp_in.1" and tc.is_transcoder and not tc.apply_b_dec_to_input
    x = torch.from_numpy(scan.token_activations(1, "mlp_in"))
    with torch.no_grad():
        yh = tc(x)
    ev = float(1 - ((y - yh) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    assert ev > 0.5


def test_skip_first_leaves_out_each_documents_first_token(tmp_path):
    """A huge first token per document (a decoder's attention sink) must not set the scaling."""
    X, _ = synthetic(n_tok=4000)
    X[::100] *= 1000.0                                    # every document's first token
    scan = scan_from_arrays(tmp_path / "s", {}, labels=np.arange(40) % 2, token_activations={"resid.1": X},
                            lengths=np.full(40, 100), shard_tokens=1000)
    kw = dict(n_latents=16, k=2, epochs=1, batch_size=1000, progress=False)
    rest = np.delete(X[:1000], np.arange(0, 1000, 100), axis=0)
    skip = train_sae(scan, "resid.1", skip_first=True, **kw)
    keep = train_sae(scan, "resid.1", skip_first=False, skip_outliers=None, **kw)
    want = np.sqrt(32) / np.linalg.norm(rest, axis=1).mean()
    assert skip.metadata["normalization"]["input_scale"] == pytest.approx(want, rel=0.05)
    assert keep.metadata["normalization"]["input_scale"] < want / 5
    feats = llmri.feature_activations(skip, scan, skip_first=True, progress=False)
    assert feats.n_tokens == 4000 - 40
    assert not np.isin(feats.top_tokens, np.arange(0, 4000, 100)).any()


def test_skip_outliers_trains_as_if_the_massive_tokens_were_not_there(tmp_path):
    """Tokens whose norm is far above the site's median (massive activations away from position 0)
    are left out of training and of feature statistics: the SAE equals one trained on a scan
    without those rows, and feature_activations never counts them."""
    X, _ = synthetic(n_tok=4000)
    bad = np.array([150, 1250, 2350, 3450])              # one per shard, none a first token
    X[bad] *= 500.0
    labels = np.arange(40) % 2
    scan = scan_from_arrays(tmp_path / "s", {}, labels=labels, token_activations={"resid.1": X},
                            lengths=np.full(40, 100), shard_tokens=1000)
    lengths = np.full(40, 100)
    lengths[bad // 100] -= 1
    clean = scan_from_arrays(tmp_path / "c", {}, labels=labels, token_activations={"resid.1": np.delete(X, bad, 0)},
                             lengths=lengths, shard_tokens=999)     # the same 10 documents per shard
    kw = dict(n_latents=16, k=2, epochs=1, batch_size=250, skip_first=False, dead_tokens=1000, progress=False)
    sae = train_sae(scan, "resid.1", **kw)              # skip_outliers=10 by default
    ref = train_sae(clean, "resid.1", skip_outliers=None, **kw)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), getattr(ref, name))
    median = np.median(np.linalg.norm(X[:1000], axis=1))   # the first shard read sets the threshold
    assert sae.metadata["max_norm"] == pytest.approx(10 * median, rel=0.05)
    feats = llmri.feature_activations(sae, scan, skip_first=False, progress=False)
    assert feats.n_tokens == 4000 - len(bad) and not np.isin(feats.top_tokens, bad).any()
    with_all = train_sae(scan, "resid.1", skip_outliers=None, **kw)
    assert "max_norm" not in with_all.metadata or with_all.metadata["max_norm"] is None
    assert llmri.feature_activations(with_all, scan, skip_first=False, progress=False).n_tokens == 4000
    with pytest.raises(llmri.LlmriError, match="skip_outliers"):
        train_sae(scan, "resid.1", skip_outliers=0.5, **kw)


def test_transformer_lens_hook_names_become_sites(tmp_path):
    from llmri.sae.model import site_from_hook_name

    assert site_from_hook_name("blocks.8.hook_resid_pre") == "resid.8"
    assert site_from_hook_name("blocks.8.hook_resid_post") == "resid.9"
    assert site_from_hook_name("blocks.2.hook_mlp_out") == "mlp_out.2"
    assert site_from_hook_name("resid.3") == "resid.3"
    sae = SAE(8, 4, arch="relu", site="resid.1")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    del cfg["llmri"]
    cfg["metadata"] = {"hook_name": "blocks.5.hook_resid_post"}  # as a SAELens release names it
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    assert SAE.load(tmp_path / "s").site == "resid.6"
