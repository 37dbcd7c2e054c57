"""Explain with the real default decoder (SmolLM2-135M-Instruct) as the local simulator: the
expected values over "0".."10" (all-at-once) and the pmi predictions equal direct computations
from the model's logits, the explanation loop runs end to end, and on planted units the right
explanation scores above wrong ones (benchmarks/explain_simulators.py measures the margins)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.explain import Explainer, LocalLM, explain_units
from llmri.explain.examples import Window
from llmri.explain.prompts import VALUES, simulation_prompt
from llmri.explain.scoring import expected_value, simulate

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


def test_pmi_simulator_equals_a_direct_computation_from_the_logits(decoder):
    tok = decoder.tokenizer
    words = [tok.decode([i]) for i in tok("We counted 12 apples and 7 cups", add_special_tokens=False)["input_ids"]]
    w = Window(0, 0, words, np.zeros(len(words)))
    preds, _ = simulate(LocalLM(decoder), "numbers and digits", [w], simulator="pmi")

    def logprobs(explanation):
        # reference: the chat prompt plus the prefill, one forward pass, log-softmax at the end,
        # read at the first token of each (stripped) word
        ids = tok.apply_chat_template([{"role": "user", "content": "Text: We counted 12 apples and 7 cups\n"
                                        f"A neuron finds {explanation}. On which word of the text does it fire most?"}],
                                      add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids) + tok('It fires most on the word "',
                                                                          add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(decoder.module(input_ids=torch.tensor([ids])).logits[0, -1], -1).numpy()
        return np.array([lp[tok(t.strip(), add_special_tokens=False)["input_ids"][0]] if t.strip() else np.nan
                         for t in words])

    expect = np.nan_to_num(np.clip(logprobs("numbers and digits") - logprobs("something"), 0, 10), nan=0.0)
    np.testing.assert_allclose(preds[0], expect, rtol=1e-3, atol=1e-4)
    digits = [i for i, t in enumerate(words) if t.strip().isdigit()]
    assert digits and (preds[0][digits] > 1.0).all()    # the digits are what the explanation adds


def test_right_explanations_of_planted_units_beat_wrong_ones(decoder, tmp_path):
    """Five planted units (digits, the word "and", months, colours, names of people and places),
    each scored with every unit's explanation plus an unrelated one: with the default (pmi)
    simulator the right explanation is first on every unit. Measured (benchmarks/
    explain_simulators.py, 48 documents): right r = +0.40 to +0.99 (mean +0.56), wrong mean
    -0.05, smallest margin +0.033 (digits against "colour words"), mean margin +0.40; the
    all-at-once simulator has right r +0.23 against wrong +0.21, first on 2 of 5 units."""
    from llmri.explain import score
    from llmri.explain.examples import unit_examples
    from llmri.explain.planted import EXPLANATIONS, planted_units

    docs, offsets, acts, names = planted_units(decoder.tokenizer, n_docs=48)
    explanations = [EXPLANATIONS[n] for n in names] + ["words about cooking and food"]
    lm = LocalLM(decoder, cache_dir=tmp_path / "calls")       # the neutral pass of a window is paid once
    margins, right, wrong = [], [], []
    for j, n in enumerate(names):
        ex = unit_examples(acts[:, j], offsets, lambda d: docs[d], j, window=12, n_explain=2, n_quantiles=2,
                           per_quantile=2, n_non_activating=2)
        r = [score(lm, e, ex, scorers=("simulation",))["simulation_score"] for e in explanations]
        others = [x for i, x in enumerate(r) if i != j]
        margins.append(r[j] - max(others))
        right.append(r[j])
        wrong.extend(others)
    assert all(m > 0.02 for m in margins), dict(zip(names, margins))
    assert np.mean(right) - np.mean(wrong) > 0.4, (right, wrong)
