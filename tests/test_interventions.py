"""Ablation and patching against weight edits and exact reproductions."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

import llmri
from llmri.sites import submodule

from conftest import TEXTS, make_model

IDS = {"encoder": [2, 9, 12, 20, 31, 7, 3], "decoder": [4, 9, 12, 20, 31, 7, 40]}


def run(model, ids):
    with torch.no_grad():
        out = model.module(input_ids=torch.tensor([ids]))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def ids_for(kind):
    return IDS["encoder" if kind == "bert" else "decoder"]


def zero_input_columns(proj, cols):
    """Zero the weights that read the given input features of a Linear or GPT-2 Conv1D."""
    with torch.no_grad():
        if isinstance(proj, torch.nn.Linear):
            proj.weight[:, cols] = 0
        else:  # Conv1D stores [in, out]
            proj.weight[cols, :] = 0


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_zero_neuron_equals_zeroed_weight_column(kind):
    model = make_model(kind)
    ids = ids_for(kind)
    with llmri.ablate(model, {"mlp.1": [3, 17]}):
        got = run(model, ids)
    edited = make_model(kind)
    zero_input_columns(submodule(edited.module, edited.adapter, 1, "mlp_out"), [3, 17])
    want = run(edited, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, run(model, ids))  # the ablation did something


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_zero_head_equals_zeroed_output_projection_slice(kind):
    model = make_model(kind)
    ids = ids_for(kind)
    with llmri.ablate(model, {"attn.2": [1], "attn.0": [0, 3]}):
        got = run(model, ids)
    edited = make_model(kind)
    hd = 32 // 4
    zero_input_columns(submodule(edited.module, edited.adapter, 2, "attn_out"), list(range(hd, 2 * hd)))
    zero_input_columns(submodule(edited.module, edited.adapter, 0, "attn_out"),
                       list(range(0, hd)) + list(range(3 * hd, 4 * hd)))
    torch.testing.assert_close(got, run(edited, ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_model_is_bit_identical_after_exit(kind):
    model = make_model(kind)
    ids = ids_for(kind)
    before = run(model, ids)
    with llmri.ablate(model, {"mlp.0": [1], "attn.1": [2], "mlp_out.2": None}):
        assert not torch.equal(run(model, ids), before)
    assert torch.equal(run(model, ids), before)
    with pytest.raises(ZeroDivisionError):
        with llmri.ablate(model, {"attn.0": [0]}):
            1 / 0
    assert torch.equal(run(model, ids), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())


def test_mean_and_resample_take_statistics_from_a_scan(tmp_path):
    model = make_model("gpt2")
    scan = llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "s", sites=("mlp", "attn_z", "resid"))
    mean = scan.activations(1, "mlp").mean(0)
    ids = ids_for("gpt2")
    with llmri.ablate(model, {"mlp.1": [5]}, mode="mean", scan=scan):
        got = run(model, ids)
    edited = make_model("gpt2")  # the same as a weight edit: move neuron 5's mean output into the bias
    proj = submodule(edited.module, edited.adapter, 1, "mlp_out")
    with torch.no_grad():
        proj.bias += proj.weight[5] * float(mean[5])
    zero_input_columns(proj, [5])
    torch.testing.assert_close(got, run(edited, ids), rtol=1e-5, atol=1e-5)
    seen = []
    with llmri.ablate(model, {"mlp.1": [5]}, mode="resample", scan=scan, seed=3):
        with llmri.hooks(model.module, model.adapter, {"mlp.1": lambda x: seen.append(float(x[0, 0, 5]))}):
            run(model, ids), run(model, ids)
    pool = scan.activations(1, "mlp")[:, 5]
    assert all(np.isclose(pool, v, atol=1e-6).any() for v in seen)
    outs = []
    for _ in range(2):  # the same seed draws the same documents
        with llmri.ablate(model, {"mlp.1": [5]}, mode="resample", scan=scan, seed=3):
            outs.append(run(model, ids))
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(llmri.LlmriError, match="needs a Scan with site mlp_out.0"):
        with llmri.ablate(model, {"mlp_out.0": None}, mode="mean", scan=scan):
            pass
    with pytest.raises(llmri.LlmriError, match="takes its statistics from a Scan"):
        with llmri.ablate(model, {"mlp.0": [1]}, mode="mean"):
            pass


def test_residual_directions_are_projected_out(tmp_path):
    model = make_model("llama")
    scan = llmri.scan(model, llmri.Corpus(TEXTS), tmp_path / "s")
    rm = llmri.regions(scan, reducer="pca", layers=[2])
    dirs = rm.components(2)
    seen = {}
    with llmri.ablate(model, {"resid.2": dirs}):
        with llmri.hooks(model.module, model.adapter, {"resid.2": lambda x: seen.__setitem__("x", x)}):
            run(model, ids_for("llama"))
    proj = seen["x"][0].numpy() @ dirs.T
    np.testing.assert_allclose(proj, 0, atol=1e-5)


def test_ablation_errors():
    model = make_model("gpt2")
    for spec, pattern in [({"attn.1": [9]}, "index 9 is out of range 0..3"), ({"mlp.7": [0]}, "needs a layer in 0..2"),
                          ({"mlp_out.0": [1]}, "removes the whole sublayer"), ({}, "non-empty dict"),
                          ({"mlp.0": ["a"]}, "expects a list of integer indices")]:
        with pytest.raises(llmri.LlmriError, match=pattern):
            with llmri.ablate(model, spec):
                pass
    with pytest.raises(llmri.LlmriError, match="mode 'drop' is not one of"):
        with llmri.ablate(model, {"mlp.0": [0]}, mode="drop"):
            pass


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_patching_everything_or_nothing(kind):
    model = make_model(kind)
    clean, corrupted = "the star shines over the galaxy", "the ball kicks over the pitch"
    clean_out, cache = llmri.run_with_cache(model, clean, sites=("resid",))
    encode = lambda t: torch.tensor([model.tokenizer(t)["input_ids"]])
    fwd = (lambda x: model.module(input_ids=x).logits) if kind == "gpt2" else \
        (lambda x: model.base(input_ids=x).last_hidden_state)
    with torch.no_grad():
        want_clean, want_corr = fwd(encode(clean)), fwd(encode(corrupted))
        with llmri.patching(model, cache):
            assert torch.equal(fwd(encode(corrupted)), want_clean)
        with llmri.patching(model, {}):
            assert torch.equal(fwd(encode(corrupted)), want_corr)
        first = {"resid.0": cache["resid.0"]}  # every position of the embeddings: the rest follows
        with llmri.patching(model, first):
            torch.testing.assert_close(fwd(encode(corrupted)), want_clean)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_patch_scores(kind):
    model = make_model(kind)
    res = llmri.patch(model, "the star shines over the galaxy", "the ball kicks over the pitch",
                      sites=("resid", "mlp_out"))
    T = len(res.tokens)
    assert res.matrix("resid").shape == (model.n_layers + 1, T) and res.matrix("mlp_out").shape == (model.n_layers, T)
    # restoring the last block's output at every position restores the whole clean metric:
    # check one position's definition against a direct run
    row = res.scores[(res.scores["kind"] == "resid") & (res.scores["layer"] == 1)].iloc[2]
    assert row["restored"] == pytest.approx((row["metric"] - res.corrupted_metric) /
                                            (res.clean_metric - res.corrupted_metric))
    if kind == "gpt2":  # in a decoder the last position's final residual carries the whole prediction
        last = res.scores[(res.scores["kind"] == "resid") & (res.scores["layer"] == model.n_layers)]
        assert last.set_index("position").loc[T - 1, "restored"] == pytest.approx(1.0, abs=1e-5)
        assert last.set_index("position").loc[0, "restored"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(llmri.LlmriError, match="same number of tokens"):
        llmri.patch(model, "the star", "the ball kicks")


def test_lesion_map_matches_weight_edits():
    model = make_model("gpt2")
    corpus = llmri.Corpus(TEXTS)
    df = llmri.lesion_map(model, corpus, measure="loss")
    assert len(df) == 3 * 4 + 3 and set(df["component"]) == {"head", "mlp"}
    assert df.attrs["measure"] == "language-model loss"

    def loss_of(m):
        total = count = 0
        with torch.no_grad():
            for t in TEXTS:
                ids = torch.tensor([m.tokenizer(t)["input_ids"]])
                logits = m.module(input_ids=ids).logits[0, :-1]
                nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                total += float(nll)
                count += ids.shape[1] - 1
        return total / count

    assert df.attrs["baseline"] == pytest.approx(loss_of(model), rel=1e-5)
    edited = make_model("gpt2")
    zero_input_columns(submodule(edited.module, edited.adapter, 1, "attn_out"), list(range(16, 24)))  # head 2
    row = df[(df["layer"] == 1) & (df["head"] == 2)].iloc[0]
    assert row["value"] == pytest.approx(loss_of(edited), rel=1e-5)
    edited = make_model("gpt2")
    mlp = submodule(edited.module, edited.adapter, 0, "mlp_out")
    with torch.no_grad():
        mlp.weight.zero_(), mlp.bias.zero_()
    row = df[(df["component"] == "mlp") & (df["layer"] == 0)].iloc[0]
    assert row["value"] == pytest.approx(loss_of(edited), rel=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama", "gpt_neox"])
def test_lesion_map_replays_unablated_blocks(kind, monkeypatch):
    """A lesion in block L replays blocks 0..L-1 from one unablated pass: the table is the same as
    recomputing them, and block 0 runs in the recording pass only."""
    import llmri.interventions as I

    model = make_model(kind)
    corpus = llmri.Corpus(TEXTS * 2, ["a", "b"] * len(TEXTS))
    calls = []
    attn0 = submodule(model.module, model.adapter, 0, "attn")
    handle = attn0.register_forward_pre_hook(lambda *a: calls.append(1))
    replayed = llmri.lesion_map(model, corpus, layers=[1, 2])
    replay_calls = len(calls)
    monkeypatch.setattr(I, "REPLAY_BYTES", 0)
    calls.clear()
    recomputed = llmri.lesion_map(model, corpus, layers=[1, 2])
    handle.remove()
    batches, rest = divmod(len(calls), len(recomputed) + 1)    # the baseline pass and one per lesion
    assert rest == 0 and batches >= 1
    # replaying: the baseline pass records (a loss), or the representation's clean pass plus a recording
    assert replay_calls == batches * (1 if replayed.attrs["measure"].endswith("loss") else 2)
    pd.testing.assert_frame_equal(replayed, recomputed)
    assert replayed.attrs == recomputed.attrs


def test_lesion_map_on_an_encoder_uses_representation_change():
    model = make_model("bert")
    df = llmri.lesion_map(model, llmri.Corpus(TEXTS, ["a", "b"] * 5), layers=[0])
    assert df.attrs["measure"].startswith("representation change") and df.attrs["baseline"] == pytest.approx(0, abs=1e-6)
    assert (df["effect"] > 0).all()
    probe = llmri.lesion_map(model, llmri.Corpus(TEXTS, ["a", "b"] * 5), measure="probe", layers=[0], heads=False)
    assert probe.attrs["baseline"] == 1.0 and len(probe) == 1
    with pytest.raises(llmri.LlmriError, match="no language-model or classification head"):
        llmri.lesion_map(model, llmri.Corpus(TEXTS), measure="loss")


def test_patch_decoder_without_lm_head():
    from conftest import make_module, make_tokenizer

    model = llmri.Model.from_module(make_module("gpt2").transformer, make_tokenizer("gpt2"))
    res = llmri.patch(model, "the star shines", "the moon shines")
    last = res.scores[(res.scores["kind"] == "resid") & (res.scores["layer"] == model.n_layers)]
    assert last.set_index("position").loc[len(res.tokens) - 1, "restored"] == pytest.approx(1.0, abs=1e-5)


def test_lesion_map_rejects_missing_layers():
    with pytest.raises(llmri.LlmriError, match="layer 7 is out of range: the model has layers 0..2"):
        llmri.lesion_map(make_model("gpt2"), llmri.Corpus(TEXTS), layers=[7])
