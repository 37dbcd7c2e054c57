"""english_corpus: real English prose from Debian's python3-doc (installed by setup.sh --test)."""
import pytest

import llmri
from llmri.corpus import _rst_paragraphs

RST = """\
.. _tut-x:

*****************
A Heading Here
*****************

Perhaps the most well-known statement type is the :keyword:`if` statement, and
``x`` is a name; see :ref:`the tutorial <tut-if>` for **more** details today.

   >>> x = int(input("Please enter an integer: "))
   code that is indented and never prose at all, even if it is long enough

.. note::
   A directive body is skipped too, however many words it happens to have in it.

Too short to count.
"""


def test_rst_paragraphs_hand_worked():
    assert _rst_paragraphs(RST) == [
        "Perhaps the most well-known statement type is the if statement, and x is a name; "
        "see the tutorial for more details today."]


def test_english_corpus_is_large_real_and_seeded():
    c = llmri.english_corpus()
    assert set(c.label_names) == set(llmri.corpus.ENGLISH_SECTIONS)
    words = sum(len(t.split()) for t in c.texts)
    assert words > 250_000                          # enough for a >= 200k-token SAE run
    assert not any(">>>" in t[:3] or "``" in t or ":func:`" in t for t in c.texts)
    a = llmri.english_corpus(("tutorial", "faq"), max_docs=50, seed=3)
    b = llmri.english_corpus(("tutorial", "faq"), max_docs=50, seed=3)
    assert a.texts == b.texts and len(a) == 50 and set(a.label_names) == {"tutorial", "faq"}
    assert set(a.texts) <= set(llmri.english_corpus(("tutorial", "faq")).texts)


def test_english_corpus_bad_section():
    with pytest.raises(llmri.LlmriError, match="unknown section.*nope"):
        llmri.english_corpus(("nope",))
