"""Scores of an explanation: simulation (Bills et al. 2023), detection and fuzzing (delphi).

- Simulation: a simulator predicts the unit's activation on every held-out token from the
  explanation alone; the score is the Pearson correlation between prediction and truth pooled
  over all held-out tokens (Bills et al.'s "correlation scoring", their preferred variant over
  averaging per window). Two simulators:

  - ``"all_at_once"`` (Bills et al.): the prediction is the expected value ``sum_k k * p(k)``
    over the probabilities of "0".."10" renormalised among themselves, read after each token
    (or, without log-probabilities, the numbers of the reply).
  - ``"pmi"`` (the default where the backend has next-token log-probabilities, i.e. LocalLM):
    the model is asked on which word of the window a neuron that finds <explanation> fires
    most, and the prediction at token t is ``max(0, log p(t | explanation) - log p(t | NEUTRAL))``,
    the positive part of the pointwise mutual information between the explanation and the token
    as the answer. Subtracting the answer under a content-free explanation is the calibration of
    Zhao et al. 2021 ("Calibrate before use", content-free input) and the domain-conditional
    PMI of Holtzman et al. 2021 ("Surface form competition"): a token the model picks whatever
    the explanation says (a digit, a capitalised word) cancels out, so only what the
    explanation adds remains. Negative PMI (the explanation makes the token less likely) is
    predicted silent, as most activations are 0. Measured in benchmarks/explain_simulators.py:
    with SmolLM2-135M the all-at-once simulator scores planted units nearly the same whatever
    the explanation; the pmi simulator ranks the right explanation first on most of them.
- Detection: given the explanation, does each held-out window (activating or not) show the
  feature? Fuzzing: are the tokens marked in an activating window the truly active ones, or
  as many inactive tokens? Both are scored by balanced accuracy (delphi; Paulo et al. 2024),
  counted by llmri's convention (a missing answer is a "no", a class without examples is left
  out, each unit scored on its own) or delphi's (missing answers dropped, an absent class a rate
  of 0, the confusion pooled over units): :func:`balanced_accuracy`.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import LlmriError
from .examples import UnitExamples
from .prompts import BINARY, NEUTRAL, VALUES, binary_prompt, fuzz_marks, marked_text, pmi_prompt, simulation_prompt

SCORERS = ("simulation", "detection", "fuzzing")
SIMULATORS = ("pmi", "all_at_once")
CONVENTIONS = ("llmri", "delphi")  # how detection and fuzzing answers are counted: balanced_accuracy


# ------------------------------------------------------------------ pure functions
def expected_value(logprobs: np.ndarray) -> np.ndarray:
    """Expected value of 0..K-1 under each row's candidate log-probabilities, renormalised over
    the finite entries; 0 for a row with none."""
    lp = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    finite = np.isfinite(lp)
    top = np.where(finite, lp, -np.inf).max(1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    w = np.where(finite, np.exp(lp - top), 0.0)
    total = w.sum(1)
    k = np.arange(lp.shape[1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * k).sum(1) / total, 0.0)


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either side is constant (an uninformative simulator)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise LlmriError(f"correlation: {len(x)} predictions for {len(y)} activations")
    if len(x) < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc ** 2).sum() * (yc ** 2).sum())
    return float((xc * yc).sum() / den) if den > 0 else 0.0


def pooled_correlation(true: list, predicted: list) -> float:
    """Pearson correlation over every token of every window together (Bills et al.)."""
    if not true:
        return 0.0
    return pearson(np.concatenate([np.ravel(p) for p in predicted]), np.concatenate([np.ravel(t) for t in true]))


def mean_window_correlation(true: list, predicted: list) -> float:
    """Pearson correlation per window, averaged (the variant Bills et al. compare against)."""
    vals = [pearson(p, t) for t, p in zip(true, predicted)]
    return float(np.mean(vals)) if vals else 0.0


def _answers(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, answer, answered) of labels and answers; an answer of None, NaN or -1 is missing."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(y_pred, dtype=object))],
                   dtype=np.float64).reshape(np.shape(y_pred))
    if t.shape != p.shape:
        raise LlmriError(f"balanced accuracy: {p.size} predictions for {t.size} labels")
    answered = ~np.isnan(p) & (p >= 0)
    return t, np.where(answered, p, 0) >= 0.5, answered


def _check_convention(convention) -> str:
    if convention not in CONVENTIONS:
        raise LlmriError(f"convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
    return convention


def balanced_accuracy(y_true, y_pred, convention: str = "llmri") -> float:
    """(true positive rate + true negative rate) / 2 of yes/no answers (1, 0; None, NaN or -1
    for an answer that could not be read). ``convention``:

    - ``"llmri"``: a missing answer counts as "no"; a class with no examples is left out, so one
      class alone gives its recall (NaN without examples).
    - ``"delphi"`` (EleutherAI's delphi, ``delphi/log/result_analysis.py``: ``compute_confusion``
      and ``compute_classification_metrics``): missing answers are dropped; a class with no
      examples contributes a rate of 0, so one class alone gives half its recall (0 when nothing
      is left).
    """
    t, p, answered = _answers(y_true, y_pred)
    if _check_convention(convention) == "delphi":
        t, p = t[answered], p[answered]
        return float(sum(float((p[m] == cls).mean()) if m.any() else 0.0 for cls, m in ((True, t), (False, ~t))) / 2)
    rates = [float((p[m] == cls).mean()) for cls, m in ((True, t), (False, ~t)) if m.any()]
    return float(np.mean(rates)) if rates else float("nan")


def balanced_accuracy_over_units(truths, answers, convention: str = "llmri") -> float:
    """One number for many units: the mean of each unit's :func:`balanced_accuracy` (``"llmri"``,
    units without a score left out) or, as delphi aggregates a run (``get_agg_metrics``), the
    balanced accuracy of the confusion counts pooled over every unit's answers (``"delphi"``)."""
    if len(truths) != len(answers):
        raise LlmriError(f"balanced accuracy: answers of {len(answers)} units for {len(truths)} units")
    if _check_convention(convention) == "delphi":
        if not truths:
            return 0.0
        return balanced_accuracy(np.concatenate([np.ravel(t) for t in truths]),
                                 np.concatenate([np.ravel(np.asarray(a, dtype=object)) for a in answers]), "delphi")
    vals = [balanced_accuracy(t, a) for t, a in zip(truths, answers)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*$")


def parse_values(text: str, n: int) -> tuple[np.ndarray, int]:
    """Activations from a simulator's reply: the number ending each line, in order, clipped to
    0..10 (lines after ``<end>`` ignored). Returns the values and how many were missing (0s)."""
    vals = []
    for line in text.split("<end>")[0].splitlines():
        m = _NUMBER.search(line.strip())
        if m and ("\t" in line or " " in line.strip() or line.strip() == m.group(1)):
            vals.append(float(m.group(1)))
    vals = vals[:n]
    missing = n - len(vals)
    return np.clip(np.asarray(vals + [0.0] * missing, dtype=np.float64), 0, 10), missing


_ANSWER = re.compile(r"example\s*(\d+)\s*[:=\-]?\s*\(?\s*([01])\b", re.IGNORECASE)


def parse_binary(text: str, n: int, missing_as: int = 0) -> tuple[np.ndarray, int]:
    """1/0 answers from "Example N: 1" lines, or else from a bare list like ``[1, 0, 1]``.
    Unanswered examples get ``missing_as`` (0: counted as "no"; -1: marked missing, for
    delphi's convention). Returns the answers and how many were missing."""
    out = np.full(n, -1, dtype=np.int64)
    for m in _ANSWER.finditer(text):
        i = int(m.group(1)) - 1
        if 0 <= i < n and out[i] < 0:
            out[i] = int(m.group(2))
    if (out < 0).all():
        bits = re.findall(r"(?<![\d.])[01](?![\d.])", text)
        for i, b in enumerate(bits[:n]):
            out[i] = int(b)
    missing = int((out < 0).sum())
    return np.where(out < 0, missing_as, out), missing


# ------------------------------------------------------------------ scorers
def pmi_activations(logprobs: np.ndarray, neutral_logprobs: np.ndarray) -> np.ndarray:
    """The pmi simulator's prediction: ``log p(token | explanation) - log p(token | neutral)``
    clipped to 0..10; 0 where either is ``-inf`` (a whitespace token)."""
    a = np.asarray(logprobs, dtype=np.float64)
    b = np.asarray(neutral_logprobs, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return np.clip(np.where(ok, np.where(ok, a, 0.0) - np.where(ok, b, 0.0), 0.0), 0.0, 10.0)


def resolve_simulator(backend, simulator: str | None) -> str:
    """``None`` picks ``"pmi"`` where the backend has word log-probabilities, else ``"all_at_once"``."""
    if simulator is None:
        return "pmi" if backend.has_word_logprobs else "all_at_once"
    if simulator not in SIMULATORS:
        raise LlmriError(f"simulator {simulator!r} is not one of {', '.join(SIMULATORS)}")
    if simulator == "pmi" and not backend.has_word_logprobs:
        raise LlmriError(f"simulator 'pmi' needs next-token log-probabilities of arbitrary words, which backend "
                         f"{backend.kind} ({backend.model_name}) does not give; use simulator='all_at_once'")
    return simulator


def simulate(backend, explanation: str, windows, max_tokens_per_token: int = 6,
             simulator: str | None = None) -> tuple[list[np.ndarray], int]:
    """Simulated activations of every window and the count of values missing from parsed replies.

    ``simulator="pmi"``: :func:`pmi_activations` of each token (two forward passes per window,
    the neutral one shared by every explanation through the call cache). ``"all_at_once"``: with
    log-probabilities, the expected value over "0".."10" at each token, else the parsed reply.
    ``None``: ``"pmi"`` when the backend supports it."""
    simulator = resolve_simulator(backend, simulator)
    preds, missing = [], 0
    for w in windows:
        if simulator == "pmi":
            lp = backend.word_logprobs(*pmi_prompt(explanation, w), w.tokens)
            neutral = backend.word_logprobs(*pmi_prompt(NEUTRAL, w), w.tokens)
            preds.append(pmi_activations(lp, neutral))
            continue
        messages, pieces = simulation_prompt(explanation, w, listed=not backend.has_logprobs)
        if backend.has_logprobs:
            preds.append(expected_value(backend.value_logprobs(messages, pieces, VALUES)))
        else:
            reply = backend.chat(messages, max_tokens=16 + max_tokens_per_token * len(w.tokens))
            vals, miss = parse_values(reply, len(w.tokens))
            preds.append(vals)
            missing += miss
    return preds, missing


def _binary_answers(backend, kind: str, explanation: str, texts: list[str], batch: int) -> tuple[np.ndarray, int]:
    """Answers 1/0 per text, -1 where a reply gave none, and how many were missing."""
    answers, missing = [], 0
    for s in range(0, len(texts), batch):
        chunk = texts[s:s + batch]
        messages, pieces = binary_prompt(kind, explanation, chunk)
        if backend.has_logprobs:
            lp = backend.value_logprobs(messages, pieces, BINARY)
            answers.append((expected_value(lp) > 0.5).astype(np.int64))
        else:
            vals, miss = parse_binary(backend.chat(messages, max_tokens=8 * len(chunk) + 8), len(chunk), -1)
            answers.append(vals)
            missing += miss
    return np.concatenate(answers) if answers else np.zeros(0, np.int64), missing


def _window_text(w) -> str:
    return "".join(w.tokens).replace("\n", " ").strip()


def detection_items(ex: UnitExamples, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Held-out windows as plain text with their truth (1 activating, 0 not), in seeded order."""
    items = [(_window_text(w), 1) for w in ex.activating] + [(_window_text(w), 0) for w in ex.non_activating]
    order = np.random.default_rng([seed, ex.unit, 1]).permutation(len(items))
    return [items[i][0] for i in order], np.asarray([items[i][1] for i in order], dtype=bool)


def fuzzing_items(ex: UnitExamples, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Held-out activating windows with their active tokens marked (truth 1) or as many inactive
    tokens marked (truth 0): every other window after a seeded shuffle, so both classes appear."""
    rng = np.random.default_rng([seed, ex.unit, 2])
    order = rng.permutation(len(ex.activating))
    texts, truth = [], []
    for j, i in enumerate(order):
        w = ex.activating[i]
        correct = j % 2 == 0
        texts.append(marked_text(w.tokens, fuzz_marks(w.scaled(ex.max_activation), correct, rng)).strip())
        truth.append(correct)
    return texts, np.asarray(truth, dtype=bool)


def score(backend, explanation: str, ex: UnitExamples, scorers=SCORERS, batch: int = 5, seed: int = 0,
          simulator: str | None = None, convention: str = "llmri") -> dict:
    """Every requested score of one explanation on one unit's held-out windows; ``simulator``
    as in :func:`simulate` (``None``: ``"pmi"`` on a backend with word log-probabilities);
    ``convention`` how detection and fuzzing answers count (:func:`balanced_accuracy`).

    Keys: ``simulation_score`` (pooled Pearson r), ``detection_balanced_accuracy``,
    ``fuzzing_balanced_accuracy``, ``parse_failures``, and ``simulated`` (per held-out window).
    """
    out: dict = {"parse_failures": 0}
    _check_convention(convention)
    if "simulation" in scorers:
        held = ex.held_out
        preds, miss = simulate(backend, explanation, held, simulator=simulator)
        out["simulation_score"] = pooled_correlation([w.activations for w in held], preds)
        out["simulated"] = [p.round(3).tolist() for p in preds]
        out["parse_failures"] += miss
    for kind in ("detection", "fuzzing"):
        if kind in scorers:
            texts, truth = detection_items(ex, seed) if kind == "detection" else fuzzing_items(ex, seed)
            pred, miss = _binary_answers(backend, kind, explanation, texts, batch)
            out[f"{kind}_balanced_accuracy"] = (balanced_accuracy(truth, pred, convention) if len(truth)
                                                else float("nan"))
            out["parse_failures"] += miss
    return out
