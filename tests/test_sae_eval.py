"""evaluate_sae against hand-spliced forward passes written without llmri's hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.sae import SAE, evaluate_sae
from conftest import TEXTS, make_model


def identity_sae(d: int, site: str) -> SAE:
    """relu(x) - relu(-x) = x: an exact reconstruction with 2d ReLU features."""
    sae = SAE(d, 2 * d, arch="relu", site=site)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def random_sae(d: int, site: str, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, 48, arch="topk", k=6, site=site)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(48, d, generator=g), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=g))
    return sae


def hand_metrics(model, sae, layer: int, skip_first: bool = False):
    """CE clean/spliced/zero and FVU of resid.layer, one text at a time, hooks on the block itself;
    ``skip_first`` leaves position 0 as it is and out of the FVU."""
    block = model.module.model.layers[layer - 1]
    tok = model.tokenizer
    mode = {"m": None}

    def hook(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        new = sae(h) if mode["m"] == "sae" else torch.zeros_like(h)
        if mode["m"] is None:
            return None
        if skip_first and mode["m"] == "sae":
            new[:, 0] = h[:, 0]
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    handle = block.register_forward_hook(hook)
    ce = {None: [], "sae": [], "zero": []}
    xs = []
    try:
        with torch.no_grad():
            for t in TEXTS:
                ids = torch.tensor([tok(t)["input_ids"]])
                for m in ce:
                    mode["m"] = m
                    out = model.module(input_ids=ids, output_hidden_states=m is None)
                    logp = torch.log_softmax(out.logits[0, :-1], -1)
                    ce[m].extend((-logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]).tolist())
                    if m is None:
                        xs.append(out.hidden_states[layer][0][1 if skip_first else 0:])
    finally:
        handle.remove()
    x = torch.cat(xs)
    with torch.no_grad():
        fvu = float(((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    return {k: float(np.mean(v)) for k, v in ce.items()}, fvu


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_identity_and_zero_saes_give_scores_one_and_zero(model):
    m = evaluate_sae(identity_sae(32, "resid.2"), model, TEXTS, progress=False)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6) and m["cossim"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_with_ablation"] > m["ce_loss_without_sae"]
    zero = SAE(32, 8, arch="relu", site="resid.2")       # every weight 0: reconstruction 0
    z = evaluate_sae(zero, model, TEXTS, skip_first=False, progress=False)   # zero everywhere = the ablation
    assert z["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert z["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert z["dead_fraction"] == 1.0 and z["l0"] == 0


@pytest.mark.parametrize("skip_first", [False, True])
def test_random_sae_matches_hand_spliced_forward(model, skip_first):
    sae = random_sae(32, "resid.2")
    m = evaluate_sae(sae, model, TEXTS, batch_tokens=64, skip_first=skip_first, progress=False)
    ce, fvu = hand_metrics(model, sae, 2, skip_first)
    assert m["ce_loss_without_sae"] == pytest.approx(ce[None], rel=1e-5)
    assert m["ce_loss_with_sae"] == pytest.approx(ce["sae"], rel=1e-5)
    assert m["ce_loss_with_ablation"] == pytest.approx(ce["zero"], rel=1e-5)
    want = (ce["zero"] - ce["sae"]) / (ce["zero"] - ce[None])
    assert m["ce_loss_score"] == pytest.approx(want, rel=1e-4)
    assert m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-4)
    assert 0 < m["l0"] <= 6 and m["feature_density"].shape == (48,)


def test_precision_is_recorded_and_bf16_mixed_stays_near_the_float32_metrics(model):
    """The same SAE and model evaluated in float32 (the reference) and in bf16-mixed. The SAE is the
    identity shrunk by about the median |x| of resid.2, so a varying half of its features fire."""
    sae = identity_sae(32, "resid.2")
    with torch.no_grad():
        sae.b_enc.fill_(-0.015)
    m32 = evaluate_sae(sae, model, TEXTS, progress=False)
    mixed = llmri.Model.from_module(model.module, model.tokenizer, name=model.name, precision="bf16-mixed")
    m16 = evaluate_sae(sae, mixed, TEXTS, progress=False)
    assert (m32["precision"], m16["precision"]) == ("float32", "bf16-mixed")
    assert m16["ce_loss_with_sae"] != m32["ce_loss_with_sae"]     # the forwards did run in bfloat16
    assert 0.3 < m32["explained_variance"] < 0.9 and 5 < m32["l0"] < 27
    assert m16["explained_variance"] == pytest.approx(m32["explained_variance"], abs=0.01)
    assert m16["ce_loss_score"] == pytest.approx(m32["ce_loss_score"], abs=0.02)
    assert m16["l0"] == pytest.approx(m32["l0"], rel=0.05)


def test_bad_sae_for_model(model):
    with pytest.raises(llmri.LlmriError, match="another model or site"):
        evaluate_sae(identity_sae(16, "resid.2"), model, TEXTS, progress=False)
    with pytest.raises(llmri.LlmriError, match="does not exist"):
        evaluate_sae(identity_sae(32, "resid.9"), model, TEXTS, progress=False)
    with pytest.raises(llmri.LlmriError, match="corpus"):
        evaluate_sae(identity_sae(32, "resid.2"), model, [], progress=False)


def test_transcoder_reproducing_the_mlp_output_scores_one(model):
    """mlp_out.1 = down_proj(mlp.1): a transcoder with W_dec built from down_proj is exact."""
    down = model.module.model.layers[1].mlp.down_proj.weight.detach()     # [32, 64]
    tc = SAE(64, 128, arch="relu", site="mlp.1", target_site="mlp_out.1", d_out=32)
    eye = torch.eye(64)
    with torch.no_grad():
        tc.W_enc.copy_(torch.cat([eye, -eye], 1))
        tc.W_dec.copy_(torch.cat([down.T, -down.T], 0))
    assert tc.is_transcoder and not tc.apply_b_dec_to_input
    m = evaluate_sae(tc, model, TEXTS, skip_first=False, progress=False)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        tc.W_dec.mul_(0.5)                     # half the MLP output: a real, measurable loss
    half = evaluate_sae(tc, model, TEXTS, skip_first=False, progress=False)
    assert half["explained_variance"] == pytest.approx(0.75, abs=0.1) and half["ce_loss_score"] < 1
    backwards = SAE(32, 8, arch="relu", site="resid.3", target_site="mlp_out.0")
    with pytest.raises(llmri.LlmriError, match="must come before"):
        evaluate_sae(backwards, model, TEXTS, progress=False)
