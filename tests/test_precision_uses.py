"""Each decoder use (scans, generation, steering sweeps, the local LM, attribution and its ablations,
lesion maps, patching) computes in bfloat16 under ``bf16-mixed`` and in float32 under
``float32``, seen from inside the model: a forward hook on an MLP projection records the dtype
of its output. Results under bf16-mixed stay close to the float32 run of the same weights (the
reference), and ``dtype="auto"`` computes a use in bf16 only where ``AUTO_BF16`` says so."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

import llmri
from conftest import make_model
from llmri import precision as model_mod
from llmri.circuits import attribute, validate_circuit
from llmri.explain import LocalLM
from llmri.sae import SAE

PROMPT = "the star shines over the galaxy and the"


@pytest.fixture(scope="module")
def tiny():
    return make_model("llama")


@pytest.fixture(scope="module")
def scan(tiny, tmp_path_factory):
    from conftest import LABELS, TEXTS

    return llmri.scan(tiny, llmri.Corpus(TEXTS, LABELS), tmp_path_factory.mktemp("scan"), progress=False)


def as_precision(model, precision: str):
    """The same weights under another precision policy."""
    return dataclasses.replace(model, precision=precision)


@contextlib.contextmanager
def seen(model):
    """The dtypes the MLP output projection of block 1 produced inside the block, and whether
    inference mode was on (autocast does not keep its cast weights there)."""
    got = []
    mod = model.module.model.layers[1].mlp.down_proj
    h = mod.register_forward_hook(lambda m, a, out: got.append((out.dtype, torch.is_inference_mode_enabled())))
    try:
        yield got
    finally:
        h.remove()


def relu_identity_sae(d: int, site: str) -> SAE:
    """W_enc = W_dec = I: the positive part of the residual is the code, the rest the error node."""
    sae = SAE(d, d, arch="relu", k=None, site=site)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def run_generate(model):
    return llmri.generate(model, ["the star", "a comet runs"], max_new_tokens=4)


def run_steer(model, scan):
    return llmri.steer_sweep(model, scan, "space", "food", layer=1, alphas=[0.0, 2.0], prompts=["the star"],
                             max_new_tokens=3)


def run_chat(model):
    return LocalLM(model, chat=False).chat([{"role": "user", "content": "the star"}], max_tokens=3)


def run_lm(model):
    lm = LocalLM(model, chat=False)
    run_chat(model)
    msgs = [{"role": "user", "content": "the moon"}]
    return (lm.value_logprobs(msgs, ["the star", " shines", " over"], ["sun", "moon", "red"]),
            lm.word_logprobs(msgs, "the", ["sun", "moon", "red"]))


def run_attribute(model):
    saes = [relu_identity_sae(32, "resid.1"), relu_identity_sae(32, "resid.2")]
    g = attribute(model, saes, PROMPT, target=" the", max_feature_nodes=8)
    return g, validate_circuit(model, saes, g, k=(3,), n_random=2, n_single=5)


def run_lesion(model, corpus):
    return llmri.lesion_map(model, corpus, layers=[1], progress=False)


def run_patch(model):
    return llmri.patch(model, "the star shines over the galaxy", "the moon shines over the galaxy", progress=False)


def run_scan(model, corpus):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return llmri.scan(model, corpus, d, progress=False, batch_tokens=16).activations(1)


USES = {
    "scan": lambda m, c, s: run_scan(m, c),
    "generate": lambda m, c, s: run_generate(m),
    "steer_sweep": lambda m, c, s: run_steer(m, s),
    "LocalLM": lambda m, c, s: run_lm(m),
    "LocalLM chat": lambda m, c, s: run_chat(m),
    "attribute+validate": lambda m, c, s: run_attribute(m),
    "lesion_map": lambda m, c, s: run_lesion(m, c),
    "patch": lambda m, c, s: run_patch(m),
}


@pytest.mark.parametrize("use", list(USES))
def test_each_use_computes_in_bf16_under_bf16_mixed_and_float32_otherwise(use, tiny, corpus, scan):
    for precision, want in (("float32", torch.float32), ("exact", torch.float32), ("bf16-mixed", torch.bfloat16)):
        model = as_precision(tiny, precision)
        with seen(model) as got:
            USES[use](model, corpus, scan)
        assert got, f"{use}: the hooked projection never ran"
        assert {d for d, _ in got} == {want}, f"{use} under {precision}: {[d for d, _ in got]}"


@pytest.mark.parametrize("use", ["scan", "generate", "LocalLM chat", "lesion_map", "patch"])
def test_bf16_forwards_of_many_passes_run_outside_inference_mode(use, tiny, corpus, scan):
    """Autocast keeps one bf16 copy of each weight per call only outside inference mode; inside it
    every forward casts every weight again (bf16-mixed generation was then 1.5x slower than float32)."""
    model = as_precision(tiny, "bf16-mixed")
    with seen(model) as got:
        USES[use](model, corpus, scan)
    assert len(got) > 1 and not any(inf for _, inf in got)


def test_outputs_under_bf16_mixed_stay_close_to_float32(tiny, corpus):
    f32, mixed = as_precision(tiny, "float32"), as_precision(tiny, "bf16-mixed")
    # the local LM's log-probabilities
    for a, b in zip(run_lm(f32), run_lm(mixed)):
        np.testing.assert_allclose(b, a, atol=0.05)
        assert not np.allclose(a, b, atol=0, rtol=1e-7)         # it did compute differently
    # attributions of the same target, and the ablations that check them
    (g32, v32), (g16, v16) = run_attribute(f32), run_attribute(mixed)
    key = ["site", "position", "feature"]
    both = g32.features.merge(g16.features, on=key, suffixes=("32", "16"))
    assert len(both) >= 0.9 * max(len(g32.features), len(g16.features))
    scale = np.abs(both["attribution32"]).max()
    np.testing.assert_allclose(both["attribution16"], both["attribution32"], atol=0.05 * scale)
    np.testing.assert_allclose(v16["topk"][0]["top_drop"], v32["topk"][0]["top_drop"], atol=0.05)
    # lesion effects on the language-model loss
    l32, l16 = run_lesion(f32, corpus), run_lesion(mixed, corpus)
    assert l16.attrs["baseline"] == pytest.approx(l32.attrs["baseline"], abs=0.02)
    np.testing.assert_allclose(l16["effect"], l32["effect"], atol=0.02)
    # patching: the patched log-probabilities (the tiny model's clean and corrupted ones differ by
    # only 0.003, so the restored shares, ratios of such differences, are compared through them)
    p32, p16 = run_patch(f32), run_patch(mixed)
    assert p16.clean_metric == pytest.approx(p32.clean_metric, abs=2e-3)
    np.testing.assert_allclose(p16.scores["metric"], p32.scores["metric"], atol=2e-3)


def test_auto_computes_a_use_in_bf16_only_where_the_policy_says(tiny, corpus, monkeypatch):
    monkeypatch.setattr(model_mod, "native_bf16", lambda device: True)
    monkeypatch.setattr(model_mod, "AUTO_BF16", {"generate": True})
    auto = as_precision(tiny, "auto")
    assert model_mod.precision_used(auto, "generate") == "bf16-mixed"
    assert model_mod.precision_used(auto, "lesion") == "float32"     # missing from the policy
    with seen(auto) as gen:
        run_generate(auto)
    with seen(auto) as lesion:
        run_lesion(auto, corpus)
    assert {d for d, _ in gen} == {torch.bfloat16}
    assert {d for d, _ in lesion} == {torch.float32}
    # without native bfloat16, auto is float32 for every use, listed or not
    monkeypatch.setattr(model_mod, "native_bf16", lambda device: False)
    with seen(auto) as gen:
        run_generate(auto)
    assert {d for d, _ in gen} == {torch.float32}


def test_local_lm_cache_keeps_bf16_answers_apart(tiny, tmp_path):
    msgs = [{"role": "user", "content": "the star"}]
    a = LocalLM(as_precision(tiny, "float32"), chat=False, cache_dir=tmp_path)
    a.word_logprobs(msgs, "the", ["sun", "moon"])
    again = LocalLM(as_precision(tiny, "exact"), chat=False, cache_dir=tmp_path)   # float32 too: a hit
    again.word_logprobs(msgs, "the", ["sun", "moon"])
    mixed = LocalLM(as_precision(tiny, "bf16-mixed"), chat=False, cache_dir=tmp_path)
    got = mixed.word_logprobs(msgs, "the", ["sun", "moon"])
    assert (a.stats["calls"], again.stats["cache_hits"], mixed.stats["calls"]) == (1, 1, 1)
    ref = a.word_logprobs(msgs, "the", ["sun", "moon"])
    assert not np.array_equal(got, ref)                # computed in bf16, not read from the float32 entry


def test_bf16_mixed_computes_the_unembedding_in_float32(tiny):
    """Under bf16-mixed the blocks compute in bfloat16 but the logits are the float32 product of
    the final hidden state (recorded at the norm's output) with the unembedding, computed here
    outside autocast; without the float32 head they would carry bfloat16 rounding. The head's
    forward is the class's own again after the block, also after an error inside it."""
    mixed = as_precision(tiny, "bf16-mixed")
    head = tiny.module.get_output_embeddings()
    ids = tiny.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    got = []
    h = tiny.module.model.norm.register_forward_hook(lambda m, a, out: got.append(out.detach()))
    try:
        with torch.no_grad(), model_mod.computing(mixed, "generate"):
            logits = tiny.module(input_ids=ids).logits
            assert "forward" in head.__dict__
    finally:
        h.remove()
    assert "forward" not in head.__dict__
    assert logits.dtype == torch.float32
    with torch.no_grad():
        ref = got[0].float() @ head.weight.T.float()
        rounded = (got[0].to(torch.bfloat16) @ head.weight.T.to(torch.bfloat16)).float()
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert (logits - rounded).abs().max() > 1e-4          # the bf16 product would differ
    with pytest.raises(RuntimeError), model_mod.computing(mixed, "generate"):
        raise RuntimeError("inside")
    assert "forward" not in head.__dict__
