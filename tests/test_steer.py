"""Steering, generation and sink-free pooling on tiny random decoders, against independent hooks
and hand-written loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri import LlmriError
from llmri.sites import blocks, submodule

from conftest import LABELS, TEXTS, make_model

IDS = [4, 9, 12, 20, 31, 7, 40]


def logits(model, ids=IDS):
    with torch.no_grad():
        return model.module(input_ids=torch.tensor([ids])).logits


def add_hook(module, vec, alpha):
    def hook(mod, args, output):
        if isinstance(output, tuple):
            return (output[0] + alpha * vec,) + tuple(output[1:])
        return output + alpha * vec
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("site", ["resid.2", "attn_out.1", "mlp_out.0"])
def test_steer_add_equals_an_independent_forward_hook(kind, site):
    model = make_model(kind)
    vec = torch.randn(32, generator=torch.Generator().manual_seed(1))
    with llmri.steer(model, {site: vec.numpy()}, alpha=3.0):
        got = logits(model)
    kind_, layer = site.split(".")
    layer = int(layer)
    target = (blocks(model.module, model.adapter)[layer - 1] if kind_ == "resid"
              else submodule(model.module, model.adapter, layer, kind_))
    h = add_hook(target, vec, 3.0)
    try:
        want = logits(model)
    finally:
        h.remove()
    assert (got - want).abs().max() <= 1e-5
    assert (got - logits(model)).abs().max() > 1e-3  # the steering did something


def test_steer_resid0_adds_to_the_embedding_output():
    model = make_model("llama")
    vec = torch.randn(32, generator=torch.Generator().manual_seed(2))
    with llmri.steer(model, {"resid.0": vec}, alpha=0.5):
        got = logits(model)
    h = add_hook(model.module.model.embed_tokens, vec, 0.5)
    try:
        want = logits(model)
    finally:
        h.remove()
    assert (got - want).abs().max() <= 1e-5


def block_input(model, layer, fn):
    """Run ``fn`` while an independent pre-hook records the input of block ``layer``."""
    seen = {}

    def pre(mod, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
    h = blocks(model.module, model.adapter)[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        fn()
    finally:
        h.remove()
    return seen["x"][0]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_clamp_sets_exactly_the_requested_projection(kind):
    model = make_model(kind)
    vec = torch.randn(32, generator=torch.Generator().manual_seed(3))
    unit = vec / vec.norm()
    clean = block_input(model, 2, lambda: logits(model))
    with llmri.steer(model, {"resid.2": vec}, alpha=-4.0, mode="clamp"):
        clamped = block_input(model, 2, lambda: logits(model))
    torch.testing.assert_close(clamped @ unit, torch.full((len(IDS),), -4.0), atol=1e-5, rtol=0)
    # everything orthogonal to the direction is untouched
    rest = lambda x: x - (x @ unit)[:, None] * unit  # noqa: E731
    torch.testing.assert_close(rest(clamped), rest(clean), atol=1e-5, rtol=0)


def test_positions_steer_only_the_named_tokens():
    model = make_model("llama")
    vec = torch.ones(32)
    clean = block_input(model, 1, lambda: logits(model))
    with llmri.steer(model, {"resid.1": vec}, alpha=2.0, positions=[0, -1]):
        steered = block_input(model, 1, lambda: logits(model))
    diff = (steered - clean).abs().amax(1)
    assert torch.allclose(diff[[0, -1]], torch.tensor([2.0, 2.0]))
    assert diff[1:-1].max() == 0


def snapshot(model):
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def no_hooks_left(module):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_model_is_bit_identical_after_exit_and_after_an_exception():
    model = make_model("llama")
    before, out_before = snapshot(model), logits(model)
    with llmri.steer(model, {"resid.1": np.ones(32)}, alpha=5.0):
        logits(model)
    with pytest.raises(RuntimeError, match="boom"):
        with llmri.steer(model, {"mlp_out.2": np.ones(32)}, alpha=5.0, mode="clamp"):
            logits(model)
            raise RuntimeError("boom")
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(out_before, logits(model)) and no_hooks_left(model.module)


@pytest.mark.parametrize("vectors, kwargs, pattern", [
    ({"nowhere.1": np.ones(32)}, {}, "unknown site 'nowhere.1'"),
    ({"attn.1": np.ones(32)}, {}, "cannot steer 'attn.1'"),
    ({"resid": np.ones(32)}, {}, "cannot steer 'resid'"),
    ({"resid.9": np.ones(32)}, {}, "'resid.9' does not exist; resid has layers 0..3"),
    ({"resid.1": np.ones(31)}, {}, "has 31 values; tiny-llama has hidden size 32"),
    ({"resid.1": np.full(32, np.nan)}, {}, "NaN or infinite"),
    ({"resid.1": np.zeros(32)}, {"mode": "clamp"}, "is zero; clamping needs a direction"),
    ({"resid.1": np.ones(32)}, {"mode": "scale"}, "mode 'scale' is not one of add, clamp"),
    ({"resid.1": np.ones(32)}, {"positions": "first"}, "positions 'first'"),
    ({}, {}, "non-empty dict"),
])
def test_bad_steering_input_is_one_line(vectors, kwargs, pattern):
    model = make_model("llama")
    with pytest.raises(LlmriError, match=pattern) as e:
        with llmri.steer(model, vectors, **kwargs):
            pass
    assert "\n" not in str(e.value) and no_hooks_left(model.module)


# ---------------------------------------------------------------- generation
def greedy_by_hand(model, prompt: str, n: int) -> str:
    """Greedy decoding without a cache: the full sequence re-run for every new token."""
    ids = model.tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model.module(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == model.module.generation_config.eos_token_id:
                break
    return model.tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gpt_neox"])
def test_greedy_generation_equals_a_hand_written_loop_and_batches_equal_singles(kind):
    model = make_model(kind, padding_side="right")
    model.module.generation_config.eos_token_id = None  # random weights: run the full length
    prompts = [TEXTS[0], TEXTS[2], TEXTS[5]]
    batched = llmri.generate(model, prompts, max_new_tokens=6)
    singles = [llmri.generate(model, p, max_new_tokens=6) for p in prompts]
    assert batched == singles
    assert batched == [greedy_by_hand(model, p, 6) for p in prompts]
    assert all(g.strip() for g in batched)


def test_generation_inside_interventions():
    model = make_model("llama")
    model.module.generation_config.eos_token_id = None
    prompts = [TEXTS[0], TEXTS[3]]
    plain = llmri.generate(model, prompts, max_new_tokens=8)
    with llmri.steer(model, {"resid.2": np.ones(32)}, alpha=0.0):
        assert llmri.generate(model, prompts, max_new_tokens=8) == plain
    with llmri.steer(model, {"resid.1": np.random.default_rng(0).normal(size=32)}, alpha=20.0):
        steered = llmri.generate(model, prompts, max_new_tokens=8)
    assert steered != plain
    with llmri.ablate(model, {"mlp_out.1": None, "mlp_out.2": None, "attn.0": [0, 1, 2, 3]}):
        assert llmri.generate(model, prompts, max_new_tokens=8) != plain
    _, cache = llmri.run_with_cache(model, TEXTS[0], sites=("resid",))
    with llmri.patching(model, cache):  # clean into clean: the prompt pass is patched with itself
        assert llmri.generate(model, TEXTS[0], max_new_tokens=8) == plain[0]
    assert no_hooks_left(model.module)


def test_sampling_is_deterministic_under_a_seed():
    model = make_model("llama")
    model.module.generation_config.eos_token_id = None
    runs = [llmri.generate(model, TEXTS[1], max_new_tokens=10, do_sample=True, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    state = torch.random.get_rng_state()
    llmri.generate(model, TEXTS[1], max_new_tokens=3, do_sample=True, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched


@pytest.mark.parametrize("call, pattern", [
    (lambda m: llmri.generate(make_model("bert"), "the sun"), "not a decoder with a language-model head"),
    (lambda m: llmri.generate(m, []), "no prompts given"),
    (lambda m: llmri.generate(m, "the sun", max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (lambda m: llmri.generate(m, "the sun", chat=True), "has no chat template"),
    (lambda m: llmri.generate(m, "the sun " * 40, max_new_tokens=40), "exceed the model's limit of 64"),
    (lambda m: llmri.generate(m, "the sun", do_sample=True, temperature=0), "temperature must be > 0"),
])
def test_generate_errors(call, pattern):
    with pytest.raises(LlmriError, match=pattern):
        call(make_model("llama"))


# ---------------------------------------------------------------- sink-free pooling and steering vectors
@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_nosink_leaves_out_the_first_token(tmp_path, side):
    model = make_model("llama", padding_side=side)
    texts = TEXTS + ["sun"]  # with [BOS], a two-token document; and see below for one token
    s = llmri.scan(model, llmri.Corpus(texts), tmp_path / "s", sites=("resid",), progress=False)
    assert s.settings["pool"] == "mean-nosink"  # auto for a decoder
    for d, text in enumerate(texts):
        ids = model.tokenizer(text)["input_ids"]
        with torch.no_grad():
            hs = model.module(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        want = hs[2][0, 1:].mean(0) if len(ids) > 1 else hs[2][0, 0]
        np.testing.assert_allclose(s.activations(2)[d], want.numpy(), atol=1e-5)
    assert llmri.embed(model, texts, "resid.2").shape == (len(texts), 32)
    np.testing.assert_allclose(llmri.embed(model, texts, "resid.2"), s.activations(2), atol=1e-5)


def test_one_token_document_keeps_its_token():
    from llmri.batches import pool

    x = torch.arange(12, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[False, False, True], [True, True, False]])
    got = pool(x, mask, "mean-nosink")
    torch.testing.assert_close(got, torch.stack([x[0, 2], x[1, 1]]))


def test_encoders_keep_mean_pooling(tmp_path):
    s = llmri.scan(make_model("bert"), llmri.Corpus(TEXTS), tmp_path / "s", progress=False)
    assert s.settings["pool"] == "mean"


def test_steering_vector_is_the_difference_of_category_means(tmp_path):
    model = make_model("llama")
    s = llmri.scan(model, llmri.Corpus(TEXTS, LABELS), tmp_path / "s", progress=False)
    v = llmri.steering_vector(s, positive="space", negative=["food", "sport"], layer=2, model=model)
    X, y = s.activations(2), np.asarray(LABELS)
    np.testing.assert_allclose(v, X[y == "space"].mean(0) - X[y != "space"].mean(0), atol=1e-6)
    with pytest.raises(LlmriError, match=r"category 'music' is not in the scan \(categories: food, space, sport\)"):
        llmri.steering_vector(s, "music", "food", 2)
    with pytest.raises(LlmriError, match="share categories"):
        llmri.steering_vector(s, "space", ["space", "food"], 2)
    with pytest.raises(LlmriError, match="the scan was made with tiny-llama, not with tiny-llama"):
        llmri.steering_vector(s, "space", "food", 2, model=make_model("llama", seed=1))
