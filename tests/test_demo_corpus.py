"""The bundled word-order demo corpus: twins share their words, and the layers differ on it."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import llmri
from llmri.corpus import demo_corpus_path
from llmri.errors import LlmriError


def _words(text: str) -> Counter:
    return Counter(w.lower() for w in re.findall(r"[\w']+", text))


def test_scrambled_twins_hold_the_same_words_in_another_order():
    root = demo_corpus_path("word_order")
    gram = sorted((root / "grammatical").glob("*.txt"))
    scr = sorted((root / "scrambled").glob("*.txt"))
    assert [p.name for p in gram] == [p.name for p in scr] and len(gram) == 60
    for g, s in zip(gram, scr):
        a, b = g.read_text(), s.read_text()
        assert _words(a) == _words(b), g.name
        wa, wb = a.lower().split(), b.lower().split()
        moved = sum(x != y for x, y in zip(wa, wb))
        assert moved >= len(wa) // 2, g.name     # not a near-copy of its twin


def test_demo_corpus_names():
    c = llmri.demo_corpus()
    assert c.label_names == ["grammatical", "scrambled"] and c.counts() == [60, 60]
    assert llmri.demo_corpus("topics").label_names == ["astronomy", "cooking", "football"]
    with pytest.raises(LlmriError, match="demo corpus 'news' is not one of word_order, topics"):
        llmri.demo_corpus("news")


@pytest.mark.integration
def test_layers_differ_on_the_default_encoder(tmp_path):
    """Goal of issue 12: embedding-layer probe accuracy <= 0.75, the best layer >= 0.90."""
    scan = llmri.scan("default", llmri.demo_corpus(), tmp_path / "s", progress=False)
    df = llmri.probe(scan, control=False, seed=0)
    acc = dict(zip(df["layer"], df["accuracy"]))
    assert acc[0] <= 0.75
    assert max(acc.values()) >= 0.90
    assert max(acc, key=acc.get) not in (0, scan.n_layers)   # an inner layer, not an end
