"""Prompts of the explain-and-score loop, as chat messages plus assistant *pieces*.

Formats follow the papers (wording is ours):

- Explanation, ``style="bills"``: each top window as ``token<TAB>activation`` lines (0-10),
  then the same lines with the zeros filtered out, ending with "the main thing this neuron does
  is find" (Bills et al. 2023, "Language models can explain neurons in language models",
  OpenAI; the explainer prompt of their Figure/Appendix).
- Explanation, ``style="delphi"``: each window as text with the activating tokens marked
  ``<<like this>>`` and a list of (token, activation) pairs (EleutherAI delphi; Paulo et al.
  2024, "Automatically interpreting millions of features in large language models").
- Simulation: the explanation, then every held-out token as ``token<TAB>unknown``; the
  simulator's distribution over "0".."10" where each ``unknown`` stands is read in one forward
  pass (Bills et al.'s "all at once" simulator). Backends without log-probabilities answer the
  same prompt with numbers in place of ``unknown``, which are parsed.
- Simulation by pointwise mutual information (``simulator="pmi"``, the local default): the
  window's text, then "a neuron finds <explanation>; on which word of the text does it fire
  most?", and the reply prefilled up to ``It fires most on the word "``. The log-probability of
  each token of the window as the next token, minus the same under the content-free explanation
  ``NEUTRAL``, is that token's pointwise mutual information with the explanation (see
  ``scoring.simulate``).
- Detection and fuzzing (delphi): a batch of examples, each answered 1 or 0 (does the example
  show the feature / are the marked tokens the right ones).

A prompt is ``(messages, pieces)``: ``messages`` is the chat so far and ``pieces`` the start of
the assistant's reply, cut where the backend reads a distribution (after every piece but the
last). Backends that cannot read distributions use ``messages`` alone and generate.
"""

from __future__ import annotations

import numpy as np

from .examples import Window

VALUES = tuple(str(i) for i in range(11))
NEUTRAL = "something"          # the content-free explanation of the pmi simulator
PMI_PREFILL = 'It fires most on the word "'
BINARY = ("0", "1")
PREFIX = "the main thing this neuron does is find"
EXPLAIN_PREFILL = {"bills": "Explanation of neuron 1 behavior: " + PREFIX, "delphi": "This feature finds"}

_EXPLAIN_SYSTEM = (
    "We are studying neurons in a neural network. Each neuron looks for one particular thing in a "
    "short piece of text. Look at the tokens where the neuron activates and say in one sentence what "
    "the neuron is looking for. Do not list example words.\n"
    "Activations are given as token<tab>activation, from 0 to 10. A non-zero value means the neuron "
    "found what it looks for; the higher the value, the stronger the match.")

_EXPLAIN_SYSTEM_DELPHI = (
    "You are a careful researcher of language model internals. You will see short text examples in "
    "which the tokens where a feature is active are marked <<like this>>, followed by how strongly it "
    "is active (0 to 10). Say in one short sentence what the feature responds to. Do not list every "
    "marked word; name the common pattern.")

_SIMULATE_SYSTEM = (
    "We are studying neurons in a neural network. Each neuron looks for one particular thing in a "
    "short piece of text. Read the explanation of what a neuron does and predict its activation on "
    "each token. Activations are given as token<tab>activation, from 0 to 10; \"unknown\" marks an "
    "activation to predict. Most activations are 0.")

# One worked example for the simulator (made up for llmri; Bills et al. use few-shot examples too).
_SIMULATE_SHOT = (
    "Neuron 1\nExplanation of neuron 1 behavior: " + PREFIX + " names of months.\n"
    "Activations:\n<start>\nwe\t0\nmet\t0\nin\t0\n March\t10\nand\t0\nagain\t0\nin\t0\n June\t9\n.\t0\n<end>\n")

_DETECT_SYSTEM = (
    "You are a careful researcher of language model internals. You get the explanation of a feature "
    "of text and several numbered text examples. For each example say whether the feature is present "
    "in it: 1 if it is, 0 if it is not. Answer with one line per example, \"Example N: 1\" or "
    "\"Example N: 0\", and nothing else.")

_FUZZ_SYSTEM = (
    "You are a careful researcher of language model internals. You get the explanation of a feature "
    "of text and several numbered text examples in which some tokens are marked <<like this>>. For "
    "each example say whether the marked tokens are the ones the explanation describes: 1 if they "
    "are, 0 if they are marked wrongly. Answer with one line per example, \"Example N: 1\" or "
    "\"Example N: 0\", and nothing else.")


def show_token(t: str) -> str:
    """A token as it appears in a prompt line: tabs and newlines escaped."""
    return t.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def marked_text(tokens: list[str], marks) -> str:
    """The window's text with the tokens at ``marks`` (booleans) wrapped in << >>."""
    out = []
    for t, m in zip(tokens, marks):
        out.append(f"<<{t}>>" if m else t)
    return "".join(out).replace("\n", " ")


def explanation_prompt(windows: list[Window], max_activation: float, style: str = "bills") -> list[dict]:
    """Chat messages asking for a one-sentence explanation of the unit from its top windows."""
    if style == "delphi":
        blocks = []
        for i, w in enumerate(windows, 1):
            v = w.scaled(max_activation)
            pairs = ", ".join(f"({show_token(t)!r}, {int(x)})" for t, x in zip(w.tokens, v) if x > 0)
            blocks.append(f"Example {i}: {marked_text(w.tokens, v > 0)}\nActivations: {pairs}")
        user = ("\n\n".join(blocks) + "\n\nIn one sentence, what does this feature respond to? "
                "Start your answer with: This feature finds")
        return [{"role": "system", "content": _EXPLAIN_SYSTEM_DELPHI}, {"role": "user", "content": user}]
    blocks = []
    for w in windows:
        v = w.scaled(max_activation)
        lines = "\n".join(f"{show_token(t)}\t{int(x)}" for t, x in zip(w.tokens, v))
        nonzero = "\n".join(f"{show_token(t)}\t{int(x)}" for t, x in zip(w.tokens, v) if x > 0)
        blocks.append(f"Activations:\n<start>\n{lines}\n<end>\n"
                      f"Same activations, but with all zeros filtered out:\n<start>\n{nonzero}\n<end>\n")
    user = ("Neuron 1\n" + "\n".join(blocks) + "\nComplete this sentence in a few words: "
            f"Explanation of neuron 1 behavior: {PREFIX}")
    return [{"role": "system", "content": _EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def clean_explanation(text: str) -> str:
    """One sentence from the explainer's reply: the repeated prompt prefix and quotes removed."""
    t = " ".join(text.strip().split())
    low = t.lower()
    for lead in (PREFIX, "explanation of neuron 1 behavior:", "this feature finds", "this neuron finds",
                 "the neuron finds", "find"):
        if low.startswith(lead):
            t = t[len(lead):].strip(" :")
            low = t.lower()
    for end in (". ", "\n"):
        if end in t:
            t = t[:t.index(end) + 1]
    t = t.strip(" \"'`*").rstrip(".").strip()
    return t[:300] or "nothing in particular"


def simulation_prompt(explanation: str, window: Window, listed: bool = True) -> tuple[list[dict], list[str]]:
    """Messages and assistant pieces for the "all at once" simulator of one held-out window:
    a distribution over ``VALUES`` is read after each token's ``token<TAB>`` piece.

    ``listed=True`` also lists the tokens in the user message and asks for the numbers (for
    backends that answer in text); without it the messages depend on the explanation only, so
    a local model reuses their computation across windows."""
    user = (_SIMULATE_SHOT + "\nNeuron 2\nExplanation of neuron 2 behavior: " + PREFIX + " "
            + explanation.strip().rstrip(".") + ".\n")
    if listed:
        user += ("Write the activations of neuron 2 on the text below, one token<tab>activation line per "
                 "token, replacing each unknown by a number from 0 to 10.\n<start>\n"
                 + "".join(f"{show_token(t)}\tunknown\n" for t in window.tokens) + "<end>")
    pieces = ["Activations:\n<start>\n"]
    for t in window.tokens:
        pieces[-1] += f"{show_token(t)}\t"
        pieces.append("unknown\n")
    pieces[-1] += "<end>\n"
    return [{"role": "system", "content": _SIMULATE_SYSTEM}, {"role": "user", "content": user}], pieces


def pmi_prompt(explanation: str, window: Window) -> tuple[list[dict], str]:
    """Messages and reply prefill of the ``pmi`` simulator for one held-out window: the model's
    next token after the prefill is the word of the window it picks for the explanation."""
    text = "".join(window.tokens).replace("\n", " ").strip()
    user = (f"Text: {text}\nA neuron finds {explanation.strip().rstrip('.')}. "
            "On which word of the text does it fire most?")
    return [{"role": "user", "content": user}], PMI_PREFILL


def binary_prompt(kind: str, explanation: str, texts: list[str]) -> tuple[list[dict], list[str]]:
    """Detection (``kind="detection"``) or fuzzing (``"fuzzing"``) of a batch of example texts:
    a distribution over ``BINARY`` is read after each ``Example N:`` piece."""
    system = _DETECT_SYSTEM if kind == "detection" else _FUZZ_SYSTEM
    body = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts, 1))
    user = f"Explanation of the feature: {explanation.strip()}\n\nText examples:\n{body}"
    pieces = ["Example 1:"]
    for i in range(2, len(texts) + 1):
        pieces.append(f" unknown\nExample {i}:")
    pieces.append(" unknown\n")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], pieces


def render_plain(messages: list[dict], pieces: list[str] | None = None) -> str:
    """Messages as plain text (for models without a chat template and for text completion),
    followed by the assistant pieces."""
    text = "".join(f"{m['content']}\n\n" for m in messages)
    return text + "".join(pieces or [])


def fuzz_marks(scaled: np.ndarray, correct: bool, rng: np.random.Generator) -> np.ndarray:
    """Marks for fuzzing: the truly active tokens, or as many tokens picked among the inactive ones."""
    active = scaled > 0
    if correct:
        return active
    k = max(1, int(active.sum()))
    pool = np.flatnonzero(~active)
    if len(pool) == 0:
        pool = np.arange(len(scaled))
    marks = np.zeros(len(scaled), dtype=bool)
    marks[rng.choice(pool, size=min(k, len(pool)), replace=False)] = True
    return marks
