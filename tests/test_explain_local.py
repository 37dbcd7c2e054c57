"""Explain with the local backend: log-probabilities and generation of a tiny random Llama with a
chat template, checked against direct computations from its logits; the call cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import llmri
from conftest import WORDS
from llmri.explain import LocalLM
from llmri.explain.prompts import VALUES
from llmri.explain.scoring import expected_value

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB = SPECIAL + WORDS + list(VALUES) + ["unknown", "Example", ":", "find", "neuron"]


def chat_tokenizer(template: bool = True) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                  eos_token="[EOS]", additional_special_tokens=SPECIAL[4:], model_max_length=2048)
    if template:
        tok.chat_template = CHAT
    return tok


def tiny_chat_model(template: bool = True, seed: int = 0) -> llmri.Model:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2048,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return llmri.Model.from_module(LlamaForCausalLM(cfg).eval(), chat_tokenizer(template), name="tiny-chat")


MESSAGES = [{"role": "system", "content": "find the neuron"}, {"role": "user", "content": "the star"}]


@pytest.mark.parametrize("template", [True, False])
def test_value_logprobs_equal_a_direct_forward_pass(template, tmp_path):
    model = tiny_chat_model(template)
    lm = LocalLM(model)
    pieces = ["planet moon", " sun", " comet"]
    got = lm.value_logprobs(MESSAGES, pieces, VALUES)
    tok = model.tokenizer
    # reference: the whole text tokenized at once, forward pass, log-softmax at the last token of each piece
    if template:
        text = "<|system|> find the neuron <|user|> the star <|assistant|> planet moon sun comet"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        first = ids.index(tok.convert_tokens_to_ids("<|assistant|>")) + 1
    else:
        ids = tok("find the neuron the star planet moon sun comet")["input_ids"]
        first = 6
    assert tok.convert_ids_to_tokens(ids[first:]) == ["planet", "moon", "sun", "comet"]
    with torch.no_grad():
        logits = model.module(input_ids=torch.tensor([ids])).logits[0]
    cand = [tok.convert_tokens_to_ids(v) for v in VALUES]
    ref_at = lambda i: torch.log_softmax(logits[i], -1)[cand].numpy()
    ref = np.stack([ref_at(first + 1), ref_at(first + 2)])        # after "moon", after "sun"
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    p = torch.softmax(logits[[first + 1, first + 2]][:, cand], -1).numpy()
    np.testing.assert_allclose(expected_value(got), p @ np.arange(11), rtol=1e-4)
    # the same messages again: the prompt's key/value cache is reused, the numbers do not change
    again = lm.value_logprobs(MESSAGES, ["planet", " moon sun", " comet"], VALUES)
    np.testing.assert_allclose(again[0], ref_at(first), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again[1], ref[1], rtol=1e-4, atol=1e-5)
    assert lm.stats["calls"] == 2


@pytest.mark.parametrize("prefill", ["", "the red"])
def test_chat_is_greedy_decoding(tmp_path, prefill):
    model = tiny_chat_model(seed=3)
    lm = LocalLM(model)
    text = lm.chat(MESSAGES, max_tokens=4, prefill=prefill)
    ids = model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    ids += [model.tokenizer.convert_tokens_to_ids(w) for w in prefill.split()]
    out = []
    with torch.no_grad():
        for _ in range(4):
            nxt = int(model.module(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == model.tokenizer.eos_token_id:
                break
            ids.append(nxt)
            out.append(nxt)
    assert text == model.tokenizer.decode(out, skip_special_tokens=True)
    assert lm.stats["calls"] == 1 and lm.stats["completion_tokens"] == len(out)


def test_cache_replays_calls_without_the_model(tmp_path):
    model = tiny_chat_model()
    lm = LocalLM(model, cache_dir=tmp_path / "calls")
    a = lm.value_logprobs(MESSAGES, ["planet", " sun"], VALUES)
    t = lm.chat(MESSAGES, max_tokens=3)
    assert lm.stats["calls"] == 2 and lm.stats["cache_hits"] == 0
    files = list((tmp_path / "calls").rglob("*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text()) for f in files)
    assert not list((tmp_path / "calls").rglob("*.tmp"))
    again = LocalLM(model, cache_dir=tmp_path / "calls")
    calls = []
    again._value_logprobs = lambda *a, **k: calls.append(1)
    again._chat = lambda *a, **k: calls.append(1)
    np.testing.assert_array_equal(again.value_logprobs(MESSAGES, ["planet", " sun"], VALUES), a)
    assert again.chat(MESSAGES, max_tokens=3) == t
    assert calls == [] and again.stats["cache_hits"] == 2
    # another model (different weights) does not reuse the entries
    other = LocalLM(tiny_chat_model(seed=1), cache_dir=tmp_path / "calls")
    other.chat(MESSAGES, max_tokens=3)
    assert other.stats["calls"] == 1


def test_chat_template_required_when_asked():
    with pytest.raises(llmri.LlmriError, match="has no chat template; pass chat=False"):
        LocalLM(tiny_chat_model(template=False), chat=True).chat(MESSAGES)
    with pytest.raises(llmri.LlmriError, match="chat must be None"):
        LocalLM(tiny_chat_model(), chat="yes")


def test_explain_end_to_end_on_a_scan(tmp_path):
    """The whole loop on a scan of the tiny chat model: tables on disk, a rerun from the cache."""
    from conftest import LABELS, TEXTS

    model = tiny_chat_model()
    scan = llmri.scan(model, llmri.Corpus(TEXTS * 3, LABELS * 3), tmp_path / "scan", sites=("resid",),
                      layers=[1], token_sites=("mlp.1",), progress=False)
    ex = llmri.Explainer(LocalLM(model), window=6, n_explain=3, n_quantiles=2, per_quantile=2,
                         n_non_activating=2, max_new_tokens=4)
    res = llmri.explain(scan, "mlp.1", "top:3", explainer=ex, tokenizer=model.tokenizer, out=tmp_path / "out")
    t = res.table
    assert list(t["unit"]) == sorted(t["unit"]) and len(t) == 3
    peak = scan.token_activations(1, "mlp").max(0)
    assert set(t["unit"]) == set(np.argsort(-peak)[:3].tolist())
    for col in ("simulation_score", "detection_balanced_accuracy", "fuzzing_balanced_accuracy",
                "simulation_baseline", "detection_baseline", "fuzzing_baseline"):
        assert t[col].between(-1, 1).all(), col
    saved = __import__("pandas").read_csv(tmp_path / "out" / "explanations.csv")
    assert list(saved["unit"]) == list(t["unit"])
    recs = [json.loads(x) for x in (tmp_path / "out" / "explanations.jsonl").read_text().splitlines()]
    assert all(len(r["held_out_windows"][0]["simulated"]) == len(r["held_out_windows"][0]["tokens"]) for r in recs)
    first = res.info["stats"]
    assert res.info["simulator"] == "pmi"            # the local default
    assert first["calls"] > 0     # (repeated documents give repeated prompts: cache hits within a run)
    page = (tmp_path / "out" / "explain.html").read_text()
    for u, text in zip(t["unit"], t["explanation"]):
        assert f"id='unit-{u}'" in page
    # held-out windows: one row each, true and simulated side by side; the top windows above them
    assert page.count("<td class='tokens' style='text-align:left'>") == 2 * sum(len(r["held_out_windows"]) for r in recs)
    assert page.count("<th>held out: true</th><th>simulated</th>") == len(recs)
    assert page.count("Top windows shown to the explainer") == len(recs)
    for r in recs:
        w = r["held_out_windows"][0]
        assert llmri.viz.token_highlight_html(w["tokens"], w["simulated"], color="31,119,180", top=10.0) in page
    loaded = llmri.ExplainResult.load(tmp_path / "out")
    assert list(loaded.table["explanation"]) == list(t["explanation"]) and len(loaded.records) == 3
    np.testing.assert_allclose(loaded.table["simulation_score"], t["simulation_score"])
    again = llmri.explain(scan, "mlp.1", "top:3", explainer=ex, tokenizer=model.tokenizer, out=tmp_path / "out",
                          page=False)
    assert again.info["stats"]["calls"] == 0 and again.info["stats"]["cache_hits"] == first["calls"] + first["cache_hits"]
    __import__("pandas").testing.assert_frame_equal(again.table, t)


def test_word_logprobs_and_the_pmi_simulator_equal_a_direct_forward_pass(tmp_path):
    from llmri.explain.examples import Window
    from llmri.explain.prompts import NEUTRAL, PMI_PREFILL, pmi_prompt
    from llmri.explain.scoring import simulate

    model = tiny_chat_model(seed=2)
    tok = model.tokenizer
    lm = LocalLM(model, cache_dir=tmp_path / "calls")
    w = Window(0, 0, ["the", " red", " star", "\n", " moon"], np.zeros(5))
    messages, prefill = pmi_prompt("planet", w)
    assert prefill == PMI_PREFILL and messages[-1]["content"].startswith("Text: the red star  moon\nA neuron finds planet.")

    def reference(explanation):
        # the chat prompt and the prefill tokenized by hand, one forward pass, the log-softmax of the
        # last position at each word's token ("\n" has none)
        msgs, pre = pmi_prompt(explanation, w)
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids) + tok(pre, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model.module(input_ids=torch.tensor([ids])).logits[0, -1], -1).numpy()
        return np.array([lp[tok.convert_tokens_to_ids(t.strip())] if t.strip() else -np.inf for t in w.tokens])

    got = lm.word_logprobs(messages, prefill, w.tokens)
    ref = reference("planet")
    np.testing.assert_allclose(got[[0, 1, 2, 4]], ref[[0, 1, 2, 4]], rtol=1e-4, atol=1e-5)
    assert got[3] == -np.inf
    preds, missing = simulate(lm, "planet", [w, w])
    with np.errstate(invalid="ignore"):                  # -inf - -inf at the "\n" token
        expect = np.clip(np.nan_to_num(ref - reference(NEUTRAL), nan=0.0), 0, 10)
    np.testing.assert_allclose(preds[0], expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds[1], expect, rtol=1e-4, atol=1e-5)
    assert missing == 0 and lm.stats["calls"] == 2        # explanation and neutral once; the repeat is cached
    assert simulate(lm, "planet", [w], simulator="all_at_once")[0][0].shape == (5,)
