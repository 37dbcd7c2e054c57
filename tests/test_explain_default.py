"""Explain with the real default decoder (SmolLM2-135M-Instruct) as the local simulator: the
expected values over "0".."10" equal a direct computation from the model's logits, and the
explanation loop runs end to end. (How well a 135M model explains and simulates is measured in
benchmarks/explain.py, not asserted here.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.explain import Explainer, LocalLM, explain_units
from llmri.explain.examples import Window
from llmri.explain.prompts import VALUES, simulation_prompt
from llmri.explain.scoring import expected_value

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def decoder():
    try:
        return llmri.load_model("default-decoder", dtype="float32")
    except llmri.LlmriError as e:                       # before the decoder issue lands on this branch
        pytest.skip(f"default-decoder is not available: {e}")


def test_simulator_expected_values_equal_the_logits(decoder):
    tok = decoder.tokenizer
    lm = LocalLM(decoder)
    words = [tok.decode([i]) for i in tok("We counted 12 apples and 7 cups", add_special_tokens=False)["input_ids"]]
    messages, pieces = simulation_prompt("numbers and digits", Window(0, 0, words, np.zeros(len(words))), listed=False)
    got = expected_value(lm.value_logprobs(messages, pieces, VALUES))
    # reference: the whole prompt tokenized piece by piece, one forward pass, softmax over the digit tokens
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    at = []
    for p in pieces[:-1]:
        ids += tok(p, add_special_tokens=False)["input_ids"]
        at.append(len(ids) - 1)
    single = [(k, tok(v, add_special_tokens=False)["input_ids"]) for k, v in enumerate(VALUES)]
    single = [(k, x[0]) for k, x in single if len(x) == 1]
    with torch.no_grad():
        logits = decoder.module(input_ids=torch.tensor([ids])).logits[0, at]
    p = torch.softmax(logits[:, [i for _, i in single]], -1).numpy()
    np.testing.assert_allclose(got, p @ np.array([k for k, _ in single], dtype=float), rtol=1e-3, atol=1e-4)


def test_explain_loop_runs_on_planted_units(decoder, tmp_path):
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(12):
        text = f"We counted {rng.integers(2, 99)} apples and then {rng.integers(2, 99)} more near the door."
        docs.append([decoder.tokenizer.decode([i]) for i in decoder.tokenizer(text, add_special_tokens=False)["input_ids"]])
    flat = [t for d in docs for t in d]
    acts = np.stack([[4.0 * t.strip().isdigit() for t in flat], [3.0 * (t.strip() == "and") for t in flat]], 1)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    ex = Explainer(LocalLM(decoder), window=8, n_explain=2, n_quantiles=2, per_quantile=1, n_non_activating=1,
                   max_new_tokens=16)
    res = explain_units(acts.astype(np.float32), offsets, lambda d: docs[d], [0, 1], ex, scorers=("simulation",),
                        out=tmp_path, page=False)
    t = res.table
    assert t["simulation_score"].between(-1, 1).all() and t["simulation_baseline"].between(-1, 1).all()
    assert (t["explanation"].str.len() > 0).all() and (t["status"] == "ok").all()


@pytest.mark.xfail(strict=True, reason="SmolLM2-135M as simulator rates digit tokens high whatever the explanation "
                   "says (measured: r = 0.46 with the right explanation, 0.47 and 0.48 with two wrong ones); "
                   "strict, so a default simulator that reads explanations makes this test pass and the mark go")
def test_right_explanation_of_a_planted_digit_unit_beats_a_wrong_one(decoder):
    """A unit that fires exactly on digit tokens: the simulator given the right explanation
    should predict it better than given wrong ones (what the random-explanation baseline measures).
    The 135M default decoder does not: it is a working offline backend, not a good simulator."""
    from llmri.explain import score
    from llmri.explain.examples import unit_examples

    rng = np.random.default_rng(1)
    docs = []
    for _ in range(24):
        text = (f"The shop sold {rng.integers(2, 99)} lamps on Monday and {rng.integers(2, 99)} chairs "
                f"on Friday, while the old clock kept ticking near the window.")
        docs.append([decoder.tokenizer.decode([i]) for i in decoder.tokenizer(text, add_special_tokens=False)["input_ids"]])
    flat = [t for d in docs for t in d]
    acts = np.asarray([4.0 * t.strip().isdigit() for t in flat], dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    ex = unit_examples(acts, offsets, lambda d: docs[d], 0, window=12, n_explain=2, n_quantiles=2, per_quantile=2,
                       n_non_activating=2)
    lm = LocalLM(decoder)
    right = score(lm, "numbers and digits", ex, scorers=("simulation",))["simulation_score"]
    wrong = {w: score(lm, w, ex, scorers=("simulation",))["simulation_score"]
             for w in ("the word and between two phrases", "words about cooking and food")}
    assert all(right > w + 0.05 for w in wrong.values()), (right, wrong)
