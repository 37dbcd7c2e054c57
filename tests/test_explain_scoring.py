"""Explain: scoring functions against hand-computed values, and the example windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

import llmri
from llmri.explain.examples import Window, scale, top_units, unit_activations, unit_examples, window_bounds
from llmri.explain.explainer import _derangement, parse_units
from llmri.explain.prompts import clean_explanation, fuzz_marks, simulation_prompt
from llmri.explain.scoring import (balanced_accuracy, detection_items, expected_value, fuzzing_items,
                                   mean_window_correlation, parse_binary, parse_values, pearson,
                                   pooled_correlation)


# ------------------------------------------------------------------ scores
def test_pooled_correlation_differs_from_mean_per_window():
    true = [np.array([0.0, 10.0]), np.array([0.0, 10.0])]
    pred = [np.array([0.0, 1.0]), np.array([5.0, 6.0])]
    # by hand: each window alone is perfectly correlated; pooled, pred = [0,1,5,6] (mean 3),
    # true = [0,10,0,10] (mean 5): sum of products 10, sums of squares 26 and 100.
    assert mean_window_correlation(true, pred) == pytest.approx(1.0)
    assert pooled_correlation(true, pred) == pytest.approx(10 / math.sqrt(26 * 100))


def test_perfect_affine_and_constant_simulators():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50)
    assert pearson(t, t) == pytest.approx(1.0)
    assert pearson(3 * t + 2, t) == pytest.approx(1.0)
    assert pearson(-t, t) == pytest.approx(-1.0)
    assert pearson(np.full(50, 4.0), t) == 0.0          # a constant simulator scores 0 by definition
    with pytest.raises(llmri.LlmriError, match="3 predictions for 2"):
        pearson([1, 2, 3], [1, 2])


def test_expected_value_over_a_given_distribution():
    lp = np.full((3, 11), -np.inf)
    lp[0, :3] = np.log([0.5, 0.25, 0.25])                # 0*.5 + 1*.25 + 2*.25 = 0.75
    lp[1, [0, 10]] = np.log([0.2, 0.2])                  # unnormalised: renormalised to .5/.5 -> 5
    ev = expected_value(lp)
    assert ev[0] == pytest.approx(0.75)
    assert ev[1] == pytest.approx(5.0)
    assert ev[2] == 0.0                                  # no candidate probabilities at all


def test_balanced_accuracy_on_a_known_confusion_matrix():
    # TP 3, FN 1, TN 2, FP 4: TPR 3/4, TNR 2/6
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    assert balanced_accuracy(y, p) == pytest.approx((3 / 4 + 2 / 6) / 2)
    assert balanced_accuracy([1, 0], [1, 1]) == pytest.approx(0.5)   # always-yes is chance
    assert balanced_accuracy([1, 1], [1, 0]) == pytest.approx(0.5)   # one class only: its recall


def test_parsers():
    vals, miss = parse_values("Activations:\n<start>\nthe\t3\n 7\t10\n<end>\nmore\t5", 3)
    assert vals.tolist() == [3.0, 10.0, 0.0] and miss == 1
    vals, miss = parse_values("a\t12\nb\t-2\n", 2)
    assert vals.tolist() == [10.0, 0.0] and miss == 0
    b, miss = parse_binary("Example 1: 1\nExample 3: 0\n", 3)
    assert b.tolist() == [1, 0, 0] and miss == 1
    b, miss = parse_binary("[1, 0, 1]", 3)
    assert b.tolist() == [1, 0, 1] and miss == 0


def test_clean_explanation():
    assert clean_explanation(" the main thing this neuron does is find digits. And more.") == "digits"
    assert clean_explanation("This feature finds \"the word sun\"") == "the word sun"
    assert clean_explanation("") == "nothing in particular"


def test_derangement_and_units():
    for n in (2, 3, 10):
        d = _derangement(n, 0)
        assert sorted(d.tolist()) == list(range(n)) and not (d == np.arange(n)).any()
    assert parse_units("top:5") == ("top", 5)
    assert parse_units("2:5") == [2, 3, 4]
    assert parse_units("3, 9") == [3, 9]
    for bad in ("top:0", "5:2", "x", "-1"):
        with pytest.raises(llmri.LlmriError, match="expected top:K"):
            parse_units(bad)


# ------------------------------------------------------------------ windows
def _planted(n_docs=30, length=17, seed=0):
    rng = np.random.default_rng(seed)
    words = [" the", " sun", " star", " 4", " 7", " moon", ",", " and"]
    docs = [[words[i] for i in rng.integers(0, len(words), length - d % 5)] for d in range(n_docs)]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    flat = [t for d in docs for t in d]
    digit = np.array([5.0 if t.strip().isdigit() else 0.0 for t in flat], dtype=np.float32)
    return docs, offsets, flat, digit


def test_scale_and_window_bounds():
    assert scale(np.array([-1, 0, 2.4, 2.6, 5, 10]), 10.0).tolist() == [0, 0, 2, 3, 5, 10]
    assert scale(np.array([1.0, 2.0]), 0.0).tolist() == [0, 0]
    doc, start, g = window_bounds([5, 3], 2)
    assert doc.tolist() == [0, 0, 0, 1, 1] and start.tolist() == [0, 2, 4, 0, 2] and g.tolist() == [0, 2, 4, 5, 7]


def test_examples_split_never_overlaps_and_covers_quantiles():
    docs, offsets, flat, _ = _planted()
    acts = np.random.default_rng(1).gamma(1.0, size=len(flat)).astype(np.float32)
    acts[acts < 1.5] = 0
    ex = unit_examples(acts, offsets, lambda d: docs[d], unit=3, window=6, n_explain=4, n_quantiles=3,
                       per_quantile=2, n_non_activating=3, seed=0)
    key = lambda w: (w.doc, w.start)
    explain, held = {key(w) for w in ex.explain}, {key(w) for w in ex.held_out}
    assert not explain & held
    assert len(ex.explain) == 4 and len(ex.activating) == 6 and len(ex.non_activating) <= 3
    assert sorted(set(ex.quantiles)) == [0, 1, 2]
    top = ex.max_activation
    assert top == pytest.approx(acts.max())
    for w in ex.explain + ex.activating:
        assert w.scaled(top).max() >= 1
        a = offsets[w.doc] + w.start
        assert np.array_equal(w.activations, acts[a:a + len(w.tokens)])      # windows read the right tokens
        assert w.tokens == docs[w.doc][w.start:w.start + len(w.tokens)]
    for w in ex.non_activating:
        assert w.scaled(top).max() == 0
    # the explanation set is the top of its side: sorted by window maximum
    m = [w.activations.max() for w in ex.explain]
    assert m == sorted(m, reverse=True)
    # deterministic under the seed, different under another
    again = unit_examples(acts, offsets, lambda d: docs[d], unit=3, window=6, n_explain=4, n_quantiles=3,
                          per_quantile=2, n_non_activating=3, seed=0)
    assert [key(w) for w in again.held_out] == [key(w) for w in ex.held_out]
    assert unit_examples(np.zeros_like(acts), offsets, lambda d: docs[d], unit=0) is None


def test_detection_and_fuzzing_items_are_balanced_and_true():
    docs, offsets, flat, digit = _planted()
    ex = unit_examples(digit, offsets, lambda d: docs[d], unit=0, window=5, n_explain=3, n_quantiles=2,
                       per_quantile=3, n_non_activating=4)
    texts, truth = detection_items(ex)
    assert truth.sum() == len(ex.activating) and (~truth).sum() == len(ex.non_activating)
    for t, y in zip(texts, truth):
        assert any(w.strip().isdigit() for w in t.split()) == bool(y)
    texts, truth = fuzzing_items(ex)
    assert 0 < truth.sum() < len(truth)
    for t, y in zip(texts, truth):
        marked = [m.strip() for m in t.split("<<")[1:]]
        marked = [m.split(">>")[0].strip() for m in marked]
        assert marked and all(m.isdigit() for m in marked) == bool(y)
    rng = np.random.default_rng(0)
    assert fuzz_marks(np.array([0, 5, 0, 0]), False, rng).sum() == 1
    assert not fuzz_marks(np.array([0, 5, 0, 0]), False, rng)[1]


def test_simulation_prompt_pieces_put_each_query_after_a_token():
    w = Window(0, 0, [" the", " 7", "\n"], np.zeros(3, np.float32))
    messages, pieces = simulation_prompt("digits", w)
    assert len(pieces) == 4
    assert pieces[0].endswith(" the\t") and pieces[1] == "unknown\n 7\t" and pieces[2] == "unknown\n\\n\t"
    assert "digits." in messages[1]["content"]


# ------------------------------------------------------------------ unit sources
class TinySAE:
    """A hand-made SAE-like encoder: relu(x @ W + b)."""

    def __init__(self, d, n, seed=0):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(size=(d, n)).astype(np.float32)
        self.b = rng.normal(size=n).astype(np.float32) * 0.1

    def encode(self, x):
        return np.maximum(x @ self.W + self.b, 0)


@pytest.fixture(scope="module")
def token_scan(tmp_path_factory):
    from conftest import LABELS, TEXTS, make_model

    model = make_model("llama")
    out = tmp_path_factory.mktemp("scan")
    return llmri.scan(model, llmri.Corpus(TEXTS, LABELS), out / "s", sites=("resid",), layers=[1],
                      token_sites=("mlp.1",), progress=False)


def test_unit_activations_neurons_and_features(token_scan):
    ref = token_scan.token_activations(1, "mlp")
    got = unit_activations(token_scan, "mlp.1", [5, 2])
    np.testing.assert_array_equal(got, ref[:, [5, 2]])
    sae = TinySAE(ref.shape[1], 12)
    np.testing.assert_allclose(unit_activations(token_scan, "mlp.1", [0, 7], encoder=sae),
                               sae.encode(ref)[:, [0, 7]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unit_activations(token_scan, "mlp.1", None, encoder=sae.encode),
                               sae.encode(ref), rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")

    class TorchSAE(torch.nn.Module):                      # an nn.Module takes and returns tensors
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.from_numpy(sae.W))
            self.b = torch.nn.Parameter(torch.from_numpy(sae.b))

        def encode(self, x):
            assert isinstance(x, torch.Tensor)
            return torch.relu(x @ self.W + self.b)

    np.testing.assert_allclose(unit_activations(token_scan, "mlp.1", [3], encoder=TorchSAE()),
                               sae.encode(ref)[:, [3]], rtol=1e-5, atol=1e-5)
    with pytest.raises(llmri.LlmriError, match="feature 12 is out of range"):
        unit_activations(token_scan, "mlp.1", [12], encoder=sae)
    with pytest.raises(llmri.LlmriError, match="'resid.1' has no token-level records"):
        unit_activations(token_scan, "resid.1", [0])
    with pytest.raises(llmri.LlmriError, match="'resid.1' has no token-level records"):
        top_units(token_scan, "resid.1", 3)
    peak = ref.max(0)
    assert top_units(token_scan, "mlp.1", 4) == sorted(np.argsort(-peak, kind="stable")[:4].tolist())
    fpeak = sae.encode(ref).max(0)
    assert top_units(token_scan, "mlp.1", 3, encoder=sae) == sorted(np.argsort(-fpeak, kind="stable")[:3].tolist())
    with pytest.raises(llmri.LlmriError, match="encoder: expected an output of shape"):
        unit_activations(token_scan, "mlp.1", [0], encoder=lambda x: x[:3])


def test_pmi_activations_by_hand():
    from llmri.explain.scoring import pmi_activations

    lp = np.log([0.5, 0.01, 0.2, 1e-30, 0.3])
    neutral = np.log([0.1, 0.1, 0.2, 0.5, 0.3])
    lp = np.append(lp, -np.inf)                           # a whitespace token: no word, predicted 0
    neutral = np.append(neutral, -np.inf)
    # by hand: log(0.5/0.1) = log 5; log(0.01/0.1) < 0 -> 0; log 1 = 0; log(2e-30) < 0 -> 0; 0; 0
    np.testing.assert_allclose(pmi_activations(lp, neutral), [math.log(5), 0, 0, 0, 0, 0], atol=1e-12)
    # clipped to the 0-10 scale
    assert pmi_activations(np.array([0.0]), np.array([-25.0]))[0] == 10.0


def test_simulator_choice_is_checked():
    from llmri.explain import LocalLM, OpenAICompatible
    from llmri.explain.scoring import resolve_simulator

    http = OpenAICompatible("http://localhost:9/v1", "m")
    assert resolve_simulator(http, None) == "all_at_once"
    with pytest.raises(llmri.LlmriError, match="simulator 'pmi' needs next-token log-probabilities"):
        resolve_simulator(http, "pmi")
    with pytest.raises(llmri.LlmriError, match="simulator 'exact' is not one of pmi, all_at_once"):
        llmri.Explainer(http, simulator="exact")
    local = LocalLM("default-decoder")                    # nothing is loaded to choose
    assert resolve_simulator(local, None) == "pmi" and local._model is None
    assert resolve_simulator(local, "all_at_once") == "all_at_once"


# ------------------------------------------------------------------ llmri's and delphi's conventions
def delphi_balanced_accuracy(truth, answers) -> float:
    """delphi's formulas (EleutherAI/delphi, delphi/log/result_analysis.py), written out:
    compute_confusion keeps the rows whose prediction is not None and counts TP/TN/FP/FN at a
    threshold of 0.5; compute_classification_metrics' "accuracy" is
    ((tp / pos if pos > 0 else 0) + (tn / neg if neg > 0 else 0)) / 2."""
    rows = [(bool(t), a) for t, a in zip(truth, answers) if a is not None]
    pos = sum(t for t, _ in rows)
    neg = len(rows) - pos
    tp = sum(1 for t, a in rows if t and a >= 0.5)
    tn = sum(1 for t, a in rows if not t and a < 0.5)
    return ((tp / pos if pos > 0 else 0) + (tn / neg if neg > 0 else 0)) / 2


def test_missing_answers_and_one_class_under_each_convention():
    # the cases: four answers, one of them missing; a window set of one class
    truth, answers = [1, 1, 1, 0], [1, 1, None, 0]
    assert balanced_accuracy(truth, answers) == pytest.approx((2 / 3 + 1) / 2)      # missing = "no": 0.833
    assert balanced_accuracy(truth, answers, "delphi") == pytest.approx(1.0)        # missing dropped
    assert balanced_accuracy(truth, answers, "delphi") == delphi_balanced_accuracy(truth, answers)
    assert balanced_accuracy([1, 1, 1, 1], [1, 1, 1, 0]) == pytest.approx(0.75)      # the class present
    assert balanced_accuracy([1, 1, 1, 1], [1, 1, 1, 0], "delphi") == pytest.approx(0.375)
    assert math.isnan(balanced_accuracy([], []))
    assert balanced_accuracy([1], [None], "delphi") == 0.0 == delphi_balanced_accuracy([1], [None])
    assert balanced_accuracy([1, 0], [-1, 1]) == balanced_accuracy([1, 0], [0, 1]) == 0.0  # -1 is missing too
    with pytest.raises(llmri.LlmriError, match="convention 'sklearn' is not one of llmri, delphi"):
        balanced_accuracy([1], [1], "sklearn")


def test_the_delphi_convention_is_delphis_formula_on_random_answer_sets():
    from llmri.explain.scoring import balanced_accuracy_over_units

    rng = np.random.default_rng(0)
    units = []
    for _ in range(300):
        n = int(rng.integers(1, 12))
        truth = rng.random(n) < rng.choice([0.0, 0.5, 1.0])  # some units have one class only
        answers = [None if rng.random() < 0.2 else int(rng.random() < 0.6) for _ in range(n)]
        units.append((truth, answers))
        assert balanced_accuracy(truth, answers, "delphi") == pytest.approx(delphi_balanced_accuracy(truth, answers))
    truths, answers = [u[0] for u in units], [u[1] for u in units]
    # delphi aggregates a run by pooling every latent's rows (get_agg_metrics over the score type)
    pooled = delphi_balanced_accuracy(np.concatenate(truths), sum(answers, []))
    assert balanced_accuracy_over_units(truths, answers, "delphi") == pytest.approx(pooled)
    per_unit = [balanced_accuracy(t, a) for t, a in units]
    assert balanced_accuracy_over_units(truths, answers) == pytest.approx(np.nanmean(per_unit))
    assert abs(np.nanmean(per_unit) - pooled) > 1e-3  # the two conventions do differ here


class _Replies:
    """A chat backend that answers detection prompts from a key, leaving out one answer per prompt."""
    has_logprobs = False
    kind = "test"

    def __init__(self, key):
        self.key = key

    def chat(self, messages, max_tokens=None, **kw):
        text = messages[-1]["content"]
        lines = [f"Example {i + 1}: {int(y)}" for i, (t, y) in enumerate(self.key) if t in text]
        return "\n".join(lines[1:])  # the first answer is missing


def test_score_counts_a_missing_answer_by_the_convention_asked_for():
    from llmri.explain.scoring import score

    docs, offsets, flat, digit = _planted()
    ex = unit_examples(digit, offsets, lambda d: docs[d], unit=0, window=5, n_explain=3, n_quantiles=2,
                       per_quantile=3, n_non_activating=4)
    texts, truth = detection_items(ex)
    be = _Replies(list(zip(texts, truth)))
    ours = score(be, "digits", ex, scorers=("detection",), batch=len(texts))
    theirs = score(be, "digits", ex, scorers=("detection",), batch=len(texts), convention="delphi")
    answers = [None] + [int(y) for y in truth[1:]]
    assert ours["parse_failures"] == theirs["parse_failures"] == 1
    assert theirs["detection_balanced_accuracy"] == pytest.approx(delphi_balanced_accuracy(truth, answers)) == 1.0
    assert ours["detection_balanced_accuracy"] == pytest.approx(balanced_accuracy(truth, [0] + answers[1:]))
    assert ours["detection_balanced_accuracy"] < 1.0 if truth[0] else ours["detection_balanced_accuracy"] == 1.0
